//! The broker against MQTT clients nobody here wrote: Eclipse Mosquitto's
//! `mosquitto_pub` and `mosquitto_sub` (Debian package mosquitto-clients),
//! run as child processes against a broker started in-process on free ports.
//! Every client runs with a timeout (`-W`, `-C`, and a tokio timeout around
//! each wait) so a failure cannot hang the suite.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::time::Duration;

use support::{
    expect_packet, free_addr, live_heap_bytes, metrics_text, mqtt_bytes, packet, peak_heap_bytes,
    reading, reset_peak_heap_bytes, start_broker, start_broker_with, until_closed, Version, WAIT,
};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use warmhouse_broker::{start, BrokerConfig, Listener, Prober, RunningBroker};
use warmhouse_contracts::ids::DeviceId;
use warmhouse_contracts::topics::{Channel, DeviceTopic};
use warmhouse_edge_bridge::IngressConfig;

/// Seconds mosquitto_sub runs at most (`-W`), after which it exits anyway.
const SUB_LIFETIME_SECS: &str = "20";

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

/// Polls a rumqttc event loop until `pick` takes an incoming packet;
/// panics, naming `what`, if the connection fails or nothing comes within
/// `WAIT`.
async fn next_incoming<T>(
    events: &mut rumqttc::EventLoop,
    what: &str,
    mut pick: impl FnMut(rumqttc::Packet) -> Option<T>,
) -> T {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(packet)) => {
                    if let Some(taken) = pick(packet) {
                        return taken;
                    }
                }
                Ok(_) => {}
                Err(err) => panic!("{what}: the connection failed: {err}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: nothing in time"))
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
    mosquitto_pub(&args).await;
}

/// Runs `mosquitto_pub` with `args` and waits for it to succeed.
async fn mosquitto_pub(args: &[&str]) {
    let output = tokio::time::timeout(
        WAIT,
        Command::new("mosquitto_pub")
            .args(args)
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

/// MQTT 3.1.1 and 5, section 3.8.4: a message goes out at the lower of
/// its publish QoS and the subscription's (rumqttd used the subscription's:
/// a QoS 0 publish arrived as QoS 2; patch 12).
async fn delivers_at_the_lower_of_publish_and_subscription_qos(version: Version, device: &str) {
    let broker = start_broker().await;
    let commands = topic(device, Channel::Commands);
    let mut subscriber = Subscriber::start(&broker, version, &commands, 2, &["-C", "2"]).await;
    publish(&broker, version, &commands, "at-qos-0", 0, false).await;
    assert_eq!(
        subscriber.next_message().await,
        received(0, false, &commands, "at-qos-0")
    );
    publish(&broker, version, &commands, "at-qos-1", 1, false).await;
    assert_eq!(
        subscriber.next_message().await,
        received(1, false, &commands, "at-qos-1")
    );
    assert!(subscriber.exit_status().await.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt311_delivers_at_the_lower_of_publish_and_subscription_qos() {
    delivers_at_the_lower_of_publish_and_subscription_qos(Version::V311, "dev-v4-minqos").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_delivers_at_the_lower_of_publish_and_subscription_qos() {
    delivers_at_the_lower_of_publish_and_subscription_qos(Version::V5, "dev-v5-minqos").await;
}

/// Keep alive 0 turns MQTT keep alive off (3.1.1 and 5, section 3.1.2.10):
/// the broker accepts it (rumqttd refused it without a CONNACK, upstream
/// issue 943; patch 11) and does not drop the quiet connection. rumqttc
/// sends no PINGREQ with keep alive 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt311_keep_alive_zero_is_accepted() {
    use rumqttc::{AsyncClient, ConnectReturnCode, MqttOptions, Packet, QoS};
    let broker = start_broker().await;
    let telemetry = topic("dev-v4-keepalive0", Channel::Telemetry);
    let mut options =
        MqttOptions::new("dev-v4-keepalive0", "127.0.0.1", broker.mqtt_v4_addr.port());
    options.set_keep_alive(Duration::ZERO);
    let (client, mut events) = AsyncClient::new(options, 10);
    let connack = next_incoming(
        &mut events,
        "a CONNACK for keep alive 0",
        |packet| match packet {
            Packet::ConnAck(ack) => Some(ack),
            _ => None,
        },
    )
    .await;
    assert_eq!(connack.code, ConnectReturnCode::Success);
    // Quiet for longer than any deadline a keep alive of 0 could have made.
    let quiet = tokio::time::timeout(Duration::from_secs(3), events.poll()).await;
    assert!(quiet.is_err(), "the quiet connection ended: {quiet:?}");
    client
        .publish(&telemetry, QoS::AtLeastOnce, false, reading(1))
        .await
        .expect("queue a publish");
    next_incoming(
        &mut events,
        "a PUBACK on the keep-alive-0 connection",
        |packet| matches!(packet, Packet::PubAck(_)).then_some(()),
    )
    .await;
}

/// The same over MQTT 5, in raw packets: rumqttc's MQTT 5 client refuses
/// keep alives under 5 s, and mosquitto_pub any under 5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_keep_alive_zero_is_accepted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let broker = start_broker().await;
    // Answered with a successful CONNACK, not a closed socket.
    let mut socket = raw_connect_with(
        broker.mqtt_v5_addr,
        Version::V5,
        "dev-v5-keepalive0",
        0,
        &[],
    )
    .await;
    // Quiet for longer than any deadline a keep alive of 0 could have made,
    // then a PINGREQ is still answered.
    tokio::time::sleep(Duration::from_secs(3)).await;
    socket.write_all(&[0xC0, 0x00]).await.expect("send PINGREQ");
    let mut pingresp = [0u8; 2];
    tokio::time::timeout(WAIT, socket.read_exact(&mut pingresp))
        .await
        .expect("a PINGRESP in time")
        .expect("a PINGRESP on the keep-alive-0 connection");
    assert_eq!(pingresp, [0xD0, 0x00]);
}

/// Connects with raw packets (no client library lets a caller send a topic
/// MQTT forbids) and returns the socket after a successful CONNACK.
async fn raw_connect(
    broker: &RunningBroker,
    version: Version,
    client_id: &str,
) -> tokio::net::TcpStream {
    let addr = match version {
        Version::V311 => broker.mqtt_v4_addr,
        Version::V5 => broker.mqtt_v5_addr,
    };
    raw_connect_to(addr, version, client_id).await
}

async fn raw_connect_to(
    addr: SocketAddr,
    version: Version,
    client_id: &str,
) -> tokio::net::TcpStream {
    raw_connect_with(addr, version, client_id, 30, &[]).await
}

/// The same with a keep alive and, on MQTT 5, CONNECT properties (short).
async fn raw_connect_with(
    addr: SocketAddr,
    version: Version,
    client_id: &str,
    keep_alive: u16,
    v5_properties: &[u8],
) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut body = mqtt_bytes(b"MQTT");
    let [keep_alive_msb, keep_alive_lsb] = keep_alive.to_be_bytes();
    match version {
        Version::V311 => body.extend_from_slice(&[4, 0x02, keep_alive_msb, keep_alive_lsb]),
        Version::V5 => {
            body.extend_from_slice(&[5, 0x02, keep_alive_msb, keep_alive_lsb]);
            body.push(u8::try_from(v5_properties.len()).expect("short CONNECT properties"));
            body.extend_from_slice(v5_properties);
        }
    }
    body.extend_from_slice(&mqtt_bytes(client_id.as_bytes()));
    socket
        .write_all(&packet(0x10, &body))
        .await
        .expect("send CONNECT");
    let mut header = [0u8; 2];
    tokio::time::timeout(WAIT, socket.read_exact(&mut header))
        .await
        .expect("CONNACK in time")
        .expect("CONNACK");
    assert_eq!(header[0], 0x20, "CONNACK expected: {header:?}");
    let mut rest = vec![0u8; usize::from(header[1])];
    socket.read_exact(&mut rest).await.expect("CONNACK body");
    assert_eq!(rest[1], 0x00, "CONNACK refused: {rest:?}");
    socket
}

/// A PUBLISH topic with a wildcard, U+0000 or nothing in it breaks MQTT
/// (3.3.2-2, 1.5.3-2, 4.7.3-1): the broker closes the connection without
/// a PUBACK (MQTT 5: after DISCONNECT 0x90, Topic Name invalid) and routes
/// nothing (rumqttd acknowledged and routed them; patch 13).
async fn refuses_invalid_publish_topics(version: Version) {
    use tokio::io::AsyncWriteExt;
    let broker = start_broker().await;
    let mut everything = Subscriber::start(&broker, version, "#", 1, &[]).await;
    for topic in [
        "/tenants/dev-bad/+",
        "/tenants/#",
        "",
        "/tenants/dev-bad/a\0b",
    ] {
        let mut socket = raw_connect(&broker, version, "dev-bad-topics").await;
        let mut body = mqtt_bytes(topic.as_bytes());
        body.extend_from_slice(&[0x00, 0x01]);
        if matches!(version, Version::V5) {
            body.push(0x00);
        }
        body.extend_from_slice(b"payload");
        socket
            .write_all(&packet(0x32, &body))
            .await
            .expect("send PUBLISH");
        let answer = until_closed(&mut socket, "the refused connection").await;
        match version {
            Version::V311 => assert_eq!(answer, Vec::<u8>::new(), "topic {topic:?}"),
            Version::V5 => {
                assert_eq!(
                    answer.first(),
                    Some(&0xE0),
                    "DISCONNECT for {topic:?}: {answer:?}"
                );
                assert_eq!(
                    answer.get(2),
                    Some(&0x90),
                    "reason code for {topic:?}: {answer:?}"
                );
            }
        }
    }
    assert_eq!(
        everything.messages_within(Duration::from_secs(1)).await,
        Vec::<String>::new(),
        "a publish with an invalid topic was routed"
    );
    // A valid publish on a new connection still goes through.
    publish(
        &broker,
        version,
        "/tenants/dev-bad/commands",
        "valid",
        1,
        false,
    )
    .await;
    assert_eq!(
        everything.next_message().await,
        received(1, false, "/tenants/dev-bad/commands", "valid")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt311_refuses_invalid_publish_topics() {
    refuses_invalid_publish_topics(Version::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_refuses_invalid_publish_topics() {
    refuses_invalid_publish_topics(Version::V5).await;
}

/// The topic, topic alias and payload of an MQTT 5 QoS 0 PUBLISH body.
fn parse_v5_qos0_publish(body: &[u8]) -> (String, Option<u16>, String) {
    let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let topic = String::from_utf8_lossy(&body[2..2 + topic_len]).into_owned();
    let mut at = 2 + topic_len;
    let (mut properties_len, mut shift) = (0usize, 0);
    loop {
        let byte = body[at];
        at += 1;
        properties_len |= usize::from(byte & 0x7F) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let properties = &body[at..at + properties_len];
    let mut alias = None;
    let mut p = 0;
    while p < properties.len() {
        let id = properties[p];
        p += 1;
        match id {
            0x23 => {
                alias = Some(u16::from_be_bytes([properties[p], properties[p + 1]]));
                p += 2;
            }
            0x01 => p += 1,
            0x02 => p += 4,
            0x0B => {
                while properties[p] & 0x80 != 0 {
                    p += 1;
                }
                p += 1;
            }
            other => panic!("property {other:#x} not expected here"),
        }
    }
    let payload = String::from_utf8_lossy(&body[at + properties_len..]).into_owned();
    (topic, alias, payload)
}

/// MQTT 5 server-assigned topic aliases stand for a topic name: on a
/// wildcard subscription every message keeps its own topic (rumqttd keyed
/// aliases by filter, so the second topic went out under the first one's
/// alias; patch 14). Read in raw packets: libmosquitto 2.0.11 cannot
/// receive an aliased PUBLISH (it takes the empty topic for a protocol
/// error) and rumqttc 0.25 hands the application the empty topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_topic_aliases_stand_for_topics_not_filters() {
    use tokio::io::AsyncWriteExt;
    let broker = start_broker().await;
    // CONNECT with Topic Alias Maximum 10.
    let mut socket = raw_connect_with(
        broker.mqtt_v5_addr,
        Version::V5,
        "alias-subscriber",
        30,
        &[0x22, 0x00, 10],
    )
    .await;
    // SUBSCRIBE at QoS 0, so no acknowledgements are due.
    let mut subscribe = vec![0x00, 0x01, 0x00];
    subscribe.extend_from_slice(&mqtt_bytes(b"/tenants/dev-alias/#"));
    subscribe.push(0x00);
    socket
        .write_all(&packet(0x82, &subscribe))
        .await
        .expect("SUBSCRIBE");
    let (suback, _) = expect_packet(&mut socket).await;
    assert_eq!(suback, 0x90);

    let [first, second] = ["/tenants/dev-alias/a", "/tenants/dev-alias/b"];
    let messages = [(first, "1"), (second, "2"), (first, "3"), (second, "4")];
    for (topic, payload) in messages {
        publish(&broker, Version::V5, topic, payload, 1, false).await;
    }
    let mut aliases = std::collections::HashMap::new();
    let mut aliased = 0;
    for (topic, payload) in messages {
        let (kind, body) = tokio::time::timeout(WAIT, expect_packet(&mut socket))
            .await
            .expect("a PUBLISH in time");
        assert_eq!(kind & 0xF0, 0x30, "PUBLISH expected");
        let (sent_topic, alias, sent_payload) = parse_v5_qos0_publish(&body);
        // As a client must read it (MQTT 5, 3.3.2.3.4).
        let resolved = match (sent_topic.is_empty(), alias) {
            (false, Some(alias)) => {
                aliases.insert(alias, sent_topic.clone());
                sent_topic
            }
            (false, None) => sent_topic,
            (true, Some(alias)) => {
                aliased += 1;
                aliases
                    .get(&alias)
                    .cloned()
                    .unwrap_or_else(|| panic!("alias {alias} was never set"))
            }
            (true, None) => panic!("a PUBLISH with neither topic nor alias"),
        };
        assert_eq!((resolved.as_str(), sent_payload.as_str()), (topic, payload));
    }
    // The repeated topics went out as aliases, not only with them.
    assert_eq!(aliased, 2, "messages sent by alias alone");
}

/// A topic alias of 0 (or above the broker's 4,096) is a protocol error:
/// the broker says so with DISCONNECT 0x94 before it closes, also on a
/// device topic that goes through the ingress (rumqttd's router answers
/// it; this guards that the publish hook, patch 7, keeps it so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_an_invalid_topic_alias_gets_disconnect_0x94() {
    use tokio::io::AsyncWriteExt;
    let broker = start_broker().await;
    for alias in [0u16, 4097] {
        let mut socket = raw_connect(&broker, Version::V5, "dev-bad-alias").await;
        let mut body = mqtt_bytes(b"/tenants/dev-bad-alias/telemetry");
        body.extend_from_slice(&[0x00, 0x01, 0x03, 0x23]);
        body.extend_from_slice(&alias.to_be_bytes());
        body.extend_from_slice(b"payload");
        socket
            .write_all(&packet(0x32, &body))
            .await
            .expect("send PUBLISH");
        let answer = until_closed(&mut socket, "the refused connection").await;
        assert_eq!(answer.first(), Some(&0xE0), "alias {alias}: {answer:?}");
        assert_eq!(answer.get(2), Some(&0x94), "alias {alias}: {answer:?}");
    }
}

/// A packet over the listener's maximum ends the connection unacknowledged;
/// on MQTT 5 after DISCONNECT 0x95 (rumqttd closed without a word; patch
/// 15). Only the fixed header is sent: the broker refuses on the length.
async fn refuses_oversized_packets(version: Version) {
    use tokio::io::AsyncWriteExt;
    let broker = start_broker().await;
    let mut socket = raw_connect(&broker, version, "dev-oversized").await;
    let too_large = warmhouse_broker::DEFAULT_MAX_PAYLOAD_SIZE + 1;
    let mut header = vec![0x32];
    let mut length = too_large;
    loop {
        let byte = (length % 128) as u8;
        length /= 128;
        header.push(if length > 0 { byte | 0x80 } else { byte });
        if length == 0 {
            break;
        }
    }
    header.extend_from_slice(&mqtt_bytes(b"/tenants/dev-oversized/telemetry"));
    socket.write_all(&header).await.expect("send the header");
    let answer = until_closed(&mut socket, "the refused connection").await;
    match version {
        Version::V311 => assert_eq!(answer, Vec::<u8>::new()),
        Version::V5 => {
            assert_eq!(answer.first(), Some(&0xE0), "{answer:?}");
            assert_eq!(answer.get(2), Some(&0x95), "{answer:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt311_an_oversized_packet_closes_the_connection() {
    refuses_oversized_packets(Version::V311).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_an_oversized_packet_gets_disconnect_0x95() {
    refuses_oversized_packets(Version::V5).await;
}

/// MQTT 5 CONNACK states the broker's Maximum Packet Size (rumqttd did
/// not; patch 15). The client is rumqttc's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_connack_states_the_maximum_packet_size() {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let broker = start_broker().await;
    let options = MqttOptions::new("dev-max-packet", "127.0.0.1", broker.mqtt_v5_addr.port());
    let (_client, mut events) = AsyncClient::new(options, 10);
    let connack = tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::ConnAck(ack)) = events.poll().await.expect("connect") {
                return ack;
            }
        }
    })
    .await
    .expect("CONNACK in time");
    let stated = connack.properties.and_then(|p| p.max_packet_size);
    assert_eq!(
        stated,
        Some(warmhouse_broker::DEFAULT_MAX_PAYLOAD_SIZE as u32)
    );
}

/// A message larger than the subscriber's own Maximum Packet Size is not
/// sent to it (MQTT 5, 3.1.2.11.4): the subscriber stays connected and gets
/// the next message that fits (rumqttd sent it anyway; patch 15).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_a_message_over_the_clients_maximum_packet_size_is_not_sent() {
    let broker = start_broker().await;
    let commands = topic("dev-small-packets", Channel::Commands);
    let mut subscriber = Subscriber::start(
        &broker,
        Version::V5,
        &commands,
        1,
        &["-C", "1", "-D", "connect", "maximum-packet-size", "200"],
    )
    .await;
    let large = "x".repeat(500);
    publish(&broker, Version::V5, &commands, &large, 1, false).await;
    publish(&broker, Version::V5, &commands, "small", 1, false).await;
    assert_eq!(
        subscriber.next_message().await,
        received(1, false, &commands, "small"),
        "everything the subscriber printed: {:#?}",
        subscriber.seen
    );
    assert!(subscriber.exit_status().await.success());
}

/// MQTT 5 No Local (3.8.3.1): a subscription with it set does not get the
/// messages its own connection publishes, and still gets everyone else's
/// (rumqttd ignored the option; patch 16). The client is rumqttc's, which
/// publishes and subscribes on one connection; the other publisher is
/// mosquitto_pub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_no_local_keeps_a_clients_own_messages_from_it() {
    use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let broker = start_broker().await;
    let commands = topic("dev-no-local", Channel::Commands);
    let options = MqttOptions::new("dev-no-local", "127.0.0.1", broker.mqtt_v5_addr.port());
    let (client, mut events) = AsyncClient::new(options, 10);
    let mut filter = Filter::new(commands.clone(), QoS::AtLeastOnce);
    filter.nolocal = true;
    client
        .subscribe_many([filter])
        .await
        .expect("queue SUBSCRIBE");
    let (tx, mut payloads) = mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    let mut subscribed_tx = Some(subscribed_tx);
    let task = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = subscribed_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let _ = tx.send(String::from_utf8_lossy(&publish.payload).into_owned());
                }
                Ok(_) => {}
                Err(err) => {
                    let _ = tx.send(format!("connection failed: {err}"));
                    return;
                }
            }
        }
    });
    tokio::time::timeout(WAIT, subscribed)
        .await
        .expect("SUBACK in time")
        .expect("SUBACK");
    client
        .publish(&commands, QoS::AtLeastOnce, false, "own")
        .await
        .expect("queue the own publish");
    publish(&broker, Version::V5, &commands, "other", 1, false).await;
    let first = tokio::time::timeout(WAIT, payloads.recv())
        .await
        .expect("a message in time")
        .expect("the subscriber runs");
    assert_eq!(first, "other", "the client got its own message back");
    let more = tokio::time::timeout(Duration::from_secs(1), payloads.recv()).await;
    assert!(more.is_err(), "another message arrived: {more:?}");
    task.abort();
}

/// An MQTT 5 session of rumqttc's client: connects, optionally
/// subscribes at QoS 1, and hands back whether the broker had a session and
/// the connection.
async fn v5_session(
    broker: &RunningBroker,
    client_id: &str,
    clean_start: bool,
    session_expiry: Option<u32>,
    subscribe: Option<&str>,
) -> (bool, rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop) {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let mut options = MqttOptions::new(client_id, "127.0.0.1", broker.mqtt_v5_addr.port());
    options
        .set_clean_start(clean_start)
        .set_session_expiry_interval(session_expiry);
    let (client, mut events) = AsyncClient::new(options, 10);
    if let Some(filter) = subscribe {
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("queue SUBSCRIBE");
    }
    let session_present = tokio::time::timeout(WAIT, async {
        let mut session_present = None;
        loop {
            match events.poll().await.expect("the session's connection") {
                Event::Incoming(Packet::ConnAck(ack)) => {
                    session_present = Some(ack.session_present);
                    if subscribe.is_none() {
                        break;
                    }
                }
                Event::Incoming(Packet::SubAck(_)) => break,
                _ => {}
            }
        }
        session_present.expect("CONNACK before SUBACK")
    })
    .await
    .expect("CONNACK (and SUBACK) in time");
    (session_present, client, events)
}

/// MQTT 5 (3.1.2.11.2): the Session Expiry Interval, not Clean Start,
/// decides whether a session outlives its connection, and it ends when the
/// interval has passed (rumqttd kept every Clean Start 0 session forever and
/// no Clean Start 1 session at all; patch 17).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_the_session_expiry_interval_decides_what_is_kept() {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::Event;
    let broker = start_broker().await;

    // Clean Start with an expiry: kept, and what came meanwhile is delivered.
    let commands = topic("dev-expiry-kept", Channel::Commands);
    let (_, client, events) =
        v5_session(&broker, "dev-expiry-kept", true, Some(60), Some(&commands)).await;
    drop((client, events));
    tokio::time::sleep(Duration::from_millis(300)).await;
    publish(&broker, Version::V5, &commands, "while away", 1, false).await;
    let (present, _client, mut events) =
        v5_session(&broker, "dev-expiry-kept", false, Some(60), None).await;
    assert!(present, "a Clean Start session with an expiry was not kept");
    let payload = tokio::time::timeout(WAIT, async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = events.poll().await.expect("session") {
                return String::from_utf8_lossy(&p.payload).into_owned();
            }
        }
    })
    .await
    .expect("the message sent while away");
    assert_eq!(payload, "while away");

    // No expiry (0): the session ends with the connection.
    let (_, client, events) = v5_session(
        &broker,
        "dev-expiry-none",
        false,
        None,
        Some("/tenants/dev-expiry-none/commands"),
    )
    .await;
    drop((client, events));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (present, _, _) = v5_session(&broker, "dev-expiry-none", false, None, None).await;
    assert!(
        !present,
        "a session without an expiry outlived its connection"
    );

    // Expiry 1 s: gone 2.5 s later.
    let (_, client, events) = v5_session(
        &broker,
        "dev-expiry-short",
        false,
        Some(1),
        Some("/tenants/dev-expiry-short/commands"),
    )
    .await;
    drop((client, events));
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (present, _, _) = v5_session(&broker, "dev-expiry-short", false, Some(1), None).await;
    assert!(!present, "a session outlived its expiry interval");
}

/// A stored message must not keep the read buffer of the connection it
/// came on alive: 2,000 clients each publishing one byte to a new topic
/// under one `#` subscriber grew rumqttd by about 24 MB (12 KB a message;
/// patch 18). Each client is a raw connection, as `mosquitto_pub` would
/// make, so every message comes from a read buffer of its own. Measured as
/// live heap bytes (not RSS, which the allocator's caching blurs), after a
/// first round that makes what is made once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_messages_do_not_pin_their_connections_read_buffers() {
    use tokio::io::AsyncWriteExt;
    const CLIENTS: usize = 2000;
    let broker = start_broker().await;
    let mut everything = Subscriber::start(&broker, Version::V311, "#", 0, &[]).await;
    let addr = broker.mqtt_v4_addr;
    // 20 clients at a time, each connecting, publishing and disconnecting.
    let publish_from_new_clients = |from: usize, to: usize| async move {
        let mut workers = tokio::task::JoinSet::new();
        for worker in 0..20 {
            workers.spawn(async move {
                for i in (from + worker..to).step_by(20) {
                    let mut socket =
                        raw_connect_to(addr, Version::V311, &format!("dev-mem-{i}")).await;
                    let mut body = mqtt_bytes(format!("/tenants/dev-mem/t{i}").as_bytes());
                    body.push(b'x');
                    socket
                        .write_all(&packet(0x30, &body))
                        .await
                        .expect("PUBLISH");
                    socket.write_all(&[0xE0, 0x00]).await.expect("DISCONNECT");
                    let _ = until_closed(&mut socket, "the refused connection").await;
                }
            });
        }
        while let Some(done) = workers.join_next().await {
            done.expect("a publishing client");
        }
    };
    // A first round warms up what is allocated once (runtime, buffers).
    publish_from_new_clients(0, CLIENTS).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = live_heap_bytes();
    publish_from_new_clients(CLIENTS, 2 * CLIENTS).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = live_heap_bytes() - before;
    let delivered = everything
        .messages_within(Duration::from_secs(1))
        .await
        .len();
    assert!(delivered > 0, "the # subscriber got nothing");
    assert!(
        grown < 4 << 20,
        "{CLIENTS} one-byte messages grew the heap by {} KB",
        grown >> 10
    );
}

/// What one idle device connection (connected, subscribed to its command
/// topic, one reading published) costs the broker in live heap. Upstream
/// allocated every buffer at its bound at connect (the router's incoming
/// and outgoing queues, the link's read and write buffers, 1,024 messages
/// for each filter's first log segment): about 120 KB a device; patch 26
/// lets them grow with use (about 20 KB), and patch 32 keeps the
/// connection's task to the size of its steady state and holds no room for
/// acknowledgements while none is owed (about 14 KB). The
/// connections are raw sockets, so the test's own side adds next to
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_device_connection_costs_little_heap() {
    use tokio::io::AsyncWriteExt;
    const DEVICES: usize = 500;
    let broker = start_broker().await;
    let addr = broker.mqtt_v4_addr;
    let connect_device = |i: usize| async move {
        let device = format!("dev-idle-{i}");
        let mut socket = raw_connect_to(addr, Version::V311, &device).await;
        let mut subscribe = vec![0x00, 0x01];
        subscribe.extend(mqtt_bytes(topic(&device, Channel::Commands).as_bytes()));
        subscribe.push(1);
        socket
            .write_all(&packet(0x82, &subscribe))
            .await
            .expect("SUBSCRIBE");
        let (suback, _) = expect_packet(&mut socket).await;
        assert_eq!(suback, 0x90, "{device} got no SUBACK");
        let mut publish = mqtt_bytes(topic(&device, Channel::Telemetry).as_bytes());
        publish.extend([0x00, 0x01]);
        publish.extend(reading(1).as_bytes());
        socket
            .write_all(&packet(0x32, &publish))
            .await
            .expect("PUBLISH");
        let (puback, _) = expect_packet(&mut socket).await;
        assert_eq!(puback, 0x40, "{device} got no PUBACK");
        socket
    };
    // Warm up what is made once (runtimes, pools, the ingress's producer).
    let mut warm = Vec::new();
    for i in 0..50 {
        warm.push(connect_device(i).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = live_heap_bytes();
    let mut held = Vec::new();
    for i in 50..50 + DEVICES {
        held.push(connect_device(i).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let per_device = (live_heap_bytes() - before) / DEVICES as i64;
    assert!(
        per_device < 15 << 10,
        "an idle device connection holds {} KB of heap",
        per_device >> 10
    );
    eprintln!("an idle device connection holds {per_device} bytes of heap");
    drop(held);
}

/// The self-probe runs every few seconds on every listener of every
/// replica: each round trip must stay small. rumqttc's MQTT 5 client sized
/// its in-flight table for 65,535 messages by default, about 14 MB a probe,
/// which raised an idle broker's RSS from about 18 MB to 46 MB.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_self_probe_round_trip_costs_little_heap() {
    let broker = start_broker_with(|config| BrokerConfig {
        // Only the probes this test makes.
        probe_interval_secs: 3600,
        ..config
    })
    .await;
    for (listener, addr) in [
        (Listener::V4, broker.mqtt_v4_addr),
        (Listener::V5, broker.mqtt_v5_addr),
    ] {
        let mut prober = Prober::new(listener, addr);
        // Warm up what is made once (the client's TLS roots, runtimes).
        prober.probe(WAIT).await.expect("the probe passes");
        let before = live_heap_bytes();
        reset_peak_heap_bytes();
        prober.probe(WAIT).await.expect("the probe passes");
        let most = peak_heap_bytes() - before;
        assert!(
            most < 1 << 20,
            "a {} probe had {} KB of heap at once",
            listener.name(),
            most >> 10
        );
    }
}

/// A rumqttc MQTT 3.1.1 client with `client_id` subscribes to `filter`
/// at QoS 1 and, once it has its SUBACK, drops its connection: with
/// `clean_session` its session ends, without it is kept. (It sends no
/// DISCONNECT: before rumqttd patch 25 one could drop the next client to
/// take the same connection id.)
async fn subscribe_and_leave(port: u16, client_id: &str, filter: &str, clean_session: bool) {
    use rumqttc::{AsyncClient, MqttOptions, Packet, QoS};
    let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
    options.set_clean_session(clean_session);
    let (client, mut events) = AsyncClient::new(options, 10);
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    next_incoming(&mut events, &format!("{client_id}: SUBACK"), |packet| {
        matches!(packet, Packet::SubAck(_)).then_some(())
    })
    .await;
}

/// A filter's log (about 8.7 KB) is freed when no connection or kept
/// session subscribes to it any more (rumqttd patch 20; rumqttd kept every
/// filter ever subscribed, so with one command filter per device every
/// replica grew with every device it ever saw). Freed filters can be
/// subscribed again, and a kept session's filter is not freed. Memory is
/// counted as live heap bytes, after a first round that makes what is made
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_are_freed_when_nothing_uses_them() {
    use rumqttc::{AsyncClient, MqttOptions, Packet};
    const CLIENTS: usize = 2000;
    let broker = start_broker().await;
    let port = broker.mqtt_v4_addr.port();

    // A kept session (MQTT 3.1.1, Clean Session 0) leaves its filter behind.
    let kept = topic("dev-free-kept", Channel::Commands);
    subscribe_and_leave(port, "dev-free-kept", &kept, false).await;

    // A filter freed when its only subscriber left is subscribed again while
    // another filter has just been made (and may take the freed one's
    // place): each subscriber gets its own messages only.
    let first = topic("dev-free-again", Channel::Commands);
    let second = topic("dev-free-other", Channel::Commands);
    let mut once = Subscriber::start(&broker, Version::V311, &first, 1, &["-C", "1"]).await;
    publish(&broker, Version::V311, &first, "before", 1, false).await;
    assert_eq!(
        once.next_message().await,
        received(1, false, &first, "before")
    );
    assert!(once.exit_status().await.success());
    let mut other = Subscriber::start(&broker, Version::V311, &second, 1, &["-C", "1"]).await;
    let mut again = Subscriber::start(&broker, Version::V311, &first, 1, &["-C", "1"]).await;
    publish(&broker, Version::V311, &first, "again", 1, false).await;
    publish(&broker, Version::V311, &second, "other", 1, false).await;
    assert_eq!(
        again.next_message().await,
        received(1, false, &first, "again")
    );
    assert_eq!(
        other.next_message().await,
        received(1, false, &second, "other")
    );
    assert!(again.exit_status().await.success());
    assert!(other.exit_status().await.success());

    // CLIENTS clients, 20 at a time, each subscribing to a filter of its own
    // and leaving (clean session).
    let churn = |round: usize| async move {
        let mut workers = tokio::task::JoinSet::new();
        for worker in 0..20 {
            workers.spawn(async move {
                for i in (worker..CLIENTS).step_by(20) {
                    let device = format!("dev-free-{round}-{i}");
                    let filter = topic(&device, Channel::Commands);
                    subscribe_and_leave(port, &device, &filter, true).await;
                }
            });
        }
        while let Some(done) = workers.join_next().await {
            done.expect("a subscribing client");
        }
    };
    churn(0).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = live_heap_bytes();
    churn(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let grown = live_heap_bytes() - before;

    // The kept session's filter survived all that: what was published while
    // its client was away reaches it when it comes back.
    publish(&broker, Version::V311, &kept, "while away", 1, false).await;
    let mut options = MqttOptions::new("dev-free-kept", "127.0.0.1", port);
    options.set_clean_session(false);
    let (_client, mut events) = AsyncClient::new(options, 10);
    let payload = next_incoming(
        &mut events,
        "the message published while the kept session was away",
        |packet| match packet {
            Packet::Publish(p) => Some(String::from_utf8_lossy(&p.payload).into_owned()),
            _ => None,
        },
    )
    .await;
    assert_eq!(payload, "while away");

    eprintln!("{CLIENTS} clients with a filter each grew the heap by {grown} bytes");
    assert!(
        grown < 1 << 20,
        "{CLIENTS} clients, each subscribing to a filter of its own and leaving, grew the heap by {} KB",
        grown >> 10
    );
}

/// A device connection gets what a device needs and no more (rumqttd
/// patch 19): more subscriptions than allowed, or a topic or filter that is
/// too long or too deep, drop it (MQTT 5: DISCONNECT 0x97, 0x90, 0x8F), and
/// the broker counts it; a connection within the limits is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_device_connections_are_held_to_their_limits() {
    use tokio::io::AsyncWriteExt;
    let broker = start_broker_with(|config| BrokerConfig {
        device_max_subscriptions: 2,
        device_max_topic_length: 64,
        device_max_topic_levels: 6,
        ..config
    })
    .await;
    let subscribe = |filters: &[&str]| {
        let mut body = vec![0x00, 0x01, 0x00];
        for filter in filters {
            body.extend_from_slice(&mqtt_bytes(filter.as_bytes()));
            body.push(0x01);
        }
        packet(0x82, &body)
    };
    let publish_to = |topic: &str| {
        let mut body = mqtt_bytes(topic.as_bytes());
        body.extend_from_slice(&[0x00, 0x01, 0x00]);
        body.extend_from_slice(b"x");
        packet(0x32, &body)
    };
    let long = format!("/tenants/dev-limits/{}", "x".repeat(60));
    let cases: [(&str, Vec<u8>, u8); 4] = [
        (
            "three subscriptions",
            subscribe(&[
                "/tenants/dev-limits/a",
                "/tenants/dev-limits/b",
                "/tenants/dev-limits/c",
            ]),
            0x97,
        ),
        ("a long filter", subscribe(&[&long]), 0x8F),
        (
            "a deep filter",
            subscribe(&["/tenants/dev-limits/a/b/c/d"]),
            0x8F,
        ),
        ("a long topic", publish_to(&long), 0x90),
    ];
    for (what, packet, reason) in cases {
        let mut socket = raw_connect(&broker, Version::V5, "dev-limits").await;
        socket.write_all(&packet).await.expect("send");
        let answer = until_closed(&mut socket, "the refused connection").await;
        let disconnect = answer.windows(3).find(|w| w[0] == 0xE0);
        assert_eq!(
            disconnect.map(|w| w[2]),
            Some(reason),
            "{what}: the broker sent {answer:?}"
        );
    }
    // Within the limits: two subscriptions are granted.
    let mut within = Subscriber::start(
        &broker,
        Version::V5,
        "/tenants/dev-limits/commands",
        1,
        &["-t", "/tenants/dev-limits/status", "-C", "1"],
    )
    .await;
    publish(
        &broker,
        Version::V5,
        "/tenants/dev-limits/status",
        "fine",
        1,
        false,
    )
    .await;
    assert_eq!(
        within.next_message().await,
        received(1, false, "/tenants/dev-limits/status", "fine")
    );
    let metrics = metrics_text(&broker).await;
    for (limit, count) in [
        ("subscriptions", 1),
        ("topic_length", 2),
        ("topic_levels", 1),
    ] {
        let sample =
            format!(r#"warmhouse_broker_client_limits_exceeded_total{{limit="{limit}"}} {count}"#);
        assert!(metrics.contains(&sample), "{sample} missing from {metrics}");
    }
}

/// A raw QoS 2 PUBLISH of `payload` to `topic` with packet id `pkid`.
fn raw_qos2_publish(version: Version, topic: &str, pkid: u16, payload: &str) -> Vec<u8> {
    let mut body = mqtt_bytes(topic.as_bytes());
    body.extend_from_slice(&pkid.to_be_bytes());
    if matches!(version, Version::V5) {
        body.push(0x00);
    }
    body.extend_from_slice(payload.as_bytes());
    packet(0x34, &body)
}

/// Sends QoS 2 PUBLISHes with packet ids `pkids` one at a time, each
/// answered by its PUBREC, and sends no PUBREL: each QoS 2 flow stays
/// unfinished (no PUBCOMP), whatever the broker's Kafka does.
async fn unfinished_qos2_flows(
    socket: &mut tokio::net::TcpStream,
    version: Version,
    topic: &str,
    pkids: std::ops::RangeInclusive<u16>,
) {
    use tokio::io::AsyncWriteExt;
    for pkid in pkids {
        let packet = raw_qos2_publish(version, topic, pkid, &reading(u64::from(pkid)));
        socket.write_all(&packet).await.expect("send PUBLISH");
        let (first, body) = tokio::time::timeout(WAIT, expect_packet(socket))
            .await
            .expect("PUBREC in time");
        assert_eq!(first, 0x50, "PUBREC expected for {pkid}: {body:?}");
        assert_eq!(body[..2], pkid.to_be_bytes(), "PUBREC for {pkid}");
    }
}

/// A device connection may have `WARMHOUSE_BROKER_DEVICE_MAX_INFLIGHT` QoS 1
/// and 2 publishes unacknowledged (rumqttd patch 24). MQTT 5: the CONNACK
/// states it as Receive Maximum, a client that keeps to it (rumqttc,
/// publishing as fast as it can) is served, and one that sends more than
/// that without a PUBACK or PUBCOMP gets DISCONNECT 0x93, counted. MQTT
/// 3.1.1 cannot be told: the broker only stops reading at the limit, and
/// QoS 2 flows waiting for the client's PUBREL do not stop it (it could
/// never read the PUBREL). QoS 2 flows without PUBREL make the unacknowledged
/// count exact, whatever Kafka's speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_connections_are_held_to_their_inflight_limit() {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    use tokio::io::AsyncWriteExt;
    const LIMIT: u16 = 4;
    const MESSAGES: usize = 40;
    let broker = start_broker_with(|config| BrokerConfig {
        device_max_inflight: LIMIT,
        ..config
    })
    .await;

    // rumqttc (100 in flight by default) takes the CONNACK's Receive Maximum
    // and gets every publish acknowledged.
    let telemetry = topic("dev-inflight-ok", Channel::Telemetry);
    let options = MqttOptions::new("dev-inflight-ok", "127.0.0.1", broker.mqtt_v5_addr.port());
    let (client, mut events) = AsyncClient::new(options, 10);
    let publisher = tokio::spawn(async move {
        for seq in 0..MESSAGES {
            client
                .publish(&telemetry, QoS::AtLeastOnce, false, reading(seq as u64))
                .await
                .expect("queue a publish");
        }
        client
    });
    let (receive_maximum, acked) = tokio::time::timeout(WAIT, async {
        let (mut receive_maximum, mut acked) = (None, 0);
        while acked < MESSAGES {
            match events.poll().await.expect("the publisher's connection") {
                Event::Incoming(Packet::ConnAck(ack)) => {
                    receive_maximum = Some(ack.properties.and_then(|p| p.receive_max));
                }
                Event::Incoming(Packet::PubAck(_)) => acked += 1,
                _ => {}
            }
        }
        (receive_maximum, acked)
    })
    .await
    .expect("every publish acknowledged in time");
    assert_eq!(
        receive_maximum,
        Some(Some(LIMIT)),
        "CONNACK Receive Maximum"
    );
    assert_eq!(acked, MESSAGES);
    drop(publisher.await.expect("the publisher"));

    // MQTT 5: one more than the limit unacknowledged.
    let v5_topic = topic("dev-inflight-v5", Channel::Telemetry);
    let mut socket = raw_connect(&broker, Version::V5, "dev-inflight-v5").await;
    unfinished_qos2_flows(&mut socket, Version::V5, &v5_topic, 1..=LIMIT).await;
    let over = raw_qos2_publish(Version::V5, &v5_topic, LIMIT + 1, &reading(99));
    socket.write_all(&over).await.expect("send PUBLISH");
    let answer = until_closed(&mut socket, "the refused connection").await;
    assert_eq!(
        answer.first(),
        Some(&0xE0),
        "DISCONNECT expected, the broker sent {answer:?}"
    );
    assert_eq!(
        answer.get(2),
        Some(&0x93),
        "Receive Maximum exceeded: {answer:?}"
    );

    // MQTT 3.1.1: QoS 2 flows waiting for PUBREL do not stop the reading,
    // and nothing is refused; PUBREL gets PUBCOMP.
    let v4_topic = topic("dev-inflight-v4", Channel::Telemetry);
    let mut socket = raw_connect(&broker, Version::V311, "dev-inflight-v4").await;
    unfinished_qos2_flows(&mut socket, Version::V311, &v4_topic, 1..=LIMIT + 2).await;
    for pkid in 1..=LIMIT + 2 {
        let [msb, lsb] = pkid.to_be_bytes();
        socket
            .write_all(&[0x62, 0x02, msb, lsb])
            .await
            .expect("send PUBREL");
        let (first, body) = tokio::time::timeout(WAIT, expect_packet(&mut socket))
            .await
            .expect("PUBCOMP in time");
        assert_eq!(
            (first, &body[..2]),
            (0x70, &pkid.to_be_bytes()[..]),
            "PUBCOMP"
        );
    }

    let metrics = metrics_text(&broker).await;
    let sample = r#"warmhouse_broker_client_limits_exceeded_total{limit="inflight"} 1"#;
    assert!(metrics.contains(sample), "{sample} missing from {metrics}");
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

/// MQTT 5 Message Expiry on a retained message (patch 21): it reaches every
/// subscriber while its interval runs, however many read it, and nobody
/// after. Upstream took the whole time since publishing off the stored
/// interval at every read, so the second subscriber within the interval
/// found it expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_a_retained_message_lives_its_expiry_interval_for_every_subscriber() {
    let broker = start_broker().await;
    let status = topic("dev-expiring", Channel::Status);
    let port = Version::V5.port(&broker).to_string();
    mosquitto_pub(&[
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-V",
        "mqttv5",
        "-t",
        &status,
        "-m",
        r#"{"online":true}"#,
        "-q",
        "1",
        "-r",
        "-D",
        "publish",
        "message-expiry-interval",
        "4",
    ])
    .await;
    let published = std::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for reader in 1..=3 {
        let mut later = Subscriber::start(&broker, Version::V5, &status, 1, &["-C", "1"]).await;
        assert_eq!(
            later.next_message().await,
            received(1, true, &status, r#"{"online":true}"#),
            "subscriber {reader}, {:?} after publishing",
            published.elapsed()
        );
    }
    // Past its interval it is gone.
    tokio::time::sleep(
        Duration::from_secs(4).saturating_sub(published.elapsed()) + Duration::from_secs(1),
    )
    .await;
    let mut late = Subscriber::start(&broker, Version::V5, &status, 1, &[]).await;
    assert_eq!(
        late.messages_within(Duration::from_secs(1)).await,
        Vec::<String>::new()
    );
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

/// Runs `mosquitto_sub` with client id `client_id` for at most `seconds`.
async fn mosquitto_sub_for(port: &str, client_id: &str, seconds: &str) -> std::process::ExitStatus {
    tokio::time::timeout(
        WAIT + Duration::from_secs(20),
        Command::new("mosquitto_sub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                port,
                "-i",
                client_id,
                "-t",
                "/tenants/dev-1/commands",
                "-W",
                seconds,
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status(),
    )
    .await
    .expect("mosquitto_sub gives up in time")
    .expect("mosquitto_sub runs")
}

/// rumqttd 0.20 bug (upstream issue #1062), fixed by patch 23: a client id
/// the router refuses (here one containing '/') left a dead entry in the
/// listener's will-handler map; the second connect with that id panicked
/// while holding the map's mutex, and every later connection on that
/// listener panicked on the poisoned mutex. Now the listener serves on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_the_router_refuses_does_not_wedge_the_listener() {
    let broker = start_broker_with(|config| BrokerConfig {
        probe_interval_secs: 1,
        probe_failure_limit: 2,
        ..config
    })
    .await;
    let port = broker.mqtt_v4_addr.port().to_string();
    for _ in 0..3 {
        // It never gets a CONNACK; -W bounds its reconnect attempts.
        let status = mosquitto_sub_for(&port, "dev/1", "2").await;
        assert!(!status.success(), "rumqttd accepted client id dev/1");
    }
    publish(
        &broker,
        Version::V311,
        &topic("dev-ok", Channel::Telemetry),
        &reading(1),
        1,
        false,
    )
    .await;
    // Several probe rounds later the listener still passes them.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let ready = reqwest::get(format!("http://{}/readyz", broker.admin_addr))
        .await
        .expect("GET /readyz");
    assert_eq!(ready.status(), 200);
    publish(
        &broker,
        Version::V311,
        &topic("dev-ok", Channel::Telemetry),
        &reading(2),
        1,
        false,
    )
    .await;
}

/// A broker whose router takes 4 connections, probed every second and
/// given up after 2 probes in a row that count.
async fn start_small_broker_probed_every_second() -> support::TestBroker {
    start_broker_with(|config| BrokerConfig {
        probe_interval_secs: 1,
        probe_failure_limit: 2,
        max_connections: 4,
        ..config
    })
    .await
}

/// A listener whose probe cannot get in (here: the router holds as many
/// connections as it may) turns /readyz 503 and `failed()` resolves (the
/// binary then exits for a restart), so the replica leaves the load balancer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_the_probe_cannot_use_is_detected() {
    let mut broker = start_small_broker_probed_every_second().await;
    let port = broker.mqtt_v4_addr.port().to_string();
    // Clients that hold every connection the router takes (the rest are
    // refused and retry until -W ends them).
    let holders: Vec<_> = (0..6)
        .map(|i| {
            let port = port.clone();
            tokio::spawn(
                async move { mosquitto_sub_for(&port, &format!("holder-{i}"), "20").await },
            )
        })
        .collect();
    let err = tokio::time::timeout(Duration::from_secs(15), broker.failed())
        .await
        .expect("the listener the probe cannot use is reported");
    let err = format!("{err:#}");
    assert!(err.contains("listener failed 2 probes in a row"), "{err}");
    let ready = reqwest::get(format!("http://{}/readyz", broker.admin_addr))
        .await
        .expect("GET /readyz");
    assert_eq!(ready.status(), 503);
    for holder in holders {
        holder.abort();
    }
}

/// A broker that holds as many connections as it may while its devices
/// keep publishing fails every probe (no room for the probe), on both
/// listeners, the MQTT 5 one no device uses included. It is busy, not
/// wedged: it reports itself unready, but it must not give up (and end the
/// process, dropping every device it serves onto replicas as busy). Once
/// room frees, the probes pass again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_broker_whose_devices_publish_is_unready_but_stays_up() {
    use rumqttc::{AsyncClient, MqttOptions, QoS};
    let mut broker = start_small_broker_probed_every_second().await;
    let port = broker.mqtt_v4_addr.port();
    let publishers: Vec<_> = (0..4)
        .map(|i| {
            let device = format!("dev-busy-{i}");
            let (client, mut events) =
                AsyncClient::new(MqttOptions::new(device.clone(), "127.0.0.1", port), 10);
            tokio::spawn(async move {
                let topic = topic(&device, Channel::Telemetry);
                let mut seq = 0;
                loop {
                    tokio::select! {
                        event = events.poll() => if event.is_err() {
                            // Refused while the probe held a slot: try again.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        },
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {
                            seq += 1;
                            let _ = client.try_publish(&topic, QoS::AtLeastOnce, false, reading(seq));
                        }
                    }
                }
            })
        })
        .collect();
    // Every listener fails more probes in a row than the limit.
    let failed_probes = |metrics: &str, listener: &str| -> u64 {
        let series = format!("warmhouse_broker_probe_failures_total{{listener=\"{listener}\"}} ");
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(series.as_str()))
            .and_then(|value| value.trim().parse().ok())
            .unwrap_or(0)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = metrics_text(&broker).await;
        if ["mqtt_v4", "mqtt_v5"]
            .iter()
            .all(|listener| failed_probes(&metrics, listener) > 3)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the full broker's probes fail: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ready = reqwest::get(format!("http://{}/readyz", broker.admin_addr))
        .await
        .expect("GET /readyz");
    assert_eq!(ready.status(), 503, "a full broker takes no more devices");
    if let Ok(err) = tokio::time::timeout(Duration::from_millis(200), broker.failed()).await {
        panic!("a busy broker gave up: {err:#}");
    }
    for publisher in publishers {
        publisher.abort();
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ready = reqwest::get(format!("http://{}/readyz", broker.admin_addr))
            .await
            .expect("GET /readyz");
        if ready.status() == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ready again once room frees"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A kept session (Clean Session 0) whose connection was the last member of
/// a shared group ends with a message of that group unacknowledged: rumqttd
/// expected the group to still exist and panicked its router thread ("group
/// must exists"), which ended every connection of the broker (patch 31).
/// The broker must go on serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_session_leaving_its_shared_group_mid_delivery_breaks_nothing() {
    use rumqttc::{AsyncClient, MqttOptions, Packet, QoS};
    const USER: &str = "shared-test-service";
    const PASSWORD: &str = "shared-test-service-password";
    let broker = start_broker_with(|config| BrokerConfig {
        internal_addr: free_addr(),
        service_username: USER.to_string(),
        service_password: Some(warmhouse_broker::Secret::new(PASSWORD)),
        ..config
    })
    .await;
    let internal = broker.internal_addr.expect("the internal listener");
    let options = |client_id: &str| {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", internal.port());
        options.set_credentials(USER, PASSWORD);
        options
    };

    let mut member_options = options("shared-member");
    member_options
        .set_clean_session(false)
        .set_manual_acks(true);
    let (member, mut member_events) = AsyncClient::new(member_options, 10);
    member
        .subscribe("$share/workers/jobs/new", QoS::AtLeastOnce)
        .await
        .expect("queue the subscription");
    next_incoming(&mut member_events, "the member's SUBACK", |packet| {
        matches!(packet, Packet::SubAck(_)).then_some(())
    })
    .await;

    let (producer, mut producer_events) = AsyncClient::new(options("shared-producer"), 10);
    producer
        .publish("jobs/new", QoS::AtLeastOnce, false, "job-1")
        .await
        .expect("queue the job");
    let producer_task = tokio::spawn(async move {
        next_incoming(&mut producer_events, "the job's PUBACK", |packet| {
            matches!(packet, Packet::PubAck(_)).then_some(())
        })
        .await;
    });
    // Received and never acknowledged: in flight when the connection ends.
    next_incoming(&mut member_events, "the job at the member", |packet| {
        matches!(packet, Packet::Publish(_)).then_some(())
    })
    .await;
    producer_task.await.expect("the producer");
    drop(member);
    drop(member_events);

    // Still serving: a round trip through the router.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = topic("dev-after-share", Channel::Status);
    let mut subscriber = Subscriber::start(&broker, Version::V311, &status, 1, &[]).await;
    publish(&broker, Version::V311, &status, "alive", 1, false).await;
    assert_eq!(
        subscriber.next_message().await,
        received(1, false, &status, "alive")
    );
}
