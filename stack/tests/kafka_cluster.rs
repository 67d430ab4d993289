//! System test of the local Kafka cluster: three tansu brokers sharing one
//! SQLite store, every Kafka client of the stack bootstrapped with all three
//! (docs/adr/0018-kafka-cluster-locally.md). Brokers are killed one after
//! another, then two at once, while simulated devices publish telemetry and
//! commands flow to simulated thermostats and back; the remaining brokers
//! must carry both within seconds. Afterwards every
//! acknowledged reading is stored exactly once, every command was executed
//! exactly once and ended `acked`, and nothing went to the dead-letter topic.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use warmhouse_contracts::kafka::topics;
use warmhouse_devstack::KafkaStorage;
use warmhouse_service_kit::now_ms;
use warmhouse_stack::fleet::register_fleet;
use warmhouse_stack::verify::wait_for_exactly;
use warmhouse_stack::{Stack, StackOptions};

/// Two homes of a thermostat, a climate sensor and a relay, 10 messages a
/// second each, until stopped.
const SIM_ARGS: &[&str] = &[
    "--homes",
    "2",
    "--devices-per-home",
    "3",
    "--interval-ms",
    "100",
    "--record",
    "--run-id",
    "kc",
];
/// Brokers killed together in each step (indexes into the cluster).
const KILLS: &[&[usize]] = &[&[0], &[1], &[2], &[0, 1], &[1, 2]];
/// How long a killed broker stays down at least: long enough for the
/// clients that used it to notice and move.
const MIN_DOWN: Duration = Duration::from_secs(3);
/// How long the remaining brokers may take to carry the traffic: clients
/// reconnect through the cluster's front, which moves to a live broker.
const WHILE_DOWN: Duration = Duration::from_secs(10);
/// How long the first command and reading may take with every broker up.
const AT_START: Duration = Duration::from_secs(60);
const SETTLE: Duration = Duration::from_secs(90);

/// The registry's REST API as an administrator.
struct Registry {
    http: reqwest::Client,
    url: String,
}

impl Registry {
    async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("registry answers");
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.expect("JSON answer")
    }

    async fn command(&self, device: &str, temperature: f64) -> String {
        let response = self
            .http
            .post(format!("{}/api/v1/devices/{device}/commands", self.url))
            .json(&json!({
                "name": "set_target_temperature",
                "params": {"temperature": temperature},
                "ttl_seconds": 600,
            }))
            .send()
            .await
            .expect("POST command");
        let status = response.status().as_u16();
        let body: Value = response.json().await.expect("JSON answer");
        assert_eq!(status, 202, "{body}");
        body["command_id"].as_str().expect("command id").to_string()
    }

    async fn status(&self, device: &str, id: &str) -> String {
        let command = self
            .get(&format!("/api/v1/devices/{device}/commands/{id}"))
            .await;
        command["status"].as_str().unwrap_or_default().to_string()
    }
}

/// A command sent by the test: device, id, when (ms since the epoch).
type Sent = (String, String, i64);

/// Sends a command to each thermostat in turn every 200 ms until `stop`.
fn send_commands(
    registry: Arc<Registry>,
    thermostats: Vec<String>,
    sent: Arc<Mutex<Vec<Sent>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n = 0u32;
        while !stop.load(Ordering::SeqCst) {
            let device = &thermostats[n as usize % thermostats.len()];
            // A different target each time (16.0 to 23.9 °C).
            let temperature = 16.0 + f64::from(n % 80) / 10.0;
            let at = now_ms();
            let id = registry.command(device, temperature).await;
            sent.lock().unwrap().push((device.clone(), id, at));
            n += 1;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

/// Waits until both paths work after `since_ms`: a command sent after it is
/// acked by its device, and a reading taken after it is queryable. Returns
/// how long that took, or after `patience` what was still missing.
async fn wait_until_flowing(
    stack: &Stack,
    registry: &Registry,
    sent: &Mutex<Vec<Sent>>,
    watched_device: &str,
    since_ms: i64,
    patience: Duration,
) -> Result<Duration, String> {
    let started = Instant::now();
    let http = stack
        .api_client_builder()
        .expect("token")
        .build()
        .expect("HTTP client");
    let latest = format!(
        "{}/api/v1/devices/{watched_device}/telemetry/latest",
        stack.query_url()
    );
    let newer = || -> Vec<Sent> {
        let sent = sent.lock().unwrap();
        sent.iter()
            .filter(|(_, _, at)| *at > since_ms)
            .cloned()
            .collect()
    };
    let mut command_acked = false;
    let mut telemetry_stored = false;
    while !(command_acked && telemetry_stored) {
        if started.elapsed() > patience {
            let mut statuses = BTreeMap::<String, usize>::new();
            for (device, id, _) in newer() {
                *statuses
                    .entry(registry.status(&device, &id).await)
                    .or_default() += 1;
            }
            return Err(format!(
                "after {patience:?} commands acked: {command_acked} (commands sent since, \
                 by status: {statuses:?}), telemetry stored: {telemetry_stored}"
            ));
        }
        if !command_acked {
            for (device, id, _) in newer() {
                if registry.status(&device, &id).await == "acked" {
                    command_acked = true;
                    break;
                }
            }
        }
        if !telemetry_stored {
            if let Ok(response) = http.get(&latest).send().await {
                if let Ok(body) = response.json::<Value>().await {
                    telemetry_stored = body["metrics"].as_array().is_some_and(|metrics| {
                        metrics
                            .iter()
                            .any(|m| m["ts_ms"].as_i64().is_some_and(|ts| ts > since_ms))
                    });
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(started.elapsed())
}

/// Where records are held up, and every broker's log: for the message of
/// a failed test.
fn diagnose(stack: &Stack) -> String {
    let bridge = &stack.broker().ingress;
    let writer = &stack.writer.metrics;
    let mut text = format!(
        "bridge: {} records in the spool ({} spooled, {} drained), {} telemetry produced; \
         writer: {} consumed, {} points written, last write at {} ms",
        bridge.spool_records.get(),
        bridge.spooled.get(),
        bridge.drained.get(),
        bridge
            .produced
            .with_label_values(&[topics::TELEMETRY])
            .get(),
        writer.consumed.get(),
        writer.points_written.get(),
        writer.last_write_ms.get(),
    );
    let outcomes = [
        "published",
        "delivered",
        "device_offline",
        "expired",
        "undecodable",
    ];
    let commands: Vec<String> = outcomes
        .iter()
        .map(|o| format!("{o} {}", bridge.commands.with_label_values(&[o]).get()))
        .collect();
    text.push_str(&format!("\nbridge commands: {}", commands.join(", ")));
    text.push_str(&format!(
        "\ngroups: {}",
        consumer_groups(&stack.tansu.bootstrap())
    ));
    let dir = stack.dir.join("kafka");
    for n in 1..=stack.tansu.brokers.len() {
        let log = std::fs::read_to_string(dir.join(format!("tansu-{n}.log"))).unwrap_or_default();
        text.push_str(&format!("\n--- tansu-{n}.log\n{log}"));
    }
    text
}

/// Every consumer group with its state and members, as the brokers see it.
fn consumer_groups(bootstrap: &str) -> String {
    let consumer: BaseConsumer = match ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
    {
        Ok(consumer) => consumer,
        Err(err) => return err.to_string(),
    };
    match consumer.fetch_group_list(None, Duration::from_secs(10)) {
        Ok(list) => list
            .groups()
            .iter()
            .map(|g| {
                let members: Vec<String> = g
                    .members()
                    .iter()
                    .map(|m| format!("{} ({})", m.id(), m.client_id()))
                    .collect();
                format!("{} {} [{}]", g.name(), g.state(), members.join(", "))
            })
            .collect::<Vec<_>>()
            .join("; "),
        Err(err) => err.to_string(),
    }
}

/// Messages on the dead-letter topic, read from its offsets.
fn dead_letter_count(bootstrap: &str) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "kafka-cluster-test-dead-letters")
        .create()
        .expect("consumer");
    let (low, high) = consumer
        .fetch_watermarks(topics::DEAD_LETTERS, 0, Duration::from_secs(10))
        .expect("dead-letter offsets");
    high - low
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_brokers_of_the_cluster_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let options = StackOptions {
        kafka_storage: KafkaStorage::Sqlite,
        kafka_brokers: 3,
        registry: true,
        broker_kafka_timeout: Duration::from_secs(2),
        ..StackOptions::default()
    };
    let mut stack = Stack::start(dir.path(), options).await.unwrap();
    let bootstrap = stack.tansu.bootstrap();
    assert_eq!(bootstrap.split(',').count(), 3, "{bootstrap}");

    let sim_config = stack.simulator(SIM_ARGS);
    let thermostats: Vec<String> = sim_config
        .device_specs()
        .unwrap()
        .iter()
        .filter(|spec| spec.kind.as_str() == "thermostat")
        .map(|spec| spec.device_id.to_string())
        .collect();
    assert_eq!(thermostats.len(), 2);
    let token = stack.admin_token().unwrap();
    let registry = Arc::new(Registry {
        http: stack
            .api_client_builder()
            .unwrap()
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap(),
        url: stack.registry_url().unwrap(),
    });
    register_fleet(&reqwest::Client::new(), &registry.url, &token, &sim_config)
        .await
        .unwrap();

    let (stop_devices, devices_stopped) = tokio::sync::oneshot::channel::<()>();
    let devices = tokio::spawn(warmhouse_simulator::run(sim_config, async {
        let _ = devices_stopped.await;
    }));
    for device in &thermostats {
        let deadline = Instant::now() + Duration::from_secs(30);
        while registry
            .get(&format!("/api/v1/devices/{device}/state"))
            .await["presence"]
            != "online"
        {
            assert!(Instant::now() < deadline, "{device} never came online");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    let sent = Arc::new(Mutex::new(Vec::<Sent>::new()));
    let stop_commands = Arc::new(AtomicBool::new(false));
    let commands = send_commands(
        registry.clone(),
        thermostats.clone(),
        sent.clone(),
        stop_commands.clone(),
    );
    let watched = thermostats[0].as_str();
    let first = wait_until_flowing(&stack, &registry, &sent, watched, 0, AT_START)
        .await
        .unwrap_or_else(|why| panic!("all brokers up: {why}\n{}", diagnose(&stack)));
    eprintln!("all brokers up: commands and telemetry flow after {first:?}");

    for brokers in KILLS {
        let killed_at = now_ms();
        for &broker in *brokers {
            stack.tansu.brokers[broker].kill();
        }
        let (while_down, ()) = tokio::join!(
            wait_until_flowing(&stack, &registry, &sent, watched, killed_at, WHILE_DOWN),
            tokio::time::sleep(MIN_DOWN)
        );
        let took = while_down
            .unwrap_or_else(|why| panic!("brokers {brokers:?} down: {why}\n{}", diagnose(&stack)));
        eprintln!("brokers {brokers:?} down: the others carry the traffic after {took:?}");
        for &broker in *brokers {
            stack.tansu.brokers[broker]
                .start_again()
                .unwrap_or_else(|err| panic!("restarting broker {broker}: {err:#}"));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(stack.tansu.running(), 3);

    stop_commands.store(true, Ordering::SeqCst);
    commands.await.unwrap();
    let sent: Vec<Sent> = sent.lock().unwrap().clone();
    eprintln!("{} commands sent while brokers were killed", sent.len());

    // Every command ends acked: none lost on the way out or back.
    let deadline = Instant::now() + SETTLE;
    for (device, id, _) in &sent {
        loop {
            let status = registry.status(device, id).await;
            if status == "acked" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "command {id} to {device} is still {status}\n{}",
                diagnose(&stack)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The registry holds exactly those commands, all acked.
    for device in &thermostats {
        let rows = registry
            .get(&format!("/api/v1/devices/{device}/commands?limit=200"))
            .await;
        let rows = rows.as_array().expect("a list");
        let stored: BTreeMap<&str, &str> = rows
            .iter()
            .map(|c| {
                (
                    c["command_id"].as_str().unwrap_or_default(),
                    c["status"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        let mine: BTreeSet<&str> = sent
            .iter()
            .filter(|(d, _, _)| d == device)
            .map(|(_, id, _)| id.as_str())
            .collect();
        assert!(mine.len() < 200, "too many commands for one page");
        assert_eq!(
            stored.keys().copied().collect::<BTreeSet<_>>(),
            mine,
            "{device}"
        );
        assert!(
            stored.values().all(|s| *s == "acked"),
            "{device}: {stored:?}"
        );
    }

    let _ = stop_devices.send(());
    let summary = tokio::time::timeout(Duration::from_secs(60), devices)
        .await
        .expect("the simulator stops within 60 s")
        .unwrap()
        .unwrap();
    eprintln!("{summary}");
    // Each command executed exactly once: redeliveries (at least once) are
    // answered again by the device, never applied again.
    assert_eq!(
        summary.commands - summary.duplicate_commands,
        sent.len() as u64,
        "commands executed by the devices"
    );
    assert_eq!(summary.messages_unacked, 0);
    assert_eq!(summary.published.len() as u64, summary.messages_acked);
    let total = wait_for_exactly(&stack, &summary.published, SETTLE)
        .await
        .unwrap_or_else(|err| panic!("{err:#}\n{}", diagnose(&stack)));
    assert_eq!(total as u64, summary.readings_acked);

    assert_eq!(
        dead_letter_count(&bootstrap),
        0,
        "nothing should have been dead-lettered"
    );
    eprintln!(
        "bridge: {} records spooled and drained, {} produced",
        stack.broker().ingress.drained.get(),
        stack
            .broker()
            .ingress
            .produced
            .with_label_values(&[topics::TELEMETRY])
            .get()
    );
    assert_eq!(
        stack.broker().ingress.drained.get(),
        stack.broker().ingress.spooled.get(),
        "everything spooled was drained"
    );
    stack.stop().await;
}
