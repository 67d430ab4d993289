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

mod api;
pub mod model;
mod problem;
mod store;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use utoipa_swagger_ui::SwaggerUi;
use warmhouse_service_kit::Readiness;

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
}

impl RegistryConfig {
    /// Defaults with another database and listen address (tests, embedding).
    pub fn new(listen: SocketAddr, database_url: impl Into<String>) -> Self {
        Self {
            listen,
            database_url: database_url.into(),
            pool_size: 10,
            acquire_timeout_ms: 3_000,
            ready_interval_ms: 2_000,
        }
    }
}

#[derive(Clone)]
struct RegistryMetrics {
    requests: IntCounterVec,
    request_seconds: HistogramVec,
}

impl RegistryMetrics {
    fn register(registry: &Registry) -> anyhow::Result<Self> {
        use warmhouse_service_kit::register;
        Ok(Self {
            requests: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "warmhouse_registry_requests_total",
                        "HTTP requests answered, by route and status",
                    ),
                    &["route", "status"],
                )?,
            )?,
            request_seconds: register(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "warmhouse_registry_request_duration_seconds",
                        "Time to answer an HTTP request, by route",
                    ),
                    &["route"],
                )?,
            )?,
        })
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct RegistryState {
    pool: PgPool,
    metrics: RegistryMetrics,
    registry: Registry,
    readiness: Readiness,
}

impl RegistryState {
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
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
        // The Json extractor reports an oversized body as a rejection with
        // status 413, which becomes a problem like any other.
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route_layer(middleware::from_fn_with_state(
            state.metrics.clone(),
            track_request,
        ))
        .with_state(state.clone());
    Router::new()
        .merge(api)
        .merge(SwaggerUi::new("/docs").url("/api-docs/openapi.json", openapi()))
        .merge(warmhouse_service_kit::admin_router(
            state.registry.clone(),
            state.readiness.clone(),
        ))
        .fallback(api::no_route)
}

/// Counts and times requests per route template, so the label set stays
/// bounded whatever ids clients send.
async fn track_request(
    State(metrics): State<RegistryMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    metrics
        .request_seconds
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
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
    let state = RegistryState {
        pool,
        metrics: RegistryMetrics::register(&registry)?,
        registry,
        readiness,
    };

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
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

/// Runs `SELECT 1` every `interval` to keep `/readyz` current.
async fn watch_database(state: RegistryState, interval: Duration, stop: watch::Receiver<bool>) {
    let stop = stopped(stop);
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let up = sqlx::query("SELECT 1").execute(&state.pool).await.is_ok();
                if up != state.readiness.is_ready() {
                    tracing::info!(up, "PostgreSQL reachability changed");
                }
                state.readiness.set(READY_CHECK, up);
            }
            _ = &mut stop => {
                state.pool.close().await;
                return;
            }
        }
    }
}

/// Resolves once shutdown was asked for (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}
