//! Self-probe: a real MQTT client (rumqttc) connects to one of our
//! listeners, subscribes to a private topic, publishes a nonce and waits to
//! receive it. Success proves the listener accepts, the router routes and
//! delivers; a TCP connect alone would not catch a wedged router.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context};

/// Protocol spoken on a listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    V4,
    V5,
}

impl Listener {
    pub fn name(self) -> &'static str {
        match self {
            Listener::V4 => "mqtt_v4",
            Listener::V5 => "mqtt_v5",
        }
    }

    /// Outside `/tenants/`, so no bridge filter ever sees probe traffic.
    fn topic(self) -> String {
        format!("/warmhouse/broker/probe/{}", self.name())
    }
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
    generation: u64,
}

impl Prober {
    pub fn new(listener: Listener, addr: SocketAddr) -> Self {
        Self {
            listener,
            addr: connect_addr(addr),
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
        let result = probe(self.listener, self.addr, self.client_id(), timeout).await;
        if result.is_err() {
            self.generation += 1;
        }
        result
    }
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

/// Runs one probe round trip against `addr`, bounded by `timeout`.
///
/// It ends by closing the socket without DISCONNECT: after a DISCONNECT
/// rumqttd's connection task may report the disconnection a second time,
/// after the router has already reused the connection's slot, and so drop
/// whichever client connected in between.
async fn probe(
    listener: Listener,
    addr: SocketAddr,
    client_id: String,
    timeout: Duration,
) -> anyhow::Result<()> {
    let nonce = format!("{}", warmhouse_service_kit::now_ms());
    let round_trip = async {
        match listener {
            Listener::V4 => probe_v4(listener, addr, client_id, &nonce).await,
            Listener::V5 => probe_v5(listener, addr, client_id, &nonce).await,
        }
    };
    tokio::time::timeout(timeout, round_trip)
        .await
        .with_context(|| {
            format!(
                "{} probe of {addr} timed out after {timeout:?}",
                listener.name()
            )
        })?
        .with_context(|| format!("{} probe of {addr}", listener.name()))
}

async fn probe_v4(
    listener: Listener,
    addr: SocketAddr,
    client_id: String,
    nonce: &str,
) -> anyhow::Result<()> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options
        .set_keep_alive(Duration::from_secs(5))
        .set_clean_session(true);
    let (client, mut events) = AsyncClient::new(options, 10);
    let topic = listener.topic();
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

async fn probe_v5(
    listener: Listener,
    addr: SocketAddr,
    client_id: String,
    nonce: &str,
) -> anyhow::Result<()> {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let mut options = MqttOptions::new(client_id, addr.ip().to_string(), addr.port());
    options
        .set_keep_alive(Duration::from_secs(5))
        .set_clean_start(true);
    let (client, mut events) = AsyncClient::new(options, 10);
    let topic = listener.topic();
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

    #[test]
    fn unspecified_addresses_are_probed_on_loopback() {
        let any: SocketAddr = "0.0.0.0:1883".parse().unwrap();
        assert_eq!(connect_addr(any), "127.0.0.1:1883".parse().unwrap());
        let any6: SocketAddr = "[::]:1884".parse().unwrap();
        assert_eq!(connect_addr(any6), "[::1]:1884".parse().unwrap());
        let given: SocketAddr = "10.1.2.3:1883".parse().unwrap();
        assert_eq!(connect_addr(given), given);
    }

    #[tokio::test]
    async fn probe_identity_stays_outside_the_device_tree_and_changes_after_failure() {
        for listener in [Listener::V4, Listener::V5] {
            assert!(!listener
                .topic()
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
