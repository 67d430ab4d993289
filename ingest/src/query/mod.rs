//! Telemetry query API: the read side (CQRS) of telemetry, its own process
//! (`ingest-query`), answering REST with InfluxQL against the `raw`
//! retention policy the writer fills.
//!
//! * `GET /api/v1/devices/{device_id}/telemetry/latest`
//! * `GET /api/v1/homes/{home_id}/telemetry/latest`
//! * `GET /api/v1/devices/{device_id}/telemetry?metric&from&to&limit&agg&every`
//! * `/docs` (Swagger UI), `/api-docs/openapi.json`, `/metrics`, `/healthz`,
//!   `/readyz` (InfluxDB answers its ping).
//!
//! Every `/api/v1` endpoint needs a bearer token
//! ([`warmhouse_service_kit::auth`]): a home's readings need the home in the
//! token (else 403); a device's readings are those it reported from the
//! caller's homes, so a device of another home looks like one without data.
//!
//! Times in and out are device milliseconds: a point's timestamp carries
//! `seq % 1e6` in its sub-millisecond nanoseconds (see
//! `warmhouse_contracts::points`), which the API strips again.

mod api;
mod influxql;
mod params;
mod timefmt;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use axum::middleware;
use axum::routing::get;
use axum::Router;
use prometheus::{Histogram, IntCounterVec, Registry};
use utoipa_swagger_ui::SwaggerUi;
use warmhouse_service_kit::args::{InfluxArgs, LogArgs};
use warmhouse_service_kit::auth::{self, AuthConfig, Verifier};
use warmhouse_service_kit::{
    probe_readiness, track_request, HttpMetrics, Lifecycle, Readiness, Running,
};

use crate::influx::{InfluxClient, InfluxSettings};

pub use api::{
    AggregatedTelemetry, DeviceLatest, HomeLatest, LatestMetric, RawPoint, RawTelemetry, Telemetry,
    Window,
};
pub use params::{Aggregate, TelemetryParams};
pub use warmhouse_service_kit::Problem;

/// Name of the readiness check `/readyz` reports.
pub const READY_CHECK: &str = "influxdb";

pub const DEFAULT_LISTEN: &str = "0.0.0.0:8081";
pub const DEFAULT_MAX_POINTS: u32 = 10_000;
pub const DEFAULT_INFLUX_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_READY_INTERVAL_MS: u64 = 2_000;

/// Configuration of `ingest-query` (flags or environment variables). Tests
/// start from [`Default`] (or [`QueryConfig::new`]) and override fields.
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "ingest-query",
    about = "Warmhouse telemetry query API (REST over InfluxDB)"
)]
pub struct QueryConfig {
    /// Address the HTTP API listens on.
    #[arg(long, env = "WARMHOUSE_QUERY_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// The InfluxDB the writer fills.
    #[command(flatten)]
    pub influx: InfluxArgs,
    /// Most raw points one request may return (the ceiling of `limit`), and
    /// most aggregation windows.
    #[arg(long, env = "WARMHOUSE_QUERY_MAX_POINTS", default_value_t = DEFAULT_MAX_POINTS,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_points: u32,
    /// How long one InfluxDB query may take, in milliseconds.
    #[arg(
        long,
        env = "WARMHOUSE_QUERY_INFLUX_TIMEOUT_MS",
        default_value_t = DEFAULT_INFLUX_TIMEOUT_MS
    )]
    pub influx_timeout_ms: u64,
    /// How often InfluxDB is pinged for `/readyz`, in milliseconds.
    #[arg(
        long,
        env = "WARMHOUSE_QUERY_READY_INTERVAL_MS",
        default_value_t = DEFAULT_READY_INTERVAL_MS
    )]
    pub ready_interval_ms: u64,
    /// How bearer tokens are verified.
    #[command(flatten)]
    pub auth: AuthConfig,
    /// Logging: `--log-filter` (`RUST_LOG`), `--log-format`
    /// (`WARMHOUSE_LOG_FORMAT`).
    #[command(flatten)]
    pub log: LogArgs,
}

impl Default for QueryConfig {
    /// What the flags default to, without reading the environment. Set
    /// `auth` before starting: without a key the API refuses to start.
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 8081)),
            influx: InfluxArgs::default(),
            max_points: DEFAULT_MAX_POINTS,
            influx_timeout_ms: DEFAULT_INFLUX_TIMEOUT_MS,
            ready_interval_ms: DEFAULT_READY_INTERVAL_MS,
            auth: AuthConfig::default(),
            log: LogArgs::default(),
        }
    }
}

impl QueryConfig {
    /// Defaults with another InfluxDB and listen address (tests, embedding).
    /// Set `auth` before starting: without a key the API refuses to start.
    pub fn new(listen: SocketAddr, influx_url: impl Into<String>) -> Self {
        Self {
            listen,
            influx: InfluxArgs::new(influx_url),
            ..Self::default()
        }
    }
}

/// Prometheus metrics of the API.
#[derive(Clone)]
pub struct QueryMetrics {
    http: HttpMetrics,
    influx_seconds: Histogram,
    influx_errors: IntCounterVec,
}

impl QueryMetrics {
    fn register(registry: &Registry) -> anyhow::Result<Self> {
        use warmhouse_service_kit::metrics::{counter_vec, histogram};
        Ok(Self {
            http: HttpMetrics::register(registry, "warmhouse_query")?,
            influx_seconds: histogram(
                registry,
                "warmhouse_query_influx_duration_seconds",
                "Time InfluxDB took to answer a query",
                None,
            )?,
            influx_errors: counter_vec(
                registry,
                "warmhouse_query_influx_errors_total",
                "Failed InfluxDB queries, by kind (unavailable, error)",
                &["kind"],
            )?,
        })
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct QueryState {
    influx: InfluxClient,
    max_points: u32,
    metrics: QueryMetrics,
    registry: Registry,
    readiness: Readiness,
    verifier: Verifier,
}

impl QueryState {
    /// A state with its own Prometheus registry; InfluxDB is not contacted.
    /// Fails without a token verification key.
    pub fn new(config: &QueryConfig) -> anyhow::Result<Self> {
        let verifier = config
            .auth
            .verifier()
            .context("configuring bearer-token verification")?;
        let mut settings = InfluxSettings::new(&config.influx.url, &config.influx.database);
        settings.timeout = Duration::from_millis(config.influx_timeout_ms);
        let registry = Registry::new();
        let readiness = Readiness::new();
        // Not ready until a ping or a query has proven InfluxDB answers.
        readiness.set(READY_CHECK, false);
        Ok(Self {
            influx: InfluxClient::new(settings)?,
            max_points: config.max_points,
            metrics: QueryMetrics::register(&registry)?,
            registry,
            readiness,
            verifier,
        })
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// The whole HTTP surface: API, Swagger UI, OpenAPI JSON and the
/// operational endpoints.
pub fn router(state: QueryState) -> Router {
    let api = Router::new()
        .route(
            "/api/v1/devices/{device_id}/telemetry/latest",
            get(api::device_latest),
        )
        .route(
            "/api/v1/homes/{home_id}/telemetry/latest",
            get(api::home_latest),
        )
        .route(
            "/api/v1/devices/{device_id}/telemetry",
            get(api::device_telemetry),
        )
        // The layer added last runs first: metrics wrap authenticate, so
        // refused requests (401) are counted too.
        .route_layer(middleware::from_fn_with_state(
            state.verifier.clone(),
            auth::authenticate,
        ))
        .route_layer(middleware::from_fn_with_state(
            state.metrics.http.clone(),
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

/// The OpenAPI document served at `/api-docs/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api::openapi()
}

/// What a running query API exposes.
pub struct QueryApiParts {
    /// Bound address (the real port when port 0 was asked for).
    pub addr: SocketAddr,
    pub state: QueryState,
}

/// A running query API: [`Running::wait`] returns once it has stopped
/// (after `shutdown` resolved and in-flight requests finished).
pub type RunningQueryApi = Running<QueryApiParts>;

/// Binds `config.listen` and serves until `shutdown` resolves. InfluxDB
/// need not be up: the API starts anyway, answers 503 meanwhile and reports
/// not-ready until InfluxDB answers.
pub async fn start(
    config: QueryConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningQueryApi> {
    let state = QueryState::new(&config)?;
    // Know readiness before the first /readyz, instead of one interval later.
    state.readiness.set(READY_CHECK, state.influx.ping().await);

    let mut lifecycle = Lifecycle::new("telemetry query API");
    lifecycle.stop_on(shutdown);
    let influx = state.influx.clone();
    lifecycle.spawn(probe_readiness(
        state.readiness.clone(),
        READY_CHECK,
        "InfluxDB",
        Duration::from_millis(config.ready_interval_ms.max(100)),
        lifecycle.stop_signal(),
        move || {
            let influx = influx.clone();
            async move { influx.ping().await }
        },
    ));
    let addr = lifecycle
        .serve(config.listen, router(state.clone()))
        .await?;
    tracing::info!(%addr, influx = %config.influx.url, database = %config.influx.database, "telemetry query API listening");
    Ok(lifecycle.running(QueryApiParts { addr, state }))
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn the_default_is_what_the_flags_declare() {
        let declared: QueryConfig =
            warmhouse_service_kit::testing::clap_defaults().expect("the declared defaults parse");
        assert_eq!(
            format!("{:?}", QueryConfig::default()),
            format!("{declared:?}")
        );
    }
}
