//! Device identity against real processes (docs/adr/0010-device-identity.md):
//! tansu, PostgreSQL, the registry, the broker in `registry` mode with its
//! mTLS, password and internal listeners, and the edge bridge on the
//! internal listener. Devices are real MQTT clients (rumqttc) holding the
//! credentials the registry issued them.
//!
//! * A device cannot publish telemetry, state, status or acks as another
//!   device, nor subscribe to its commands, whether it holds a certificate
//!   or a password: the broker drops the connection and the forged
//!   messages never reach Kafka, while the victim's own messages do.
//! * Refused at connect: a certificate from another CA, a wrong password,
//!   an unknown device, no credentials, a rotated (replaced) certificate;
//!   rotating a certificate also drops the connection made with the old one.
//! * A client that opens a TLS connection and says nothing does not stop
//!   the mTLS listener from accepting others (rumqttd patch 4).
//! * Disabling a device (PATCH status=disabled), deleting it, and the
//!   broker's admin revoke end its access: the live connection is dropped
//!   and reconnects are refused; enabling it again lets it back in.
//!   Rotation, disabling and deleting act on both broker replicas (each
//!   reads the registry's events); the admin revoke is one replica's.
//! * With the registry down, a device it allowed shortly before reconnects
//!   with the same credentials; one disabled just before, a replaced
//!   certificate and a password never allowed are kept out with CONNACK
//!   "server unavailable" (rumqttd patch 30: no answer is not a "no").

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::ClientConfig;
use reqwest::{Method, StatusCode};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, MqttOptions, Packet, QoS,
    TlsConfiguration, Transport,
};
use serde_json::{json, Value};
use warmhouse_broker::{BrokerConfig, DeviceAuth, RunningBroker, Secret};
use warmhouse_contracts::device::{AckResult, CommandAck, ReportedState, StatusMessage};
use warmhouse_contracts::ids::{DeviceId, DeviceType, HomeId, MetricName};
use warmhouse_contracts::kafka::topics;
use warmhouse_contracts::telemetry::{Sample, TelemetryMessage};
use warmhouse_contracts::topics::{Channel, DeviceTopic};
use warmhouse_device_identity::PlatformCa;
use warmhouse_devstack::{create_topics, free_port, KafkaStorage, Postgres, Tansu};
use warmhouse_edge_bridge::IngressConfig;
use warmhouse_service_kit::auth::{issue_hs256, AuthConfig, Claims};

const HOME: &str = "home-0001";
/// Certificate devices (ids with '-' and '_': rumqttd patch 1).
const VICTIM: &str = "home-0001-dev-01";
const FORGER: &str = "home-0001-dev_02";
/// Password device.
const PW_DEVICE: &str = "home-0001-dev-03";
/// Password device driven by the simulator (`--home-prefix pw`).
const SIM_PW_DEVICE: &str = "pw-0001-dev-01";
/// How long a dropped connection or a Kafka record may take.
const WAIT: Duration = Duration::from_secs(30);

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// How a test client logs in.
#[derive(Clone)]
enum Cred {
    Cert { cert: Vec<u8>, key: Vec<u8> },
    Password { user: String, pass: String },
    Anonymous,
}

/// Where devices and services connect.
#[derive(Clone)]
struct Endpoints {
    v4: u16,
    mqtts: u16,
    internal: u16,
    ca_pem: Vec<u8>,
    service: (String, String),
}

impl Endpoints {
    fn options(&self, cred: &Cred, client_id: &str) -> MqttOptions {
        let port = match cred {
            Cred::Cert { .. } => self.mqtts,
            Cred::Password { .. } | Cred::Anonymous => self.v4,
        };
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_clean_session(true);
        match cred {
            Cred::Cert { cert, key } => {
                options.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
                    ca: self.ca_pem.clone(),
                    alpn: None,
                    client_auth: Some((cert.clone(), key.clone())),
                }));
            }
            Cred::Password { user, pass } => {
                options.set_credentials(user.clone(), pass.clone());
            }
            Cred::Anonymous => {}
        }
        options
    }

    fn service_options(&self, client_id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", self.internal);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_credentials(self.service.0.clone(), self.service.1.clone());
        options
    }
}

/// What became of a connect attempt.
enum Connect {
    // Boxed: the event loop is large (clippy::large_enum_variant).
    Up(AsyncClient, Box<EventLoop>),
    /// CONNACK with a refusal code (rumqttd patch 5).
    Refused(ConnectReturnCode),
    /// No CONNACK at all (e.g. the TLS handshake failed).
    Failed(String),
}

impl std::fmt::Debug for Connect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Connect::Up(..) => f.write_str("Up"),
            Connect::Refused(code) => write!(f, "Refused({code:?})"),
            Connect::Failed(err) => write!(f, "Failed({err})"),
        }
    }
}

async fn connect_with(options: MqttOptions) -> Connect {
    let (client, mut events) = AsyncClient::new(options, 64);
    let attempt = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    return if ack.code == ConnectReturnCode::Success {
                        None
                    } else {
                        Some(Connect::Refused(ack.code))
                    }
                }
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => {
                    return Some(Connect::Refused(code))
                }
                Err(err) => return Some(Connect::Failed(err.to_string())),
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(None) => Connect::Up(client, Box::new(events)),
        Ok(Some(outcome)) => outcome,
        Err(_) => Connect::Failed("no CONNACK within 10 s".into()),
    }
}

async fn connect(ep: &Endpoints, cred: &Cred, client_id: &str) -> Connect {
    connect_with(ep.options(cred, client_id)).await
}

async fn must_connect(ep: &Endpoints, cred: &Cred, client_id: &str) -> (AsyncClient, EventLoop) {
    match connect(ep, cred, client_id).await {
        Connect::Up(client, events) => (client, *events),
        other => panic!("{client_id} could not connect: {other:?}"),
    }
}

fn assert_refused(outcome: Connect, what: &str) {
    match outcome {
        Connect::Refused(code) => assert_eq!(code, ConnectReturnCode::NotAuthorized, "{what}"),
        other => panic!("{what}: expected a refusal (CONNACK not authorized), got {other:?}"),
    }
}

fn assert_unavailable(outcome: Connect, what: &str) {
    match outcome {
        Connect::Refused(code) => {
            assert_eq!(code, ConnectReturnCode::ServiceUnavailable, "{what}")
        }
        other => panic!("{what}: expected CONNACK server unavailable, got {other:?}"),
    }
}

/// Publishes at QoS 1 on a fresh connection and says whether the broker
/// acknowledged it (`true`) or dropped the connection (`false`).
async fn publish_acked(
    ep: &Endpoints,
    cred: &Cred,
    client_id: &str,
    topic: &str,
    payload: Vec<u8>,
) -> bool {
    let (client, mut events) = must_connect(ep, cred, client_id).await;
    client
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .expect("queue publish");
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .expect("the broker neither acknowledged the publish nor closed the connection");
    drop(events);
    outcome
}

/// Subscribes on a fresh connection: `true` when the broker granted it.
async fn subscribe_granted(ep: &Endpoints, cred: &Cred, client_id: &str, filter: &str) -> bool {
    let (client, mut events) = must_connect(ep, cred, client_id).await;
    client
        .subscribe(filter, QoS::AtLeastOnce)
        .await
        .expect("queue subscribe");
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    return ack
                        .return_codes
                        .iter()
                        .all(|c| !matches!(c, rumqttc::SubscribeReasonCode::Failure))
                }
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .expect("the broker neither answered the subscribe nor closed the connection")
}

/// A connection kept open in the background; `closed` resolves when the
/// broker drops it. Incoming publishes are forwarded.
struct Live {
    client: AsyncClient,
    closed: tokio::sync::oneshot::Receiver<String>,
    messages: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
    task: tokio::task::JoinHandle<()>,
}

impl Live {
    async fn open(ep: &Endpoints, cred: &Cred, client_id: &str) -> Self {
        let (client, events) = must_connect(ep, cred, client_id).await;
        Self::from_parts(client, events)
    }

    fn from_parts(client: AsyncClient, mut events: EventLoop) -> Self {
        let (closed_tx, closed) = tokio::sync::oneshot::channel();
        let (message_tx, messages) = tokio::sync::mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = message_tx.send((p.topic.clone(), p.payload.to_vec()));
                    }
                    Ok(_) => {}
                    Err(err) => {
                        let _ = closed_tx.send(err.to_string());
                        return;
                    }
                }
            }
        });
        Self {
            client,
            closed,
            messages,
            task,
        }
    }

    /// Panics unless the broker drops the connection within `WAIT`.
    async fn expect_dropped(&mut self, what: &str) {
        match tokio::time::timeout(WAIT, &mut self.closed).await {
            Ok(_) => {}
            Err(_) => panic!("{what}: the live connection was not dropped within {WAIT:?}"),
        }
    }

    fn is_open(&mut self) -> bool {
        matches!(
            self.closed.try_recv(),
            Err(tokio::sync::oneshot::error::TryRecvError::Empty)
        )
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn device_topic(device: &str, channel: Channel) -> String {
    DeviceTopic::new(DeviceId::new(device).unwrap(), channel).to_string()
}

/// Valid telemetry whose first sample's `seq` marks it.
fn telemetry(seq: u64) -> Vec<u8> {
    let sample = Sample {
        seq,
        ts: warmhouse_service_kit::now_ms(),
        values: BTreeMap::from([(MetricName::new("temperature").unwrap(), 21.5)]),
    };
    let message = TelemetryMessage::new(
        HomeId::new(HOME).unwrap(),
        DeviceType::new("thermostat").unwrap(),
        vec![sample],
    );
    serde_json::to_vec(&message).unwrap()
}

fn state(marker: &str) -> Vec<u8> {
    let mut reported = serde_json::Map::new();
    reported.insert("marker".into(), json!(marker));
    serde_json::to_vec(&ReportedState::new(
        warmhouse_service_kit::now_ms(),
        reported,
    ))
    .unwrap()
}

fn ack(command_id: &str) -> Vec<u8> {
    serde_json::to_vec(&CommandAck {
        v: 1,
        command_id: command_id.into(),
        result: AckResult::Done,
        detail: None,
        ts: warmhouse_service_kit::now_ms(),
    })
    .unwrap()
}

fn status(ts: i64) -> Vec<u8> {
    serde_json::to_vec(&StatusMessage::new(true, Some(ts))).unwrap()
}

/// Every record of the watched topics, as text.
#[derive(Clone, Default)]
struct KafkaLog(Arc<Mutex<Vec<(String, String)>>>);

impl KafkaLog {
    fn start(bootstrap: &str) -> (Self, tokio::task::JoinHandle<()>) {
        let consumer: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("identity-test-{}", std::process::id()))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", "50")
            .create()
            .expect("Kafka consumer");
        consumer
            .subscribe(&[
                topics::TELEMETRY,
                topics::DEVICE_EVENTS,
                topics::DEAD_LETTERS,
            ])
            .expect("subscribe");
        let log = Self::default();
        let records = log.0.clone();
        let task = tokio::spawn(async move {
            loop {
                if let Ok(message) = consumer.recv().await {
                    let value = String::from_utf8_lossy(message.payload().unwrap_or_default());
                    records
                        .lock()
                        .unwrap()
                        .push((message.topic().to_string(), value.into_owned()));
                }
            }
        });
        (log, task)
    }

    fn contains(&self, needle: &str) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .any(|(_, v)| v.contains(needle))
    }

    fn matching(&self, needle: &str) -> Vec<(String, String)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, v)| v.contains(needle))
            .cloned()
            .collect()
    }

    async fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self.contains(needle) {
            assert!(Instant::now() < deadline, "{needle} never reached Kafka");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("registry request");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn credentials(&self, device: &str, kind: &str) -> Value {
        let (status, body) = self
            .call(
                Method::POST,
                &format!("/api/v1/devices/{device}/credentials"),
                Some(json!({ "kind": kind })),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// Sets a device's status (`active` or `disabled`).
    async fn set_status(&self, device: &str, status: &str) {
        let (code, body) = self
            .call(
                Method::PATCH,
                &format!("/api/v1/devices/{device}"),
                Some(json!({ "status": status })),
            )
            .await;
        assert_eq!(code, StatusCode::OK, "{body}");
    }
}

fn cert_cred(issued: &Value) -> Cred {
    Cred::Cert {
        cert: issued["certificate_pem"]
            .as_str()
            .unwrap()
            .as_bytes()
            .to_vec(),
        key: issued["private_key_pem"]
            .as_str()
            .unwrap()
            .as_bytes()
            .to_vec(),
    }
}

fn password_cred(issued: &Value) -> Cred {
    Cred::Password {
        user: issued["username"].as_str().unwrap().to_string(),
        pass: issued["password"].as_str().unwrap().to_string(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn devices_speak_only_for_themselves_and_lose_access_when_revoked() {
    warmhouse_service_kit::init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(&dir.path().join("pg")).expect("PostgreSQL");
    let tansu = Tansu::start(&dir.path().join("kafka"), KafkaStorage::Memory).expect("tansu");
    let bootstrap = tansu.bootstrap();
    create_topics(
        &bootstrap,
        &[
            topics::TELEMETRY,
            topics::DEVICE_EVENTS,
            topics::DEVICE_COMMANDS,
            topics::REGISTRY_EVENTS,
        ],
        2,
    )
    .await
    .unwrap();
    create_topics(&bootstrap, &[topics::DEAD_LETTERS], 1)
        .await
        .unwrap();

    // Platform CA, the broker's server certificate and its probe's client
    // certificate, as an operator makes them with `warmhouse-identity`.
    let ca = PlatformCa::generate("test platform CA", Duration::from_secs(3600)).unwrap();
    let (ca_cert, ca_key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    ca.save(&ca_cert, &ca_key).unwrap();
    let server = ca
        .issue_server_certificate(&["127.0.0.1".to_string()], Duration::from_secs(3600))
        .unwrap();
    let (server_cert, server_key) = (dir.path().join("broker.pem"), dir.path().join("broker.key"));
    server.save(&server_cert, &server_key).unwrap();
    let probe = ca
        .issue_device_certificate(
            &DeviceId::new(warmhouse_broker::PROBE_DEVICE_ID).unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap();
    let (probe_cert, probe_key) = (dir.path().join("probe.pem"), dir.path().join("probe.key"));
    probe.save(&probe_cert, &probe_key).unwrap();

    // The registry, in-process, with JWT auth and the CA.
    let jwt_secret = warmhouse_service_kit::auth::generate_secret();
    let admin_token = issue_hs256(
        &jwt_secret,
        &Claims::admin("identity-test", Duration::from_secs(3600)),
    )
    .unwrap();
    let mut registry_config = warmhouse_device_registry::RegistryConfig::new(
        loopback(0),
        pg.create_database("identity").unwrap(),
    )
    .with_kafka(bootstrap.clone());
    registry_config.auth = AuthConfig::with_secret(jwt_secret.clone());
    registry_config.identity.ca_cert = Some(ca_cert.clone());
    registry_config.identity.ca_key = Some(ca_key.clone());
    let (registry_stop, registry_stopped) = tokio::sync::oneshot::channel::<()>();
    let registry = warmhouse_device_registry::start(registry_config, async {
        let _ = registry_stopped.await;
    })
    .await
    .expect("registry");
    let api = Api {
        http: reqwest::Client::new(),
        base: format!("http://{}", registry.addr),
        token: admin_token.clone(),
    };

    // The broker: device listeners ask the registry (its ingress forwards
    // what devices publish to Kafka); the internal one is for services.
    let service_password = "identity-test-service-password".to_string();
    let broker_admin_token = "identity-test-admin-token".to_string();
    let broker_config = BrokerConfig {
        device_auth: DeviceAuth::Registry,
        registry_url: Some(api.base.clone()),
        registry_token: Some(Secret::new(admin_token.clone())),
        service_password: Some(Secret::new(service_password.clone())),
        internal_addr: loopback(free_port().unwrap()),
        mqtts_addr: loopback(free_port().unwrap()),
        tls_cert: Some(server_cert),
        tls_key: Some(server_key),
        tls_ca: Some(ca_cert.clone()),
        tls_probe_cert: Some(probe_cert),
        tls_probe_key: Some(probe_key),
        instance_id: Some(format!("identity-test-{}", std::process::id())),
        admin_token: Some(Secret::new(broker_admin_token.clone())),
        ..BrokerConfig::for_tests(
            loopback(free_port().unwrap()),
            loopback(free_port().unwrap()),
            loopback(0),
            IngressConfig::new(&bootstrap, dir.path().join("broker-spool")),
        )
    };
    let service_username = broker_config.service_username.clone();
    // A second replica, as the chart runs them: revocation and rotation
    // must drop a device on whichever replica holds its connection.
    let second_config = BrokerConfig {
        mqtt_v4_addr: loopback(free_port().unwrap()),
        mqtt_v5_addr: loopback(free_port().unwrap()),
        admin_addr: loopback(0),
        internal_addr: loopback(free_port().unwrap()),
        mqtts_addr: loopback(free_port().unwrap()),
        instance_id: Some(format!("identity-test-2-{}", std::process::id())),
        ingress: IngressConfig::new(&bootstrap, dir.path().join("broker-2-spool")),
        ..broker_config.clone()
    };
    let broker: RunningBroker = warmhouse_broker::start(broker_config)
        .await
        .expect("broker in registry mode (all listeners pass the self-probe)");
    let second: RunningBroker = warmhouse_broker::start(second_config)
        .await
        .expect("the second replica");
    let endpoints = |broker: &RunningBroker| Endpoints {
        v4: broker.mqtt_v4_addr.port(),
        mqtts: broker.mqtts_addr.unwrap().port(),
        internal: broker.internal_addr.unwrap().port(),
        ca_pem: ca.cert_pem().as_bytes().to_vec(),
        service: (service_username.clone(), service_password.clone()),
    };
    let ep = endpoints(&broker);
    let ep2 = endpoints(&second);

    let (kafka, kafka_task) = KafkaLog::start(&bootstrap);

    // A home and three devices, each with credentials issued by the registry.
    let (status_code, body) = api
        .call(
            Method::POST,
            "/api/v1/homes",
            Some(json!({"id": HOME, "name": "Test home"})),
        )
        .await;
    assert_eq!(status_code, StatusCode::CREATED, "{body}");
    for device in [VICTIM, FORGER, PW_DEVICE] {
        let (status_code, body) = api
            .call(
                Method::POST,
                "/api/v1/devices",
                Some(json!({"id": device, "home_id": HOME, "kind": "thermostat", "name": device})),
            )
            .await;
        assert_eq!(status_code, StatusCode::CREATED, "{body}");
    }
    let victim_issued = api.credentials(VICTIM, "certificate").await;
    let info = warmhouse_device_identity::inspect_certificate(
        victim_issued["certificate_pem"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(
        info.organizations,
        vec![VICTIM.to_string()],
        "subject O = device id"
    );
    assert_eq!(victim_issued["ca_pem"].as_str().unwrap(), ca.cert_pem());
    let victim = cert_cred(&victim_issued);
    let forger = cert_cred(&api.credentials(FORGER, "certificate").await);
    let pw_issued = api.credentials(PW_DEVICE, "password").await;
    assert_eq!(pw_issued["username"], PW_DEVICE);
    let pw_device = password_cred(&pw_issued);

    // ---- Confinement: a device speaks only for itself. ----
    let mut victim_live = Live::open(&ep, &victim, "victim").await;
    victim_live
        .client
        .subscribe(device_topic(VICTIM, Channel::Commands), QoS::AtLeastOnce)
        .await
        .unwrap();
    // The forger even reuses the victim's client id: rumqttd prefixes it with
    // the tenant, so the victim's session is not taken over.
    let forgeries = [
        (Channel::Telemetry, telemetry(666_001)),
        (Channel::State, state("forged-state-666")),
        (Channel::CommandAck, ack("forged-ack-666")),
        (Channel::Status, status(666_666)),
    ];
    for (who, cred) in [
        ("certificate forger", &forger),
        ("password forger", &pw_device),
    ] {
        for (channel, payload) in &forgeries {
            let topic = device_topic(VICTIM, *channel);
            assert!(
                !publish_acked(&ep, cred, "victim", &topic, payload.clone()).await,
                "{who} published on {topic}"
            );
        }
        // Subscribing to the victim's commands (or everyone's) is refused too.
        for filter in [
            device_topic(VICTIM, Channel::Commands),
            "/tenants/+/commands".to_string(),
            "#".to_string(),
        ] {
            assert!(
                !subscribe_granted(&ep, cred, "victim", &filter).await,
                "{who} subscribed to {filter}"
            );
        }
    }
    assert!(
        victim_live.is_open(),
        "the forger's client id took over the victim's session"
    );

    // The devices' own messages go through, and arrive after any forgery
    // would have (same Kafka key, so same partition, in order).
    for (cred, device) in [(&victim, VICTIM), (&pw_device, PW_DEVICE)] {
        let id = if device == VICTIM {
            "victim-own"
        } else {
            "pw-own"
        };
        let seq = if device == VICTIM { 1_001 } else { 3_001 };
        assert!(
            publish_acked(
                &ep,
                cred,
                id,
                &device_topic(device, Channel::Telemetry),
                telemetry(seq)
            )
            .await
        );
        assert!(
            publish_acked(
                &ep,
                cred,
                id,
                &device_topic(device, Channel::State),
                state(&format!("own-state-{device}"))
            )
            .await
        );
        assert!(
            publish_acked(
                &ep,
                cred,
                id,
                &device_topic(device, Channel::CommandAck),
                ack(&format!("own-ack-{device}"))
            )
            .await
        );
    }
    // The platform's services (internal listener) may address any device:
    // a command reaches the victim, and only the victim.
    let (service, service_events) =
        match connect_with(ep.service_options("identity-test-service")).await {
            Connect::Up(client, events) => (client, *events),
            other => panic!("service account could not connect: {other:?}"),
        };
    let _service_live = Live::from_parts(service.clone(), service_events);
    service
        .publish(
            device_topic(VICTIM, Channel::Commands),
            QoS::AtLeastOnce,
            false,
            br#"{"marker":"command-for-victim"}"#.to_vec(),
        )
        .await
        .unwrap();
    let (topic, payload) = tokio::time::timeout(WAIT, victim_live.messages.recv())
        .await
        .expect("the victim receives its command")
        .unwrap();
    assert_eq!(topic, device_topic(VICTIM, Channel::Commands));
    assert!(String::from_utf8_lossy(&payload).contains("command-for-victim"));

    for marker in [
        "\"seq\":1001",
        "own-state-home-0001-dev-01",
        "own-ack-home-0001-dev-01",
        "\"seq\":3001",
        "own-state-home-0001-dev-03",
        "own-ack-home-0001-dev-03",
    ] {
        kafka.wait_for(marker).await;
    }
    for forged in ["666001", "forged-state-666", "forged-ack-666", "666666"] {
        assert!(
            kafka.matching(forged).is_empty(),
            "a forged message reached Kafka: {:?}",
            kafka.matching(forged)
        );
    }

    // ---- The simulator connects like real devices (--credentials, --tls-ca). ----
    let (status_code, body) = api
        .call(
            Method::POST,
            "/api/v1/homes",
            Some(json!({"id": "pw-0001", "name": "Simulated"})),
        )
        .await;
    assert_eq!(status_code, StatusCode::CREATED, "{body}");
    let (status_code, body) = api
        .call(
            Method::POST,
            "/api/v1/devices",
            Some(json!({"id": SIM_PW_DEVICE, "home_id": "pw-0001", "kind": "thermostat", "name": "sim"})),
        )
        .await;
    assert_eq!(status_code, StatusCode::CREATED, "{body}");
    let sim_password = api.credentials(SIM_PW_DEVICE, "password").await;
    // What the registry answered, saved as is: the credentials file format.
    let credentials = dir.path().join("credentials.json");
    std::fs::write(
        &credentials,
        serde_json::to_vec(&serde_json::Map::from_iter([
            (VICTIM.to_string(), victim_issued.clone()),
            (SIM_PW_DEVICE.to_string(), sim_password),
        ]))
        .unwrap(),
    )
    .unwrap();
    let ca_file = dir.path().join("ca.pem");
    for (prefix, port, tls) in [("home", ep.mqtts, true), ("pw", ep.v4, false)] {
        let port = port.to_string();
        let mut argv = vec![
            "warmhouse-sim",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--home-prefix",
            prefix,
            "--homes",
            "1",
            "--devices-per-home",
            "1",
            "--messages-per-device",
            "5",
            "--interval-ms",
            "10",
            "--credentials",
            credentials.to_str().unwrap(),
        ];
        if tls {
            argv.extend(["--tls-ca", ca_file.to_str().unwrap()]);
        }
        let config: warmhouse_simulator::SimConfig =
            warmhouse_service_kit::parse_ignoring_env(argv).expect("simulator arguments");
        let summary = tokio::time::timeout(
            WAIT,
            warmhouse_simulator::run(config, std::future::pending()),
        )
        .await
        .expect("simulator finishes")
        .expect("simulator runs");
        assert_eq!(summary.messages_acked, 5, "{prefix}: {summary:?}");
    }
    kafka
        .wait_for(&format!("\"device_id\":\"{SIM_PW_DEVICE}\""))
        .await;

    // ---- Refused at connect. ----
    let rogue_ca = PlatformCa::generate("rogue CA", Duration::from_secs(3600)).unwrap();
    let rogue = rogue_ca
        .issue_device_certificate(&DeviceId::new(VICTIM).unwrap(), Duration::from_secs(3600))
        .unwrap();
    let rogue = Cred::Cert {
        cert: rogue.cert_pem.into_bytes(),
        key: rogue.key_pem.into_bytes(),
    };
    match connect(&ep, &rogue, "rogue").await {
        Connect::Failed(_) => {}
        other => panic!("a certificate of another CA got {other:?}"),
    }
    let wrong = Cred::Password {
        user: PW_DEVICE.into(),
        pass: "not-the-password".into(),
    };
    assert_refused(connect(&ep, &wrong, "wrong").await, "wrong password");
    let as_victim = Cred::Password {
        user: VICTIM.into(),
        pass: match &pw_device {
            Cred::Password { pass, .. } => pass.clone(),
            _ => unreachable!(),
        },
    };
    assert_refused(
        connect(&ep, &as_victim, "as-victim").await,
        "another device's password",
    );
    let unknown = Cred::Password {
        user: "home-0001-dev-99".into(),
        pass: "whatever".into(),
    };
    assert_refused(connect(&ep, &unknown, "unknown").await, "unknown device");
    assert_refused(
        connect(&ep, &Cred::Anonymous, "anonymous").await,
        "no credentials",
    );
    let no_service = MqttOptions::new("no-service", "127.0.0.1", ep.internal);
    assert!(
        !matches!(connect_with(no_service).await, Connect::Up(..)),
        "the internal listener let an anonymous client in"
    );

    // A client that opens TLS and says nothing does not block the listener.
    let _silent = tokio::net::TcpStream::connect(loopback(ep.mqtts))
        .await
        .unwrap();
    let started = Instant::now();
    drop(must_connect(&ep, &forger, "after-silent").await);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the mTLS listener stalled"
    );

    // Rotation: a new certificate replaces the old one, and the connection
    // made with the old one is dropped (`device.credentials_rotated`).
    let mut old_cert_live = Live::open(&ep, &forger, "old-cert-live").await;
    let mut old_cert_live_2 = Live::open(&ep2, &forger, "old-cert-live").await;
    let rotated = cert_cred(&api.credentials(FORGER, "certificate").await);
    old_cert_live.expect_dropped("replaced certificate").await;
    old_cert_live_2
        .expect_dropped("replaced certificate, on the second replica")
        .await;
    assert_refused(
        connect(&ep2, &forger, "old-cert").await,
        "a replaced certificate, on the second replica",
    );
    assert_refused(
        connect(&ep, &forger, "old-cert").await,
        "a replaced certificate",
    );
    let replaced_cert = forger.clone();
    let forger = rotated;
    drop(must_connect(&ep, &forger, "new-cert").await);

    // ---- Revocation ends access. ----
    // Disabling the victim drops its live connection and refuses reconnects.
    let mut victim_live_2 = Live::open(&ep2, &victim, "victim").await;
    api.set_status(VICTIM, "disabled").await;
    victim_live.expect_dropped("disabled device").await;
    victim_live_2
        .expect_dropped("disabled device, on the second replica")
        .await;
    assert_refused(connect(&ep, &victim, "victim").await, "disabled device");
    assert_refused(
        connect(&ep2, &victim, "victim").await,
        "disabled device, on the second replica",
    );
    // Enabled again, it may connect.
    api.set_status(VICTIM, "active").await;
    drop(must_connect(&ep, &victim, "victim").await);

    // Deleting the password device drops it and refuses it.
    let mut pw_live = Live::open(&ep, &pw_device, "pw").await;
    let mut pw_live_2 = Live::open(&ep2, &pw_device, "pw").await;
    let (status_code, body) = api
        .call(
            Method::DELETE,
            &format!("/api/v1/devices/{PW_DEVICE}"),
            None,
        )
        .await;
    assert_eq!(status_code, StatusCode::NO_CONTENT, "{body}");
    pw_live.expect_dropped("deleted device").await;
    pw_live_2
        .expect_dropped("deleted device, on the second replica")
        .await;
    assert_refused(connect(&ep, &pw_device, "pw").await, "deleted device");
    assert_refused(
        connect(&ep2, &pw_device, "pw").await,
        "deleted device, on the second replica",
    );

    // An operator's revoke on the broker: dropped, refused, then lifted.
    let mut forger_live = Live::open(&ep, &forger, "forger").await;
    let admin = |method: Method| {
        reqwest::Client::new()
            .request(
                method,
                format!(
                    "http://{}/admin/v1/devices/{FORGER}/revoke",
                    broker.admin_addr
                ),
            )
            .bearer_auth(&broker_admin_token)
    };
    let unauthorized = reqwest::Client::new()
        .post(format!(
            "http://{}/admin/v1/devices/{FORGER}/revoke",
            broker.admin_addr
        ))
        .bearer_auth("wrong-token-of-some-length")
        .send()
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), StatusCode::UNAUTHORIZED);
    let revoked = admin(Method::POST).send().await.unwrap();
    assert_eq!(revoked.status(), StatusCode::OK);
    forger_live.expect_dropped("revoked by an operator").await;
    assert_refused(
        connect(&ep, &forger, "forger").await,
        "revoked by an operator",
    );
    let lifted = admin(Method::DELETE).send().await.unwrap();
    assert_eq!(lifted.status(), StatusCode::NO_CONTENT);
    drop(must_connect(&ep, &forger, "forger").await);

    // ---- The registry down: credentials it allowed shortly before still
    // get in; nothing revoked since does, nor anything never allowed. ----
    // The victim, connected (so allowed just now), is disabled: the broker
    // drops it on the event, without asking the registry again.
    let mut victim_again = Live::open(&ep, &victim, "victim-before-outage").await;
    api.set_status(VICTIM, "disabled").await;
    victim_again.expect_dropped("disabled device").await;
    let _ = registry_stop.send(());
    let deadline = Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(registry.addr).await.is_ok() {
        assert!(Instant::now() < deadline, "the registry did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(must_connect(&ep, &forger, "forger-registry-down").await);
    // Not let in, and told "server unavailable" (patch 30): the broker
    // cannot decide without the registry, so the device retries later
    // rather than take its credentials for wrong.
    assert_unavailable(
        connect(&ep, &victim, "victim-registry-down").await,
        "a device disabled just before the registry went down",
    );
    assert_unavailable(
        connect(&ep, &replaced_cert, "old-cert-registry-down").await,
        "a replaced certificate while the registry is down",
    );
    assert_unavailable(
        connect(
            &ep,
            &Cred::Password {
                user: VICTIM.into(),
                pass: "never-allowed".into(),
            },
            "guess",
        )
        .await,
        "a password never allowed while the registry is down",
    );

    let metrics = reqwest::get(format!("http://{}/metrics", broker.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"warmhouse_broker_revocations_total{source="registry_event"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("warmhouse_broker_revocation_consumer_up 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"outcome="allowed_registry_down"} 1"#),
        "{metrics}"
    );

    kafka_task.abort();
    drop(tansu);
    drop(pg);
}
