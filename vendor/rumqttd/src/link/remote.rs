use crate::hook::{Acknowledge, ConnectionInfo, HookedPublish, OrderedAcks, PublishHook};
use crate::link::local::{LinkError, LinkRx, LinkTx};
use crate::link::network;
use crate::link::network::Network;
use crate::protocol;
use crate::local::LinkBuilder;
use crate::protocol::{
    ConnAck, Connect, ConnectReturnCode, Disconnect, DisconnectReasonCode, LastWill, LastWillProperties, Login, Packet, Protocol,
    PubAck, PubAckReason, PubComp, PubCompReason, PubRec, PubRecReason, Publish,
    PublishProperties, QoS,
};
use crate::router::{Event, Notification, TOPIC_ALIAS_MAX};
use crate::{ClientLimits, ConnectionId, ConnectionSettings};

use flume::{RecvError, SendError, Sender, TrySendError};
use bytes::Bytes;
use std::cmp::min;
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::sync::Arc;
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::time::error::Elapsed;
use tokio::{select, time};
use tracing::{trace, Span};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O")]
    Io(#[from] io::Error),
    #[error("Not connect packet")]
    NotConnectPacket(Packet),
    /// WARMHOUSE PATCH (13)
    #[error("PUBLISH with an invalid topic name {0:?}")]
    InvalidTopicName(String),
    /// WARMHOUSE PATCH (15)
    #[error("packet of {0} bytes over the listener's maximum")]
    PacketTooLarge(usize),
    /// WARMHOUSE PATCH (19)
    #[error("client limit exceeded: {0}")]
    LimitExceeded(&'static str),
    #[error("Network {0}")]
    Network(#[from] network::Error),
    #[error("Timeout")]
    Timeout(#[from] Elapsed),
    #[error("Channel send error")]
    Send(#[from] SendError<(ConnectionId, Event)>),
    #[error("Channel recv error")]
    Recv(#[from] RecvError),
    #[error("Got new session, disconnecting old one")]
    SessionEnd,
    #[error("Persistent session requires valid client id")]
    InvalidClientId,
    #[error("Unexpected router message")]
    NotConnectionAck,
    #[error("ConnAck error {0}")]
    ConnectionAck(String),
    #[error("Authentication error")]
    InvalidAuth,
    /// WARMHOUSE PATCH (30)
    #[error("Authentication unavailable")]
    AuthUnavailable,
    #[error("Channel try send error")]
    TrySend(#[from] TrySendError<(ConnectionId, Event)>),
    #[error("Link error = {0}")]
    Link(#[from] LinkError),
}

/// Orchestrates between Router and Network.
pub struct RemoteLink<P> {
    connect: Connect,
    pub(crate) connection_id: ConnectionId,
    /// WARMHOUSE PATCH (25): see `Event::LinkEnded`.
    pub(crate) incarnation: u64,
    network: Network<P>,
    link_tx: LinkTx,
    link_rx: LinkRx,
    notifications: VecDeque<Notification>,
    pub(crate) will_delay_interval: u32,
    /// WARMHOUSE PATCH (7): set on a listener with a publish hook.
    hooked: Option<Hooked>,
    /// WARMHOUSE PATCH (19): this client's limits, and the filters it has
    /// subscribed on this connection.
    limits: ClientLimits,
    subscribed: HashSet<String>,
    /// WARMHOUSE PATCH (24): the client's QoS 1 and 2 publishes without a
    /// PUBACK or PUBCOMP sent yet (counted when `limits.max_inflight` is set).
    unacked: Unacked,
}

/// WARMHOUSE PATCH (24): QoS 1 and 2 PUBLISHes of the client the broker has
/// not sent a PUBACK or PUBCOMP for (MQTT 5, 3.3.4: what Receive Maximum
/// bounds). Whoever acknowledges (the publish hook's link or the router),
/// every QoS 1 PUBLISH gets one PUBACK, and a QoS 2 one is done with its
/// PUBCOMP (its retransmissions before that are the same publish).
#[derive(Default)]
struct Unacked {
    qos1: usize,
    /// Packet id of each QoS 2 flow, and whether its PUBREC went out (the
    /// client's PUBREL is awaited then).
    qos2: HashMap<u16, bool>,
}

impl Unacked {
    /// What Receive Maximum counts.
    fn count(&self) -> usize {
        self.qos1 + self.qos2.len()
    }

    /// What waits on the broker (not on the client's PUBREL): reading stops
    /// on this, or a QoS 2 flow could never get its PUBREL read.
    fn awaiting_broker(&self) -> usize {
        self.qos1 + self.qos2.values().filter(|pubrec_sent| !**pubrec_sent).count()
    }

    /// `count` once `packets` (read from the client) are in.
    fn with(&self, packets: &VecDeque<Packet>) -> usize {
        let mut new_qos2 = HashSet::new();
        let mut count = self.count();
        for packet in packets {
            match packet {
                Packet::Publish(publish, _) if publish.qos == QoS::AtLeastOnce => count += 1,
                Packet::Publish(publish, _) if publish.qos == QoS::ExactlyOnce => {
                    if !self.qos2.contains_key(&publish.pkid) && new_qos2.insert(publish.pkid) {
                        count += 1;
                    }
                }
                _ => {}
            }
        }
        count
    }

    fn received(&mut self, packets: &VecDeque<Packet>) {
        for packet in packets {
            match packet {
                Packet::Publish(publish, _) if publish.qos == QoS::AtLeastOnce => self.qos1 += 1,
                Packet::Publish(publish, _) if publish.qos == QoS::ExactlyOnce => {
                    self.qos2.entry(publish.pkid).or_insert(false);
                }
                _ => {}
            }
        }
    }

    fn sent<'a>(&mut self, packets: impl IntoIterator<Item = &'a Packet>) {
        for packet in packets {
            match packet {
                Packet::PubAck(..) => self.qos1 = self.qos1.saturating_sub(1),
                Packet::PubRec(pubrec, _) => {
                    if let Some(pubrec_sent) = self.qos2.get_mut(&pubrec.pkid) {
                        *pubrec_sent = true;
                    }
                }
                Packet::PubComp(pubcomp, _) => {
                    self.qos2.remove(&pubcomp.pkid);
                }
                _ => {}
            }
        }
    }
}

/// WARMHOUSE PATCH (7): a link whose publishes a hook sees first; the link
/// acknowledges them in arrival order when the hook says they are safe.
struct Hooked {
    hook: Arc<dyn PublishHook>,
    info: ConnectionInfo,
    acks: OrderedAcks<Packet>,
    /// The topic aliases the client set (the router keeps the same map), so
    /// the hook sees full topic names.
    aliases: HashMap<u16, Bytes>,
    tenant_prefix: Option<String>,
    /// QoS 2 packet ids shown to the hook and not yet released by PUBREL.
    qos2_received: HashSet<u16>,
    /// A publish the router will refuse was passed on: it disconnects the
    /// client, so nothing after it is shown to the hook.
    refused: bool,
    /// The last will, until a DISCONNECT discards it.
    will: Option<LastWill>,
    will_properties: Option<LastWillProperties>,
}

impl Hooked {
    /// The last will, unless the router would refuse it (outside the tenant
    /// prefix) or a DISCONNECT discarded it.
    fn will_in_prefix(&self) -> Option<&LastWill> {
        self.will.as_ref().filter(|will| {
            let topic = std::str::from_utf8(&will.topic).unwrap_or_default();
            self.tenant_prefix
                .as_ref()
                .map_or(true, |prefix| topic.starts_with(prefix.as_str()))
        })
    }

    /// Shows each publish to the hook and queues its acknowledgement;
    /// answers PUBREL. What the router must see stays in `packets`.
    fn take(&mut self, packets: &mut VecDeque<Packet>) {
        let mut kept = VecDeque::with_capacity(packets.len());
        for packet in packets.drain(..) {
            match packet {
                Packet::Publish(mut publish, properties) if !self.refused => {
                    if !self.resolve(&mut publish, properties.as_ref()) {
                        self.refused = true;
                        kept.push_back(Packet::Publish(publish, properties));
                        continue;
                    }
                    // Checked by `resolve`.
                    let topic = std::str::from_utf8(&publish.topic).unwrap_or_default();
                    let pkid = publish.pkid;
                    let duplicate_qos2 =
                        publish.qos == QoS::ExactlyOnce && self.qos2_received.contains(&pkid);
                    if duplicate_qos2 {
                        // Shown and routed when it first came: only PUBREC again.
                        self.acks.push(None, pubrec(pkid));
                        continue;
                    }
                    let shown = HookedPublish {
                        topic,
                        payload: &publish.payload,
                        qos: publish.qos,
                        retain: publish.retain,
                        properties: properties.as_ref(),
                    };
                    let acknowledge = self.hook.publish(&self.info, shown);
                    let wait = match acknowledge {
                        Acknowledge::Now => None,
                        Acknowledge::When(future) => Some(future),
                    };
                    match publish.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => self.acks.push(
                            wait,
                            Packet::PubAck(
                                PubAck {
                                    pkid,
                                    reason: PubAckReason::Success,
                                },
                                None,
                            ),
                        ),
                        QoS::ExactlyOnce => {
                            self.qos2_received.insert(pkid);
                            self.acks.push(wait, pubrec(pkid));
                        }
                    }
                    kept.push_back(Packet::Publish(publish, properties));
                }
                Packet::PubRel(pubrel, _) if !self.refused => {
                    let reason = if self.qos2_received.remove(&pubrel.pkid) {
                        PubCompReason::Success
                    } else {
                        PubCompReason::PacketIdentifierNotFound
                    };
                    let pubcomp = PubComp {
                        pkid: pubrel.pkid,
                        reason,
                    };
                    self.acks.push(None, Packet::PubComp(pubcomp, None));
                }
                Packet::Disconnect(..) => {
                    self.will = None;
                    self.will_properties = None;
                    kept.push_back(packet);
                }
                packet => kept.push_back(packet),
            }
        }
        *packets = kept;
    }

    /// Puts the publish's full topic in it, applying (and recording) its
    /// topic alias; `false` when the router will refuse it: the same checks,
    /// in the same order, as the router's `append_to_commitlog`.
    fn resolve(&mut self, publish: &mut Publish, properties: Option<&PublishProperties>) -> bool {
        if properties.is_some_and(|p| !p.subscription_identifiers.is_empty()) {
            return false;
        }
        if let Some(alias) = properties.and_then(|p| p.topic_alias) {
            if alias == 0 || alias > TOPIC_ALIAS_MAX {
                return false;
            }
            if publish.topic.is_empty() {
                match self.aliases.get(&alias) {
                    Some(topic) => publish.topic = topic.clone(),
                    None => return false,
                }
            } else {
                self.aliases.insert(alias, publish.topic.clone());
            }
        }
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            return false;
        };
        self.tenant_prefix
            .as_ref()
            .map_or(true, |prefix| topic.starts_with(prefix.as_str()))
    }
}

fn pubrec(pkid: u16) -> Packet {
    Packet::PubRec(
        PubRec {
            pkid,
            reason: PubRecReason::Success,
        },
        None,
    )
}

impl<P: Protocol> RemoteLink<P> {
    #[allow(clippy::too_many_arguments)]
    pub async fn new(
        router_tx: Sender<(ConnectionId, Event)>,
        tenant_id: Option<String>,
        mut network: Network<P>,
        connect_packet: Packet,
        dynamic_filters: bool,
        assigned_client_id: Option<String>,
        // WARMHOUSE PATCH (7)
        publish_hook: Option<Arc<dyn PublishHook>>,
        max_inflight_count: usize,
        mqtt5: bool,
        // WARMHOUSE PATCH (19)
        limits: ClientLimits,
    ) -> Result<RemoteLink<P>, Error> {
        let Packet::Connect(connect, props, lastwill, lastwill_props, _) = connect_packet else {
            return Err(Error::NotConnectPacket(connect_packet));
        };

        // Register this connection with the router. Router replys with ack which if ok will
        // start the link. Router can sometimes reject the connection (ex max connection limit)
        let client_id = assigned_client_id.as_ref().unwrap_or(&connect.client_id);
        let clean_session = connect.clean_session;

        let topic_alias_max = props.as_ref().and_then(|p| p.topic_alias_max);
        let session_expiry = props
            .as_ref()
            .and_then(|p| p.session_expiry_interval)
            .unwrap_or(0);

        let delay_interval = lastwill_props
            .as_ref()
            .and_then(|f| f.delay_interval)
            .unwrap_or(0);

        // The Server delays publishing the Client’s Will Message until
        // the Will Delay Interval has passed or the Session ends, whichever happens first
        let will_delay_interval = min(session_expiry, delay_interval);

        let hooked = publish_hook.map(|hook| Hooked {
            hook,
            info: ConnectionInfo::new(client_id.clone(), tenant_id.clone(), mqtt5),
            acks: OrderedAcks::new(max_inflight_count),
            aliases: HashMap::new(),
            tenant_prefix: tenant_id.as_ref().map(|t| format!("/tenants/{t}/")),
            qos2_received: HashSet::new(),
            refused: false,
            will: lastwill.clone(),
            will_properties: lastwill_props.clone(),
        });

        // WARMHOUSE PATCH (25)
        let router = router_tx.clone();
        let (link_tx, link_rx, notification) = LinkBuilder::new(client_id, router_tx)
            .tenant_id(tenant_id)
            .clean_session(clean_session)
            .last_will(lastwill)
            .last_will_properties(lastwill_props)
            .dynamic_filters(dynamic_filters)
            .topic_alias_max(topic_alias_max.unwrap_or(0))
            .client_max_packet_size(props.as_ref().and_then(|p| p.max_packet_size))
            .session_expiry(mqtt5.then_some(session_expiry))
            .link_acks(hooked.is_some())
            // WARMHOUSE PATCH (10): without blocking the listener's thread.
            .build_async()
            .await?;

        let id = link_rx.id();
        let incarnation = link_rx.incarnation();
        Span::current().record("connection_id", id);

        if let Some(mut packet) = notification.into() {
            if let Packet::ConnAck(_ack, props) = &mut packet {
                let mut new_props = props.clone().unwrap_or_default();
                new_props.assigned_client_identifier = assigned_client_id;
                // WARMHOUSE PATCH (15): MQTT 5 clients learn the largest
                // packet this listener takes (3.2.2.3.6) instead of finding
                // out by being disconnected.
                new_props.max_packet_size =
                    Some(u32::try_from(network.max_incoming_size()).unwrap_or(u32::MAX));
                // WARMHOUSE PATCH (24): how many QoS 1 and 2 publishes the
                // client may have unacknowledged (3.2.2.3.3).
                if mqtt5 {
                    new_props.receive_max = limits.max_inflight.map(|max| max.max(1));
                }
                *props = Some(new_props);
                // WARMHOUSE PATCH (25): the router has registered the
                // connection; if the client is gone before its CONNACK (a
                // reset connection), the router must hear it. Upstream
                // returned the error without a word and the connection
                // stayed in the router for good, client id and all.
                if let Err(error) = network.write(packet).await {
                    router.send_async((id, Event::LinkEnded(incarnation))).await.ok();
                    return Err(error.into());
                }
            }
        }

        if let Some(hooked) = &hooked {
            let will = hooked.will_in_prefix();
            let will = will.and_then(|will| {
                Some(HookedPublish {
                    topic: std::str::from_utf8(&will.topic).ok()?,
                    payload: &will.message,
                    qos: will.qos,
                    retain: will.retain,
                    properties: None,
                })
            });
            hooked.hook.connected(&hooked.info, will);
        }

        Ok(RemoteLink {
            connect,
            connection_id: id,
            incarnation,
            network,
            link_tx,
            link_rx,
            // WARMHOUSE PATCH (26): grows with use.
            notifications: VecDeque::new(),
            will_delay_interval,
            hooked,
            limits,
            subscribed: HashSet::new(),
            unacked: Unacked::default(),
        })
    }

    /// WARMHOUSE PATCH (19): the first limit this batch breaks, with the
    /// MQTT 5 reason code; records the batch's subscriptions.
    fn broken_limit(&mut self, packets: &VecDeque<Packet>) -> Option<(DisconnectReasonCode, &'static str)> {
        let limits = &self.limits;
        let too_big = |topic: &str| {
            if limits.max_topic_length.is_some_and(|max| topic.len() > max) {
                Some("topic_length")
            } else if limits.max_topic_levels.is_some_and(|max| topic.split('/').count() > max) {
                Some("topic_levels")
            } else {
                None
            }
        };
        for packet in packets {
            match packet {
                Packet::Publish(publish, _) => {
                    let topic = std::str::from_utf8(&publish.topic).unwrap_or_default();
                    if let Some(limit) = too_big(topic) {
                        return Some((DisconnectReasonCode::TopicNameInvalid, limit));
                    }
                }
                Packet::Subscribe(subscribe, _) => {
                    for filter in &subscribe.filters {
                        if let Some(limit) = too_big(&filter.path) {
                            return Some((DisconnectReasonCode::TopicFilterInvalid, limit));
                        }
                        if limits.max_subscriptions.is_some() {
                            self.subscribed.insert(filter.path.clone());
                        }
                    }
                    if limits.max_subscriptions.is_some_and(|max| self.subscribed.len() > max) {
                        return Some((DisconnectReasonCode::QuotaExceeded, "subscriptions"));
                    }
                }
                Packet::Unsubscribe(unsubscribe, _) => {
                    for filter in &unsubscribe.filters {
                        self.subscribed.remove(filter);
                    }
                }
                _ => {}
            }
        }
        None
    }

    /// WARMHOUSE PATCH (7): the hook and what it needs once the link has
    /// ended: tells it the connection is gone, and returns what it needs to
    /// hear of the last will later (none after a clean DISCONNECT).
    pub(crate) fn end_hooked(&mut self) -> Option<EndedHook> {
        let hooked = self.hooked.as_mut()?;
        hooked.hook.disconnected(&hooked.info);
        let will = hooked.will_in_prefix().cloned();
        hooked.will = None;
        Some(EndedHook {
            hook: hooked.hook.clone(),
            info: hooked.info.clone(),
            will: will.map(|will| (will, hooked.will_properties.take())),
        })
    }

    /// WARMHOUSE PATCH (13): ends the connection for `error`; on MQTT 5 the
    /// client is told why first (a 3.1.1 server sends no DISCONNECT).
    ///
    /// WARMHOUSE PATCH (32): callers box this future (`Box::pin`): it holds
    /// an error and a packet, over 2 KB, and a refusal is rare, while an
    /// `.await` of it unboxed would make every connection's task that much
    /// larger for its whole life.
    async fn refuse(&mut self, reason_code: DisconnectReasonCode, error: Error) -> Error {
        if self.network.is_v5() {
            let disconnect = Disconnect { reason_code };
            // Best effort: the connection ends either way.
            let _ = self.network.write(Packet::Disconnect(disconnect, None)).await;
        }
        error
    }

    pub async fn start(&mut self) -> Result<(), Error> {
        self.network.set_keepalive(self.connect.keep_alive);
        let mut read = VecDeque::new();

        // Note:
        // Shouldn't result in bounded queue deadlocks because of blocking n/w send
        loop {
            // WARMHOUSE PATCH (7): with as many acknowledgements waiting as
            // allowed, stop reading: TCP slows the client down.
            let can_read = self.hooked.as_ref().map_or(true, |h| h.acks.has_room());
            // WARMHOUSE PATCH (24): an MQTT 3.1.1 client cannot be told its
            // in-flight limit, so at the limit the link stops reading it
            // (an MQTT 5 client was told, and is read on so that breaking
            // the limit is seen).
            let max_inflight = self.limits.max_inflight.map(|max| usize::from(max.max(1)));
            let can_read = can_read
                && (self.network.is_v5()
                    || max_inflight.map_or(true, |max| self.unacked.awaiting_broker() < max));
            let acks_waiting = self.hooked.as_ref().is_some_and(|h| !h.acks.is_empty());
            select! {
                o = self.network.read(), if can_read => {
                    let batch = o.and_then(|packet| {
                        read.push_back(packet);
                        self.network.readv(&mut read)
                    });
                    // WARMHOUSE PATCH (15): a packet over the listener's
                    // `max_payload_size` ends an MQTT 5 connection with
                    // DISCONNECT 0x95 (upstream closed it without a word).
                    if let Err(network::Error::Protocol(
                        protocol::Error::PayloadSizeLimitExceeded(size),
                    )) = batch
                    {
                        let reason = DisconnectReasonCode::PacketTooLarge;
                        return Err(Box::pin(self.refuse(reason, Error::PacketTooLarge(size))).await);
                    }
                    batch?;
                    // WARMHOUSE PATCH (13): before the hook or the router
                    // sees (and acknowledges) anything of this batch.
                    if let Some((reason, error)) = read.iter().find_map(invalid_publish) {
                        return Err(Box::pin(self.refuse(reason, error)).await);
                    }
                    // WARMHOUSE PATCH (19)
                    if let Some((reason, limit)) = self.broken_limit(&read) {
                        if let Some(hooked) = &self.hooked {
                            hooked.hook.limit_exceeded(&hooked.info, limit);
                        }
                        return Err(Box::pin(self.refuse(reason, Error::LimitExceeded(limit))).await);
                    }
                    // WARMHOUSE PATCH (24): more QoS 1 and 2 publishes
                    // unacknowledged than the Receive Maximum the CONNACK
                    // stated: DISCONNECT 0x93 (MQTT 5, 3.3.4), and nothing of
                    // the batch is acknowledged or routed.
                    if let Some(max) = max_inflight {
                        if self.network.is_v5() && self.unacked.with(&read) > max {
                            if let Some(hooked) = &self.hooked {
                                hooked.hook.limit_exceeded(&hooked.info, "inflight");
                            }
                            let reason = DisconnectReasonCode::ReceiveMaximumExceeded;
                            let error = Error::LimitExceeded("inflight");
                            return Err(Box::pin(self.refuse(reason, error)).await);
                        }
                        self.unacked.received(&read);
                    }
                    if let Some(hooked) = &mut self.hooked {
                        hooked.take(&mut read);
                    }
                    let len = read.len();
                    if len > 0 {
                        self.link_tx.buffer().extend(read.drain(..));
                        trace!("Packets read from network, count = {}", len);
                        self.link_tx.notify().await?;
                    }
                }
                // WARMHOUSE PATCH (7): acknowledgements the hook released.
                acks = std::future::poll_fn(|cx| match &mut self.hooked {
                    Some(hooked) => hooked.acks.poll_ready(cx),
                    None => std::task::Poll::Pending,
                }), if acks_waiting => {
                    // WARMHOUSE PATCH (24)
                    if max_inflight.is_some() {
                        self.unacked.sent(&acks);
                    }
                    self.network.writev(acks.into()).await?;
                }
                // Receive from router when previous when state isn't in collision
                // due to previously received data request
                o = self.link_rx.exchange(&mut self.notifications) => {
                    o?;
                    let mut packets = VecDeque::new();
                    let mut unscheduled = false;

                    for notif in self.notifications.drain(..) {
                        if let Some(packet) = notif.into() {
                            packets.push_back(packet);
                        } else {
                            unscheduled = true;
                        }

                    }
                    // WARMHOUSE PATCH (24): acknowledgements from the router
                    // (a listener without a publish hook).
                    if max_inflight.is_some() {
                        self.unacked.sent(&packets);
                    }
                    self.network.writev(packets).await?;
                    if unscheduled {
                        self.link_rx.wake().await?;
                    }
                }
            }
        }
    }
}

/// WARMHOUSE PATCH (13): what is wrong with a PUBLISH topic that MQTT
/// forbids, with the MQTT 5 reason code: wildcards (3.3.2-2), U+0000 or
/// invalid UTF-8 (1.5.3-1, 1.5.3-2), or empty (4.7.3-1) unless an MQTT 5
/// topic alias stands for it (3.3.2.3.4; the router checks the alias).
/// Upstream acknowledged and routed such topics.
fn invalid_publish(packet: &Packet) -> Option<(DisconnectReasonCode, Error)> {
    let Packet::Publish(publish, properties) = packet else {
        return None;
    };
    let alias = properties.as_ref().and_then(|p| p.topic_alias);
    let valid = match std::str::from_utf8(&publish.topic) {
        Ok("") => alias.is_some(),
        Ok(topic) => protocol::valid_topic(topic) && !topic.contains('\0'),
        Err(_) => false,
    };
    (!valid).then(|| {
        let topic = String::from_utf8_lossy(&publish.topic).into_owned();
        (
            DisconnectReasonCode::TopicNameInvalid,
            Error::InvalidTopicName(topic),
        )
    })
}

/// WARMHOUSE PATCH (7): a publish hook after its connection ended.
pub(crate) struct EndedHook {
    pub(crate) hook: Arc<dyn PublishHook>,
    pub(crate) info: ConnectionInfo,
    pub(crate) will: Option<(LastWill, Option<LastWillProperties>)>,
}

impl EndedHook {
    /// Shows the hook the last will the broker is publishing now.
    pub(crate) fn publish_will(self) {
        let Some((will, properties)) = self.will else {
            return;
        };
        let Ok(topic) = std::str::from_utf8(&will.topic) else {
            return;
        };
        let properties = properties.map(|props| PublishProperties {
            payload_format_indicator: props.payload_format_indicator,
            message_expiry_interval: props.message_expiry_interval,
            response_topic: props.response_topic,
            correlation_data: props.correlation_data,
            user_properties: props.user_properties,
            content_type: props.content_type,
            ..Default::default()
        });
        self.hook.will(
            &self.info,
            HookedPublish {
                topic,
                payload: &will.message,
                qos: will.qos,
                retain: will.retain,
                properties: properties.as_ref(),
            },
        );
    }
}

/// Read MQTT connect packet from network and verify it.
/// authentication and checks are done here.
///
/// WARMHOUSE PATCH (3): `certificate` is `(tenant id, certificate sha256)`
/// of a connection that presented a client certificate.
pub async fn mqtt_connect<P>(
    config: Arc<ConnectionSettings>,
    network: &mut Network<P>,
    certificate: Option<(&str, &str)>,
) -> Result<Packet, Error>
where
    P: Protocol,
{
    // Wait for MQTT connect packet and error out if it's not received in time to prevent
    // DOS attacks by filling total connections that the server can handle with idle open
    // connections which results in server rejecting new connections
    let connection_timeout_ms = config.connection_timeout_ms.into();
    let packet = time::timeout(Duration::from_millis(connection_timeout_ms), async {
        let packet = network.read().await?;
        Ok::<_, network::Error>(packet)
    })
    .await??;

    let (connect, _props, login) = match packet {
        Packet::Connect(ref connect, ref props, _, _, ref login) => (connect, props, login),
        packet => return Err(Error::NotConnectPacket(packet)),
    };

    Span::current().record("client_id", &connect.client_id);

    // WARMHOUSE PATCH (5): a refused client gets CONNACK "not authorized"
    // before the connection closes (upstream closed it without a word), so
    // a device can tell a refusal from a network failure and back off.
    // WARMHOUSE PATCH (30): "server unavailable" when the auth handler could
    // not decide (its user store down or busy).
    if let Err(e) = handle_auth(
        config.clone(),
        login.as_ref(),
        &connect.client_id,
        certificate,
    )
    .await
    {
        let code = match e {
            Error::AuthUnavailable => ConnectReturnCode::ServerUnavailable,
            _ => ConnectReturnCode::NotAuthorized,
        };
        let ack = ConnAck {
            session_present: false,
            code,
        };
        // Best effort: the refusal stands whether or not the client reads it.
        let _ = network.write(Packet::ConnAck(ack, None)).await;
        return Err(e);
    }

    // WARMHOUSE PATCH (11): keep alive 0 is legal (it turns the mechanism
    // off); upstream refused it without a CONNACK (issue #943).

    let empty_client_id = connect.client_id.is_empty();
    let clean_session = connect.clean_session;

    if empty_client_id && !clean_session {
        let ack = ConnAck {
            session_present: false,
            code: ConnectReturnCode::ClientIdentifierNotValid,
        };

        let packet = Packet::ConnAck(ack, None);
        network.write(packet).await?;

        return Err(Error::InvalidClientId);
    }

    // Ok((connect, props, lastwill, lastwill_props))
    Ok(packet)
}

async fn handle_auth(
    config: Arc<ConnectionSettings>,
    login: Option<&Login>,
    client_id: &str,
    certificate: Option<(&str, &str)>,
) -> Result<(), Error> {
    if config.auth.is_none() && config.external_auth.is_none() {
        return Ok(());
    }

    // WARMHOUSE PATCH (3): the certificate already authenticated the client;
    // the external handler decides whether that tenant may connect now (a
    // disabled or deleted device may not), called as
    // (client id, tenant id, certificate sha256) whatever login the CONNECT
    // carried. Its listener tells the handler which kind of call it gets.
    if let (Some((tenant_id, cert_sha256)), Some(auth)) = (certificate, &config.external_auth) {
        let outcome = auth(
            client_id.to_owned(),
            tenant_id.to_owned(),
            cert_sha256.to_owned(),
        )
        .await;
        return auth_result(outcome);
    }

    // if authentication is configured and connect packet doesn't have login details
    // return an error
    let Some(login) = login else {
        return Err(Error::InvalidAuth);
    };

    let username = &login.username;
    let password = &login.password;

    if let Some(auth) = &config.external_auth {
        let outcome = auth(
            client_id.to_owned(),
            username.to_owned(),
            password.to_owned(),
        )
        .await;
        return auth_result(outcome);
    }

    if let Some(pairs) = &config.auth {
        if let Some(stored_password) = pairs.get(username) {
            if stored_password.as_bytes().ct_eq(password.as_bytes()).into() {
                return Ok(());
            }
        }

        return Err(Error::InvalidAuth);
    }

    Err(Error::InvalidAuth)
}

/// WARMHOUSE PATCH (30): an external handler's decision as `handle_auth`'s.
fn auth_result(outcome: crate::AuthOutcome) -> Result<(), Error> {
    match outcome {
        crate::AuthOutcome::Allowed => Ok(()),
        crate::AuthOutcome::Refused => Err(Error::InvalidAuth),
        crate::AuthOutcome::Unavailable => Err(Error::AuthUnavailable),
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, sync::Arc};

    use crate::{protocol::Login, ConnectionSettings};

    use super::handle_auth;

    fn config() -> ConnectionSettings {
        ConnectionSettings {
            connection_timeout_ms: 0,
            max_payload_size: 0,
            max_inflight_count: 0,
            auth: None,
            external_auth: None,
            dynamic_filters: false,
            tenant_from_username: false,
            publish_hook: None,
        }
    }

    fn login() -> Login {
        Login {
            username: "u".to_owned(),
            password: "p".to_owned(),
        }
    }

    #[tokio::test]
    async fn no_login_no_auth() {
        let cfg = Arc::new(config());
        let r = handle_auth(cfg, None, "", None).await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn some_login_no_auth() {
        let cfg = Arc::new(config());
        let login = login();
        let r = handle_auth(cfg, Some(&login), "", None).await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn login_matches_static_auth() {
        let login = login();
        let mut map = HashMap::<String, String>::new();
        map.insert(login.username.clone(), login.password.clone());

        let mut cfg = config();
        cfg.auth = Some(map);

        let r = handle_auth(Arc::new(cfg), Some(&login), "", None).await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn login_fails_static_no_external() {
        let login = login();
        let mut map = HashMap::<String, String>::new();
        map.insert("wrong".to_owned(), "wrong".to_owned());

        let mut cfg = config();
        cfg.auth = Some(map);

        let r = handle_auth(Arc::new(cfg), Some(&login), "", None).await;
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn login_fails_static_matches_external() {
        let login = login();

        let mut map = HashMap::<String, String>::new();
        map.insert("wrong".to_owned(), "wrong".to_owned());

        let dynamic = |_: String, _: String, _: String| async { true };

        let mut cfg = config();
        cfg.auth = Some(map);
        cfg.set_auth_handler(dynamic);

        let r = handle_auth(Arc::new(cfg), Some(&login), "", None).await;
        assert!(r.is_ok());
    }

    #[tokio::test]
    async fn login_fails_static_fails_external() {
        let login = login();

        let mut map = HashMap::<String, String>::new();
        map.insert("wrong".to_owned(), "wrong".to_owned());

        let dynamic = |_: String, _: String, _: String| async { false };

        let mut cfg = config();
        cfg.auth = Some(map);
        cfg.set_auth_handler(dynamic);

        let r = handle_auth(Arc::new(cfg), Some(&login), "", None).await;
        assert!(r.is_err());
    }

    #[tokio::test]
    async fn external_auth_clousre_or_fnptr_type_check_or_fail_compile() {
        let closure = |_: String, _: String, _: String| async { false };
        async fn fnptr(_: String, _: String, _: String) -> bool {
            true
        }

        let mut cfg = config();
        cfg.set_auth_handler(closure);
        cfg.set_auth_handler(fnptr);
    }
}
