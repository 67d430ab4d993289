//! Shared by tests/legacy_import.rs and tests/legacy_api.rs: a real
//! PostgreSQL holding the monolith's database (tests/fixtures/monolith.sql)
//! next to the registry's, and the registry started in-process.

#![allow(dead_code)] // each test crate uses its own part

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::{Client, Method, StatusCode};
use serde_json::Value;
use sqlx::PgPool;
use warmhouse_device_registry::legacy::LegacyConfig;
use warmhouse_device_registry::{start, RegistryConfig, RunningRegistry};
use warmhouse_devstack::Postgres;
use warmhouse_service_kit::auth::{issue_hs256, AuthConfig, Claims};

/// The registry (and the query API, where one runs) verify HS256 tokens
/// signed with this.
pub const SECRET: &str = "legacy-tests-secret-0123456789abcdef0123";

pub const MONOLITH_SQL: &str = include_str!("../fixtures/monolith.sql");

pub fn admin_token() -> String {
    issue_hs256(
        SECRET,
        &Claims::admin("legacy-tests", Duration::from_secs(3_600)),
    )
    .expect("signing a token")
}

/// PostgreSQL must be started on the test's own thread: it is killed when
/// the thread that spawned it exits (PR_SET_PDEATHSIG).
pub fn postgres() -> (tempfile::TempDir, Postgres) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = Postgres::start(dir.path()).expect("starting PostgreSQL");
    (dir, pg)
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A database `monolith` holding the monolith's schema and rows; its URL.
pub fn monolith_database(pg: &Postgres) -> String {
    let url = pg.create_database("monolith").expect("createdb monolith");
    runtime().block_on(async {
        let pool = PgPool::connect(&url)
            .await
            .expect("connecting to the monolith");
        sqlx::raw_sql(MONOLITH_SQL)
            .execute(&pool)
            .await
            .expect("loading tests/fixtures/monolith.sql");
        pool.close().await;
    });
    url
}

/// The registry on a free port, without Kafka (commands stay queued in the
/// outbox), with `legacy` as its telemetry settings.
pub async fn registry(
    database_url: &str,
    legacy: LegacyConfig,
) -> (RunningRegistry, tokio::sync::oneshot::Sender<()>) {
    let mut config = RegistryConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), database_url);
    config.ready_interval_ms = 200;
    config.acquire_timeout_ms = 1_000;
    config.auth = AuthConfig::with_secret(SECRET);
    config.legacy = legacy;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let running = start(config, async {
        let _ = rx.await;
    })
    .await
    .expect("starting registry");
    (running, tx)
}

/// An HTTP client of one service; sends `token` when it has one.
pub struct Http {
    pub client: Client,
    pub base: String,
    pub token: Option<String>,
}

/// One answer: status, headers, body as text and as JSON (Null when empty
/// or not JSON).
pub struct Answer {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub text: String,
    pub json: Value,
}

impl Http {
    pub fn new(addr: SocketAddr, token: Option<String>) -> Self {
        Self {
            client: Client::new(),
            base: format!("http://{addr}"),
            token,
        }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        if status.is_client_error() || status.is_server_error() {
            assert_eq!(
                headers.get("content-type").map(|v| v.as_bytes()),
                Some(&b"application/problem+json"[..]),
                "{path}: {status} without problem+json: {text}"
            );
        }
        Answer {
            status,
            headers,
            text,
            json,
        }
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }

    /// GET that must answer 200; its JSON.
    pub async fn json(&self, path: &str) -> Value {
        let answer = self.get(path).await;
        assert_eq!(answer.status, StatusCode::OK, "GET {path}: {}", answer.text);
        answer.json
    }
}
