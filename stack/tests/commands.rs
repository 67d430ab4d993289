//! System tests of commands: REST in, through the outbox, Kafka, the bridge
//! and MQTT to a simulated device, and its ack back through `device-events`
//! to REST. Everything real: tansu, PostgreSQL, our broker, bridge and
//! registry, and the simulator as the device.

use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use serde_json::{json, Value};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warmhouse_contracts::domain::{CommandStatus, DomainEvent, DomainEventKind};
use warmhouse_contracts::kafka::topics;
use warmhouse_stack::fleet::register_fleet;
use warmhouse_stack::{Stack, StackOptions};

/// One home with a thermostat, a climate sensor and a relay.
const SIM_ARGS: &[&str] = &[
    "--homes",
    "1",
    "--devices-per-home",
    "3",
    "--interval-ms",
    "200",
    "--run-id",
    "cmd",
];
const THERMOSTAT: &str = "home-cmd-0001-dev-01";
const RELAY: &str = "home-cmd-0001-dev-03";
const PATIENCE: Duration = Duration::from_secs(30);

struct Harness {
    stack: Stack,
    http: reqwest::Client,
    token: String,
    registry: String,
}

impl Harness {
    async fn start(dir: &std::path::Path) -> Self {
        let stack = Stack::start(
            dir,
            StackOptions {
                registry: true,
                ..StackOptions::default()
            },
        )
        .await
        .expect("starting the stack");
        let registry = stack.registry_url().expect("the stack runs a registry");
        let token = stack.admin_token().expect("admin token");
        let http = reqwest::Client::new();
        register_fleet(&http, &registry, &token, &stack.simulator(SIM_ARGS))
            .await
            .expect("registering the simulated fleet");
        Self {
            stack,
            http,
            token,
            registry,
        }
    }

    /// Runs the simulated home until the returned sender fires.
    fn devices(
        &self,
    ) -> (
        oneshot::Sender<()>,
        JoinHandle<warmhouse_simulator::Summary>,
    ) {
        let (stop, stopped) = oneshot::channel::<()>();
        let config = self.stack.simulator(SIM_ARGS);
        let task = tokio::spawn(async move {
            warmhouse_simulator::run(config, async {
                let _ = stopped.await;
            })
            .await
            .expect("simulator run")
        });
        (stop, task)
    }

    async fn send(&self, device: &str, body: Value, key: Option<&str>) -> (u16, Value) {
        let mut request = self
            .http
            .post(format!(
                "{}/api/v1/devices/{device}/commands",
                self.registry
            ))
            .bearer_auth(&self.token)
            .json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.expect("POST command");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON answer"))
    }

    async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.registry))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("GET");
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.expect("JSON answer")
    }

    /// Polls `path` until `done` holds, returning the last answer.
    async fn until(&self, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.get(path).await;
            if done(&value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last: {value}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn presence(&self, device: &str, presence: &str) {
        self.until(&format!("/api/v1/devices/{device}/state"), presence, |s| {
            s["presence"] == presence
        })
        .await;
    }

    async fn command_status(&self, device: &str, id: &str, status: &str) -> Value {
        self.until(
            &format!("/api/v1/devices/{device}/commands/{id}"),
            &format!("command {id} to be {status}"),
            |c| c["status"] == status,
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_command_reaches_the_device_and_its_ack_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    let (stop, devices) = h.devices();
    h.presence(THERMOSTAT, "online").await;

    let (status, command) = h
        .send(
            THERMOSTAT,
            json!({"name": "set_target_temperature", "params": {"temperature": 23.5}, "ttl_seconds": 60}),
            Some("k-1"),
        )
        .await;
    assert_eq!(status, 202, "{command}");
    assert_eq!(command["status"], "queued");
    let id = command["command_id"]
        .as_str()
        .expect("command id")
        .to_string();

    let acked = h.command_status(THERMOSTAT, &id, "acked").await;
    for step in ["sent_at", "delivered_at", "completed_at"] {
        assert!(acked[step].is_string(), "{step} missing in {acked}");
    }
    // The shadow: desired set by the command, reported by the device, no delta.
    let state = h
        .until(
            &format!("/api/v1/devices/{THERMOSTAT}/state"),
            "the device to report the new target",
            |s| s["reported"]["target_temperature"] == 23.5,
        )
        .await;
    assert_eq!(state["desired"]["target_temperature"], 23.5, "{state}");
    assert_eq!(state["delta"], json!({}), "{state}");
    // The device resource shows the registry's record with all of it.
    let detail = h.get(&format!("/api/v1/devices/{THERMOSTAT}")).await;
    assert_eq!(detail["kind"], "thermostat", "{detail}");
    assert_eq!(detail["state"]["presence"], "online", "{detail}");
    assert_eq!(
        detail["state"]["reported"]["target_temperature"], 23.5,
        "{detail}"
    );

    // Retrying with the same key returns the same command, not a second one.
    let (status, again) = h
        .send(
            THERMOSTAT,
            json!({"name": "set_target_temperature", "params": {"temperature": 23.5}, "ttl_seconds": 60}),
            Some("k-1"),
        )
        .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["command_id"], id.as_str());
    let (status, conflict) = h
        .send(
            THERMOSTAT,
            json!({"name": "set_target_temperature", "params": {"temperature": 19}}),
            Some("k-1"),
        )
        .await;
    assert_eq!(status, 409, "{conflict}");

    // A command the device cannot execute comes back failed, with its reason.
    let (status, command) = h
        .send(
            RELAY,
            json!({"name": "set_target_temperature", "params": {"temperature": 20}}),
            None,
        )
        .await;
    assert_eq!(status, 202, "{command}");
    let failed = h
        .command_status(RELAY, command["command_id"].as_str().unwrap(), "failed")
        .await;
    assert!(
        failed["detail"]
            .as_str()
            .is_some_and(|d| d.contains("relay")),
        "{failed}"
    );

    let list = h
        .get(&format!(
            "/api/v1/devices/{THERMOSTAT}/commands?status=acked"
        ))
        .await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");

    let _ = stop.send(());
    let summary = devices.await.unwrap();
    assert!(
        summary.commands >= 2,
        "the devices executed {} commands",
        summary.commands
    );
    h.presence(THERMOSTAT, "offline").await;
    h.stack.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_offline_device_gets_its_commands_when_it_reconnects_or_they_expire() {
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    let events = registry_events_consumer(&h.stack.tansu.bootstrap());

    // Seen online once, then gone: the registry knows it is offline.
    let (stop, devices) = h.devices();
    h.presence(THERMOSTAT, "online").await;
    let _ = stop.send(());
    devices.await.unwrap();
    h.presence(THERMOSTAT, "offline").await;

    let (_, waiting) = h
        .send(
            THERMOSTAT,
            json!({"name": "turn_off", "ttl_seconds": 120}),
            None,
        )
        .await;
    let waiting_id = waiting["command_id"].as_str().unwrap().to_string();
    let (_, doomed) = h
        .send(RELAY, json!({"name": "turn_on", "ttl_seconds": 2}), None)
        .await;
    let doomed_id = doomed["command_id"].as_str().unwrap().to_string();

    // Published, but nobody to deliver it to.
    h.command_status(THERMOSTAT, &waiting_id, "sent").await;
    let expired = h.command_status(RELAY, &doomed_id, "expired").await;
    assert!(
        expired["detail"]
            .as_str()
            .is_some_and(|d| d.contains("time to live")),
        "{expired}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let still = h
        .get(&format!(
            "/api/v1/devices/{THERMOSTAT}/commands/{waiting_id}"
        ))
        .await;
    assert_eq!(
        still["status"], "sent",
        "delivered to an offline device? {still}"
    );

    // Back online: the waiting command is executed; the expired one is not.
    let (stop, devices) = h.devices();
    h.command_status(THERMOSTAT, &waiting_id, "acked").await;
    let state = h
        .until(
            &format!("/api/v1/devices/{THERMOSTAT}/state"),
            "heating off reported",
            |s| s["reported"]["heating_on"] == false,
        )
        .await;
    assert_eq!(state["presence"], "online");
    let relay = h.get(&format!("/api/v1/devices/{RELAY}/state")).await;
    assert_ne!(
        relay["reported"]["on"], true,
        "an expired command was executed: {relay}"
    );
    let _ = stop.send(());
    devices.await.unwrap();

    // Every step was announced on registry-events for other systems.
    let seen = collect_statuses(&events, &[&waiting_id, &doomed_id], Duration::from_secs(20)).await;
    // In lifecycle order, from queued to the end. A step can go unannounced
    // when its receipt arrives after the next one (delivered before the
    // relay marked it sent); the timestamps are still filled in.
    let ordered = |statuses: &[CommandStatus], last: CommandStatus| {
        let rank = |s: &CommandStatus| CommandStatus::ALL.iter().position(|x| x == s);
        statuses.first() == Some(&CommandStatus::Queued)
            && statuses.last() == Some(&last)
            && statuses.windows(2).all(|w| rank(&w[0]) < rank(&w[1]))
    };
    let waiting = seen.get(&waiting_id).cloned().unwrap_or_default();
    assert!(ordered(&waiting, CommandStatus::Acked), "{seen:?}");
    let doomed = seen.get(&doomed_id).cloned().unwrap_or_default();
    assert!(ordered(&doomed, CommandStatus::Expired), "{seen:?}");
    h.stack.stop().await;
}

fn registry_events_consumer(bootstrap: &str) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "command-test-observer")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer
        .subscribe(&[topics::REGISTRY_EVENTS])
        .expect("subscribe");
    consumer
}

/// Status changes of the given commands, in the order they were announced,
/// duplicates (at-least-once) removed.
async fn collect_statuses(
    consumer: &StreamConsumer,
    ids: &[&str],
    patience: Duration,
) -> std::collections::HashMap<String, Vec<CommandStatus>> {
    let mut seen: std::collections::HashMap<String, Vec<CommandStatus>> = Default::default();
    let mut event_ids = std::collections::HashSet::new();
    let deadline = Instant::now() + patience;
    while Instant::now() < deadline {
        let Ok(Ok(message)) =
            tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await
        else {
            let done = ids.iter().all(|id| {
                seen.get(*id)
                    .and_then(|s| s.last())
                    .is_some_and(|s| s.is_terminal())
            });
            if done {
                break;
            }
            continue;
        };
        let event =
            DomainEvent::decode(message.payload().unwrap_or_default()).expect("domain event");
        if !event_ids.insert(event.event_id.clone()) {
            continue;
        }
        if let DomainEventKind::CommandStatusChanged {
            command_id, status, ..
        } = event.event
        {
            if ids.contains(&command_id.as_str()) {
                seen.entry(command_id).or_default().push(status);
            }
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_connection_that_dies_turns_presence_offline_through_its_last_will() {
    use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Outgoing, Packet, QoS};
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::start(dir.path()).await;
    let status_topic = format!("/tenants/{THERMOSTAT}/status");
    let mut options = MqttOptions::new(THERMOSTAT, "127.0.0.1", h.stack.mqtt_port());
    options.set_keep_alive(Duration::from_secs(5));
    options.set_last_will(LastWill::new(
        &status_topic,
        r#"{"v":1,"online":false}"#,
        QoS::AtLeastOnce,
        true,
    ));
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let online = format!(
        r#"{{"v":1,"online":true,"ts":{}}}"#,
        warmhouse_service_kit::now_ms()
    );
    client
        .publish(&status_topic, QoS::AtLeastOnce, true, online)
        .await
        .unwrap();
    let acked = tokio::time::timeout(PATIENCE, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return,
                Ok(Event::Outgoing(Outgoing::Disconnect)) => panic!("disconnected"),
                Ok(_) => {}
                Err(err) => panic!("MQTT: {err}"),
            }
        }
    })
    .await;
    assert!(acked.is_ok(), "the broker never acknowledged the status");
    h.presence(THERMOSTAT, "online").await;

    // No DISCONNECT: the socket just goes, as with a power cut.
    drop(client);
    drop(eventloop);
    let state = h
        .until(
            &format!("/api/v1/devices/{THERMOSTAT}/state"),
            "the last will to mark it offline",
            |s| s["presence"] == "offline",
        )
        .await;
    assert!(state["presence_changed_at"].is_string(), "{state}");
    h.stack.stop().await;
}
