//! Device registry: homes and their devices (kind, capabilities, metadata,
//! status) in PostgreSQL, behind a REST API.
//!
//! * `POST/GET /api/v1/homes`, `GET/PATCH/DELETE /api/v1/homes/{id}`
//! * `POST/GET /api/v1/devices` (filters `home_id`, `kind`, `status`),
//!   `GET/PATCH/DELETE /api/v1/devices/{id}`
//! * lists page by id: `limit` (1..=500, default 50) and an opaque `cursor`
//! * `/docs` (Swagger UI), `/api-docs/openapi.json`, `/metrics`, `/healthz`,
//!   `/readyz` (PostgreSQL answers)
//!
//! Errors are problem+json with the `urn:warmhouse:problem:*` types the
//! telemetry query API uses.
//!
//! Every `/api/v1` endpoint needs a bearer token
//! ([`warmhouse_service_kit::auth`]): creating and deleting homes takes an
//! admin's; a home needs the home in the token (else 403); a device of a
//! home outside the token answers 404, as if it did not exist, so device
//! ids of other homes are not disclosed.

mod api;
pub mod commands;
mod commands_api;
mod device_events;
pub mod identity;
pub mod kafka;
pub mod legacy;
pub mod messaging;
pub mod model;
pub mod onboarding;
mod outbox;
mod problem;
pub mod read_model;
mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::get;
use axum::Router;
use prometheus::Registry;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use utoipa_swagger_ui::SwaggerUi;
use warmhouse_service_kit::auth::{self, AuthConfig, Verifier};
use warmhouse_service_kit::{stopped, track_request, HttpMetrics, Readiness};

pub use api::{openapi, DEFAULT_LIMIT, MAX_LIMIT};
pub use problem::{Problem, PROBLEM_TYPE_PREFIX};

/// Name of the readiness check `/readyz` reports.
pub const READY_CHECK: &str = "postgres";
/// Largest request body accepted; bigger ones get a 413 problem.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Configuration of `device-registry` (flags or environment variables).
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "device-registry",
    about = "Warmhouse device registry (REST over PostgreSQL)"
)]
pub struct RegistryConfig {
    /// Address the HTTP API listens on.
    #[arg(
        long,
        env = "WARMHOUSE_REGISTRY_LISTEN",
        default_value = "0.0.0.0:8082"
    )]
    pub listen: SocketAddr,
    /// PostgreSQL connection URL.
    #[arg(
        long,
        env = "WARMHOUSE_REGISTRY_DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/warmhouse"
    )]
    pub database_url: String,
    /// Most connections to PostgreSQL.
    #[arg(long, env = "WARMHOUSE_REGISTRY_POOL_SIZE", default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub pool_size: u32,
    /// How long a request waits for a connection, in milliseconds.
    #[arg(
        long,
        env = "WARMHOUSE_REGISTRY_ACQUIRE_TIMEOUT_MS",
        default_value_t = 3_000
    )]
    pub acquire_timeout_ms: u64,
    /// How often PostgreSQL is checked for `/readyz`, in milliseconds.
    #[arg(
        long,
        env = "WARMHOUSE_REGISTRY_READY_INTERVAL_MS",
        default_value_t = 2_000
    )]
    pub ready_interval_ms: u64,
    /// Kafka bootstrap servers, comma separated. Empty: no Kafka (commands
    /// then wait in the outbox; for tests of the REST API alone).
    #[arg(
        long,
        env = "WARMHOUSE_KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    pub kafka_bootstrap: String,
    /// Consumer group of the registry's `device-events` consumer.
    #[arg(
        long,
        env = "WARMHOUSE_REGISTRY_GROUP",
        default_value = "warmhouse-device-registry"
    )]
    pub group_id: String,
    #[arg(long, env = "WARMHOUSE_TOPIC_DEVICE_COMMANDS", default_value = warmhouse_contracts::kafka::topics::DEVICE_COMMANDS)]
    pub device_commands_topic: String,
    #[arg(long, env = "WARMHOUSE_TOPIC_DEVICE_EVENTS", default_value = warmhouse_contracts::kafka::topics::DEVICE_EVENTS)]
    pub device_events_topic: String,
    #[arg(long, env = "WARMHOUSE_TOPIC_REGISTRY_EVENTS", default_value = warmhouse_contracts::kafka::topics::REGISTRY_EVENTS)]
    pub registry_events_topic: String,
    /// How bearer tokens are verified.
    #[command(flatten)]
    pub auth: AuthConfig,
    /// Device identity: the platform CA that signs device certificates.
    #[command(flatten)]
    pub identity: identity::IdentityConfig,
    /// Where the legacy `/api/heating` endpoints read temperatures.
    #[command(flatten)]
    pub legacy: legacy::LegacyConfig,
    /// The onboarding saga: telemetry store, failure injection.
    #[command(flatten)]
    pub onboarding: onboarding::OnboardingConfig,
}

impl RegistryConfig {
    /// Defaults with another database and listen address (tests, embedding).
    /// Set `auth` before starting: without a key the registry refuses to
    /// start.
    pub fn new(listen: SocketAddr, database_url: impl Into<String>) -> Self {
        Self {
            listen,
            database_url: database_url.into(),
            pool_size: 10,
            acquire_timeout_ms: 3_000,
            ready_interval_ms: 2_000,
            kafka_bootstrap: String::new(),
            group_id: "warmhouse-device-registry".into(),
            device_commands_topic: warmhouse_contracts::kafka::topics::DEVICE_COMMANDS.into(),
            device_events_topic: warmhouse_contracts::kafka::topics::DEVICE_EVENTS.into(),
            registry_events_topic: warmhouse_contracts::kafka::topics::REGISTRY_EVENTS.into(),
            auth: AuthConfig::default(),
            identity: identity::IdentityConfig::default(),
            legacy: legacy::LegacyConfig::default(),
            onboarding: onboarding::OnboardingConfig::default(),
        }
    }

    /// The same with Kafka at `bootstrap`.
    pub fn with_kafka(mut self, bootstrap: impl Into<String>) -> Self {
        self.kafka_bootstrap = bootstrap.into();
        self
    }

    fn topics(&self) -> kafka::Topics {
        kafka::Topics {
            device_commands: self.device_commands_topic.clone(),
            device_events: self.device_events_topic.clone(),
            registry_events: self.registry_events_topic.clone(),
        }
    }

    fn kafka(&self) -> Option<kafka::KafkaSettings> {
        (!self.kafka_bootstrap.trim().is_empty()).then(|| kafka::KafkaSettings {
            bootstrap: self.kafka_bootstrap.clone(),
            group_id: self.group_id.clone(),
        })
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct RegistryState {
    pool: PgPool,
    http_metrics: HttpMetrics,
    verifier: Verifier,
    registry: Registry,
    readiness: Readiness,
    topics: kafka::Topics,
    legacy: legacy::LegacyState,
    identity: std::sync::Arc<identity::Identity>,
    onboarding: onboarding::OnboardingConfig,
    telemetry_store: Option<onboarding::TelemetryStore>,
}

impl RegistryState {
    /// Device identity: the platform CA (when configured) for credentials.
    pub fn identity(&self) -> &identity::Identity {
        &self.identity
    }

    pub fn onboarding(&self) -> &onboarding::OnboardingConfig {
        &self.onboarding
    }

    pub fn telemetry_store(&self) -> Option<&onboarding::TelemetryStore> {
        self.telemetry_store.as_ref()
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    pub fn topics(&self) -> &kafka::Topics {
        &self.topics
    }
}

/// The whole HTTP surface: API, Swagger UI, OpenAPI JSON and the
/// operational endpoints.
pub fn router(state: RegistryState) -> Router {
    let api = Router::new()
        .route("/api/v1/homes", get(api::list_homes).post(api::create_home))
        .route(
            "/api/v1/homes/{id}",
            get(api::get_home)
                .patch(api::update_home)
                .delete(api::delete_home),
        )
        .route(
            "/api/v1/devices",
            get(api::list_devices).post(api::create_device),
        )
        .route(
            "/api/v1/devices/{id}",
            get(api::get_device)
                .patch(api::update_device)
                .delete(api::delete_device),
        )
        .merge(commands_api::routes())
        .merge(identity::routes())
        .merge(onboarding::routes())
        // The Json extractor reports an oversized body as a rejection with
        // status 413, which becomes a problem like any other.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Every route above needs a bearer token. The layer added last runs
        // first: metrics wrap authenticate, so refusals (401) count too.
        .route_layer(middleware::from_fn_with_state(
            state.verifier.clone(),
            auth::authenticate,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.http_metrics.clone(),
            track_request,
        ))
        .with_state(state.clone());
    Router::new()
        .merge(api)
        // The monolith's paths: no bearer token (docs/adr/0013).
        .merge(legacy::routes(state.clone()))
        .merge(SwaggerUi::new("/docs").url("/api-docs/openapi.json", openapi()))
        .merge(warmhouse_service_kit::admin_router(
            state.registry.clone(),
            state.readiness.clone(),
        ))
        .fallback(api::no_route)
}

/// A running registry.
pub struct RunningRegistry {
    /// Bound address (the real port when port 0 was asked for).
    pub addr: SocketAddr,
    pub state: RegistryState,
    server: JoinHandle<()>,
}

impl RunningRegistry {
    /// Waits until the server has shut down.
    pub async fn wait(self) -> anyhow::Result<()> {
        self.server.await.context("registry server task failed")
    }
}

/// Connects to PostgreSQL, applies the migrations, binds `config.listen`
/// and serves until `shutdown` resolves. Unlike the query API it needs the
/// database at start: without the schema there is nothing to serve.
pub async fn start(
    config: RegistryConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningRegistry> {
    // Before anything else: without a key there is nothing safe to serve.
    let verifier = config
        .auth
        .verifier()
        .context("configuring bearer-token verification")?;
    let legacy = legacy::LegacyState::new(&config.legacy)
        .context("configuring the legacy API's telemetry client")?;
    let pool = PgPoolOptions::new()
        .max_connections(config.pool_size)
        .acquire_timeout(Duration::from_millis(config.acquire_timeout_ms))
        .connect(&config.database_url)
        .await
        .context("connecting to PostgreSQL")?;
    sqlx::migrate!("./migrations")
        .run(&pool)
        .await
        .context("applying registry migrations")?;
    let registry = Registry::new();
    let readiness = Readiness::new();
    readiness.set(READY_CHECK, true);
    let messaging_metrics = messaging::MessagingMetrics::register(&registry)?;
    let identity = config.identity.load(&registry)?;
    let state = RegistryState {
        pool,
        http_metrics: HttpMetrics::register(&registry, "warmhouse_registry")?,
        verifier,
        registry,
        readiness,
        topics: config.topics(),
        legacy,
        identity,
        telemetry_store: config.onboarding.telemetry_store(),
        onboarding: config.onboarding.clone(),
    };

    let stop_rx = warmhouse_service_kit::stop_channel(shutdown);
    messaging::spawn(
        state.pool.clone(),
        config.kafka(),
        config.topics(),
        messaging_metrics,
        stop_rx.clone(),
    );
    tokio::spawn(onboarding::recover_forever(
        state.clone(),
        Duration::from_secs(10),
        stop_rx.clone(),
    ));
    tokio::spawn(watch_database(
        state.clone(),
        Duration::from_millis(config.ready_interval_ms.max(100)),
        stop_rx.clone(),
    ));
    let (addr, server) =
        warmhouse_service_kit::serve(config.listen, router(state.clone()), stopped(stop_rx))
            .await?;
    tracing::info!(%addr, "device registry listening");
    Ok(RunningRegistry {
        addr,
        state,
        server,
    })
}

/// Runs `SELECT 1` every `interval` to keep `/readyz` current; closes the
/// pool once stopped.
async fn watch_database(state: RegistryState, interval: Duration, stop: watch::Receiver<bool>) {
    let pool = state.pool.clone();
    warmhouse_service_kit::probe_readiness(
        state.readiness.clone(),
        READY_CHECK,
        "PostgreSQL",
        interval,
        stop,
        move || {
            let pool = pool.clone();
            async move { sqlx::query("SELECT 1").execute(&pool).await.is_ok() }
        },
    )
    .await;
    state.pool.close().await;
}
