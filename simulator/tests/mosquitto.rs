//! The simulator against a real MQTT broker (Debian's `mosquitto`), checked
//! by an independent client (`mosquitto_sub` / `mosquitto_pub`).
//! Needs `apt-get install mosquitto mosquitto-clients`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use warmhouse_contracts::device::{AckResult, CommandAck, ReportedState, StatusMessage};
use warmhouse_contracts::ids::DeviceId;
use warmhouse_contracts::telemetry::{Sample, TelemetryMessage};
use warmhouse_contracts::topics::{Channel, DeviceTopic};
use warmhouse_simulator::{run, SimConfig};

/// Kills the child when the test ends, however it ends.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tool(name: &str) -> String {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let path = format!("{dir}/{name}");
        if Path::new(&path).exists() {
            return path;
        }
    }
    panic!("{name} not found: apt-get install mosquitto mosquitto-clients");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn start_broker() -> (Guard, u16) {
    let port = free_port();
    let child = Command::new(tool("mosquitto"))
        .args(["-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mosquitto");
    let guard = Guard(child);
    for _ in 0..100 {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return (guard, port);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("mosquitto did not listen on port {port}");
}

fn publish(port: u16, topic: &str, payload: &str, retain: bool) {
    let mut cmd = Command::new(tool("mosquitto_pub"));
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-t", topic, "-m", payload]);
    if retain {
        cmd.arg("-r");
    }
    let status = cmd.status().expect("run mosquitto_pub");
    assert!(status.success(), "mosquitto_pub failed: {status}");
}

/// A `mosquitto_sub -v` child; every line is `topic payload`.
struct Subscriber {
    _child: Guard,
    lines: mpsc::UnboundedReceiver<(String, String)>,
}

impl Subscriber {
    /// Subscribes to `filters` and returns once the subscription is live,
    /// proven by receiving a retained marker published before.
    async fn start(port: u16, filters: &[&str], marker_topic: &str) -> Self {
        publish(port, marker_topic, "ready", true);
        let mut cmd = Command::new(tool("mosquitto_sub"));
        cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1", "-v"]);
        for filter in filters {
            cmd.args(["-t", filter]);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto_sub");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let (topic, payload) = line.split_once(' ').unwrap_or((&line, ""));
                if tx.send((topic.to_string(), payload.to_string())).is_err() {
                    break;
                }
            }
        });
        let mut sub = Subscriber {
            _child: Guard(child),
            lines: rx,
        };
        sub.next_matching(|topic, payload| topic == marker_topic && payload == "ready")
            .await;
        sub
    }

    async fn next_matching(
        &mut self,
        mut matches: impl FnMut(&str, &str) -> bool,
    ) -> (String, String) {
        let wait = async {
            loop {
                let (topic, payload) = self.lines.recv().await.expect("mosquitto_sub ended");
                if matches(&topic, &payload) {
                    return (topic, payload);
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .expect("timed out waiting for an MQTT message")
    }
}

fn device_of(topic: &str, channel: Channel) -> Option<DeviceId> {
    DeviceTopic::parse(topic)
        .ok()
        .filter(|t| t.channel == channel)
        .map(|t| t.device_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_telemetry_that_the_broker_acknowledges_and_delivers() {
    let (_broker, port) = start_broker().await;
    let mut sub =
        Subscriber::start(port, &["/tenants/+/telemetry"], "/tenants/marker/telemetry").await;

    let config = SimConfig {
        ports: vec![port],
        homes: 2,
        devices_per_home: 2,
        messages_per_device: Some(5),
        interval_ms: 50,
        record: true,
        run_id: Some("tel".into()),
        ..SimConfig::default()
    };
    let specs = config.device_specs().unwrap();
    let before = warmhouse_service_kit::now_ms();
    let summary = tokio::time::timeout(
        Duration::from_secs(60),
        run(config, std::future::pending::<()>()),
    )
    .await
    .expect("run finished")
    .unwrap();
    let after = warmhouse_service_kit::now_ms();

    assert_eq!(summary.devices, 4);
    assert_eq!(summary.messages_generated, 20);
    assert_eq!(summary.messages_sent, 20);
    assert_eq!(summary.messages_acked, 20);
    assert_eq!(summary.messages_unacked, 0);
    assert_eq!(summary.reconnects, 0);
    // Per home a thermostat (3 readings a sample) and a climate sensor (2).
    assert_eq!(summary.readings_acked, 2 * 5 * (3 + 2));
    assert_eq!(summary.published.len(), 20);

    // What the simulator says it published, per device.
    let mut recorded: BTreeMap<DeviceId, Vec<Sample>> = BTreeMap::new();
    for message in &summary.published {
        let spec = specs
            .iter()
            .find(|s| s.device_id == message.device_id)
            .unwrap();
        assert_eq!(message.home_id, spec.home_id);
        assert_eq!(message.device_type, spec.device_type());
        recorded
            .entry(message.device_id.clone())
            .or_default()
            .extend(message.samples.iter().cloned());
    }
    assert_eq!(recorded.len(), 4);
    for samples in recorded.values_mut() {
        samples.sort_by_key(|s| s.seq);
        let seqs: Vec<u64> = samples.iter().map(|s| s.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
        assert!(samples
            .iter()
            .all(|s| s.ts >= before - 100 && s.ts <= after));
        assert!(samples.windows(2).all(|w| w[0].ts <= w[1].ts));
    }

    // What an independent subscriber received: exactly the same.
    let mut received: BTreeMap<DeviceId, Vec<Sample>> = BTreeMap::new();
    for _ in 0..20 {
        let (topic, payload) = sub
            .next_matching(|topic, _| topic != "/tenants/marker/telemetry")
            .await;
        let device = device_of(&topic, Channel::Telemetry).unwrap();
        let message = TelemetryMessage::decode(payload.as_bytes()).unwrap();
        let spec = specs.iter().find(|s| s.device_id == device).unwrap();
        assert_eq!(message.home_id, spec.home_id);
        assert_eq!(message.device_type, spec.device_type());
        received.entry(device).or_default().extend(message.samples);
    }
    for samples in received.values_mut() {
        samples.sort_by_key(|s| s.seq);
    }
    assert_eq!(received, recorded);

    // Every device said goodbye with a retained offline status.
    let mut status =
        Subscriber::start(port, &["/tenants/+/status"], "/tenants/marker/status").await;
    let mut offline = Vec::new();
    while offline.len() < 4 {
        let (topic, payload) = status
            .next_matching(|t, _| t != "/tenants/marker/status")
            .await;
        let message = StatusMessage::decode(payload.as_bytes()).unwrap();
        assert!(!message.online, "{topic}: {payload}");
        assert!(message.ts.is_some(), "a goodbye, not the last will");
        offline.push(device_of(&topic, Channel::Status).unwrap());
    }
    offline.sort();
    let mut expected: Vec<DeviceId> = specs.iter().map(|s| s.device_id.clone()).collect();
    expected.sort();
    assert_eq!(offline, expected);
}

fn command(id: &str, name: &str, params: serde_json::Value, expires_in_ms: i64) -> String {
    let now = warmhouse_service_kit::now_ms();
    json!({
        "v": 1,
        "command_id": id,
        "name": name,
        "params": params,
        "issued_at_ms": now,
        "expires_at_ms": now + expires_in_ms,
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_commands_and_reports_state() {
    let (_broker, port) = start_broker().await;
    let mut sub = Subscriber::start(
        port,
        &[
            "/tenants/+/commands/ack",
            "/tenants/+/state",
            "/tenants/+/status",
        ],
        "/tenants/marker/state",
    )
    .await;

    let config = SimConfig {
        ports: vec![port],
        homes: 1,
        devices_per_home: 3,
        interval_ms: 200,
        run_id: Some("cmd".into()),
        ..SimConfig::default()
    };
    let specs = config.device_specs().unwrap();
    let thermostat = specs[0].device_id.to_string();
    let sensor = specs[1].device_id.to_string();
    assert_eq!(specs[0].kind, warmhouse_simulator::DeviceKind::Thermostat);
    assert_eq!(
        specs[1].kind,
        warmhouse_simulator::DeviceKind::ClimateSensor
    );

    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(run(config.clone(), async {
        let _ = stop_rx.await;
    }));

    // Commands are only queued for a device whose session exists: wait until it is online.
    let online_topic = format!("/tenants/{thermostat}/status");
    sub.next_matching(|topic, payload| {
        topic == online_topic && StatusMessage::decode(payload.as_bytes()).is_ok_and(|s| s.online)
    })
    .await;
    let state_topic = format!("/tenants/{thermostat}/state");
    let commands = format!("/tenants/{thermostat}/commands");
    publish(
        port,
        &commands,
        &command(
            "c-set",
            "set_target_temperature",
            json!({"temperature": 23.5}),
            60_000,
        ),
        false,
    );
    publish(
        port,
        &commands,
        &command("c-dance", "dance", json!({}), 60_000),
        false,
    );
    publish(
        port,
        &commands,
        &command("c-late", "turn_off", json!({}), -1_000),
        false,
    );
    publish(
        port,
        &format!("/tenants/{sensor}/commands"),
        &command("c-sensor", "turn_on", json!({}), 60_000),
        false,
    );
    publish(
        port,
        &commands,
        r#"{"v":1,"command_id":"c-bad","name":7}"#,
        false,
    );

    let mut acks: BTreeMap<String, (String, CommandAck)> = BTreeMap::new();
    let mut target_reported = false;
    while acks.len() < 5 || !target_reported {
        let (topic, payload) = sub
            .next_matching(|t, _| t.ends_with("/commands/ack") || t == state_topic)
            .await;
        if topic == state_topic {
            let state = ReportedState::decode(payload.as_bytes()).unwrap();
            target_reported |= state.reported.get("target_temperature") == Some(&json!(23.5));
            continue;
        }
        let device = device_of(&topic, Channel::CommandAck).unwrap().to_string();
        let ack = CommandAck::decode(payload.as_bytes()).unwrap();
        acks.insert(ack.command_id.clone(), (device, ack));
    }
    let result = |id: &str| {
        let (device, ack) = &acks[id];
        (
            device.clone(),
            ack.result,
            ack.detail.clone().unwrap_or_default(),
        )
    };
    assert_eq!(
        result("c-set"),
        (thermostat.clone(), AckResult::Done, String::new())
    );
    let (device, outcome, detail) = result("c-dance");
    assert_eq!((device, outcome), (thermostat.clone(), AckResult::Rejected));
    assert!(detail.contains("unknown command `dance`"), "{detail}");
    assert_eq!(result("c-late").1, AckResult::Expired);
    let (device, outcome, _) = result("c-sensor");
    assert_eq!((device, outcome), (sensor.clone(), AckResult::Rejected));
    let (_, outcome, detail) = result("c-bad");
    assert_eq!(outcome, AckResult::Rejected);
    assert!(detail.contains("name"), "{detail}");

    stop_tx.send(()).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("run stopped")
        .unwrap()
        .unwrap();
    assert_eq!(summary.commands, 4, "the undecodable one is not counted");
    assert!(summary.messages_acked > 0);
    assert_eq!(summary.messages_acked, summary.messages_generated);
    assert_eq!(summary.messages_unacked, 0);

    // Persistent session: a command sent while the device is away is
    // delivered when it comes back.
    publish(
        port,
        &commands,
        &command("c-queued", "turn_on", json!({}), 60_000),
        false,
    );
    let again = SimConfig {
        messages_per_device: Some(1),
        ..config
    };
    let summary = tokio::time::timeout(
        Duration::from_secs(30),
        run(again, std::future::pending::<()>()),
    )
    .await
    .expect("second run finished")
    .unwrap();
    assert_eq!(summary.commands, 1);
    let (topic, payload) = sub
        .next_matching(|t, p| t.ends_with("/commands/ack") && p.contains("c-queued"))
        .await;
    assert_eq!(topic, format!("/tenants/{thermostat}/commands/ack"));
    assert_eq!(
        CommandAck::decode(payload.as_bytes()).unwrap().result,
        AckResult::Done
    );
}

/// A mosquitto with on-disk persistence, so sessions survive a graceful restart.
struct PersistentBroker {
    dir: std::path::PathBuf,
    port: u16,
    child: Option<Guard>,
}

impl PersistentBroker {
    fn new() -> Self {
        let port = free_port();
        let dir =
            std::env::temp_dir().join(format!("warmhouse-sim-test-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\n# As root it would switch to a user that cannot write here.\nuser root\n",
                dir.display()
            ),
        )
        .unwrap();
        Self {
            dir,
            port,
            child: None,
        }
    }

    async fn start(&mut self) {
        let child = Command::new(tool("mosquitto"))
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto");
        self.child = Some(Guard(child));
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("mosquitto did not listen on port {}", self.port);
    }

    /// SIGTERM: mosquitto saves its sessions before it exits.
    fn stop_gracefully(&mut self) {
        if let Some(mut guard) = self.child.take() {
            let pid = guard.0.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let _ = guard.0.wait();
        }
    }

    /// SIGKILL: connections die without a word.
    fn crash(&mut self) {
        self.child = None;
    }
}

impl Drop for PersistentBroker {
    fn drop(&mut self) {
        self.child = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_broker_restarts_without_losing_or_double_counting() {
    let mut broker = PersistentBroker::new();
    broker.start().await;
    let config = SimConfig {
        ports: vec![broker.port],
        homes: 1,
        devices_per_home: 3,
        messages_per_device: Some(100),
        interval_ms: 20,
        inflight: 10,
        record: true,
        run_id: Some("restart".into()),
        ..SimConfig::default()
    };
    let running = tokio::spawn(run(config, std::future::pending::<()>()));

    tokio::time::sleep(Duration::from_millis(400)).await;
    broker.stop_gracefully();
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.start().await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    broker.crash();
    tokio::time::sleep(Duration::from_millis(300)).await;
    broker.start().await;

    let summary = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("run finished")
        .unwrap()
        .unwrap();
    eprintln!("{summary}");
    assert_eq!(summary.messages_generated, 300);
    assert_eq!(summary.messages_acked, 300);
    assert_eq!(summary.messages_unacked, 0);
    assert!(summary.reconnects >= 3, "{summary}");
    let mut seqs: BTreeMap<DeviceId, Vec<u64>> = BTreeMap::new();
    for message in &summary.published {
        seqs.entry(message.device_id.clone())
            .or_default()
            .extend(message.samples.iter().map(|s| s.seq));
    }
    assert_eq!(seqs.len(), 3);
    for (device, mut seqs) in seqs {
        seqs.sort();
        assert_eq!(seqs, (1..=100).collect::<Vec<u64>>(), "{device}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stops_within_the_drain_timeout_when_the_broker_is_gone() {
    let (broker, port) = start_broker().await;
    let config = SimConfig {
        ports: vec![port],
        homes: 1,
        devices_per_home: 2,
        interval_ms: 20,
        drain_timeout_secs: 1,
        run_id: Some("gone".into()),
        ..SimConfig::default()
    };
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(run(config, async {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(broker);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped_at = std::time::Instant::now();
    stop_tx.send(()).unwrap();
    let summary = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("run stopped")
        .unwrap()
        .unwrap();
    assert!(stopped_at.elapsed() < Duration::from_secs(5));
    assert!(summary.messages_acked > 0, "{summary}");
    assert!(summary.messages_unacked > 0, "{summary}");
    assert_eq!(
        summary.messages_acked + summary.messages_unacked,
        summary.messages_generated,
        "{summary}"
    );
}
