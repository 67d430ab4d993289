//! Two broker replicas, one device moving between them: commands reach the
//! device through the replica that holds its connection (and only that one
//! reports them delivered), presence follows the newest connection (the
//! old replica's last will does not mark the device offline), and a
//! command sent while the device was away reaches it on the other replica.
//! Real tansu, PostgreSQL, registry and brokers; the device is rumqttc.

use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use warmhouse_contracts::device::Command;
use warmhouse_stack::fleet::register_fleet;
use warmhouse_stack::{Stack, StackOptions};

const DEVICE: &str = "home-moves-0001-dev-01";
const PATIENCE: Duration = Duration::from_secs(30);

/// One MQTT connection of the device: subscribed to its commands, acking
/// each one it gets, with a last will saying it is offline.
struct Connection {
    client: AsyncClient,
    commands: mpsc::UnboundedReceiver<Command>,
    task: JoinHandle<()>,
}

impl Connection {
    async fn open(port: u16) -> Self {
        let status = format!("/tenants/{DEVICE}/status");
        let mut options = MqttOptions::new(DEVICE, "127.0.0.1", port);
        options
            .set_keep_alive(Duration::from_secs(5))
            .set_clean_session(false)
            .set_last_will(LastWill::new(
                &status,
                r#"{"v":1,"online":false}"#,
                QoS::AtLeastOnce,
                true,
            ));
        let (client, eventloop) = AsyncClient::new(options, 100);
        client
            .subscribe(format!("/tenants/{DEVICE}/commands"), QoS::AtLeastOnce)
            .await
            .expect("queue SUBSCRIBE");
        let online = format!(
            r#"{{"v":1,"online":true,"ts":{}}}"#,
            warmhouse_service_kit::now_ms()
        );
        client
            .publish(&status, QoS::AtLeastOnce, true, online)
            .await
            .expect("queue the online status");
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let task = tokio::spawn(serve(eventloop, client.clone(), commands_tx));
        Self {
            client,
            commands,
            task,
        }
    }

    /// The next command this connection received (and acked).
    async fn next_command(&mut self) -> Command {
        tokio::time::timeout(PATIENCE, self.commands.recv())
            .await
            .expect("a command in time")
            .expect("the connection is running")
    }

    /// Ends the connection without DISCONNECT, as a power cut would: the
    /// broker publishes the last will.
    fn cut(self) {
        self.task.abort();
        drop(self.client);
    }
}

async fn serve(
    mut eventloop: EventLoop,
    client: AsyncClient,
    commands: mpsc::UnboundedSender<Command>,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let Ok(command) = serde_json::from_slice::<Command>(&publish.payload) else {
                    continue;
                };
                let ack = json!({
                    "v": 1,
                    "command_id": command.command_id,
                    "result": "done",
                    "ts": warmhouse_service_kit::now_ms(),
                });
                let _ = client
                    .publish(
                        format!("/tenants/{DEVICE}/commands/ack"),
                        QoS::AtLeastOnce,
                        false,
                        ack.to_string(),
                    )
                    .await;
                let _ = commands.send(command);
            }
            Ok(_) => {}
            Err(err) => {
                tracing::warn!(%err, "test device connection failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

struct Registry {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Registry {
    async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("GET");
        assert!(
            response.status().is_success(),
            "GET {path}: {}",
            response.status()
        );
        response.json().await.expect("JSON answer")
    }

    async fn until(&self, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.get(path).await;
            if done(&value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last: {value}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn presence(&self) -> String {
        let state = self.get(&format!("/api/v1/devices/{DEVICE}/state")).await;
        state["presence"].as_str().unwrap_or_default().to_string()
    }

    async fn until_presence(&self, presence: &str) {
        self.until(&format!("/api/v1/devices/{DEVICE}/state"), presence, |s| {
            s["presence"] == presence
        })
        .await;
    }

    async fn send_command(&self, temperature: f64) -> String {
        let response = self
            .http
            .post(format!("{}/api/v1/devices/{DEVICE}/commands", self.url))
            .bearer_auth(&self.token)
            .json(&json!({
                "name": "set_target_temperature",
                "params": {"temperature": temperature},
                "ttl_seconds": 120,
            }))
            .send()
            .await
            .expect("POST command");
        assert_eq!(response.status().as_u16(), 202);
        let command: Value = response.json().await.expect("JSON answer");
        command["command_id"]
            .as_str()
            .expect("command id")
            .to_string()
    }

    async fn until_command(&self, id: &str, status: &str) {
        self.until(
            &format!("/api/v1/devices/{DEVICE}/commands/{id}"),
            &format!("command {id} to be {status}"),
            |c| c["status"] == status,
        )
        .await;
    }

    async fn until_statuses(&self, count: f64, what: &str) {
        let deadline = Instant::now() + PATIENCE;
        while self.statuses_applied().await < count {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// How many status events (online, offline, last wills) the registry
    /// has applied.
    async fn statuses_applied(&self) -> f64 {
        let text = self
            .http
            .get(format!("{}/metrics", self.url))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find(|l| l.starts_with(r#"warmhouse_registry_device_events_total{kind="status"}"#))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }
}

fn delivered(stack: &Stack, replica: usize, outcome: &str) -> u64 {
    stack.brokers[replica]
        .ingress
        .commands
        .with_label_values(&[outcome])
        .get()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_device_moving_between_replicas_stays_online_and_gets_its_commands() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(
        dir.path(),
        StackOptions {
            registry: true,
            broker_replicas: 2,
            ..StackOptions::default()
        },
    )
    .await
    .expect("starting the stack");
    let registry = Registry {
        http: reqwest::Client::new(),
        url: stack.registry_url().expect("a registry"),
        token: stack.admin_token().expect("admin token"),
    };
    let fleet = stack.simulator(&[
        "--homes",
        "1",
        "--devices-per-home",
        "1",
        "--run-id",
        "moves",
    ]);
    register_fleet(&registry.http, &registry.url, &registry.token, &fleet)
        .await
        .expect("registering the device");
    let [first, second] = [
        stack.brokers[0].mqtt_v4_addr.port(),
        stack.brokers[1].mqtt_v4_addr.port(),
    ];

    // On replica 0: a command goes through replica 0 only.
    let mut on_first = Connection::open(first).await;
    registry.until_presence("online").await;
    let command = registry.send_command(21.0).await;
    assert_eq!(on_first.next_command().await.command_id, command);
    registry.until_command(&command, "acked").await;
    assert_eq!(delivered(&stack, 0, "delivered"), 1);
    assert_eq!(delivered(&stack, 1, "delivered"), 0);
    assert!(delivered(&stack, 1, "not_connected_here") >= 1);

    // The device moves to replica 1 while its old connection lingers; then
    // the old one dies and replica 0 publishes its last will. Presence
    // follows the newer connection: the device stays online.
    let statuses = registry.statuses_applied().await;
    let mut on_second = Connection::open(second).await;
    registry
        .until_statuses(statuses + 1.0, "the new connection's online status")
        .await;
    on_first.cut();
    registry
        .until_statuses(statuses + 2.0, "the old connection's last will")
        .await;
    assert_eq!(
        registry.presence().await,
        "online",
        "the old connection's last will won"
    );

    // A command now goes through replica 1 only.
    let command = registry.send_command(22.0).await;
    assert_eq!(on_second.next_command().await.command_id, command);
    registry.until_command(&command, "acked").await;
    assert_eq!(delivered(&stack, 0, "delivered"), 1);
    assert_eq!(delivered(&stack, 1, "delivered"), 1);

    // The device goes away; a command waits; the device comes back on
    // replica 0 and gets it there.
    on_second.cut();
    registry.until_presence("offline").await;
    let waiting = registry.send_command(23.0).await;
    registry.until_command(&waiting, "sent").await;
    let mut back = Connection::open(first).await;
    assert_eq!(back.next_command().await.command_id, waiting);
    registry.until_command(&waiting, "acked").await;
    registry.until_presence("online").await;
    assert_eq!(delivered(&stack, 0, "delivered"), 2);
    back.cut();
    stack.stop().await;
}
