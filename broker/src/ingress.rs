//! The broker's side of the device ingress (`warmhouse-edge-bridge`): a
//! rumqttd publish hook (Warmhouse patch 7) that hands every publish of a
//! device listener to [`Ingress::accept`] and lets rumqttd send the PUBACK
//! only once the ingress says the publish is safe, and the in-process link
//! commands go out on.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::Context;
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};
use rumqttd::hook::{Acknowledge, ConnectionInfo, HookedPublish, PublishHook};
use rumqttd::local::{LinkRx, LinkTx};
use rumqttd::protocol::QoS;
use warmhouse_edge_bridge::commands::{CommandSink, Publishing};
use warmhouse_edge_bridge::connections::DeviceConnection;
use warmhouse_edge_bridge::Ingress;

use crate::probe::{OPEN_PROBE_TOPICS, PROBE_DEVICE_ID};

/// Shows device publishes to the ingress before rumqttd acknowledges them.
pub struct IngressHook {
    ingress: Arc<Ingress>,
    /// Publishes whose PUBACK is held.
    held: IntGauge,
    /// PUBACKs released.
    released: IntCounter,
    safe_wait: Histogram,
    /// Connections dropped for breaking a device limit (rumqttd patch 19).
    limits_exceeded: IntCounterVec,
}

impl IngressHook {
    pub fn new(ingress: Arc<Ingress>, limits_exceeded: IntCounterVec) -> Arc<Self> {
        let metrics = ingress.metrics();
        Arc::new(Self {
            held: metrics.in_flight.clone(),
            released: metrics.acked.clone(),
            safe_wait: metrics.safe_wait.clone(),
            limits_exceeded,
            ingress,
        })
    }
}

fn device_connection(info: &ConnectionInfo) -> DeviceConnection {
    DeviceConnection {
        number: info.number,
        connected_at_ms: i64::try_from(info.connected_at_ms).unwrap_or(i64::MAX),
        tenant: info.tenant_id.clone(),
    }
}

/// The self-probe's own round trips: never device data.
fn is_probe(info: &ConnectionInfo, topic: &str) -> bool {
    info.tenant_id.as_deref() == Some(PROBE_DEVICE_ID) || topic.starts_with(OPEN_PROBE_TOPICS)
}

/// Counts a held PUBACK until it is released or its connection goes.
struct Held {
    held: IntGauge,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.held.dec();
    }
}

impl PublishHook for IngressHook {
    fn connected(&self, info: &ConnectionInfo, will: Option<HookedPublish<'_>>) {
        self.ingress
            .connected(&device_connection(info), will.map(|w| w.topic));
    }

    fn publish(&self, info: &ConnectionInfo, publish: HookedPublish<'_>) -> Acknowledge {
        if is_probe(info, publish.topic) {
            return Acknowledge::Now;
        }
        let safe = self
            .ingress
            .accept(&device_connection(info), publish.topic, publish.payload);
        if publish.qos == QoS::AtMostOnce {
            // Fire and forget: made safe all the same, nobody waits.
            return Acknowledge::Now;
        }
        self.held.inc();
        let held = Held {
            held: self.held.clone(),
        };
        let released = self.released.clone();
        let safe_wait = self.safe_wait.clone();
        let arrived = Instant::now();
        Acknowledge::When(Box::pin(async move {
            // The task fails only when it was cancelled: the runtime that
            // runs deliveries is shutting down (SIGTERM) while rumqttd's
            // connection tasks, on runtimes of their own, still write
            // PUBACKs. The publish is not known to be safe then, so its
            // PUBACK must never leave: the device sends it again elsewhere.
            if safe.await.is_err() {
                std::future::pending::<()>().await;
            }
            safe_wait.observe(arrived.elapsed().as_secs_f64());
            released.inc();
            drop(held);
        }))
    }

    fn disconnected(&self, info: &ConnectionInfo) {
        self.ingress.disconnected(&device_connection(info));
    }

    fn limit_exceeded(&self, info: &ConnectionInfo, limit: &'static str) {
        tracing::warn!(client_id = %info.client_id, limit, "device connection broke a limit: dropped");
        self.limits_exceeded.with_label_values(&[limit]).inc();
    }

    fn will(&self, info: &ConnectionInfo, will: HookedPublish<'_>) {
        if !is_probe(info, will.topic) {
            self.ingress
                .will(&device_connection(info), will.topic, will.payload);
        }
    }
}

/// Commands enter rumqttd's router through an in-process link whose QoS 1
/// publishes the router routes without acknowledging (patch 7).
pub struct RouterCommandSink {
    link: Arc<tokio::sync::Mutex<LinkTx>>,
    /// Kept open: the router drops a link whose receiver is gone.
    _rx: Mutex<LinkRx>,
}

impl RouterCommandSink {
    pub fn new(broker: &rumqttd::Broker, client_id: &str) -> anyhow::Result<Arc<Self>> {
        let (tx, rx) = broker
            .unacknowledged_link(client_id)
            .context("opening the in-process command link to rumqttd")?;
        Ok(Arc::new(Self {
            link: Arc::new(tokio::sync::Mutex::new(tx)),
            _rx: Mutex::new(rx),
        }))
    }
}

impl CommandSink for RouterCommandSink {
    fn publish(&self, topic: String, payload: Vec<u8>) -> Publishing {
        let link = self.link.clone();
        Box::pin(async move {
            link.lock()
                .await
                .publish_with_qos(topic, payload, QoS::AtLeastOnce)
                .await
                .context("rumqttd's router is gone")?;
            Ok(())
        })
    }
}
