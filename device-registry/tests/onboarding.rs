//! The onboarding saga against a real PostgreSQL and a real influxd: the
//! happy path, a failure at each step (each compensated), a real outage of
//! the telemetry store, and a crash mid-saga compensated by the next start.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use warmhouse_device_registry::onboarding::{Fault, Step};
use warmhouse_device_registry::{start, RegistryConfig, RunningRegistry};
use warmhouse_devstack::{Influxd, Postgres};
use warmhouse_service_kit::auth::{issue_hs256, AuthConfig, Claims};

const SECRET: &str = "onboarding-test-secret-0123456789abcdef";

fn admin_token() -> String {
    issue_hs256(
        SECRET,
        &Claims::admin("test-admin", Duration::from_secs(600)),
    )
    .expect("token")
}

struct Registry {
    running: RunningRegistry,
    stop: tokio::sync::oneshot::Sender<()>,
}

impl Registry {
    async fn start(database_url: &str, influx_url: Option<String>, fault: Fault) -> Self {
        let mut config = RegistryConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), database_url);
        config.auth = AuthConfig::with_secret(SECRET);
        config.onboarding.influx_url = influx_url;
        config.onboarding.influx_database = "warmhouse".into();
        config.onboarding.fault = fault;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = start(config, async {
            let _ = stopped.await;
        })
        .await
        .expect("starting the registry");
        Self { running, stop }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.running.addr)
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.running.wait()).await;
    }

    async fn onboard(&self, device: &str) -> (StatusCode, Value) {
        let response = Client::new()
            .post(self.url("/api/v1/onboarding"))
            .bearer_auth(admin_token())
            .json(&json!({
                "device": {"id": device, "home_id": "home-s", "kind": "thermostat", "name": "Hall"},
                "credentials": "password",
            }))
            .send()
            .await
            .expect("POST onboarding");
        let status = response.status();
        (status, response.json().await.expect("JSON answer"))
    }

    async fn saga(&self, id: &str) -> Value {
        Client::new()
            .get(self.url(&format!("/api/v1/onboarding/{id}")))
            .bearer_auth(admin_token())
            .send()
            .await
            .expect("GET saga")
            .json()
            .await
            .expect("JSON saga")
    }
}

async fn setup() -> (tempfile::TempDir, Postgres, Influxd, String, PgPool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = Postgres::start(&dir.path().join("pg")).expect("PostgreSQL");
    let influxd = Influxd::start(&dir.path().join("influx")).expect("influxd");
    influx_query(&influxd.url(), "CREATE DATABASE warmhouse").await;
    let url = pg.create_database("registry").expect("database");
    let pool = PgPool::connect(&url).await.expect("connecting");
    // The home every test onboards into.
    let registry = Registry::start(&url, None, Fault::None).await;
    let created = Client::new()
        .post(registry.url("/api/v1/homes"))
        .bearer_auth(admin_token())
        .json(&json!({"id": "home-s", "name": "Saga home"}))
        .send()
        .await
        .expect("POST home");
    assert_eq!(created.status(), StatusCode::CREATED);
    registry.stop().await;
    (dir, pg, influxd, url, pool)
}

async fn influx_query(url: &str, q: &str) -> Value {
    Client::new()
        .post(format!("{url}/query"))
        .query(&[("q", q), ("db", "warmhouse")])
        .send()
        .await
        .expect("InfluxDB query")
        .json()
        .await
        .expect("InfluxDB JSON")
}

async fn catalogued(influx_url: &str, device: &str) -> bool {
    let answer = influx_query(
        influx_url,
        &format!("SHOW SERIES FROM device_catalog WHERE device_id = '{device}'"),
    )
    .await;
    answer["results"][0]["series"].is_array()
}

/// What is left of `device` in the registry: (device rows, live credentials,
/// device.registered events, device.deleted events).
async fn traces(pool: &PgPool, device: &str) -> (i64, i64, i64, i64) {
    let devices: i64 = sqlx::query_scalar("SELECT count(*) FROM devices WHERE id = $1")
        .bind(device)
        .fetch_one(pool)
        .await
        .expect("count devices");
    let live: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM device_credentials WHERE device_id = $1 AND revoked_at IS NULL",
    )
    .bind(device)
    .fetch_one(pool)
    .await
    .expect("count credentials");
    let events = |kind: &'static str| {
        let pool = pool.clone();
        let device = device.to_string();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM outbox WHERE key = $1 AND convert_from(payload, 'UTF8')::jsonb->>'type' = $2",
            )
            .bind(device)
            .bind(kind)
            .fetch_one(&pool)
            .await
            .expect("count events")
        }
    };
    (
        devices,
        live,
        events("device.registered").await,
        events("device.deleted").await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn onboarding_runs_every_step_and_the_device_can_be_used() {
    let (_dir, _pg, influxd, url, pool) = setup().await;
    let registry = Registry::start(&url, Some(influxd.url()), Fault::None).await;
    let (status, body) = registry.onboard("dev-ok").await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["device"]["status"], "active", "{body}");
    assert_eq!(body["credentials"]["kind"], "password");
    assert!(body["credentials"]["password"]
        .as_str()
        .is_some_and(|p| p.len() >= 32));
    assert_eq!(body["saga"]["state"], "completed");
    let done: Vec<&str> = body["saga"]["log"]
        .as_array()
        .expect("log")
        .iter()
        .filter(|e| e["outcome"] == "done")
        .filter_map(|e| e["step"].as_str())
        .collect();
    assert_eq!(done, Step::ALL.map(Step::as_str).to_vec());
    assert_eq!(traces(&pool, "dev-ok").await, (1, 1, 1, 0));
    assert!(catalogued(&influxd.url(), "dev-ok").await);

    // Onboarding an existing id changes nothing and starts no saga.
    let (status, body) = registry.onboard("dev-ok").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(traces(&pool, "dev-ok").await, (1, 1, 1, 0));
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_at_any_step_undoes_the_steps_before_it() {
    let (_dir, _pg, influxd, url, pool) = setup().await;
    for step in Step::ALL {
        let device = format!("dev-fail-{}", step.as_str().replace('_', "-"));
        let registry = Registry::start(&url, Some(influxd.url()), Fault::FailAt(step)).await;
        let (status, body) = registry.onboard(&device).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{step:?}: {body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(step.as_str()) && detail.contains("undone"),
            "{detail}"
        );
        let saga_id = detail
            .split_whitespace()
            .nth(2)
            .expect("the detail names the saga")
            .to_string();
        let saga = registry.saga(&saga_id).await;
        assert_eq!(saga["state"], "compensated", "{step:?}: {saga}");
        let position = Step::ALL.iter().position(|s| *s == step).unwrap();
        let compensated: Vec<&str> = saga["log"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["outcome"] == "compensated")
            .filter_map(|e| e["step"].as_str())
            .collect();
        let expected: Vec<&str> = Step::ALL[..=position]
            .iter()
            .rev()
            .map(|s| s.as_str())
            .collect();
        assert_eq!(compensated, expected, "{step:?}");

        // Nothing is left: no device, no live credential, no catalogue
        // entry; a registration that was announced is retracted.
        let announced = position
            > Step::ALL
                .iter()
                .position(|s| *s == Step::AnnounceRegistered)
                .unwrap();
        let announced = i64::from(announced);
        assert_eq!(
            traces(&pool, &device).await,
            (0, 0, announced, announced),
            "{step:?}"
        );
        assert!(!catalogued(&influxd.url(), &device).await, "{step:?}");
        registry.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_telemetry_store_outage_fails_the_saga_cleanly() {
    let (_dir, _pg, _influxd, url, pool) = setup().await;
    // Nothing listens there: a real connection refusal, not an injected one.
    let closed = warmhouse_devstack::free_port().expect("port");
    let registry = Registry::start(
        &url,
        Some(format!("http://127.0.0.1:{closed}")),
        Fault::None,
    )
    .await;
    let (status, body) = registry.onboard("dev-no-influx").await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("provision_telemetry"),
        "{body}"
    );
    assert_eq!(traces(&pool, "dev-no-influx").await, (0, 0, 0, 0));
    registry.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_cut_short_by_a_crash_is_compensated_by_the_next_start() {
    let (_dir, _pg, influxd, url, pool) = setup().await;
    let crashing = Registry::start(
        &url,
        Some(influxd.url()),
        Fault::CrashAfter(Step::ProvisionTelemetry),
    )
    .await;
    let (status, body) = crashing.onboard("dev-crash").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    crashing.stop().await;
    // Left half done: device, credentials and catalogue entry exist.
    assert_eq!(traces(&pool, "dev-crash").await, (1, 1, 0, 0));
    assert!(catalogued(&influxd.url(), "dev-crash").await);
    let saga_id: String =
        sqlx::query_scalar("SELECT saga_id FROM onboarding_sagas WHERE device_id = 'dev-crash'")
            .fetch_one(&pool)
            .await
            .expect("saga row");

    // The next registry finds it at start and undoes it.
    let restarted = Registry::start(&url, Some(influxd.url()), Fault::None).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let saga = loop {
        let saga = restarted.saga(&saga_id).await;
        if saga["state"] == "compensated" || std::time::Instant::now() > deadline {
            break saga;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(saga["state"], "compensated", "{saga}");
    assert_eq!(traces(&pool, "dev-crash").await, (0, 0, 0, 0));
    assert!(!catalogued(&influxd.url(), "dev-crash").await);
    restarted.stop().await;
}
