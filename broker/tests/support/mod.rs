//! What the broker's integration tests share: a broker on free ports with
//! the real Kafka (tansu) and spool its device ingress needs, raw MQTT
//! packets for what no client library will send, and a count of the bytes
//! live on this process's heap (the broker runs in the test process).
//!
//! Each test binary uses its own part of it.
#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use warmhouse_broker::{start, BrokerConfig, RunningBroker};
use warmhouse_devstack::{create_topics, KafkaStorage, Tansu};
use warmhouse_edge_bridge::IngressConfig;

/// Upper bound for anything one step of a test waits on.
pub const WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    listener.local_addr().expect("read the ephemeral port")
}

/// A broker with what its device ingress needs: a real Kafka (tansu) and a
/// spool directory. Dereferences to the broker.
pub struct TestBroker {
    pub broker: RunningBroker,
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

pub async fn start_broker() -> TestBroker {
    start_broker_with(|config| config).await
}

/// A broker on free ports, its test configuration changed by `adjust`
/// (called again for each attempt, so it may pick free ports of its own).
pub async fn start_broker_with(adjust: impl Fn(BrokerConfig) -> BrokerConfig) -> TestBroker {
    warmhouse_service_kit::init_tracing();
    let dir = tempfile::tempdir().expect("temp dir");
    let kafka =
        Tansu::start(&dir.path().join("kafka"), KafkaStorage::Memory).expect("tansu starts");
    let ingress = IngressConfig::new(&kafka.bootstrap(), dir.path().join("spool"));
    create_topics(&kafka.bootstrap(), &ingress.kafka_topics(), 1)
        .await
        .expect("topics are created");
    let admin: SocketAddr = "127.0.0.1:0".parse().expect("an address");
    // Another process may take a just-freed port: try a few sets.
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
    panic!("broker did not start: {last_error:#?}");
}

/// A telemetry payload the ingress accepts.
pub fn reading(seq: u64) -> String {
    let ts = 1_700_000_000_000 + seq;
    format!(r#"{{"seq":{seq},"ts":{ts},"readings":[{{"metric":"temperature","value":21.5}}]}}"#)
}

/// MQTT's variable-length encoding of a packet's remaining length.
pub fn remaining_length(mut length: usize) -> Vec<u8> {
    let mut encoded = Vec::new();
    loop {
        let mut byte = (length % 128) as u8;
        length /= 128;
        if length > 0 {
            byte |= 0x80;
        }
        encoded.push(byte);
        if length == 0 {
            return encoded;
        }
    }
}

/// A raw MQTT packet: fixed header byte, remaining length, body.
pub fn packet(first_byte: u8, body: &[u8]) -> Vec<u8> {
    let mut packet = vec![first_byte];
    packet.extend(remaining_length(body.len()));
    packet.extend_from_slice(body);
    packet
}

/// An MQTT string or binary field: two length bytes, then the bytes.
pub fn mqtt_bytes(bytes: &[u8]) -> Vec<u8> {
    let mut encoded = (bytes.len() as u16).to_be_bytes().to_vec();
    encoded.extend_from_slice(bytes);
    encoded
}

/// Reads one MQTT packet: (first byte, body); None when the connection ends.
pub async fn read_packet(socket: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let first = socket.read_u8().await.ok()?;
    let (mut length, mut shift) = (0usize, 0);
    loop {
        let byte = socket.read_u8().await.ok()?;
        length |= usize::from(byte & 0x7F) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; length];
    socket.read_exact(&mut body).await.ok()?;
    Some((first, body))
}

/// Everything the broker sends until it closes the connection; panics,
/// naming `what`, if it keeps the connection open longer than `WAIT`.
pub async fn until_closed(socket: &mut TcpStream, what: &str) -> Vec<u8> {
    let mut received = Vec::new();
    let closed = tokio::time::timeout(WAIT, async {
        let mut buffer = [0u8; 1024];
        loop {
            match socket.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => received.extend_from_slice(&buffer[..n]),
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "{what}: the broker kept the connection open; sent {received:?}"
    );
    received
}

/// Counts the bytes live on the heap of this test process: what the broker
/// keeps alive, free of the allocator's own caching; and the most that were
/// live at once since [`reset_peak_heap_bytes`].
struct CountingAllocator;

static LIVE_HEAP_BYTES: AtomicI64 = AtomicI64::new(0);
static PEAK_HEAP_BYTES: AtomicI64 = AtomicI64::new(0);

fn grew(by: i64) {
    let live = LIVE_HEAP_BYTES.fetch_add(by, Ordering::Relaxed) + by;
    PEAK_HEAP_BYTES.fetch_max(live, Ordering::Relaxed);
}

unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        grew(layout.size() as i64);
        std::alloc::System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE_HEAP_BYTES.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        std::alloc::System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        grew(new_size as i64 - layout.size() as i64);
        std::alloc::System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

pub fn live_heap_bytes() -> i64 {
    LIVE_HEAP_BYTES.load(Ordering::Relaxed)
}

/// Starts measuring the peak afresh from what is live now.
pub fn reset_peak_heap_bytes() {
    PEAK_HEAP_BYTES.store(live_heap_bytes(), Ordering::Relaxed);
}

pub fn peak_heap_bytes() -> i64 {
    PEAK_HEAP_BYTES.load(Ordering::Relaxed)
}

/// The next MQTT packet: (first byte, body); panics when the connection
/// ends first.
pub async fn expect_packet(socket: &mut TcpStream) -> (u8, Vec<u8>) {
    read_packet(socket)
        .await
        .expect("a packet before the connection ended")
}

/// The broker's Prometheus text (`GET /metrics` on its admin listener).
pub async fn metrics_text(broker: &RunningBroker) -> String {
    reqwest::get(format!("http://{}/metrics", broker.admin_addr))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics text")
}
