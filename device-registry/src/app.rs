//! The registry assembled: its shared state, the HTTP surface of every
//! feature, and `start`, which wires them to PostgreSQL and Kafka.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::{DefaultBodyLimit, FromRef};
use axum::middleware;
use axum::Router;
use prometheus::Registry;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::watch;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;
use warmhouse_service_kit::auth::{self, Verifier};
use warmhouse_service_kit::{track_request, HttpMetrics, Lifecycle, Readiness, Running};

use crate::background::{self, BackgroundMetrics};
use crate::config::RegistryConfig;
use crate::db::Db;
use crate::devices::model::DeviceStatus;
use crate::identity::http::IdentityState;
use crate::identity::{self, Identity};
use crate::kafka::Topics;
use crate::legacy::{self, LegacyContext};
use crate::onboarding::{self, Onboarding};
use crate::problem::Problem;
use crate::{commands, devices};

/// Name of the readiness check `/readyz` reports.
pub const READY_CHECK: &str = "postgres";
/// Largest request body accepted; bigger ones get a 413 problem.
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// How often sagas left behind by a dead registry are looked for.
const SAGA_RECOVERY: Duration = Duration::from_secs(10);

/// What the handlers share; each feature takes its part (`FromRef`).
#[derive(Clone)]
pub struct RegistryState {
    db: Db,
    http_metrics: HttpMetrics,
    verifier: Verifier,
    registry: Registry,
    readiness: Readiness,
    legacy: legacy::LegacyState,
    identity: Arc<Identity>,
    onboarding: Onboarding,
}

impl RegistryState {
    /// Device identity: the platform CA (when configured) for credentials.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    pub fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    pub fn topics(&self) -> &Topics {
        &self.db.topics
    }
}

impl FromRef<RegistryState> for Db {
    fn from_ref(state: &RegistryState) -> Self {
        state.db.clone()
    }
}

impl FromRef<RegistryState> for IdentityState {
    fn from_ref(state: &RegistryState) -> Self {
        IdentityState {
            db: state.db.clone(),
            identity: state.identity.clone(),
        }
    }
}

impl FromRef<RegistryState> for Onboarding {
    fn from_ref(state: &RegistryState) -> Self {
        state.onboarding.clone()
    }
}

impl FromRef<RegistryState> for LegacyContext {
    fn from_ref(state: &RegistryState) -> Self {
        LegacyContext {
            db: state.db.clone(),
            legacy: state.legacy.clone(),
        }
    }
}

/// The whole HTTP surface: API, Swagger UI, OpenAPI JSON and the
/// operational endpoints.
pub fn router(state: RegistryState) -> Router {
    let api = Router::new()
        .merge(devices::http::routes())
        .merge(commands::http::routes())
        .merge(identity::http::routes())
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
        ));
    Router::new()
        .merge(api)
        // The monolith's paths: no bearer token (docs/adr/0013).
        .merge(legacy::routes(state.http_metrics.clone()))
        .with_state(state.clone())
        .merge(SwaggerUi::new("/docs").url("/api-docs/openapi.json", openapi()))
        .merge(warmhouse_service_kit::admin_router(
            state.registry.clone(),
            state.readiness.clone(),
        ))
        .fallback(no_route)
}

async fn no_route(uri: axum::http::Uri) -> Problem {
    Problem::no_route(uri.path())
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Warmhouse device registry",
        description = "Homes and their devices (kind, capabilities, metadata, status), stored in \
                       PostgreSQL. Lists are paged by id with an opaque cursor. Every /api/v1 \
                       endpoint needs a bearer token (JWT) naming the caller's homes, or an \
                       admin's: creating and deleting homes is for admins; a home outside the \
                       token is 403; a device of a home outside the token is 404, as if it did \
                       not exist. Errors are RFC 9457 problem details (application/problem+json)."
    ),
    components(schemas(Problem, DeviceStatus)),
    tags(
        (name = "homes", description = "Homes (installations)"),
        (name = "devices", description = "Devices of homes"),
        (name = "operations", description = "Health, readiness and Prometheus metrics")
    )
)]
struct RegistryDoc;

/// The OpenAPI document of every feature, with service-kit's operational
/// endpoints added by hand (they are not ours to annotate).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = RegistryDoc::openapi();
    doc.merge(devices::http::DevicesDoc::openapi());
    doc.merge(commands::http::CommandsDoc::openapi());
    doc.merge(identity::http::openapi());
    doc.merge(onboarding::OnboardingDoc::openapi());
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    warmhouse_service_kit::document_admin_endpoints(&mut doc, "PostgreSQL answers");
    auth::document_bearer_auth(&mut doc, "/api/");
    // After the bearer marking: the legacy paths take no token.
    doc.merge(legacy::LegacyDoc::openapi());
    doc
}

/// What a running registry exposes.
pub struct RegistryParts {
    /// Bound address (the real port when port 0 was asked for).
    pub addr: SocketAddr,
    pub state: RegistryState,
}

/// A running registry: [`Running::wait`] returns once it has stopped.
pub type RunningRegistry = Running<RegistryParts>;

/// Connects to PostgreSQL, applies the migrations, binds `config.listen`
/// and serves until `shutdown` resolves. Unlike the query API it needs the
/// database at start: without the schema there is nothing to serve.
pub async fn start(
    config: RegistryConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<RunningRegistry> {
    let state = build_state(&config).await?;
    let mut lifecycle = Lifecycle::new("device registry");
    lifecycle.stop_on(shutdown);
    lifecycle.adopt(background::spawn(
        state.db.pool.clone(),
        config.kafka(),
        config.topics(),
        BackgroundMetrics::register(&state.registry)?,
        lifecycle.stop_signal(),
    ));
    lifecycle.spawn(onboarding::recover_forever(
        state.onboarding.clone(),
        SAGA_RECOVERY,
        lifecycle.stop_signal(),
    ));
    lifecycle.spawn_graceful(watch_database(
        state.clone(),
        Duration::from_millis(config.ready_interval_ms.max(100)),
        lifecycle.stop_signal(),
    ));
    let addr = lifecycle
        .serve(config.listen, router(state.clone()))
        .await?;
    tracing::info!(%addr, "device registry listening");
    Ok(lifecycle.running(RegistryParts { addr, state }))
}

/// The handlers' state: bearer-token verification and the legacy API's
/// client first (without them nothing is safe to serve), then the
/// database, metrics and device identity.
async fn build_state(config: &RegistryConfig) -> anyhow::Result<RegistryState> {
    let verifier = config
        .auth
        .verifier()
        .context("configuring bearer-token verification")?;
    let legacy = legacy::LegacyState::new(&config.legacy)
        .context("configuring the legacy API's telemetry client")?;
    let catalog = config
        .onboarding
        .telemetry_catalog()
        .context("configuring the onboarding saga's telemetry store")?;
    let pool = connect(config).await?;
    let registry = Registry::new();
    let readiness = Readiness::new();
    readiness.set(READY_CHECK, true);
    let identity = config.identity.load(&registry)?;
    let db = Db {
        pool,
        topics: config.topics(),
    };
    Ok(RegistryState {
        onboarding: Onboarding {
            db: db.clone(),
            identity: identity.clone(),
            fault: config.onboarding.fault,
            catalog,
        },
        db,
        http_metrics: HttpMetrics::register(&registry, "warmhouse_registry")?,
        verifier,
        registry,
        readiness,
        legacy,
        identity,
    })
}

/// The pool, with the schema migrated.
async fn connect(config: &RegistryConfig) -> anyhow::Result<PgPool> {
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
    Ok(pool)
}

/// Runs `SELECT 1` every `interval` to keep `/readyz` current; closes the
/// pool once stopped.
async fn watch_database(state: RegistryState, interval: Duration, stop: watch::Receiver<bool>) {
    let pool = state.db.pool.clone();
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
    state.db.pool.close().await;
}
