//! What every Warmhouse service shares: logging, Prometheus metrics, the
//! `/healthz` and `/readyz` endpoints, and one lifecycle ([`lifecycle`]:
//! start, run until stopped, graceful shutdown); for the REST
//! APIs also problem+json errors ([`problem`]), request metrics
//! ([`http_metrics`]) and bearer-token auth ([`auth`]).

pub mod args;
pub mod auth;
pub mod http_metrics;
pub mod kafka;
pub mod lifecycle;
pub mod metrics;
pub mod problem;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use auth::{AuthConfig, Caller};
pub use http_metrics::{track_request, HttpMetrics};
pub use lifecycle::{FailureReporter, Lifecycle, Running};
pub use problem::Problem;

/// Initialises `tracing` from the environment, leniently, for tests and
/// harnesses: `RUST_LOG` filters (default `info`, also for a filter that
/// does not parse); `WARMHOUSE_LOG_FORMAT=json` switches to JSON lines.
/// The services' binaries configure logging from their command line
/// instead ([`args::LogArgs`]), where a bad value is an error.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(args::DEFAULT_LOG_FILTER));
    let format = match std::env::var("WARMHOUSE_LOG_FORMAT") {
        Ok(value) if value == "json" => args::LogFormat::Json,
        _ => args::LogFormat::Text,
    };
    install_tracing(filter, format);
}

/// Installs the `tracing` subscriber: `filter`, lines on stdout in `format`.
/// A second install (tests starting several services) is harmless: the
/// first one stays.
fn install_tracing(filter: tracing_subscriber::EnvFilter, format: args::LogFormat) {
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        args::LogFormat::Json => builder.json().try_init(),
        args::LogFormat::Text => builder.try_init(),
    };
}

/// `T` from command-line style `args` (the program name first) with every
/// `env =` variable ignored: flags and declared defaults only. For
/// configurations built in code (test harnesses, embedding), which must not
/// change with the shell's environment.
pub fn parse_ignoring_env<T, I, S>(args: I) -> anyhow::Result<T>
where
    T: clap::Parser,
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString> + Clone,
{
    let matches = T::command()
        .mut_args(|arg| arg.env(None))
        .try_get_matches_from(args)
        .context("parsing the arguments")?;
    T::from_arg_matches(&matches).context("building the configuration from the arguments")
}

/// Milliseconds since the Unix epoch by this host's clock.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Named readiness conditions; `/readyz` is 200 only when all of them hold.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<BTreeMap<&'static str, bool>>>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(&self, check: &'static str, ready: bool) {
        if let Ok(mut checks) = self.checks.lock() {
            checks.insert(check, ready);
        }
    }

    pub fn snapshot(&self) -> BTreeMap<&'static str, bool> {
        self.checks.lock().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn is_ready(&self) -> bool {
        self.snapshot().values().all(|ready| *ready)
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    readiness: Readiness,
}

/// Router with `/metrics`, `/healthz` and `/readyz`; services with an API of
/// their own merge it into theirs, the others serve it on an admin port.
pub fn admin_router(registry: Registry, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState {
            registry,
            readiness,
        })
}

/// Adds the endpoints of [`admin_router`] to a service's OpenAPI document
/// (tag `operations`); `readiness` says what `/readyz` checks.
pub fn document_admin_endpoints(doc: &mut utoipa::openapi::OpenApi, readiness: &str) {
    use utoipa::openapi::path::{HttpMethod, OperationBuilder, PathItem};
    use utoipa::openapi::response::ResponseBuilder;
    use utoipa::openapi::schema::AdditionalProperties;
    use utoipa::openapi::{ContentBuilder, ObjectBuilder, Type};

    // What `readyz` answers, 200 or 503 alike: {"ready": bool, "checks": {name: bool}}.
    let readiness_body = || {
        let boolean = || ObjectBuilder::new().schema_type(Type::Boolean).build();
        let schema = ObjectBuilder::new()
            .schema_type(Type::Object)
            .property("ready", boolean())
            .property(
                "checks",
                ObjectBuilder::new()
                    .schema_type(Type::Object)
                    .additional_properties(Some(AdditionalProperties::RefOr(
                        utoipa::openapi::RefOr::T(utoipa::openapi::Schema::Object(boolean())),
                    )))
                    .build(),
            )
            .required("ready")
            .required("checks")
            .build();
        ContentBuilder::new().schema(Some(schema)).build()
    };

    let readyz = format!("Readiness: 200 when {readiness}, 503 otherwise");
    for (path, summary, content_type) in [
        (
            "/healthz",
            "Liveness: 200 while the process serves HTTP",
            "text/plain",
        ),
        ("/readyz", readyz.as_str(), "application/json"),
        ("/metrics", "Prometheus metrics", "text/plain"),
    ] {
        let text = ObjectBuilder::new().schema_type(Type::String).build();
        let body = if path == "/readyz" {
            readiness_body()
        } else {
            ContentBuilder::new().schema(Some(text)).build()
        };
        let ok = ResponseBuilder::new()
            .description("OK")
            .content(content_type, body)
            .build();
        let mut operation = OperationBuilder::new()
            .tag("operations")
            .summary(Some(summary))
            .operation_id(Some(path.trim_start_matches('/')))
            .response("200", ok);
        if path == "/readyz" {
            operation = operation.response(
                "503",
                ResponseBuilder::new()
                    .description("Not ready; `checks` says which condition fails")
                    .content(content_type, readiness_body())
                    .build(),
            );
        }
        doc.paths.paths.insert(
            path.to_string(),
            PathItem::new(HttpMethod::Get, operation.build()),
        );
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&state.registry.gather(), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoder.format_type().to_string())],
            body,
        ),
        Err(err) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain".to_string())],
            err.to_string().into_bytes(),
        ),
    }
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let checks = state.readiness.snapshot();
    let ready = checks.values().all(|r| *r);
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(serde_json::json!({ "ready": ready, "checks": checks })),
    )
}

/// Binds `addr` and serves `router` until `shutdown` resolves. Returns the
/// bound address (useful with port 0) and the server task.
pub async fn serve(
    addr: SocketAddr,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding HTTP listener on {addr}"))?;
    let local = listener.local_addr().context("reading bound address")?;
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router)
            .with_graceful_shutdown(shutdown)
            .await
        {
            tracing::error!(%err, "HTTP server failed");
        }
    });
    Ok((local, task))
}

/// Resolves once `stop` says so (or its sender is gone).
pub async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|stopped| *stopped).await;
}

/// Every `interval` until `stop`, asks `probe` whether the store behind
/// readiness `check` answers and records it, so `/readyz` stays current;
/// `store` names it in the log line written when that changes.
pub async fn probe_readiness<F, Fut>(
    readiness: Readiness,
    check: &'static str,
    store: &'static str,
    interval: Duration,
    stop: watch::Receiver<bool>,
    mut probe: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let stop = stopped(stop);
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let up = probe().await;
                if readiness.snapshot().get(check) != Some(&up) {
                    tracing::info!(up, store, "store reachability changed");
                }
                readiness.set(check, up);
            }
            _ = &mut stop => return,
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

/// Registers a metric, turning the (only possible) duplicate-name error into
/// a message that names the metric.
pub fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: M,
) -> anyhow::Result<M> {
    registry
        .register(Box::new(metric.clone()))
        .context("registering a Prometheus metric")?;
    Ok(metric)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probes_readiness_until_stopped() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let readiness = Readiness::new();
        readiness.set("db", true);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut lifecycle = Lifecycle::new("test");
        lifecycle.stop_on(async {
            let _ = rx.await;
        });
        let stop = lifecycle.stop_signal();
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let mut tx = Some(tx);
        probe_readiness(
            readiness.clone(),
            "db",
            "test database",
            Duration::from_millis(1),
            stop,
            move || {
                // Stop after the third probe.
                if counted.fetch_add(1, Ordering::SeqCst) == 2 {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(());
                    }
                }
                async { false }
            },
        )
        .await;
        assert!(calls.load(Ordering::SeqCst) >= 3);
        assert!(!readiness.is_ready());
    }

    #[tokio::test]
    async fn serves_metrics_and_readiness() {
        let registry = Registry::new();
        let counter = register(
            &registry,
            prometheus::IntCounter::new("test_total", "a test counter").unwrap(),
        )
        .unwrap();
        counter.inc();
        let readiness = Readiness::new();
        readiness.set("kafka", false);
        let (addr, _task) = serve(
            "127.0.0.1:0".parse().unwrap(),
            admin_router(registry, readiness.clone()),
            std::future::pending(),
        )
        .await
        .unwrap();
        let base = format!("http://{addr}");
        let metrics = reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains("test_total 1"), "{metrics}");
        let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
        assert_eq!(ready.status(), 503);
        readiness.set("kafka", true);
        let ready = reqwest::get(format!("{base}/readyz")).await.unwrap();
        assert_eq!(ready.status(), 200);
        assert_eq!(
            reqwest::get(format!("{base}/healthz"))
                .await
                .unwrap()
                .status(),
            200
        );
    }
}
