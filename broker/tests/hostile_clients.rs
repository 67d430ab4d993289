//! The broker against hostile clients (issue 10, item 3): garbage bytes,
//! slowloris CONNECTs, oversized packets, subscribe floods, client id
//! takeover fights, a reconnect storm and publishes to ever new topics, all
//! at once against one broker, while a normal client (rumqttc) publishes at
//! QoS 1 and receives its own messages. The normal client must be served
//! throughout (every message acknowledged and delivered, its connection
//! never dropped), every well-behaved client of the storm served, and the
//! broker's memory must come back near where it started.
//!
//! Memory is counted as live heap bytes of this process (the broker runs in
//! it) by a counting global allocator: RSS is also printed, but the
//! allocator keeps freed memory for reuse, which blurs it.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use support::{
    free_addr, live_heap_bytes, metrics_text, mqtt_bytes, packet, read_packet, reading,
    remaining_length, start_broker_with, until_closed, TestBroker, Version, WAIT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use warmhouse_broker::{BrokerConfig, Secret};

/// How long the broker gives a new connection to send CONNECT (slowloris
/// connections are closed after it).
const CONNECT_TIMEOUT_MS: u16 = 2_000;
const SERVICE_USER: &str = "hostile-test-service";
const SERVICE_PASSWORD: &str = "hostile-test-service-password";
/// The bound this test holds the broker to: live heap after the hostile
/// run, minus before it (both with the normal client connected), in bytes.
const HEAP_BOUND: i64 = 4 << 20;

extern "C" {
    /// glibc: gives the kernel back the free memory malloc keeps.
    fn malloc_trim(pad: usize) -> i32;
}

/// This process's resident set size (Linux), in bytes, once the allocator
/// has given back what it can (freed memory it keeps is no one's).
fn rss_bytes() -> i64 {
    // SAFETY: malloc_trim only releases free memory of glibc's allocator.
    unsafe {
        malloc_trim(0);
    }
    vm_rss()
}

/// This process's resident set size as it is, in bytes.
fn vm_rss() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<i64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// A CONNECT (keep alive 30 s) with an optional login.
fn connect_packet(
    version: Version,
    client_id: &str,
    clean: bool,
    login: Option<(&str, &str)>,
) -> Vec<u8> {
    let mut flags = if clean { 0x02 } else { 0x00 };
    if login.is_some() {
        flags |= 0xC0;
    }
    let mut body = mqtt_bytes(b"MQTT");
    body.push(if version == Version::V5 { 5 } else { 4 });
    body.extend_from_slice(&[flags, 0, 30]);
    if version == Version::V5 {
        body.push(0);
    }
    body.extend(mqtt_bytes(client_id.as_bytes()));
    if let Some((user, password)) = login {
        body.extend(mqtt_bytes(user.as_bytes()));
        body.extend(mqtt_bytes(password.as_bytes()));
    }
    packet(0x10, &body)
}

fn publish_packet(version: Version, topic: &str, qos: u8, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = mqtt_bytes(topic.as_bytes());
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    if version == Version::V5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

fn subscribe_packet(version: Version, pkid: u16, filters: &[String], qos: u8) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if version == Version::V5 {
        body.push(0);
    }
    for filter in filters {
        body.extend(mqtt_bytes(filter.as_bytes()));
        body.push(qos);
    }
    packet(0x82, &body)
}

/// The next packet whose type (high nibble) is `kind`, skipping others; None
/// when the connection ends first.
async fn next_of_kind(socket: &mut TcpStream, kind: u8) -> Option<(u8, Vec<u8>)> {
    loop {
        let (first, body) = read_packet(socket).await?;
        if first >> 4 == kind {
            return Some((first, body));
        }
    }
}

/// Connects and returns the socket after a successful CONNACK, or None when
/// the broker refused or closed it.
async fn connect(
    addr: SocketAddr,
    version: Version,
    client_id: &str,
    clean: bool,
    login: Option<(&str, &str)>,
) -> Option<TcpStream> {
    let mut socket = TcpStream::connect(addr).await.ok()?;
    socket
        .write_all(&connect_packet(version, client_id, clean, login))
        .await
        .ok()?;
    let (first, body) = tokio::time::timeout(WAIT, read_packet(&mut socket))
        .await
        .ok()??;
    (first == 0x20 && body.get(1) == Some(&0)).then_some(socket)
}

/// Garbage instead of MQTT, all at once: the broker closes each connection
/// (at once, or when its CONNECT time is up: some garbage reads as the
/// start of a longer packet).
async fn garbage(addr: SocketAddr, connections: usize) {
    const SAMPLES: [&[u8]; 4] = [
        &[0xFF; 64],
        b"GET / HTTP/1.1\r\nHost: broker\r\n\r\n",
        // A CONNECT whose remaining length never ends.
        &[0x10, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
        // A PUBLISH before any CONNECT.
        &[0x30, 0x05, 0x00, 0x01, b'a', b'x', b'y'],
    ];
    let mut sockets = JoinSet::new();
    for i in 0..connections {
        sockets.spawn(async move {
            let Ok(mut socket) = TcpStream::connect(addr).await else {
                return;
            };
            let _ = socket.write_all(SAMPLES[i % SAMPLES.len()]).await;
            until_closed(&mut socket, "garbage").await;
        });
    }
    while let Some(done) = sockets.join_next().await {
        done.expect("a garbage connection");
    }
}

/// Slowloris: a CONNECT sent one byte at a time and never finished, or just
/// begun and then silence. The broker closes each when its CONNECT time is
/// up, however many there are.
async fn slowloris(addr: SocketAddr, connections: usize) {
    let mut sockets = JoinSet::new();
    for i in 0..connections {
        sockets.spawn(async move {
            let Ok(mut socket) = TcpStream::connect(addr).await else {
                return;
            };
            let connect = connect_packet(Version::V311, &format!("slow-{i}"), true, None);
            let unfinished = if i % 2 == 0 {
                &connect[..connect.len() - 1]
            } else {
                &connect[..2]
            };
            for byte in unfinished {
                if socket.write_all(&[*byte]).await.is_err() {
                    return;
                }
                let mut buffer = [0u8; 16];
                match tokio::time::timeout(Duration::from_millis(300), socket.read(&mut buffer))
                    .await
                {
                    // The broker closed it: done.
                    Ok(Ok(0) | Err(_)) => return,
                    Ok(Ok(_)) => panic!("slowloris: the broker answered an unfinished CONNECT"),
                    Err(_) => {}
                }
            }
            until_closed(&mut socket, "slowloris").await;
        });
    }
    while let Some(done) = sockets.join_next().await {
        done.expect("a slowloris connection");
    }
}

/// Packets announcing 10 MB, far over the listener's maximum: a CONNECT,
/// and a PUBLISH after a CONNECT (MQTT 5: DISCONNECT 0x95 first). Only the
/// start of each is sent: a socket closed with unread data in it is reset,
/// and the reset can overtake the DISCONNECT.
async fn oversized(v4: SocketAddr, v5: SocketAddr, rounds: usize) {
    let mut huge = vec![0x30];
    huge.extend(remaining_length(10 << 20));
    huge.extend_from_slice(&mqtt_bytes(b"/tenants/dev-huge/telemetry"));
    for i in 0..rounds {
        let mut huge_connect = vec![0x10];
        huge_connect.extend(remaining_length(10 << 20));
        huge_connect.extend_from_slice(&mqtt_bytes(b"MQTT"));
        if let Ok(mut socket) = TcpStream::connect(v4).await {
            let _ = socket.write_all(&huge_connect).await;
            until_closed(&mut socket, "oversized CONNECT").await;
        }
        for (addr, version) in [(v4, Version::V311), (v5, Version::V5)] {
            let id = format!("dev-huge-{i}");
            let Some(mut socket) = connect(addr, version, &id, true, None).await else {
                continue;
            };
            let _ = socket.write_all(&huge).await;
            let answer = until_closed(&mut socket, "oversized PUBLISH").await;
            if version == Version::V5 {
                assert_eq!(answer.get(..1), Some(&[0xE0][..]), "DISCONNECT: {answer:?}");
                assert_eq!(answer.get(2), Some(&0x95), "Packet too large: {answer:?}");
            }
        }
    }
}

/// A service client subscribes to `filters` filters (100 a SUBSCRIBE), then
/// publishes to `topics` ever new topics that match none of them, then
/// leaves. (One such client stalled every client for about 30 s.) A device
/// that tries the same is stopped at its subscription limit.
async fn subscribe_flood(internal: SocketAddr, v5: SocketAddr, filters: usize, topics: usize) {
    let login = Some((SERVICE_USER, SERVICE_PASSWORD));
    let mut socket = connect(internal, Version::V311, "flood", true, login)
        .await
        .expect("the flooding service client connects");
    let all: Vec<String> = (0..filters).map(|i| format!("/flood/{i}/x")).collect();
    let mut sent = 0u16;
    for (n, chunk) in all.chunks(100).enumerate() {
        let pkid = n as u16 + 1;
        socket
            .write_all(&subscribe_packet(Version::V311, pkid, chunk, 0))
            .await
            .expect("SUBSCRIBE");
        sent += 1;
    }
    for _ in 0..sent {
        tokio::time::timeout(WAIT, next_of_kind(&mut socket, 9))
            .await
            .expect("SUBACKs in time")
            .expect("a SUBACK");
    }
    publish_to_each(&mut socket, (0..topics).map(|i| format!("/flood/new/{i}"))).await;
    drop(socket);

    // The same from a device: dropped at its limit (DISCONNECT 0x97).
    let mut device = connect(v5, Version::V5, "dev-flood", true, None)
        .await
        .expect("the flooding device connects");
    let many: Vec<String> = (0..50).map(|i| format!("/tenants/dev-flood/{i}")).collect();
    device
        .write_all(&subscribe_packet(Version::V5, 1, &many, 0))
        .await
        .expect("SUBSCRIBE");
    let answer = until_closed(&mut device, "device subscribe flood").await;
    assert_eq!(answer.get(2), Some(&0x97), "Quota exceeded: {answer:?}");
}

/// Two clients with one client id take the session from each other, over
/// and over (one keeps its session, the other starts clean), each
/// subscribing when it gets in.
async fn takeover_fight(addr: SocketAddr, rounds: usize) {
    let mut fighters = JoinSet::new();
    for clean in [false, true] {
        fighters.spawn(async move {
            for _ in 0..rounds {
                let Some(mut socket) = connect(addr, Version::V311, "dev-fight", clean, None).await
                else {
                    continue;
                };
                let filter = ["/tenants/dev-fight/commands".to_string()];
                if socket
                    .write_all(&subscribe_packet(Version::V311, 1, &filter, 1))
                    .await
                    .is_err()
                {
                    continue;
                }
                // Until the other one takes over, or a moment passes.
                let _ = tokio::time::timeout(Duration::from_millis(20), async {
                    while read_packet(&mut socket).await.is_some() {}
                })
                .await;
            }
        });
    }
    while let Some(done) = fighters.join_next().await {
        done.expect("a fighter");
    }
}

/// A reconnect storm of well-behaved clients: each connects with an id of
/// its own, subscribes to its command topic, publishes one QoS 1 reading,
/// gets its PUBACK and leaves with DISCONNECT. Every one must be served.
async fn reconnect_storm(
    v4: SocketAddr,
    v5: SocketAddr,
    clients: usize,
    failures: Arc<AtomicUsize>,
) {
    let mut workers = JoinSet::new();
    for worker in 0..20 {
        let failures = failures.clone();
        workers.spawn(async move {
            for i in (worker..clients).step_by(20) {
                let (addr, version) = if i % 2 == 0 {
                    (v4, Version::V311)
                } else {
                    (v5, Version::V5)
                };
                let device = format!("dev-storm-{i}");
                let served = async {
                    let mut socket = connect(addr, version, &device, true, None).await?;
                    let filter = [format!("/tenants/{device}/commands")];
                    socket
                        .write_all(&subscribe_packet(version, 1, &filter, 1))
                        .await
                        .ok()?;
                    next_of_kind(&mut socket, 9).await?;
                    let telemetry = format!("/tenants/{device}/telemetry");
                    let reading = reading(i as u64);
                    socket
                        .write_all(&publish_packet(
                            version,
                            &telemetry,
                            1,
                            2,
                            reading.as_bytes(),
                        ))
                        .await
                        .ok()?;
                    next_of_kind(&mut socket, 4).await?;
                    socket.write_all(&[0xE0, 0x00]).await.ok()?;
                    Some(())
                };
                if tokio::time::timeout(WAIT, served)
                    .await
                    .ok()
                    .flatten()
                    .is_none()
                {
                    eprintln!("storm client {device} was not served");
                    failures.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while let Some(done) = workers.join_next().await {
        done.expect("a storm worker");
    }
}

/// Clients that send CONNECT and reset the connection at once (SO_LINGER
/// 0), before the broker can write its CONNACK; each with an id of its own
/// (`round` keeps them apart between rounds).
async fn aborted_connects(addr: SocketAddr, clients: usize, round: usize) {
    for i in 0..clients {
        let Ok(mut socket) = TcpStream::connect(addr).await else {
            continue;
        };
        let connect = connect_packet(Version::V311, &format!("dev-abort-{round}-{i}"), true, None);
        if socket.write_all(&connect).await.is_err() {
            continue;
        }
        // A linger of 0 does not block the drop (the deprecation is about
        // waiting lingers): the socket is reset at once.
        #[allow(deprecated)]
        let _ = socket.set_linger(Some(Duration::ZERO));
        drop(socket);
    }
}

/// A device publishing QoS 0 to ever new topics under its prefix.
async fn new_topics(addr: SocketAddr, topics: usize) {
    let mut socket = connect(addr, Version::V311, "dev-topics", true, None)
        .await
        .expect("the new-topics client connects");
    publish_to_each(
        &mut socket,
        (0..topics).map(|i| format!("/tenants/dev-topics/t{i}")),
    )
    .await;
}

/// Publishes one byte at QoS 0 (MQTT 3.1.1) to each of `topics`, in batches
/// of about 16 KB, then waits for the PINGRESP to a PINGREQ sent after them:
/// the broker has read them all.
async fn publish_to_each(socket: &mut TcpStream, topics: impl Iterator<Item = String>) {
    let mut batch = Vec::new();
    for topic in topics {
        batch.extend(publish_packet(Version::V311, &topic, 0, 0, b"x"));
        if batch.len() > 16 << 10 {
            socket.write_all(&batch).await.expect("PUBLISH");
            batch.clear();
        }
    }
    batch.extend_from_slice(&[0xC0, 0x00]);
    socket.write_all(&batch).await.expect("PUBLISH and PINGREQ");
    tokio::time::timeout(WAIT, next_of_kind(socket, 13))
        .await
        .expect("PINGRESP in time")
        .expect("a PINGRESP after the publishes");
}

/// Every hostile pattern at once; the reconnect storm's unserved clients
/// are counted in `failures`.
async fn hostile_round(broker: &TestBroker, scale: usize, failures: Arc<AtomicUsize>) {
    let (v4, v5) = (broker.mqtt_v4_addr, broker.mqtt_v5_addr);
    let internal = broker.internal_addr.expect("the internal listener");
    let mut patterns = JoinSet::new();
    patterns.spawn(garbage(v4, 50 * scale));
    patterns.spawn(garbage(v5, 50 * scale));
    patterns.spawn(slowloris(v4, 50 * scale));
    patterns.spawn(oversized(v4, v5, 10 * scale));
    patterns.spawn(subscribe_flood(internal, v5, 5_000 * scale, 2_500 * scale));
    patterns.spawn(takeover_fight(v4, 50 * scale));
    patterns.spawn(reconnect_storm(v4, v5, 750 * scale, failures));
    patterns.spawn(new_topics(v4, 2_500 * scale));
    patterns.spawn(aborted_connects(v5, 100 * scale, scale));
    while let Some(done) = patterns.join_next().await {
        done.expect("a hostile pattern");
    }
}

/// The normal client: rumqttc on the MQTT 3.1.1 device listener, subscribed
/// to its telemetry at QoS 1, publishing a QoS 1 reading every 20 ms until
/// told to stop, then waiting for what is still due. Returns (published,
/// acknowledged, delivered, connection errors).
async fn normal_client(
    port: u16,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (u64, u64, std::collections::BTreeSet<u64>, Vec<String>) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let topic = "/tenants/dev-normal/telemetry";
    let options = MqttOptions::new("dev-normal", "127.0.0.1", port);
    let (client, mut events) = AsyncClient::new(options, 100);
    client
        .subscribe(topic, QoS::AtLeastOnce)
        .await
        .expect("queue SUBSCRIBE");
    let (mut acked, mut delivered, mut errors) =
        (0u64, std::collections::BTreeSet::new(), Vec::new());
    let mut subscribed = false;
    let mut published = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let mut stopping = false;
    loop {
        tokio::select! {
            event = events.poll() => match event {
                Ok(Event::Incoming(Packet::SubAck(_))) => subscribed = true,
                Ok(Event::Incoming(Packet::PubAck(_))) => acked += 1,
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    let payload = String::from_utf8_lossy(&publish.payload).into_owned();
                    let seq = serde_json::from_str::<serde_json::Value>(&payload)
                        .ok()
                        .and_then(|v| v["seq"].as_u64());
                    delivered.extend(seq);
                }
                Ok(_) => {}
                Err(err) => {
                    errors.push(err.to_string());
                    // rumqttc reconnects on the next poll; a pause keeps a
                    // refusing broker from being hammered.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = tick.tick(), if subscribed && !stopping => {
                // Not `publish().await`: with its window full, rumqttc takes
                // no request until this loop polls again.
                if client
                    .try_publish(topic, QoS::AtLeastOnce, false, reading(published))
                    .is_ok()
                {
                    published += 1;
                }
            },
            _ = stop.changed(), if !stopping => stopping = true,
        }
        if stopping && acked >= published && delivered.len() as u64 >= published {
            return (published, acked, delivered, errors);
        }
    }
}

/// See the module documentation. The bound is `HEAP_BOUND` of live heap
/// (stated in broker/README.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_neither_starve_a_normal_client_nor_leave_memory_behind() {
    // An internal listener for the service client that floods subscriptions
    // (device listeners cap subscriptions per connection); the self-probe
    // round-trips a message every second, so a stall shows as a failed probe.
    let broker = start_broker_with(|config| BrokerConfig {
        connection_timeout_ms: CONNECT_TIMEOUT_MS,
        probe_interval_secs: 1,
        internal_addr: free_addr(),
        service_username: SERVICE_USER.to_string(),
        service_password: Some(Secret::new(SERVICE_PASSWORD)),
        ..config
    })
    .await;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let normal = tokio::spawn(normal_client(broker.mqtt_v4_addr.port(), stop));
    let failures = Arc::new(AtomicUsize::new(0));

    // A small round first makes what is made once (runtime and listener
    // structures, the router's tables at their working size).
    hostile_round(&broker, 1, failures.clone()).await;
    // Slowloris connections end at the CONNECT timeout; sessions, filters
    // and the ingress's work settle.
    tokio::time::sleep(Duration::from_millis(u64::from(CONNECT_TIMEOUT_MS) + 1000)).await;
    let (heap_before, rss_before) = (live_heap_bytes(), rss_bytes());

    // The highest RSS while the hostile clients run (printed, not held to a
    // bound: it depends on the allocator and on Kafka's client library).
    let peak_rss = Arc::new(AtomicI64::new(0));
    let sampler = tokio::spawn({
        let peak_rss = peak_rss.clone();
        async move {
            loop {
                peak_rss.fetch_max(vm_rss(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    hostile_round(&broker, 4, failures.clone()).await;
    sampler.abort();
    tokio::time::sleep(Duration::from_millis(u64::from(CONNECT_TIMEOUT_MS) + 1000)).await;
    let (heap_after, rss_after) = (live_heap_bytes(), rss_bytes());

    stop_tx.send(true).expect("stop the normal client");
    let (published, acked, delivered, errors) = tokio::time::timeout(WAIT, normal)
        .await
        .expect("the normal client's last messages in time")
        .expect("the normal client");
    eprintln!(
        "live heap {} KB before, {} KB after ({:+} KB); RSS {} KB before, {} KB peak, {} KB after \
         ({:+} KB); normal client: {published} published, {acked} acked, {} delivered",
        heap_before >> 10,
        heap_after >> 10,
        (heap_after - heap_before) >> 10,
        rss_before >> 10,
        peak_rss.load(Ordering::Relaxed) >> 10,
        rss_after >> 10,
        (rss_after - rss_before) >> 10,
        delivered.len(),
    );
    assert!(
        errors.is_empty(),
        "the normal client's connection failed: {errors:?}"
    );
    assert!(published > 0, "the normal client published nothing");
    assert_eq!(
        acked, published,
        "every QoS 1 publish of the normal client acknowledged"
    );
    assert_eq!(
        delivered,
        (0..published).collect(),
        "every message of the normal client delivered back to it"
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "well-behaved clients of the reconnect storm were not served"
    );
    let ready = reqwest::get(format!("http://{}/readyz", broker.admin_addr))
        .await
        .expect("GET /readyz");
    assert!(ready.status().is_success(), "/readyz: {}", ready.status());
    // Served throughout: the self-probe never failed on any listener.
    let metrics = metrics_text(&broker).await;
    let failed_probes: Vec<&str> = metrics
        .lines()
        .filter(|line| line.starts_with("warmhouse_broker_probe_failures_total{"))
        .filter(|line| !line.ends_with(" 0"))
        .collect();
    assert!(
        failed_probes.is_empty(),
        "self-probe failures: {failed_probes:?}"
    );
    assert!(
        heap_after - heap_before < HEAP_BOUND,
        "the hostile run left {} KB of live heap (bound {} KB)",
        (heap_after - heap_before) >> 10,
        HEAP_BOUND >> 10
    );
}
