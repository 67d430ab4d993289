//! System tests: the whole pipeline on real tansu and influxd, with our
//! broker, bridge, ingest writer and query API, fed by the simulator.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use warmhouse_contracts::kafka::{topics, DeadLetter};
use warmhouse_devstack::KafkaStorage;
use warmhouse_stack::verify::wait_for_exactly;
use warmhouse_stack::{Stack, StackOptions};

const SETTLE: Duration = Duration::from_secs(90);

async fn simulate(stack: &Stack, args: &[&str]) -> warmhouse_simulator::Summary {
    let config = stack.simulator(args);
    warmhouse_simulator::run(config, std::future::pending())
        .await
        .expect("simulator run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_reading_is_queryable_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(dir.path(), StackOptions::default())
        .await
        .unwrap();
    let summary = simulate(
        &stack,
        &[
            "--homes",
            "3",
            "--devices-per-home",
            "3",
            "--messages-per-device",
            "20",
            "--interval-ms",
            "20",
            "--samples-per-message",
            "2",
            "--record",
            "--run-id",
            "e2e",
        ],
    )
    .await;
    assert_eq!(summary.messages_acked, 3 * 3 * 20);
    assert_eq!(summary.published.len(), 3 * 3 * 20);
    let total = wait_for_exactly(&stack, &summary.published, SETTLE)
        .await
        .unwrap();
    assert_eq!(total as u64, summary.readings_acked);
    assert!(
        total >= 3 * 3 * 20 * 2 * 2,
        "every sample has at least two metrics"
    );
    homes_see_only_their_own_devices(&stack, &summary.published).await;
}

/// Through the whole pipeline, a token for one home reads that home's
/// devices and nothing of the others; without a token nothing at all.
async fn homes_see_only_their_own_devices(
    stack: &Stack,
    published: &[warmhouse_simulator::PublishedMessage],
) {
    let mine = &published[0];
    let theirs = published
        .iter()
        .find(|m| m.home_id != mine.home_id)
        .expect("more than one home");
    let token = stack
        .token_for_homes(&[mine.home_id.as_str()])
        .expect("token");
    let http = reqwest::Client::new();
    let get = |path: String, token: Option<String>| {
        let request = http.get(format!("{}{path}", stack.query_url()));
        let request = match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        async move { request.send().await.expect("query API answers").status() }
    };
    let own_home = format!("/api/v1/homes/{}/telemetry/latest", mine.home_id);
    let own_device = format!("/api/v1/devices/{}/telemetry/latest", mine.device_id);
    assert_eq!(get(own_home.clone(), Some(token.clone())).await, 200);
    assert_eq!(get(own_device.clone(), Some(token.clone())).await, 200);
    assert_eq!(get(own_home, None).await, 401);
    assert_eq!(get(own_device, None).await, 401);
    let other_home = format!("/api/v1/homes/{}/telemetry/latest", theirs.home_id);
    let other_device = format!("/api/v1/devices/{}/telemetry/latest", theirs.device_id);
    assert_eq!(get(other_home, Some(token.clone())).await, 403);
    assert_eq!(get(other_device, Some(token)).await, 404);
}

fn mosquitto_pub(port: u16, topic: &str, payload_file: &std::path::Path) {
    let status = std::process::Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-q",
            "1",
            "-i",
            "dlq-tester",
            "-t",
            topic,
            "-f",
        ])
        .arg(payload_file)
        .status()
        .expect("mosquitto_pub (Debian package mosquitto-clients) must be installed");
    assert!(status.success(), "mosquitto_pub to {topic} failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_payloads_go_to_the_dead_letter_topic_while_good_ones_flow() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(dir.path(), StackOptions::default())
        .await
        .unwrap();
    let sim_config = stack.simulator(&[
        "--homes",
        "2",
        "--devices-per-home",
        "2",
        "--messages-per-device",
        "30",
        "--interval-ms",
        "50",
        "--record",
        "--run-id",
        "dlq",
    ]);
    let sim = tokio::spawn(warmhouse_simulator::run(sim_config, std::future::pending()));

    let oversized = format!(
        r#"{{"v":1,"home_id":"h","device_type":"t","pad":"{}","samples":[{{"seq":1,"ts":1764000000000,"values":{{"t":1}}}}]}}"#,
        "x".repeat(65_600)
    );
    let cases: Vec<(&str, String, &str)> = vec![
        ("/tenants/dlq-dev/telemetry", "this is not json".into(), "not_json"),
        (
            "/tenants/dlq-dev/telemetry",
            r#"{"v":1,"home_id":"h","device_type":"t","samples":[{"seq":"one","ts":1764000000000,"values":{"t":1}}]}"#.into(),
            "invalid_field",
        ),
        ("/tenants/dlq-dev/telemetry", r#"{"v":1,"samples":[]}"#.into(), "invalid_field"),
        ("/tenants/dlq-dev/telemetry", oversized, "too_large"),
        ("/tenants/bad.device/telemetry", r#"{"v":1}"#.into(), "unknown_topic"),
    ];
    for (i, (topic, payload, _)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("bad-{i}.json"));
        std::fs::write(&file, payload).unwrap();
        mosquitto_pub(stack.mqtt_port(), topic, &file);
    }

    // Read the dead letters back with a real Kafka consumer.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", stack.tansu.bootstrap())
        .set("group.id", "dlq-test-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topics::DEAD_LETTERS]).unwrap();
    let mut letters = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while letters.len() < cases.len() {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .expect("dead letters did not all arrive within 60 s")
            .unwrap();
        letters.push(DeadLetter::decode(message.payload().unwrap()).unwrap());
    }
    for (topic, payload, kind) in &cases {
        let letter = letters
            .iter()
            .find(|l| {
                l.source == format!("mqtt:{topic}") && l.original_payload() == payload.as_bytes()
            })
            .unwrap_or_else(|| panic!("no dead letter for {topic} {kind}"));
        assert_eq!(&letter.reason_kind, kind, "{}", letter.reason);
        assert!(!letter.reason.is_empty());
    }
    let wrong_type = letters
        .iter()
        .find(|l| l.reason.contains("samples[0].seq"))
        .expect("reason names the field");
    assert_eq!(wrong_type.reason_kind, "invalid_field");

    let summary = sim.await.unwrap().unwrap();
    assert_eq!(summary.messages_acked, 2 * 2 * 30);
    wait_for_exactly(&stack, &summary.published, SETTLE)
        .await
        .unwrap();
    let dead = stack
        .broker()
        .ingress
        .dead_lettered
        .with_label_values(&["not_json"])
        .get();
    assert_eq!(dead, 1);
}

/// Publishes 2 homes x 2 devices x 100 messages, 10 a second per device;
/// 2 s in, takes a component down with `down`, brings it back 4 s later with
/// `up`, then checks every acknowledged reading is stored exactly once.
async fn through_outage(
    stack: &mut Stack,
    run_id: &str,
    down: impl FnOnce(&mut Stack),
    up: impl FnOnce(&mut Stack),
) {
    let sim_config = stack.simulator(&[
        "--homes",
        "2",
        "--devices-per-home",
        "2",
        "--messages-per-device",
        "100",
        "--interval-ms",
        "100",
        "--record",
        "--run-id",
        run_id,
    ]);
    let sim = tokio::spawn(warmhouse_simulator::run(sim_config, std::future::pending()));
    tokio::time::sleep(Duration::from_secs(2)).await;
    down(stack);
    tokio::time::sleep(Duration::from_secs(4)).await;
    up(stack);

    let summary = match tokio::time::timeout(Duration::from_secs(120), sim).await {
        Ok(done) => done.unwrap().unwrap(),
        Err(_) => panic!(
            "the simulator did not finish within 120 s; {}",
            stack.tansu.diagnose()
        ),
    };
    assert_eq!(summary.messages_acked, 2 * 2 * 100);
    wait_for_exactly(stack, &summary.published, SETTLE)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_outage_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let options = StackOptions {
        kafka_storage: KafkaStorage::Sqlite,
        broker_kafka_timeout: Duration::from_secs(2),
        ..StackOptions::default()
    };
    let mut stack = Stack::start(dir.path(), options).await.unwrap();
    through_outage(
        &mut stack,
        "kafka-outage",
        |s| s.tansu.kill(),
        |s| s.tansu.start_again().unwrap(),
    )
    .await;
    let spooled = stack.broker().ingress.spooled.get();
    assert!(
        spooled > 0,
        "the outage should have sent records through the spool"
    );
    assert_eq!(
        stack.broker().ingress.drained.get(),
        spooled,
        "everything spooled was drained"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn influxdb_outage_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut stack = Stack::start(dir.path(), StackOptions::default())
        .await
        .unwrap();
    through_outage(
        &mut stack,
        "influx-outage",
        |s| s.influxd.kill(),
        |s| s.influxd.start_again().unwrap(),
    )
    .await;
    let failures = stack
        .writer
        .metrics
        .write_failures
        .with_label_values(&["unavailable"])
        .get();
    assert!(failures > 0, "the writer should have seen InfluxDB down");
}
