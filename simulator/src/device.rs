//! One simulated device: its own MQTT connection (client id = device id,
//! persistent session, last will), its telemetry, and its commands.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::watch;
use tokio::time::{Instant, MissedTickBehavior};
use warmhouse_contracts::device::{Command, CommandAck, StatusMessage};
use warmhouse_contracts::ids::DeviceId;
use warmhouse_contracts::telemetry::TelemetryMessage;
use warmhouse_contracts::topics::{Channel, DeviceTopic};
use warmhouse_service_kit::now_ms;

use crate::config::DeviceSpec;
use crate::model::{reject_undecodable, seed_for, RecentCommands, SimDevice};
use crate::tracker::{AckTracker, Outgoing};
use crate::{sleep_until_opt, PublishedMessage, Shared};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Room in the request channel beyond the publish window, for subscribe and
/// disconnect requests.
const CHANNEL_SLACK: usize = 8;

/// What one device hands back when it is done.
#[derive(Debug, Default)]
pub(crate) struct DeviceReport {
    pub published: Vec<PublishedMessage>,
    pub unacked: u64,
}

#[derive(Debug)]
enum Kind {
    Telemetry(TelemetryMessage),
    Status { online: bool },
    State,
    CommandAck,
}

/// A publish waiting to go out or to be acknowledged.
#[derive(Debug)]
struct Outbound {
    kind: Kind,
    channel: Channel,
    payload: Vec<u8>,
    qos: QoS,
    retain: bool,
    /// Counted in `messages_sent` already (a lost session republishes it).
    counted: bool,
}

type Events = Pin<Box<dyn Stream<Item = (Result<Event, ConnectionError>, Vec<Event>)> + Send>>;

/// The event loop as a stream. Dropping a pending `next()` does not cancel
/// the poll in progress (the stream keeps it), which a plain
/// `eventloop.poll()` inside `select!` would.
///
/// After a connection error rumqttc may still hold events it read before
/// the error; they are handed over with the error, so they are accounted for
/// before the next connection's events. The next attempt goes to the next
/// broker in `brokers` (the same options on another replica's port): a
/// device moves when its replica goes away.
fn event_stream(eventloop: EventLoop, brokers: Vec<MqttOptions>) -> Events {
    Box::pin(futures::stream::unfold(
        (eventloop, 0usize, brokers),
        |(mut el, mut current, brokers)| async move {
            let result = el.poll().await;
            let stale = if result.is_err() {
                if brokers.len() > 1 {
                    current = (current + 1) % brokers.len();
                    el.mqtt_options = brokers[current].clone();
                }
                el.state.events.drain(..).collect()
            } else {
                Vec::new()
            };
            Some(((result, stale), (el, current, brokers)))
        },
    ))
}

struct Device {
    spec: DeviceSpec,
    shared: Arc<Shared>,
    client: AsyncClient,
    sim: SimDevice,
    commands: RecentCommands,
    tracker: AckTracker<Outbound>,
    /// Status, state and command acks: they overtake queued telemetry.
    priority: VecDeque<Outbound>,
    backlog: VecDeque<Outbound>,
    window: usize,
    telemetry_qos: QoS,
    connected: bool,
    ever_connected: bool,
    generated: u64,
    offline_queued: bool,
    offline_acked: bool,
    report: DeviceReport,
    failures_logged: u32,
}

/// One device from its start to its goodbye: waits its turn, connects,
/// publishes until told to stop or done, then disconnects cleanly if it
/// could say it went offline.
pub(crate) async fn run_device(
    spec: DeviceSpec,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    start_delay: Duration,
) -> DeviceReport {
    if !wait_to_start(&mut stop, start_delay).await {
        return DeviceReport::default();
    }
    let (client, mut events) = connect(&spec, &shared);
    let mut device = Device::new(spec, shared, client);
    device.publish_loop(&mut events, stop).await;
    if device.connected && device.offline_acked {
        device.disconnect(&mut events).await;
    }
    // Otherwise (drain timed out) the connection just drops: no DISCONNECT,
    // so the broker publishes the last will and nobody sees a stale "online".
    device.finish()
}

/// Sleeps `start_delay` (devices of a fleet start spread out, not all in
/// one instant); false when the run is stopped before it is over.
async fn wait_to_start(stop: &mut watch::Receiver<bool>, start_delay: Duration) -> bool {
    if start_delay.is_zero() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(start_delay) => true,
        _ = stop.wait_for(|stop| *stop) => false,
    }
}

/// The device's MQTT client and its event loop as a stream. Nothing goes
/// over the network until the stream is polled.
fn connect(spec: &DeviceSpec, shared: &Shared) -> (AsyncClient, Events) {
    let config = &shared.config;
    // Devices are spread over the brokers; each starts at its own.
    let ports = config.ports.len().max(1);
    let brokers: Vec<MqttOptions> = (0..ports)
        .map(|i| config.ports[(spec.index + i) % ports])
        .map(|port| mqtt_options(spec, config, port, &shared.identity))
        .collect();
    let window = usize::from(config.inflight);
    let (client, mut eventloop) = AsyncClient::new(brokers[0].clone(), window + CHANNEL_SLACK);
    // A device answers commands with one small packet: no Nagle delay.
    eventloop.network_options.set_tcp_nodelay(true);
    (client, event_stream(eventloop, brokers))
}

/// When to try again after the connection failed: the wait doubles with
/// every failure, up to [`BACKOFF_MAX`], and starts over once connected.
struct Reconnect {
    at: Option<Instant>,
    backoff: Duration,
}

impl Reconnect {
    fn new() -> Self {
        Self {
            at: None,
            backoff: BACKOFF_MIN,
        }
    }

    fn connected(&mut self) {
        self.backoff = BACKOFF_MIN;
    }

    fn failed(&mut self) {
        self.at = Some(Instant::now() + jittered(self.backoff));
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }
}

/// Somewhere between half of `backoff` and all of it, at random: devices
/// refused together (a replica gone, the registry busy) do not all come
/// back in the same instant and get refused together again.
fn jittered(backoff: Duration) -> Duration {
    use rand::Rng;
    backoff.mul_f64(rand::rng().random_range(0.5..=1.0))
}

fn mqtt_options(
    spec: &DeviceSpec,
    config: &crate::SimConfig,
    port: u16,
    identity: &crate::DeviceIdentity,
) -> MqttOptions {
    let id = &spec.device_id;
    let mut options = MqttOptions::new(id.as_str(), config.host.clone(), port);
    options
        // A persistent session: the broker keeps our subscription and queues
        // commands while we are away; unacked publishes are resent on resume.
        .set_clean_session(false)
        .set_keep_alive(Duration::from_secs(config.keep_alive_secs))
        .set_inflight(config.inflight)
        .set_max_packet_size(
            warmhouse_contracts::MAX_PAYLOAD_BYTES + 1024,
            warmhouse_contracts::MAX_PAYLOAD_BYTES + 1024,
        )
        .set_last_will(LastWill::new(
            topic(id, Channel::Status),
            status_payload(false, None),
            QoS::AtLeastOnce,
            true,
        ));
    use crate::credentials::DeviceCredential;
    let credential = identity.credentials.as_ref().and_then(|c| c.get(id));
    let mut client_auth = None;
    match credential {
        Some(DeviceCredential::Password(password)) => {
            // The broker takes the username as the device's tenant.
            options.set_credentials(id.as_str(), password.as_str());
        }
        Some(DeviceCredential::Certificate { cert_pem, key_pem }) => {
            client_auth = Some((cert_pem.clone(), key_pem.clone()));
        }
        None => {
            if let Some((user, password)) = config.credentials_for(id) {
                options.set_credentials(user, password);
            }
        }
    }
    if let Some(ca) = &identity.tls_ca {
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Simple {
                ca: ca.clone(),
                alpn: None,
                client_auth,
            },
        ));
    }
    options
}

fn topic(id: &DeviceId, channel: Channel) -> String {
    DeviceTopic::new(id.clone(), channel).to_string()
}

fn status_payload(online: bool, ts: Option<i64>) -> Vec<u8> {
    json(&StatusMessage::new(online, ts))
}

fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    // Plain data with string keys: serialization cannot fail.
    serde_json::to_vec(value).unwrap_or_default()
}

impl Device {
    fn new(spec: DeviceSpec, shared: Arc<Shared>, client: AsyncClient) -> Self {
        let config = &shared.config;
        Self {
            sim: SimDevice::new(
                spec.home_id.clone(),
                spec.kind,
                seed_for(spec.device_id.as_str()),
            ),
            spec,
            client,
            commands: RecentCommands::default(),
            tracker: AckTracker::new(),
            priority: VecDeque::new(),
            backlog: VecDeque::new(),
            window: usize::from(config.inflight),
            telemetry_qos: if config.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            connected: false,
            ever_connected: false,
            generated: 0,
            offline_queued: false,
            offline_acked: false,
            report: DeviceReport::default(),
            failures_logged: 0,
            shared,
        }
    }

    /// Samples and publishes (reconnecting as needed, answering commands)
    /// until the device generated all it should or was told to stop; then
    /// drains what it published and says it goes offline, or gives up once
    /// the drain timeout passed.
    async fn publish_loop(&mut self, events: &mut Events, mut stop: watch::Receiver<bool>) {
        let config = &self.shared.config;
        let interval_ms = config.interval_ms;
        let mut ticker = tokio::time::interval(Duration::from_millis(interval_ms.max(1)));
        // A device that fell behind does not burst to catch up; it skips.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Skip);
        let limit = config.messages_per_device.unwrap_or(u64::MAX);
        let drain = Duration::from_secs(config.drain_timeout_secs);
        let mut stop_requested = *stop.borrow();
        let mut deadline = stop_requested.then(|| Instant::now() + drain);
        let mut reconnect = Reconnect::new();

        loop {
            self.submit();
            let generating = !stop_requested && self.generated < limit;
            if !generating && self.idle() {
                if self.connected && !self.offline_queued {
                    // A clean disconnect does not fire the last will: say goodbye ourselves.
                    self.queue_status(false);
                    self.offline_queued = true;
                    continue;
                }
                if !self.connected || self.offline_acked {
                    break;
                }
            }
            let fast = interval_ms == 0
                && generating
                && self.connected
                && self.backlog.is_empty()
                && self.tracker.outstanding() < self.window;

            tokio::select! {
                biased;
                _ = stop.changed(), if !stop_requested => {
                    stop_requested = true;
                    deadline = Some(Instant::now() + drain);
                }
                _ = sleep_until_opt(deadline), if deadline.is_some() => break,
                _ = sleep_until_opt(reconnect.at), if reconnect.at.is_some() => reconnect.at = None,
                next = events.next(), if reconnect.at.is_none() => {
                    let Some((result, stale)) = next else { break };
                    self.polled(result, stale, &mut reconnect);
                }
                _ = ticker.tick(), if generating && interval_ms > 0 => self.generate(),
                _ = std::future::ready(()), if fast => {
                    self.generate();
                    // Publishing flat out never waits on anything: give other devices a turn.
                    tokio::task::coop::consume_budget().await;
                }
            }
        }
    }

    /// What one poll of the event loop gave: an event, or a connection
    /// error with the events read before it (accounted for first), after
    /// which the device waits before it tries again.
    fn polled(
        &mut self,
        result: Result<Event, ConnectionError>,
        stale: Vec<Event>,
        reconnect: &mut Reconnect,
    ) {
        match result {
            Ok(event) => {
                if matches!(event, Event::Incoming(Packet::ConnAck(_))) {
                    reconnect.connected();
                }
                self.handle_event(event);
            }
            Err(err) => {
                for event in stale {
                    self.handle_event(event);
                }
                self.connection_failed(&err);
                reconnect.failed();
            }
        }
    }

    fn idle(&self) -> bool {
        self.priority.is_empty() && self.backlog.is_empty() && self.tracker.outstanding() == 0
    }

    /// Hands queued publishes to the client while connected and the window has room.
    fn submit(&mut self) {
        if !self.connected {
            return;
        }
        while self.tracker.outstanding() < self.window {
            let Some(item) = self
                .priority
                .pop_front()
                .or_else(|| self.backlog.pop_front())
            else {
                return;
            };
            let is_priority = !matches!(item.kind, Kind::Telemetry(_));
            let result = self.client.try_publish(
                topic(&self.spec.device_id, item.channel),
                item.qos,
                item.retain,
                item.payload.clone(),
            );
            match result {
                Ok(()) => self.tracker.submit(item),
                Err(_) => {
                    // Channel full: the event loop drains it and wakes us with events.
                    if is_priority {
                        self.priority.push_front(item);
                    } else {
                        self.backlog.push_front(item);
                    }
                    return;
                }
            }
        }
    }

    fn generate(&mut self) {
        let config = &self.shared.config;
        if self.backlog.len() >= config.max_backlog {
            // Sampling pauses instead of growing memory or dropping readings.
            self.shared
                .stats
                .skipped_ticks
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        let message =
            self.sim
                .next_message(config.samples_per_message, now_ms(), config.interval_ms);
        self.generated += 1;
        self.shared.stats.generated.fetch_add(1, Ordering::Relaxed);
        self.backlog.push_back(Outbound {
            payload: message.to_json(),
            kind: Kind::Telemetry(message),
            channel: Channel::Telemetry,
            qos: self.telemetry_qos,
            retain: false,
            counted: false,
        });
    }

    fn queue_status(&mut self, online: bool) {
        self.priority.push_back(Outbound {
            kind: Kind::Status { online },
            channel: Channel::Status,
            payload: status_payload(online, Some(now_ms())),
            qos: QoS::AtLeastOnce,
            retain: true,
            counted: false,
        });
    }

    fn queue_state(&mut self) {
        self.priority.push_back(Outbound {
            kind: Kind::State,
            channel: Channel::State,
            payload: json(&self.sim.model.reported_state(now_ms())),
            qos: QoS::AtLeastOnce,
            retain: false,
            counted: false,
        });
    }

    fn queue_ack(&mut self, ack: &CommandAck) {
        self.priority.push_back(Outbound {
            kind: Kind::CommandAck,
            channel: Channel::CommandAck,
            payload: json(ack),
            qos: QoS::AtLeastOnce,
            retain: false,
            counted: false,
        });
    }

    fn handle_event(&mut self, event: Event) {
        match event {
            Event::Incoming(Packet::ConnAck(connack)) => self.connected(connack.session_present),
            Event::Incoming(Packet::PubAck(ack)) => {
                if let Some(item) = self.tracker.on_puback(ack.pkid) {
                    self.acked(item);
                }
            }
            Event::Incoming(Packet::Publish(publish)) => {
                self.command(&publish.topic, &publish.payload);
            }
            Event::Outgoing(rumqttc::Outgoing::Publish(pkid)) => {
                let stats = &self.shared.stats;
                match self.tracker.on_outgoing_publish(pkid) {
                    Outgoing::Sent(item) => {
                        if matches!(item.kind, Kind::Telemetry(_)) && !item.counted {
                            item.counted = true;
                            stats.messages_sent.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Outgoing::SentQos0(item) => {
                        if matches!(item.kind, Kind::Telemetry(_)) && !item.counted {
                            stats.messages_sent.fetch_add(1, Ordering::Relaxed);
                        }
                        // QoS 0 has no acknowledgement: written is all we get.
                        self.acked(item);
                    }
                    Outgoing::Retransmitted => {
                        stats.retransmits.fetch_add(1, Ordering::Relaxed);
                    }
                    Outgoing::Unknown => tracing::warn!(
                        device = %self.spec.device_id,
                        pkid,
                        "publish sent that the simulator did not track"
                    ),
                }
            }
            Event::Outgoing(rumqttc::Outgoing::AwaitAck(pkid)) => self.tracker.on_await_ack(pkid),
            _ => {}
        }
    }

    fn connected(&mut self, session_present: bool) {
        let stats = &self.shared.stats;
        if self.ever_connected {
            stats.reconnects.fetch_add(1, Ordering::Relaxed);
            tracing::info!(device = %self.spec.device_id, session_present, "reconnected");
        }
        self.ever_connected = true;
        self.connected = true;
        self.failures_logged = 0;
        stats.connected.fetch_add(1, Ordering::Relaxed);

        if !session_present {
            self.requeue_lost_session();
        }
        // Without a session the broker forgot the subscription; with one,
        // subscribing again is harmless.
        self.subscribe_to_commands();
        // Fresh presence and state go first.
        let rest: Vec<Outbound> = self.priority.drain(..).collect();
        self.queue_status(true);
        self.queue_state();
        self.priority.extend(rest);
    }

    /// rumqttc dropped what it had not got acknowledged: publish it again,
    /// in its order. Old status and state are superseded by the fresh ones
    /// the new connection queues.
    fn requeue_lost_session(&mut self) {
        let lost = self.tracker.session_lost();
        let mut telemetry = Vec::new();
        for item in lost.into_iter().rev() {
            match item.kind {
                Kind::Telemetry(_) => telemetry.push(item),
                Kind::CommandAck | Kind::Status { online: false } => self.priority.push_front(item),
                Kind::Status { online: true } | Kind::State => {}
            }
        }
        for item in telemetry {
            self.backlog.push_front(item);
        }
    }

    fn subscribe_to_commands(&self) {
        if let Err(err) = self.client.try_subscribe(
            topic(&self.spec.device_id, Channel::Commands),
            QoS::AtLeastOnce,
        ) {
            tracing::warn!(device = %self.spec.device_id, error = %err, "cannot subscribe to commands");
        }
    }

    fn connection_failed(&mut self, err: &ConnectionError) {
        if self.connected {
            self.connected = false;
            self.shared.stats.connected.fetch_sub(1, Ordering::Relaxed);
            tracing::warn!(device = %self.spec.device_id, error = %err, "connection lost; reconnecting");
        } else if self.failures_logged == 0 {
            tracing::warn!(
                device = %self.spec.device_id,
                brokers = %self.shared.config.brokers(),
                error = %err,
                "cannot connect; retrying"
            );
        } else {
            tracing::debug!(device = %self.spec.device_id, error = %err, "cannot connect");
        }
        self.failures_logged = self.failures_logged.saturating_add(1);
    }

    fn acked(&mut self, item: Outbound) {
        let stats = &self.shared.stats;
        match item.kind {
            Kind::Telemetry(message) => {
                stats.messages_acked.fetch_add(1, Ordering::Relaxed);
                stats
                    .readings_acked
                    .fetch_add(message.reading_count() as u64, Ordering::Relaxed);
                if self.shared.config.record {
                    self.report.published.push(PublishedMessage {
                        device_id: self.spec.device_id.clone(),
                        home_id: message.home_id,
                        device_type: message.device_type,
                        samples: message.samples,
                    });
                }
            }
            Kind::Status { online: false } => self.offline_acked = true,
            Kind::Status { online: true } | Kind::State | Kind::CommandAck => {}
        }
    }

    fn command(&mut self, topic: &str, payload: &[u8]) {
        let ours = DeviceTopic::parse(topic)
            .is_ok_and(|t| t.device_id == self.spec.device_id && t.channel == Channel::Commands);
        if !ours {
            tracing::debug!(device = %self.spec.device_id, topic, "ignoring a message on a foreign topic");
            return;
        }
        let now = now_ms();
        match Command::decode(payload) {
            Ok(command) => {
                let outcome = self.commands.handle(&mut self.sim.model, &command, now);
                self.shared.stats.commands.fetch_add(1, Ordering::Relaxed);
                if outcome.duplicate {
                    self.shared
                        .stats
                        .duplicate_commands
                        .fetch_add(1, Ordering::Relaxed);
                }
                tracing::info!(
                    device = %self.spec.device_id,
                    command = %command.name,
                    command_id = %command.command_id,
                    result = ?outcome.ack.result,
                    duplicate = outcome.duplicate,
                    "command"
                );
                self.queue_ack(&outcome.ack);
                self.queue_state();
            }
            Err(err) => match reject_undecodable(payload, &err.to_string(), now) {
                Some(ack) => {
                    tracing::warn!(device = %self.spec.device_id, error = %err, "rejecting an invalid command");
                    self.queue_ack(&ack);
                }
                None => tracing::warn!(
                    device = %self.spec.device_id,
                    error = %err,
                    "ignoring an invalid command without a command id"
                ),
            },
        }
    }

    /// Sends DISCONNECT and lets the event loop write it (briefly).
    async fn disconnect(&mut self, events: &mut Events) {
        if self.client.try_disconnect().is_err() {
            return;
        }
        let wait = async {
            while let Some((result, _)) = events.next().await {
                match result {
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_) => break,
                    Ok(event) => self.handle_event(event),
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), wait).await;
        self.connected = false;
        self.shared.stats.connected.fetch_sub(1, Ordering::Relaxed);
    }

    fn finish(mut self) -> DeviceReport {
        if self.connected {
            self.shared.stats.connected.fetch_sub(1, Ordering::Relaxed);
        }
        self.report.unacked = self
            .backlog
            .iter()
            .chain(self.tracker.session_lost().iter())
            .filter(|item| matches!(item.kind, Kind::Telemetry(_)))
            .count() as u64;
        self.report
    }
}
