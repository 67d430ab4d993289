//! Self-probe: a real MQTT client (rumqttc) connects to one of our
//! listeners, subscribes to a private topic, publishes a nonce and waits to
//! receive it. Success proves the listener accepts, the router routes and
//! delivers; a TCP connect alone would not catch a wedged router.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

/// Device id the self-probe uses on device listeners (tenant of its
/// password login and the subject O of its client certificate). The broker
/// lets it in without asking the registry, so no device may be registered
/// under this id; its topics (`/tenants/warmhouse-broker-probe/probe/...`)
/// match none of the bridge's filters.
pub const PROBE_DEVICE_ID: &str = "warmhouse-broker-probe";

/// Where the self-probe publishes on listeners that do not confine it.
pub const OPEN_PROBE_TOPICS: &str = "/warmhouse/broker/probe/";

/// MQTT protocol version a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    V4,
    V5,
}

/// The broker's MQTT listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Devices, MQTT 3.1.1, plain TCP.
    V4,
    /// Devices, MQTT 5, plain TCP.
    V5,
    /// Devices, MQTT 3.1.1 over TLS with client certificates.
    Mqtts,
    /// The platform's services (edge bridge), MQTT 3.1.1, plain TCP.
    Internal,
}

impl Listener {
    /// Label in metrics and `/readyz`.
    pub fn name(self) -> &'static str {
        match self {
            Listener::V4 => "mqtt_v4",
            Listener::V5 => "mqtt_v5",
            Listener::Mqtts => "mqtts",
            Listener::Internal => "internal",
        }
    }

    /// Key and thread name in rumqttd's configuration.
    pub fn rumqttd_name(self) -> &'static str {
        match self {
            Listener::V4 => "v4",
            Listener::V5 => "v5",
            Listener::Mqtts => "mqtts",
            Listener::Internal => "internal",
        }
    }

    pub fn protocol(self) -> Protocol {
        match self {
            Listener::V5 => Protocol::V5,
            Listener::V4 | Listener::Mqtts | Listener::Internal => Protocol::V4,
        }
    }
}

/// How the probe logs in to a listener.
#[derive(Clone)]
pub enum ProbeAuth {
    /// Open listener: no login, any topic.
    None,
    /// Username and password; `confined` when the listener makes the
    /// username the tenant (device listeners).
    Password {
        username: String,
        password: String,
        confined: bool,
    },
    /// TLS with a client certificate (PEM) whose subject O is
    /// [`PROBE_DEVICE_ID`]; the server certificate must chain to `ca` and
    /// name the address the probe connects to.
    Tls(Arc<TlsProbe>),
}

/// PEM material of a TLS probe.
pub struct TlsProbe {
    pub ca: Vec<u8>,
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

impl ProbeAuth {
    /// Outside `/tenants/` where the listener allows it, so no bridge filter
    /// ever sees probe traffic; under the probe's own tenant where the
    /// listener confines it (a channel the bridge does not subscribe to).
    fn topic(&self, listener: Listener) -> String {
        let confined = match self {
            ProbeAuth::None => false,
            ProbeAuth::Password { confined, .. } => *confined,
            ProbeAuth::Tls(_) => true,
        };
        if confined {
            format!(
                "{}{PROBE_DEVICE_ID}/probe/{}",
                warmhouse_contracts::topics::TENANT_ROOT,
                listener.name()
            )
        } else {
            format!("{OPEN_PROBE_TOPICS}{}", listener.name())
        }
    }
}

/// The failed probes of one listener that count towards giving up on it.
///
/// A failed probe while the broker went on doing work since the previous
/// probe (see [`crate::metrics::BrokerWork`]) means the broker is busy (a
/// fleet connecting at once, the machine short of CPU), not wedged: it does
/// not count. Busy is judged for the whole broker, not per listener: every
/// listener hands its clients to the one router, so a listener no device
/// uses (the MQTT 5 one of a fleet on 3.1.1) starves with the others, and
/// giving up on it would end the process and drop every device it holds
/// onto the other replicas, which are as busy. A listener that refuses TCP
/// connections is gone, not busy: that always counts. A listener whose
/// probes fail is reported unready either way.
#[derive(Debug, Default)]
pub struct ProbeFailures {
    in_a_row: u32,
    /// The broker's work done at the previous probe.
    work_done: u64,
}

impl ProbeFailures {
    pub fn new(work_done: u64) -> Self {
        Self {
            in_a_row: 0,
            work_done,
        }
    }

    pub fn succeeded(&mut self, work_done: u64) {
        self.in_a_row = 0;
        self.work_done = work_done;
    }

    /// Records the failed probe `err`; `work_done` is the broker's work
    /// done now. Returns whether the broker was busy (the failure did not
    /// count).
    pub fn failed(&mut self, work_done: u64, err: &anyhow::Error) -> bool {
        let busy = work_done > self.work_done && !connection_refused(err);
        self.work_done = work_done;
        if !busy {
            self.in_a_row += 1;
        }
        busy
    }

    /// Failed probes in a row that counted.
    pub fn in_a_row(&self) -> u32 {
        self.in_a_row
    }
}

/// Whether the probe found nothing listening (its TCP connect refused).
fn connection_refused(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

/// Probes one listener, keeping its client id across successful probes.
///
/// The id is fixed while probes succeed because rumqttd keeps state per
/// client id forever (a fresh id per probe would leak memory). It changes
/// after a failure: when rumqttd drops a connection before its CONNACK it
/// leaves a dead entry for that id in its will-handler map, and the next
/// connect with the same id panics while holding that map's mutex,
/// poisoning it for every later connection on the listener (rumqttd 0.20,
/// `server/broker.rs` `remote()`, upstream issue #1062).
pub struct Prober {
    listener: Listener,
    addr: SocketAddr,
    auth: ProbeAuth,
    generation: u64,
}

impl Prober {
    /// A probe of an open listener.
    pub fn new(listener: Listener, addr: SocketAddr) -> Self {
        Self::with_auth(listener, addr, ProbeAuth::None)
    }

    pub fn with_auth(listener: Listener, addr: SocketAddr, auth: ProbeAuth) -> Self {
        Self {
            listener,
            addr: connect_addr(addr),
            auth,
            generation: 0,
        }
    }

    pub fn listener(&self) -> Listener {
        self.listener
    }

    fn client_id(&self) -> String {
        format!(
            "warmhouse-broker-probe-{}-{}",
            self.listener.name().replace('_', "-"),
            self.generation
        )
    }

    /// One round trip, bounded by `timeout`.
    pub async fn probe(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let target = Target {
            listener: self.listener,
            addr: self.addr,
            client_id: self.client_id(),
            topic: self.auth.topic(self.listener),
            auth: self.auth.clone(),
        };
        let result = probe(target, timeout).await;
        if result.is_err() {
            self.generation += 1;
        }
        result
    }
}

/// Everything one probe round trip needs.
struct Target {
    listener: Listener,
    addr: SocketAddr,
    client_id: String,
    topic: String,
    auth: ProbeAuth,
}

/// Where to connect to reach a listener bound to `addr` (an unspecified
/// address is reached through loopback).
pub fn connect_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// Runs one probe round trip against `target`, bounded by `timeout`.
///
/// It ends by closing the socket without DISCONNECT: after a DISCONNECT
/// rumqttd's connection task may report the disconnection a second time,
/// after the router has already reused the connection's slot, and so drop
/// whichever client connected in between.
async fn probe(target: Target, timeout: Duration) -> anyhow::Result<()> {
    let nonce = format!("{}", warmhouse_service_kit::now_ms());
    let (name, addr) = (target.listener.name(), target.addr);
    let round_trip = async {
        match target.listener.protocol() {
            Protocol::V4 => probe_v4(target, &nonce).await,
            Protocol::V5 => probe_v5(target, &nonce).await,
        }
    };
    tokio::time::timeout(timeout, round_trip)
        .await
        .with_context(|| format!("{name} probe of {addr} timed out after {timeout:?}"))?
        .with_context(|| format!("{name} probe of {addr}"))
}

async fn probe_v4(target: Target, nonce: &str) -> anyhow::Result<()> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};

    let mut options = MqttOptions::new(
        target.client_id,
        target.addr.ip().to_string(),
        target.addr.port(),
    );
    options
        .set_keep_alive(Duration::from_secs(5))
        .set_clean_session(true);
    match &target.auth {
        ProbeAuth::None => {}
        ProbeAuth::Password {
            username, password, ..
        } => {
            options.set_credentials(username.clone(), password.clone());
        }
        ProbeAuth::Tls(tls) => {
            options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
                ca: tls.ca.clone(),
                alpn: None,
                client_auth: Some((tls.cert.clone(), tls.key.clone())),
            }));
        }
    }
    let (client, mut events) = AsyncClient::new(options, 10);
    let topic = target.topic;
    client
        .subscribe(topic.clone(), QoS::AtMostOnce)
        .await
        .context("queueing SUBSCRIBE")?;
    loop {
        match events.poll().await.context("MQTT 3.1.1 connection")? {
            // Publish only once subscribed, so the nonce has a route back.
            Event::Incoming(Packet::SubAck(_)) => client
                .try_publish(
                    topic.clone(),
                    QoS::AtMostOnce,
                    false,
                    nonce.as_bytes().to_vec(),
                )
                .context("queueing PUBLISH")?,
            // Dropping the event loop closes the socket (see `probe`).
            Event::Incoming(Packet::Publish(publish)) if publish.payload == nonce.as_bytes() => {
                return Ok(())
            }
            Event::Incoming(Packet::ConnAck(ack))
                if ack.code != rumqttc::ConnectReturnCode::Success =>
            {
                bail!("broker refused the connection: {:?}", ack.code)
            }
            _ => {}
        }
    }
}

async fn probe_v5(target: Target, nonce: &str) -> anyhow::Result<()> {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let mut options = MqttOptions::new(
        target.client_id,
        target.addr.ip().to_string(),
        target.addr.port(),
    );
    // rumqttc's MQTT 5 client sizes its in-flight table by this limit,
    // 65,535 by default: about 14 MB allocated for every probe. The probe
    // publishes one message at QoS 0.
    options
        .set_keep_alive(Duration::from_secs(5))
        .set_clean_start(true)
        .set_outgoing_inflight_upper_limit(1);
    match &target.auth {
        ProbeAuth::None => {}
        ProbeAuth::Password {
            username, password, ..
        } => {
            options.set_credentials(username.clone(), password.clone());
        }
        // No MQTT 5 listener speaks TLS.
        ProbeAuth::Tls(_) => bail!("the MQTT 5 probe does not speak TLS"),
    }
    let (client, mut events) = AsyncClient::new(options, 10);
    let topic = target.topic;
    client
        .subscribe(topic.clone(), QoS::AtMostOnce)
        .await
        .context("queueing SUBSCRIBE")?;
    loop {
        match events.poll().await.context("MQTT 5 connection")? {
            Event::Incoming(Packet::SubAck(_)) => client
                .try_publish(
                    topic.clone(),
                    QoS::AtMostOnce,
                    false,
                    nonce.as_bytes().to_vec(),
                )
                .context("queueing PUBLISH")?,
            // Dropping the event loop closes the socket (see `probe`).
            Event::Incoming(Packet::Publish(publish)) if publish.payload == nonce.as_bytes() => {
                return Ok(())
            }
            Event::Incoming(Packet::ConnAck(ack)) if ack.code != ConnectReturnCode::Success => {
                bail!("broker refused the connection: {:?}", ack.code)
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timed_out() -> anyhow::Error {
        anyhow::anyhow!("mqtt_v5 probe of 127.0.0.1:1884 timed out after 5s")
    }

    #[test]
    fn a_busy_broker_failing_its_probes_is_not_given_up() {
        let mut failures = ProbeFailures::new(10);
        // Work done between probes: busy, not counted.
        assert!(failures.failed(500, &timed_out()));
        assert!(failures.failed(900, &timed_out()));
        assert_eq!(failures.in_a_row(), 0);
        // Nothing done since: counted.
        assert!(!failures.failed(900, &timed_out()));
        assert!(!failures.failed(900, &timed_out()));
        assert_eq!(failures.in_a_row(), 2);
        // Busy again: the count stays, it does not grow.
        assert!(failures.failed(901, &timed_out()));
        assert_eq!(failures.in_a_row(), 2);
        assert!(!failures.failed(901, &timed_out()));
        assert_eq!(failures.in_a_row(), 3);
        failures.succeeded(950);
        assert_eq!(failures.in_a_row(), 0);
        assert!(
            !failures.failed(950, &timed_out()),
            "nothing done since the success"
        );
        assert_eq!(failures.in_a_row(), 1);
    }

    #[tokio::test]
    async fn a_listener_that_refuses_connections_counts_however_busy_the_broker() {
        // Nothing listens on port 1 of loopback: the connect is refused.
        let mut prober = Prober::new(Listener::V4, "127.0.0.1:1".parse().unwrap());
        let refused = prober
            .probe(Duration::from_secs(2))
            .await
            .expect_err("nothing listens");
        let mut failures = ProbeFailures::new(10);
        assert!(!failures.failed(500, &refused), "{refused:#}");
        assert_eq!(failures.in_a_row(), 1);
        assert!(failures.failed(900, &timed_out()));
        assert_eq!(failures.in_a_row(), 1);
    }

    #[test]
    fn unspecified_addresses_are_probed_on_loopback() {
        let any: SocketAddr = "0.0.0.0:1883".parse().unwrap();
        assert_eq!(connect_addr(any), "127.0.0.1:1883".parse().unwrap());
        let any6: SocketAddr = "[::]:1884".parse().unwrap();
        assert_eq!(connect_addr(any6), "[::1]:1884".parse().unwrap());
        let given: SocketAddr = "10.1.2.3:1883".parse().unwrap();
        assert_eq!(connect_addr(given), given);
    }

    #[test]
    fn confined_probes_stay_under_their_own_tenant_on_no_bridge_channel() {
        let confined = ProbeAuth::Password {
            username: PROBE_DEVICE_ID.into(),
            password: "x".into(),
            confined: true,
        };
        let topic = confined.topic(Listener::V4);
        assert_eq!(topic, "/tenants/warmhouse-broker-probe/probe/mqtt_v4");
        // A valid device topic prefix, but no channel the bridge forwards.
        assert!(warmhouse_contracts::topics::DeviceTopic::parse(&topic).is_err());
        assert!(warmhouse_contracts::ids::DeviceId::new(PROBE_DEVICE_ID).is_ok());
        let internal = ProbeAuth::Password {
            username: "svc".into(),
            password: "x".into(),
            confined: false,
        };
        assert_eq!(
            internal.topic(Listener::Internal),
            "/warmhouse/broker/probe/internal"
        );
    }

    #[tokio::test]
    async fn probe_identity_stays_outside_the_device_tree_and_changes_after_failure() {
        for listener in [Listener::V4, Listener::V5] {
            assert!(!ProbeAuth::None
                .topic(listener)
                .starts_with(warmhouse_contracts::topics::TENANT_ROOT));
            // Nothing listens on port 1 of loopback: the probe fails fast.
            let mut prober = Prober::new(listener, "127.0.0.1:1".parse().unwrap());
            let first = prober.client_id();
            // rumqttd refuses client ids with these characters.
            assert!(!first.contains(['+', '$', '#', '/']), "{first}");
            assert!(prober.probe(Duration::from_secs(2)).await.is_err());
            assert_ne!(prober.client_id(), first);
        }
    }
}
