//! The broker against MQTT clients nobody here wrote: Eclipse Mosquitto's
//! `mosquitto_pub` and `mosquitto_sub` (Debian package mosquitto-clients),
//! run as child processes against a broker started in-process on free ports.
//! Every client runs with a timeout (`-W`, `-C`, and a tokio timeout around
//! each wait) so a failure cannot hang the suite.

use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use warmhouse_broker::{start, BrokerConfig, RunningBroker};
use warmhouse_contracts::ids::DeviceId;
use warmhouse_contracts::topics::{Channel, DeviceTopic};
use warmhouse_devstack::{create_topics, KafkaStorage, Tansu};
use warmhouse_edge_bridge::IngressConfig;

/// Upper bound for anything a test waits on.
const WAIT: Duration = Duration::from_secs(10);
/// Seconds mosquitto_sub runs at most (`-W`), after which it exits anyway.
const SUB_LIFETIME_SECS: &str = "20";

#[derive(Clone, Copy, Debug)]
enum Version {
    V311,
    V5,
}

impl Version {
    fn flag(self) -> &'static str {
        match self {
            Version::V311 => "mqttv311",
            Version::V5 => "mqttv5",
        }
    }

    fn port(self, broker: &RunningBroker) -> u16 {
        match self {
            Version::V311 => broker.mqtt_v4_addr.port(),
            Version::V5 => broker.mqtt_v5_addr.port(),
        }
    }
}

fn topic(device: &str, channel: Channel) -> String {
    DeviceTopic::new(DeviceId::new(device).expect("valid device id"), channel).to_string()
}

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("read the ephemeral port")
}

/// A broker with what its device ingress needs: a real Kafka (tansu) and a
/// spool directory. Dereferences to the broker.
struct TestBroker {
    broker: RunningBroker,
    _kafka: Tansu,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TestBroker {
    type Target = RunningBroker;
    fn deref(&self) -> &RunningBroker {
        &self.broker
    }
}

impl std::ops::DerefMut for TestBroker {
    fn deref_mut(&mut self) -> &mut RunningBroker {
        &mut self.broker
    }
}

/// Kafka with the ingress's topics, and an ingress configuration for it.
async fn kafka(dir: &std::path::Path) -> (Tansu, IngressConfig) {
    let kafka = Tansu::start(&dir.join("kafka"), KafkaStorage::Memory).expect("tansu starts");
    let ingress = IngressConfig::new(&kafka.bootstrap(), dir.join("spool"));
    create_topics(&kafka.bootstrap(), &ingress.kafka_topics(), 1)
        .await
        .expect("topics are created");
    (kafka, ingress)
}

async fn start_broker() -> TestBroker {
    start_broker_with(|config| config).await
}

async fn start_broker_with(adjust: impl Fn(BrokerConfig) -> BrokerConfig) -> TestBroker {
    warmhouse_service_kit::init_tracing();
    let dir = tempfile::tempdir().expect("temp dir");
    let (kafka, ingress) = kafka(dir.path()).await;
    let admin: SocketAddr = "127.0.0.1:0".parse().unwrap();
    // Another process may take a just-freed port: try a few pairs.
    let mut last_error = None;
    for _ in 0..3 {
        let config = BrokerConfig::for_tests(free_addr(), free_addr(), admin, ingress.clone());
        match start(adjust(config)).await {
            Ok(broker) => {
                return TestBroker {
                    broker,
                    _kafka: kafka,
                    _dir: dir,
                }
            }
            Err(err) => last_error = Some(err),
        }
    }
    panic!("broker did not start: {:#}", last_error.unwrap());
}

/// A received message as mosquitto_sub printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Received {
    qos: u8,
    retained: bool,
    topic: String,
    payload: String,
}

/// A running `mosquitto_sub` whose output is read line by line.
struct Subscriber {
    child: Child,
    lines: mpsc::UnboundedReceiver<String>,
    /// Everything printed so far, for failure messages.
    seen: Vec<String>,
}

impl Subscriber {
    /// Starts `mosquitto_sub` on `topic` and waits for its SUBACK, so a
    /// publish made afterwards is routed to it. `extra` adds flags (will,
    /// count, client id...).
    async fn start(
        broker: &RunningBroker,
        version: Version,
        topic: &str,
        qos: u8,
        extra: &[&str],
    ) -> Self {
        let port = version.port(broker).to_string();
        let qos = qos.to_string();
        let mut args = vec![
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            version.flag(),
            "-t",
            topic,
            "-q",
            &qos,
            // -d prints the protocol exchange, which shows the SUBACK.
            "-d",
            "-F",
            "MSG %q %r %t %p",
            "-W",
            SUB_LIFETIME_SECS,
        ];
        args.extend_from_slice(extra);
        // Line-buffered stdout (coreutils stdbuf, which execs the client, so
        // a kill reaches mosquitto_sub itself): its debug lines are otherwise
        // stuck in a pipe buffer until it exits.
        let mut child = Command::new("stdbuf")
            .arg("-oL")
            .arg("mosquitto_sub")
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("mosquitto_sub runs (install mosquitto-clients)");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut reader = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut subscriber = Subscriber {
            child,
            lines,
            seen: Vec::new(),
        };
        if subscriber
            .next_line(|line| line.contains("received SUBACK"))
            .await
            .is_none()
        {
            panic!(
                "mosquitto_sub {args:?} got no SUBACK; it printed {:#?}",
                subscriber.seen
            );
        }
        subscriber
    }

    /// The next output line matching `want`, or None on timeout or exit.
    async fn next_line(&mut self, want: impl Fn(&str) -> bool) -> Option<String> {
        tokio::time::timeout(WAIT, async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if want(&line) {
                    return Some(line);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }

    async fn next_message(&mut self) -> Option<Received> {
        let line = self.next_line(|line| line.starts_with("MSG ")).await?;
        let mut parts = line.splitn(5, ' ').skip(1);
        let qos = parts.next()?.parse().ok()?;
        let retained = parts.next()? == "1";
        let topic = parts.next()?.to_string();
        let payload = parts.next().unwrap_or_default().to_string();
        Some(Received {
            qos,
            retained,
            topic,
            payload,
        })
    }

    /// Messages printed within `window` (for asserting that none arrive).
    async fn messages_within(&mut self, window: Duration) -> Vec<String> {
        let mut seen = Vec::new();
        let _ = tokio::time::timeout(window, async {
            while let Some(line) = self.lines.recv().await {
                self.seen.push(line.clone());
                if line.starts_with("MSG ") {
                    seen.push(line);
                }
            }
        })
        .await;
        seen
    }

    /// Kills the client with SIGKILL: no DISCONNECT, the TCP connection just
    /// drops, as when a device loses power.
    async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL mosquitto_sub");
        let _ = self.child.wait().await;
    }

    async fn exit_status(mut self) -> std::process::ExitStatus {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("mosquitto_sub exits")
            .expect("wait for mosquitto_sub")
    }
}

/// Publishes one message with `mosquitto_pub` and waits for it to finish
/// (for QoS 1 that includes the broker's PUBACK).
async fn publish(
    broker: &RunningBroker,
    version: Version,
    topic: &str,
    payload: &str,
    qos: u8,
    retain: bool,
) {
    let port = version.port(broker).to_string();
    let qos = qos.to_string();
    let mut args = vec![
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-V",
        version.flag(),
        "-t",
        topic,
        "-m",
        payload,
        "-q",
        &qos,
    ];
    if retain {
        args.push("-r");
    }
    let output = tokio::time::timeout(
        WAIT,
        Command::new("mosquitto_pub")
            .args(&args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("mosquitto_pub finishes in time")
    .expect("mosquitto_pub runs (install mosquitto-clients)");
    assert!(
        output.status.success(),
        "mosquitto_pub {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn received(qos: u8, retained: bool, topic: &str, payload: &str) -> Option<Received> {
    Some(Received {
        qos,
        retained,
        topic: topic.to_string(),
        payload: payload.to_string(),
    })
}

async fn delivers_qos0_and_qos1(version: Version, device: &str) {
    let broker = start_broker().await;
    let telemetry = topic(device, Channel::Telemetry);
    let reading = |seq: u32| {
        format!(
            r#"{{"seq":{seq},"ts":1700000000{seq:03},"readings":[{{"metric":"temperature","value":21.5}}]}}"#
        )
    };

    let mut qos0 = Subscriber::start(&broker, version, &telemetry, 0, &["-C", "1"]).await;
    publish(&broker, version, &telemetry, &reading(1), 0, false).await;
    assert_eq!(
        qos0.next_message().await,
        received(0, false, &telemetry, &reading(1))
    );
    assert!(qos0.exit_status().await.success());

    let mut qos1 = Subscriber::start(&broker, version, &telemetry, 1, &["-C", "2"]).await;
    publish(&broker, version, &telemetry, &reading(2), 1, false).await;
    publish(&broker, version, &telemetry, &reading(3), 1, false).await;
    assert_eq!(
        qos1.next_message().await,
        received(1, false, &telemetry, &reading(2))
    );
    assert_eq!(
        qos1.next_message().await,
        received(1, false, &telemetry, &reading(3))
    );
    assert!(qos1.exit_status().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt311_delivers_qos0_and_qos1() {
    delivers_qos0_and_qos1(Version::V311, "dev-v4-qos").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_delivers_qos0_and_qos1() {
    delivers_qos0_and_qos1(Version::V5, "dev-v5-qos").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_between_the_v4_and_v5_listeners() {
    let broker = start_broker().await;
    let commands = topic("dev-cross", Channel::Commands);
    let mut on_v5 = Subscriber::start(&broker, Version::V5, &commands, 1, &["-C", "1"]).await;
    let mut on_v4 = Subscriber::start(&broker, Version::V311, &commands, 1, &["-C", "1"]).await;
    let command = r#"{"command_id":"c-1","kind":"set_target","target_c":20.0}"#;
    publish(&broker, Version::V311, &commands, command, 1, false).await;
    assert_eq!(
        on_v5.next_message().await,
        received(1, false, &commands, command)
    );
    assert_eq!(
        on_v4.next_message().await,
        received(1, false, &commands, command)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_status_reaches_later_subscribers() {
    let broker = start_broker().await;
    let status = topic("dev-retained", Channel::Status);
    // Published before anyone subscribes, then replaced: only the last counts.
    publish(
        &broker,
        Version::V311,
        &status,
        r#"{"online":false}"#,
        1,
        true,
    )
    .await;
    publish(&broker, Version::V5, &status, r#"{"online":true}"#, 1, true).await;

    for version in [Version::V311, Version::V5] {
        let mut later = Subscriber::start(&broker, version, &status, 1, &["-C", "1"]).await;
        assert_eq!(
            later.next_message().await,
            received(1, true, &status, r#"{"online":true}"#),
            "{version:?} subscriber"
        );
    }
}

async fn last_will_on_unclean_disconnect(version: Version, device: &str) {
    let broker = start_broker().await;
    let status = topic(device, Channel::Status);
    let commands = topic(device, Channel::Commands);
    let will = format!(r#"{{"device_id":"{device}","online":false}}"#);

    let mut watcher = Subscriber::start(&broker, version, &status, 1, &["-C", "1"]).await;
    // The "device" is a mosquitto_sub with a last will, listening for commands.
    let device_client = Subscriber::start(
        &broker,
        version,
        &commands,
        1,
        &[
            "--will-topic",
            &status,
            "--will-payload",
            &will,
            "--will-qos",
            "1",
        ],
    )
    .await;
    device_client.kill().await;
    assert_eq!(
        watcher.next_message().await,
        received(1, false, &status, &will)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt311_last_will_is_published_when_a_client_dies() {
    last_will_on_unclean_disconnect(Version::V311, "dev-v4-will").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_last_will_is_published_when_a_client_dies() {
    last_will_on_unclean_disconnect(Version::V5, "dev-v5-will").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_last_will_on_clean_disconnect() {
    let broker = start_broker().await;
    let status = topic("dev-clean", Channel::Status);
    let commands = topic("dev-clean", Channel::Commands);
    let mut watcher = Subscriber::start(&broker, Version::V311, &status, 1, &[]).await;
    // Exits with a DISCONNECT after one message: the will must be discarded.
    let mut device_client = Subscriber::start(
        &broker,
        Version::V311,
        &commands,
        1,
        &[
            "-C",
            "1",
            "--will-topic",
            &status,
            "--will-payload",
            "offline",
        ],
    )
    .await;
    publish(&broker, Version::V311, &commands, "ping", 1, false).await;
    assert_eq!(
        device_client.next_message().await,
        received(1, false, &commands, "ping")
    );
    assert!(device_client.exit_status().await.success());
    assert_eq!(
        watcher.messages_within(Duration::from_secs(2)).await,
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_report_health_and_traffic() {
    let broker = start_broker().await;
    let base = format!("http://{}", broker.admin_addr);
    let http = reqwest::Client::new();

    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), "ok");

    // start() returns after the self-probe succeeded on both listeners.
    let ready = http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["mqtt_v4"], true, "{ready}");
    assert_eq!(ready["checks"]["mqtt_v5"], true, "{ready}");

    let telemetry = topic("dev-metrics", Channel::Telemetry);
    let _subscriber =
        Subscriber::start(&broker, Version::V311, "/tenants/+/telemetry", 1, &[]).await;
    publish(&broker, Version::V311, &telemetry, "12345", 1, false).await;

    // Meters arrive every second; wait for the publish to show.
    let value = |metrics: &str, series: &str| -> f64 {
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let metrics = loop {
        let metrics = http
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if value(
            &metrics,
            r#"warmhouse_broker_routed_messages_total{filter="/tenants/+/telemetry"}"#,
        ) >= 1.0
        {
            break metrics;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "telemetry never showed in /metrics:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // 4 bytes of framing + topic + payload, as rumqttd counts them.
    let bytes = (4 + telemetry.len() + "12345".len()) as f64;
    assert_eq!(
        value(
            &metrics,
            r#"warmhouse_broker_routed_bytes_total{filter="/tenants/+/telemetry"}"#
        ),
        bytes,
        "{metrics}"
    );
    assert!(
        value(&metrics, "warmhouse_broker_publishes_total") >= 1.0,
        "{metrics}"
    );
    // At least the subscriber is connected.
    assert!(
        value(&metrics, "warmhouse_broker_connections") >= 1.0,
        "{metrics}"
    );
    assert_eq!(
        value(&metrics, r#"warmhouse_broker_probe_up{listener="mqtt_v4"}"#),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        value(&metrics, r#"warmhouse_broker_probe_up{listener="mqtt_v5"}"#),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        value(&metrics, "warmhouse_broker_failed_publishes_total"),
        0.0,
        "{metrics}"
    );

    broker.broker.shutdown().await;
    assert!(
        http.get(format!("{base}/healthz")).send().await.is_err(),
        "admin server still answers after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_fails_clearly_when_a_port_is_taken() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = BrokerConfig::for_tests(
        taken.local_addr().unwrap(),
        free_addr(),
        "127.0.0.1:0".parse().unwrap(),
        IngressConfig::new("127.0.0.1:1", dir.path().join("spool")),
    );
    let err = match start(config).await {
        Ok(_) => panic!("started on a taken port"),
        Err(err) => format!("{err:#}"),
    };
    assert!(err.contains("not available"), "{err}");
}

/// rumqttd 0.20 bug, reproduced with a real client: a client id the router
/// refuses (here one containing '/') leaves a dead entry in the listener's
/// will-handler map; the second connect with that id panics while holding
/// the map's mutex, and every later connection on that listener panics on
/// the poisoned mutex. The broker cannot repair rumqttd in-process, so the
/// self-probe must notice: /readyz turns 503 and `failed()` resolves (the
/// binary then exits for a restart). When rumqttd is fixed, this test
/// fails at the first assertion and should become a survival test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_wedged_by_rumqttd_is_detected() {
    let mut broker = start_broker_with(|config| BrokerConfig {
        probe_interval_secs: 1,
        probe_failure_limit: 2,
        ..config
    })
    .await;
    let port = broker.mqtt_v4_addr.port().to_string();
    for _ in 0..2 {
        let status = tokio::time::timeout(
            WAIT,
            Command::new("mosquitto_sub")
                // It never gets a CONNACK; -W bounds its reconnect attempts.
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-i",
                    "dev/1",
                    "-t",
                    "/tenants/dev-1/commands",
                    "-W",
                    "2",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .status(),
        )
        .await
        .expect("mosquitto_sub gives up in time")
        .expect("mosquitto_sub runs");
        assert!(!status.success(), "rumqttd accepted client id dev/1");
    }

    let err = tokio::time::timeout(Duration::from_secs(15), broker.failed())
        .await
        .expect("the wedged listener is reported");
    let err = format!("{err:#}");
    assert!(
        err.contains("mqtt_v4 listener failed 2 probes in a row"),
        "{err}"
    );
    let ready = reqwest::get(format!("http://{}/readyz", broker.admin_addr))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let ready: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(ready["checks"]["mqtt_v4"], false, "{ready}");
    assert_eq!(ready["checks"]["mqtt_v5"], true, "{ready}");
}
