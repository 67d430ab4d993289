//! WARMHOUSE PATCH (7): publish hooks.
//!
//! An application that embeds the broker can take every PUBLISH of a
//! client before the broker acknowledges it, and decide when the client
//! gets its PUBACK (QoS 1) or PUBREC (QoS 2): for example only once the
//! message is durable in a log outside the broker. Without a hook the router
//! acknowledges a publish as soon as it sits in its in-memory log, so a
//! broker crash loses messages their clients were told are safe.
//!
//! On a listener with a hook ([`crate::ConnectionSettings::set_publish_hook`]):
//! - each valid PUBLISH is shown to [`PublishHook::publish`] in the order it
//!   arrived, then routed to subscribers as usual;
//! - its acknowledgement is sent by the connection's link (not the router)
//!   when the hook's [`Acknowledge`] says so, and acknowledgements leave in
//!   the order their PUBLISHes arrived, as MQTT requires;
//! - a QoS 2 PUBLISH is shown to the hook once (its retransmissions before
//!   PUBREL are not) and routed on arrival; PUBREL gets PUBCOMP from the link;
//! - at most `max_inflight_count` acknowledgements wait at a time; with that
//!   many waiting the link stops reading from the client until one leaves,
//!   so a client that does not respect its own in-flight window is slowed
//!   down by TCP rather than buffered;
//! - a PUBLISH the router would refuse (bad topic alias, a topic outside the
//!   client's tenant prefix, a subscription identifier) is not shown to the
//!   hook: it goes to the router, which disconnects the client as before;
//! - the hook hears of each connection ([`PublishHook::connected`],
//!   [`PublishHook::disconnected`]) and of each last will the broker publishes
//!   ([`PublishHook::will`]).
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use crate::protocol::{PublishProperties, QoS};

/// A future that resolves when a publish is safe. The link polls only the
/// oldest waiting one, so it must make progress without being polled (a
/// channel receiver, or the handle of a spawned task), and dropping it (the
/// client went away) must not cancel the work behind it.
pub type SafeFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// When a publish may be acknowledged.
pub enum Acknowledge {
    /// At once (behind any earlier publish still waiting).
    Now,
    /// When the future resolves.
    When(SafeFuture),
}

/// One client connection, as the hook sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionInfo {
    /// The client id the client sent (or the one the broker assigned).
    pub client_id: String,
    /// Tenant of the connection (certificate or username), if any.
    pub tenant_id: Option<String>,
    /// Unique within this broker process and increasing with each connection.
    pub number: u64,
    /// Wall-clock time the connection was accepted, in ms since the epoch.
    pub connected_at_ms: u64,
    /// `true` for MQTT 5.
    pub mqtt5: bool,
}

impl ConnectionInfo {
    pub(crate) fn new(client_id: String, tenant_id: Option<String>, mqtt5: bool) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let connected_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self {
            client_id,
            tenant_id,
            number: NEXT.fetch_add(1, Ordering::Relaxed),
            connected_at_ms,
            mqtt5,
        }
    }
}

/// A PUBLISH (or a last will) shown to the hook. The topic is resolved
/// (topic aliases applied) and within the client's tenant prefix.
#[derive(Debug, Clone, Copy)]
pub struct HookedPublish<'a> {
    pub topic: &'a str,
    pub payload: &'a Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: Option<&'a PublishProperties>,
}

/// What the embedding application does with publishes. Called on the
/// connection's task: keep it short and never block.
pub trait PublishHook: Send + Sync + 'static {
    /// The router accepted the connection (its CONNACK is on its way);
    /// `will` is its last will, if it has one (within its tenant prefix).
    fn connected(&self, _connection: &ConnectionInfo, _will: Option<HookedPublish<'_>>) {}

    /// A publish arrived; say when it may be acknowledged. For QoS 0 the
    /// answer is ignored (nothing is acknowledged).
    fn publish(&self, connection: &ConnectionInfo, publish: HookedPublish<'_>) -> Acknowledge;

    /// The connection ended (its pending acknowledgements are dropped).
    fn disconnected(&self, _connection: &ConnectionInfo) {}

    /// WARMHOUSE PATCH (19): the connection broke one of its listener's
    /// `ClientLimits` (`"subscriptions"`, `"topic_length"`,
    /// `"topic_levels"`, or `"inflight"` on MQTT 5, patch 24) and is being
    /// disconnected.
    fn limit_exceeded(&self, _connection: &ConnectionInfo, _limit: &'static str) {}

    /// The broker is publishing the connection's last will (after any will
    /// delay; never after a clean DISCONNECT or a resumed session).
    fn will(&self, _connection: &ConnectionInfo, _will: HookedPublish<'_>) {}
}

/// Acknowledgements a link owes its client, in the order of their
/// publishes.
pub(crate) struct OrderedAcks<T> {
    waiting: std::collections::VecDeque<(Option<SafeFuture>, T)>,
    limit: usize,
}

impl<T> OrderedAcks<T> {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            waiting: std::collections::VecDeque::new(),
            limit: limit.max(1),
        }
    }

    pub(crate) fn push(&mut self, wait: Option<SafeFuture>, ack: T) {
        self.waiting.push_back((wait, ack));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Room for more publishes to wait.
    pub(crate) fn has_room(&self) -> bool {
        self.waiting.len() < self.limit
    }

    /// Every acknowledgement that may leave now, oldest first; pending when
    /// none may.
    pub(crate) fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Vec<T>> {
        let mut ready = Vec::new();
        while let Some((wait, _)) = self.waiting.front_mut() {
            if let Some(future) = wait {
                if future.as_mut().poll(cx).is_pending() {
                    break;
                }
            }
            if let Some((_, ack)) = self.waiting.pop_front() {
                ready.push(ack);
            }
        }
        if ready.is_empty() {
            return Poll::Pending;
        }
        // WARMHOUSE PATCH (32): an idle connection holds no room for
        // acknowledgements (about 400 bytes each, kept at the largest the
        // queue ever was); a device publishing every few seconds waits on
        // one at a time.
        if self.waiting.is_empty() {
            self.waiting = std::collections::VecDeque::new();
        }
        Poll::Ready(ready)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::sync::Arc;

    #[tokio::test]
    async fn acknowledgements_leave_in_publish_order() {
        let mut acks = OrderedAcks::new(3);
        let (first_tx, first_rx) = tokio::sync::oneshot::channel::<()>();
        acks.push(
            Some(Box::pin(async move {
                let _ = first_rx.await;
            })),
            1,
        );
        acks.push(None, 2);
        acks.push(None, 3);
        assert!(!acks.has_room());
        let waker = futures_waker();
        let mut cx = Context::from_waker(&waker);
        // The first is not safe yet: nothing may leave, not even the later ones.
        assert!(acks.poll_ready(&mut cx).is_pending());
        first_tx.send(()).unwrap();
        assert_eq!(poll_fn(|cx| acks.poll_ready(cx)).await, vec![1, 2, 3]);
        assert!(acks.is_empty());
        assert!(acks.has_room());
        assert_eq!(acks.waiting.capacity(), 0, "no room held once empty");
    }

    fn futures_waker() -> std::task::Waker {
        struct Noop;
        impl std::task::Wake for Noop {
            fn wake(self: Arc<Self>) {}
        }
        Arc::new(Noop).into()
    }
}
