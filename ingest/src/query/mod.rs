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
//! Times in and out are device milliseconds: a point's timestamp carries
//! `seq % 1e6` in its sub-millisecond nanoseconds (see
//! `warmhouse_contracts::points`), which the API strips again.

mod api;
mod influxql;
mod params;
mod problem;
mod timefmt;

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use utoipa_swagger_ui::SwaggerUi;
use warmhouse_service_kit::Readiness;

use crate::influx::{InfluxClient, InfluxSettings};

pub use api::{
    AggregatedTelemetry, DeviceLatest, HomeLatest, LatestMetric, RawPoint, RawTelemetry, Telemetry,
    Window,
};
pub use params::{Aggregate, TelemetryParams};
pub use problem::Problem;

/// Name of the readiness check `/readyz` reports.
pub const READY_CHECK: &str = "influxdb";

/// Configuration of `ingest-query` (flags or environment variables).
#[derive(clap::Parser, Debug, Clone)]
#[command(
    name = "ingest-query",
    about = "Warmhouse telemetry query API (REST over InfluxDB)"
)]
pub struct QueryConfig {
    /// Address the HTTP API listens on.
    #[arg(long, env = "WARMHOUSE_QUERY_LISTEN", default_value = "0.0.0.0:8081")]
    pub listen: SocketAddr,
    /// Base URL of InfluxDB's v1 HTTP API.
    #[arg(
        long,
        env = "WARMHOUSE_INFLUX_URL",
        default_value = "http://127.0.0.1:8086"
    )]
    pub influx_url: String,
    /// InfluxDB database the writer fills.
    #[arg(long, env = "WARMHOUSE_INFLUX_DATABASE", default_value = "warmhouse")]
    pub influx_database: String,
    /// Most raw points one request may return (the ceiling of `limit`), and
    /// most aggregation windows.
    #[arg(long, env = "WARMHOUSE_QUERY_MAX_POINTS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_points: u32,
    /// How long one InfluxDB query may take, in milliseconds.
    #[arg(
        long,
        env = "WARMHOUSE_QUERY_INFLUX_TIMEOUT_MS",
        default_value_t = 10_000
    )]
    pub influx_timeout_ms: u64,
    /// How often InfluxDB is pinged for `/readyz`, in milliseconds.
    #[arg(
        long,
        env = "WARMHOUSE_QUERY_READY_INTERVAL_MS",
        default_value_t = 2_000
    )]
    pub ready_interval_ms: u64,
}

impl QueryConfig {
    /// Defaults with another InfluxDB and listen address (tests, embedding).
    pub fn new(listen: SocketAddr, influx_url: impl Into<String>) -> Self {
        Self {
            listen,
            influx_url: influx_url.into(),
            influx_database: "warmhouse".into(),
            max_points: 10_000,
            influx_timeout_ms: 10_000,
            ready_interval_ms: 2_000,
        }
    }
}

/// Prometheus metrics of the API.
#[derive(Clone)]
pub struct QueryMetrics {
    requests: IntCounterVec,
    request_seconds: HistogramVec,
    influx_seconds: Histogram,
    influx_errors: IntCounterVec,
}

impl QueryMetrics {
    fn register(registry: &Registry) -> anyhow::Result<Self> {
        use warmhouse_service_kit::register;
        Ok(Self {
            requests: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "warmhouse_query_requests_total",
                        "HTTP requests answered, by route and status",
                    ),
                    &["route", "status"],
                )?,
            )?,
            request_seconds: register(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "warmhouse_query_request_duration_seconds",
                        "Time to answer an HTTP request, by route",
                    ),
                    &["route"],
                )?,
            )?,
            influx_seconds: register(
                registry,
                Histogram::with_opts(HistogramOpts::new(
                    "warmhouse_query_influx_duration_seconds",
                    "Time InfluxDB took to answer a query",
                ))?,
            )?,
            influx_errors: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "warmhouse_query_influx_errors_total",
                        "Failed InfluxDB queries, by kind (unavailable, error)",
                    ),
                    &["kind"],
                )?,
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
}

impl QueryState {
    /// A state with its own Prometheus registry; InfluxDB is not contacted.
    pub fn new(config: &QueryConfig) -> anyhow::Result<Self> {
        let mut settings = InfluxSettings::new(&config.influx_url, &config.influx_database);
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

/// The OpenAPI document served at `/api-docs/openapi.json`.
pub fn openapi() -> utoipa::openapi::OpenApi {
    api::openapi()
}

/// Counts and times requests per route template, so the label set stays
/// bounded whatever ids clients send.
async fn track_request(
    State(metrics): State<QueryMetrics>,
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

/// A running query API.
pub struct RunningQueryApi {
    /// Bound address (the real port when port 0 was asked for).
    pub addr: SocketAddr,
    pub state: QueryState,
    server: JoinHandle<()>,
}

impl RunningQueryApi {
    /// Waits until the server has shut down (after `shutdown` resolved and
    /// in-flight requests finished).
    pub async fn wait(self) -> anyhow::Result<()> {
        self.server.await.context("query API server task failed")
    }
}

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

    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    tokio::spawn(watch_influx(
        state.clone(),
        Duration::from_millis(config.ready_interval_ms.max(100)),
        stop_rx.clone(),
    ));
    let (addr, server) =
        warmhouse_service_kit::serve(config.listen, router(state.clone()), stopped(stop_rx))
            .await?;
    tracing::info!(%addr, influx = %config.influx_url, database = %config.influx_database, "telemetry query API listening");
    Ok(RunningQueryApi {
        addr,
        state,
        server,
    })
}

/// Pings InfluxDB every `interval` to keep `/readyz` current.
async fn watch_influx(state: QueryState, interval: Duration, stop: watch::Receiver<bool>) {
    let stop = stopped(stop);
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let up = state.influx.ping().await;
                if up != state.readiness.is_ready() {
                    tracing::info!(up, "InfluxDB reachability changed");
                }
                state.readiness.set(READY_CHECK, up);
            }
            _ = &mut stop => return,
        }
    }
}

/// Resolves once shutdown was asked for (or its sender is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}
