//! Device onboarding as an orchestrated saga with a persistent log.
//!
//! Steps, in order, each with its compensation:
//! 1. `create_device`: the device row, status `provisioning` (delete it);
//! 2. `issue_credentials`: a password or client certificate (revoke them);
//! 3. `provision_telemetry`: the device's entry in InfluxDB's
//!    `device_catalog` measurement, which dashboards list devices from
//!    (drop its series);
//! 4. `announce_registered`: `device.registered` on `registry-events`
//!    through the outbox (announce `device.deleted`);
//! 5. `activate`: status `active` (status `disabled`).
//!
//! When a step fails, the steps before it are compensated in reverse order
//! (and the failed step too: every compensation is idempotent and harmless
//! for work that never happened). The log (`onboarding_sagas`,
//! `onboarding_saga_steps`) is written before and after each step. The run
//! holds a PostgreSQL advisory lock on its saga for its whole life; a saga
//! left `running` whose lock is free belongs to a registry that died, and
//! [`recover`] compensates it: its caller never received the credentials,
//! so finishing it would leave a device nobody can connect as.

use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres, Row};
use utoipa::{OpenApi, ToSchema};
use warmhouse_contracts::domain::DomainEventKind;
use warmhouse_contracts::ids::{DeviceId, HomeId};
use warmhouse_service_kit::auth::Caller;

use crate::identity::{self, CredentialKind, IssuedCredentials};
use crate::model::{Device, NewDevice};
use crate::outbox;
use crate::problem::Problem;
use crate::store::{db_problem, DEVICE_COLUMNS};
use crate::RegistryState;

/// The steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    CreateDevice,
    IssueCredentials,
    ProvisionTelemetry,
    AnnounceRegistered,
    Activate,
}

impl Step {
    pub const ALL: [Step; 5] = [
        Step::CreateDevice,
        Step::IssueCredentials,
        Step::ProvisionTelemetry,
        Step::AnnounceRegistered,
        Step::Activate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Step::CreateDevice => "create_device",
            Step::IssueCredentials => "issue_credentials",
            Step::ProvisionTelemetry => "provision_telemetry",
            Step::AnnounceRegistered => "announce_registered",
            Step::Activate => "activate",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// Failure injection for tests and game days (`WARMHOUSE_REGISTRY_SAGA_FAULT`):
/// `fail:<step>` makes that step fail; `crash:<step>` abandons the saga right
/// after that step, as if the process died (its lock is released, nothing is
/// compensated until [`recover`] runs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Fault {
    #[default]
    None,
    FailAt(Step),
    CrashAfter(Step),
}

impl std::str::FromStr for Fault {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        if text.is_empty() || text == "none" {
            return Ok(Fault::None);
        }
        let (mode, step) = text
            .split_once(':')
            .ok_or_else(|| format!("expected fail:<step> or crash:<step>, got {text:?}"))?;
        let step = Step::parse(step).ok_or_else(|| {
            format!(
                "unknown step {step:?}; steps: {}",
                Step::ALL.map(Step::as_str).join(", ")
            )
        })?;
        match mode {
            "fail" => Ok(Fault::FailAt(step)),
            "crash" => Ok(Fault::CrashAfter(step)),
            other => Err(format!("unknown fault {other:?}; use fail or crash")),
        }
    }
}

/// Settings of the onboarding saga (flags or environment variables).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OnboardingConfig {
    /// InfluxDB (v1 HTTP API) that `provision_telemetry` registers devices
    /// in; without it that step is skipped (and logged so).
    #[arg(long = "onboarding-influx-url", env = "WARMHOUSE_REGISTRY_INFLUX_URL")]
    pub influx_url: Option<String>,
    /// Database of the telemetry (the ingest writer's).
    #[arg(
        long = "onboarding-influx-database",
        env = "WARMHOUSE_INFLUX_DATABASE",
        default_value = "warmhouse"
    )]
    pub influx_database: String,
    /// Failure injection for tests and game days: `fail:<step>` or
    /// `crash:<step>` (steps: create_device, issue_credentials,
    /// provision_telemetry, announce_registered, activate).
    #[arg(
        long = "onboarding-fault",
        env = "WARMHOUSE_REGISTRY_SAGA_FAULT",
        default_value = "none"
    )]
    pub fault: Fault,
}

impl OnboardingConfig {
    pub fn telemetry_store(&self) -> Option<TelemetryStore> {
        self.influx_url.as_ref().map(|url| TelemetryStore {
            influx_url: url.clone(),
            database: if self.influx_database.is_empty() {
                "warmhouse".into()
            } else {
                self.influx_database.clone()
            },
        })
    }
}

/// Where the telemetry store is, for `provision_telemetry`.
#[derive(Debug, Clone)]
pub struct TelemetryStore {
    pub influx_url: String,
    pub database: String,
}

/// Body of `POST /api/v1/onboarding`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OnboardingRequest {
    pub device: NewDevice,
    /// Which credentials the device gets.
    pub credentials: CredentialKind,
}

/// Answer of a completed onboarding. The credentials' secret is only here.
#[derive(Debug, Serialize, ToSchema)]
pub struct Onboarded {
    pub saga: SagaView,
    pub device: Device,
    pub credentials: IssuedCredentials,
}

/// A saga and its log.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SagaView {
    pub saga_id: String,
    pub device_id: String,
    pub home_id: String,
    /// running, completed, compensating, compensated or compensation_failed.
    pub state: String,
    pub step: Option<String>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub log: Vec<SagaLogEntry>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SagaLogEntry {
    pub step: String,
    /// started, done, failed, compensated or compensation_failed.
    pub outcome: String,
    pub detail: Option<String>,
    pub at: DateTime<Utc>,
}

pub fn routes() -> Router<RegistryState> {
    Router::new()
        .route("/api/v1/onboarding", post(onboard_device))
        .route("/api/v1/onboarding/{saga_id}", get(get_saga))
}

#[derive(OpenApi)]
#[openapi(
    paths(onboard_device, get_saga),
    components(schemas(OnboardingRequest, Onboarded, SagaView, SagaLogEntry)),
    tags((name = "onboarding", description = "Device onboarding saga: create, credentials, telemetry storage, announcement, activation"))
)]
pub struct OnboardingDoc;

#[utoipa::path(post, path = "/api/v1/onboarding", tag = "onboarding",
    request_body = OnboardingRequest,
    responses(
        (status = 201, description = "Onboarded: the device is active; the credentials are shown only now", body = Onboarded),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token does not grant the device's home", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A device with this id exists (nothing was changed)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid device, or no such home", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "A step failed and the saga was compensated; see GET /api/v1/onboarding/{saga_id}", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn onboard_device(
    caller: Caller,
    State(state): State<RegistryState>,
    body: Result<Json<OnboardingRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Onboarded>), Problem> {
    let Json(request) = body?;
    request.device.validate()?;
    caller.require_home(&request.device.home_id)?;
    let onboarded = run(&state, &request).await?;
    Ok((StatusCode::CREATED, Json(onboarded)))
}

#[utoipa::path(get, path = "/api/v1/onboarding/{saga_id}", tag = "onboarding",
    params(("saga_id" = String, Path, description = "Saga id")),
    responses(
        (status = 200, description = "The saga and its log", body = SagaView),
        (status = 404, description = "No such saga", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_saga(
    caller: Caller,
    State(state): State<RegistryState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<SagaView>, Problem> {
    let Path(id) = id.map_err(|r| Problem::invalid_parameter("saga_id", r.body_text()))?;
    let saga = load(state.pool(), &id).await?;
    if !caller.may_use_home(&saga.home_id) {
        return Err(Problem::not_found(format!("no saga {id:?}")));
    }
    Ok(Json(saga))
}

/// Runs a whole onboarding. On failure, the answer names the saga.
pub async fn run(state: &RegistryState, request: &OnboardingRequest) -> Result<Onboarded, Problem> {
    let pool = state.pool();
    // Fail fast, before any log: a clash is the caller's mistake, not a saga.
    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM devices WHERE id = $1)")
        .bind(&request.device.id)
        .fetch_one(pool)
        .await
        .map_err(|e| db_problem(e, "device"))?;
    if exists {
        return Err(Problem::conflict(format!(
            "a device with id {:?} exists",
            request.device.id
        )));
    }
    let saga_id = uuid::Uuid::new_v4().to_string();
    let mut lock = pool.acquire().await.map_err(|e| db_problem(e, "saga"))?;
    take_lock(&mut lock, &saga_id).await?;
    sqlx::query(
        "INSERT INTO onboarding_sagas (saga_id, device_id, home_id, request) VALUES ($1, $2, $3, $4)",
    )
    .bind(&saga_id)
    .bind(&request.device.id)
    .bind(&request.device.home_id)
    .bind(sqlx::types::Json(request))
    .execute(pool)
    .await
    .map_err(|e| db_problem(e, "saga"))?;

    let mut credentials = None;
    let mut device = None;
    for step in Step::ALL {
        log(pool, &saga_id, step, "started", None).await?;
        let outcome = match state.onboarding().fault {
            Fault::FailAt(failing) if failing == step => Err(Problem::new(
                StatusCode::BAD_GATEWAY,
                "onboarding-failed",
                "Onboarding failed",
                format!("injected failure at step {}", step.as_str()),
            )),
            _ => perform(state, &saga_id, request, step).await,
        };
        match outcome {
            Ok(StepOutput::Device(d)) => device = Some(d),
            Ok(StepOutput::Credentials(c)) => credentials = Some(c),
            Ok(StepOutput::Nothing) => {}
            Err(problem) => {
                log(pool, &saga_id, step, "failed", Some(&problem.detail)).await?;
                let compensated = compensate(state, &saga_id, &request.device, step).await;
                release(lock, &saga_id).await;
                let detail = format!(
                    "onboarding saga {saga_id} failed at {}: {}; {}",
                    step.as_str(),
                    problem.detail,
                    if compensated {
                        "every earlier step was undone"
                    } else {
                        "undoing it failed too; an operator must look at the saga log"
                    }
                );
                // A step's own 4xx (no such home, ...) stays a 4xx.
                let status = if problem.status_code().is_client_error() {
                    problem.status_code()
                } else {
                    StatusCode::BAD_GATEWAY
                };
                return Err(Problem::new(
                    status,
                    "onboarding-failed",
                    "Onboarding failed",
                    detail,
                ));
            }
        }
        log(pool, &saga_id, step, "done", None).await?;
        if state.onboarding().fault == Fault::CrashAfter(step) {
            // Die without a word: the connection (and with it the lock) goes.
            let _ = lock.close().await;
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "onboarding-crashed",
                "Onboarding interrupted",
                format!(
                    "injected crash after step {} of saga {saga_id}",
                    step.as_str()
                ),
            ));
        }
    }
    set_state(pool, &saga_id, "completed", None).await?;
    release(lock, &saga_id).await;
    let (Some(device), Some(credentials)) = (device, credentials) else {
        tracing::error!(saga_id, "saga completed without a device or credentials");
        return Err(Problem::internal());
    };
    let device = refreshed(pool, &device.id).await.unwrap_or(device);
    Ok(Onboarded {
        saga: load(pool, &saga_id).await?,
        device,
        credentials,
    })
}

enum StepOutput {
    Device(Device),
    Credentials(IssuedCredentials),
    Nothing,
}

async fn perform(
    state: &RegistryState,
    saga_id: &str,
    request: &OnboardingRequest,
    step: Step,
) -> Result<StepOutput, Problem> {
    let pool = state.pool();
    let new = &request.device;
    match step {
        Step::CreateDevice => {
            let sql = format!(
                "INSERT INTO devices (id, home_id, kind, name, capabilities, metadata, status, onboarded_by) \
                 VALUES ($1, $2, $3, $4, $5, COALESCE($6, '{{}}'::jsonb), 'provisioning', $7) \
                 RETURNING {DEVICE_COLUMNS}"
            );
            let device = sqlx::query_as::<_, Device>(&sql)
                .bind(&new.id)
                .bind(&new.home_id)
                .bind(&new.kind)
                .bind(&new.name)
                .bind(&new.capabilities)
                .bind(&new.metadata)
                .bind(saga_id)
                .fetch_one(pool)
                .await
                .map_err(|e| db_problem(e, "device"))?;
            Ok(StepOutput::Device(device))
        }
        Step::IssueCredentials => {
            let mut tx = pool
                .begin()
                .await
                .map_err(|e| db_problem(e, "credential"))?;
            let issued = identity::issue_credentials(
                &mut tx,
                state.identity(),
                state.topics(),
                &new.id,
                request.credentials,
            )
            .await?;
            tx.commit().await.map_err(|e| db_problem(e, "credential"))?;
            Ok(StepOutput::Credentials(issued))
        }
        Step::ProvisionTelemetry => {
            match state.telemetry_store() {
                Some(store) => catalog_device(store, new).await?,
                None => {
                    log(
                        pool,
                        saga_id,
                        step,
                        "skipped",
                        Some("no InfluxDB configured"),
                    )
                    .await?;
                }
            }
            Ok(StepOutput::Nothing)
        }
        Step::AnnounceRegistered => {
            let (device_id, home_id) = ids(new)?;
            let mut tx = pool.begin().await.map_err(|e| db_problem(e, "saga"))?;
            outbox::enqueue_event(
                &mut tx,
                state.topics(),
                DomainEventKind::DeviceRegistered {
                    device_id,
                    home_id,
                    kind: new.kind.clone(),
                },
            )
            .await
            .map_err(|e| db_problem(e, "saga"))?;
            tx.commit().await.map_err(|e| db_problem(e, "saga"))?;
            Ok(StepOutput::Nothing)
        }
        Step::Activate => {
            sqlx::query("UPDATE devices SET status = 'active', updated_at = now() WHERE id = $1 AND onboarded_by = $2")
                .bind(&new.id)
                .bind(saga_id)
                .execute(pool)
                .await
                .map_err(|e| db_problem(e, "device"))?;
            Ok(StepOutput::Nothing)
        }
    }
}

/// Undoes `failed` and every step before it, newest first. Returns whether
/// every compensation succeeded.
async fn compensate(
    state: &RegistryState,
    saga_id: &str,
    device: &NewDevice,
    failed: Step,
) -> bool {
    let pool = state.pool();
    if set_state(pool, saga_id, "compensating", None)
        .await
        .is_err()
    {
        return false;
    }
    let upto = Step::ALL.iter().position(|s| *s == failed).unwrap_or(0);
    let mut all_ok = true;
    for step in Step::ALL[..=upto].iter().rev().copied() {
        let result = undo(state, saga_id, device, step).await;
        let (outcome, detail) = match &result {
            Ok(()) => ("compensated", None),
            Err(problem) => ("compensation_failed", Some(problem.detail.as_str())),
        };
        all_ok &= result.is_ok();
        if log(pool, saga_id, step, outcome, detail).await.is_err() {
            all_ok = false;
        }
    }
    let end = if all_ok {
        "compensated"
    } else {
        "compensation_failed"
    };
    let _ = set_state(
        pool,
        saga_id,
        end,
        Some(&format!("failed at {}", failed.as_str())),
    )
    .await;
    all_ok
}

async fn undo(
    state: &RegistryState,
    saga_id: &str,
    device: &NewDevice,
    step: Step,
) -> Result<(), Problem> {
    let pool = state.pool();
    match step {
        Step::CreateDevice => {
            // Only the device this saga created; never one that was there.
            sqlx::query("DELETE FROM devices WHERE id = $1 AND onboarded_by = $2")
                .bind(&device.id)
                .bind(saga_id)
                .execute(pool)
                .await
                .map_err(|e| db_problem(e, "device"))?;
        }
        Step::IssueCredentials => {
            let mut conn = pool
                .acquire()
                .await
                .map_err(|e| db_problem(e, "credential"))?;
            identity::revoke_credentials(&mut conn, &device.id).await?;
        }
        Step::ProvisionTelemetry => {
            if let Some(store) = state.telemetry_store() {
                uncatalog_device(store, &device.id).await?;
            }
        }
        Step::AnnounceRegistered => {
            // Announce the removal only if the registration was announced.
            let announced: bool = sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM onboarding_saga_steps WHERE saga_id = $1 AND step = $2 AND outcome = 'done')",
            )
            .bind(saga_id)
            .bind(Step::AnnounceRegistered.as_str())
            .fetch_one(pool)
            .await
            .map_err(|e| db_problem(e, "saga"))?;
            if announced {
                let (device_id, home_id) = ids(device)?;
                let mut tx = pool.begin().await.map_err(|e| db_problem(e, "saga"))?;
                outbox::enqueue_event(
                    &mut tx,
                    state.topics(),
                    DomainEventKind::DeviceDeleted { device_id, home_id },
                )
                .await
                .map_err(|e| db_problem(e, "saga"))?;
                tx.commit().await.map_err(|e| db_problem(e, "saga"))?;
            }
        }
        Step::Activate => {
            sqlx::query("UPDATE devices SET status = 'disabled', updated_at = now() WHERE id = $1 AND onboarded_by = $2")
                .bind(&device.id)
                .bind(saga_id)
                .execute(pool)
                .await
                .map_err(|e| db_problem(e, "device"))?;
        }
    }
    Ok(())
}

/// Compensates every saga whose registry died mid-run (its lock is free).
/// Runs at start and then every `every`.
pub async fn recover_forever(
    state: RegistryState,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match recover(&state).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                sagas = n,
                "compensated onboarding sagas left behind by a crash"
            ),
            Err(problem) => tracing::warn!(detail = %problem.detail, "saga recovery failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One recovery pass; returns how many sagas it compensated.
pub async fn recover(state: &RegistryState) -> Result<usize, Problem> {
    let pool = state.pool();
    let open = sqlx::query(
        "SELECT saga_id, request, step FROM onboarding_sagas WHERE state IN ('running', 'compensating') ORDER BY created_at",
    )
    .fetch_all(pool)
    .await
    .map_err(|e| db_problem(e, "saga"))?;
    let mut recovered = 0;
    for row in open {
        let saga_id: String = row.try_get("saga_id").map_err(|e| db_problem(e, "saga"))?;
        let request: sqlx::types::Json<OnboardingRequest> =
            row.try_get("request").map_err(|e| db_problem(e, "saga"))?;
        let step: Option<String> = row.try_get("step").map_err(|e| db_problem(e, "saga"))?;
        let mut lock = pool.acquire().await.map_err(|e| db_problem(e, "saga"))?;
        let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(&saga_id)
            .fetch_one(&mut *lock)
            .await
            .map_err(|e| db_problem(e, "saga"))?;
        if !free {
            continue; // its registry is alive and working on it
        }
        let last = step
            .as_deref()
            .and_then(Step::parse)
            .unwrap_or(Step::CreateDevice);
        let _ = log(
            pool,
            &saga_id,
            last,
            "recovering",
            Some("the registry running it stopped"),
        )
        .await;
        compensate(state, &saga_id, &request.device, last).await;
        release(lock, &saga_id).await;
        recovered += 1;
    }
    Ok(recovered)
}

async fn take_lock(conn: &mut PgConnection, saga_id: &str) -> Result<(), Problem> {
    sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
        .bind(saga_id)
        .execute(conn)
        .await
        .map_err(|e| db_problem(e, "saga"))?;
    Ok(())
}

async fn release(mut lock: PoolConnection<Postgres>, saga_id: &str) {
    let released = sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
        .bind(saga_id)
        .execute(&mut *lock)
        .await;
    if released.is_err() {
        // Never hand a connection that may still hold the lock back to the pool.
        let _ = lock.close().await;
    }
}

async fn log(
    pool: &PgPool,
    saga_id: &str,
    step: Step,
    outcome: &str,
    detail: Option<&str>,
) -> Result<(), Problem> {
    let mut tx = pool.begin().await.map_err(|e| db_problem(e, "saga"))?;
    sqlx::query("INSERT INTO onboarding_saga_steps (saga_id, step, outcome, detail) VALUES ($1, $2, $3, $4)")
        .bind(saga_id)
        .bind(step.as_str())
        .bind(outcome)
        .bind(detail)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_problem(e, "saga"))?;
    if outcome == "started" {
        sqlx::query("UPDATE onboarding_sagas SET step = $2, updated_at = now() WHERE saga_id = $1")
            .bind(saga_id)
            .bind(step.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| db_problem(e, "saga"))?;
    }
    tx.commit().await.map_err(|e| db_problem(e, "saga"))
}

async fn set_state(
    pool: &PgPool,
    saga_id: &str,
    state: &str,
    error: Option<&str>,
) -> Result<(), Problem> {
    sqlx::query("UPDATE onboarding_sagas SET state = $2, error = COALESCE($3, error), updated_at = now() WHERE saga_id = $1")
        .bind(saga_id)
        .bind(state)
        .bind(error)
        .execute(pool)
        .await
        .map_err(|e| db_problem(e, "saga"))?;
    Ok(())
}

pub async fn load(pool: &PgPool, saga_id: &str) -> Result<SagaView, Problem> {
    let row = sqlx::query(
        "SELECT saga_id, device_id, home_id, state, step, error, created_at, updated_at FROM onboarding_sagas WHERE saga_id = $1",
    )
    .bind(saga_id)
    .fetch_optional(pool)
    .await
    .map_err(|e| db_problem(e, "saga"))?
    .ok_or_else(|| Problem::not_found(format!("no saga {saga_id:?}")))?;
    let log = sqlx::query("SELECT step, outcome, detail, at FROM onboarding_saga_steps WHERE saga_id = $1 ORDER BY id")
        .bind(saga_id)
        .fetch_all(pool)
        .await
        .map_err(|e| db_problem(e, "saga"))?
        .into_iter()
        .map(|r| {
            Ok(SagaLogEntry {
                step: r.try_get("step")?,
                outcome: r.try_get("outcome")?,
                detail: r.try_get("detail")?,
                at: r.try_get("at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map_err(|e| db_problem(e, "saga"))?;
    let get = |e| db_problem(e, "saga");
    Ok(SagaView {
        saga_id: row.try_get("saga_id").map_err(get)?,
        device_id: row.try_get("device_id").map_err(get)?,
        home_id: row.try_get("home_id").map_err(get)?,
        state: row.try_get("state").map_err(get)?,
        step: row.try_get("step").map_err(get)?,
        error: row.try_get("error").map_err(get)?,
        created_at: row.try_get("created_at").map_err(get)?,
        updated_at: row.try_get("updated_at").map_err(get)?,
        log,
    })
}

async fn refreshed(pool: &PgPool, id: &str) -> Option<Device> {
    sqlx::query_as::<_, Device>(&format!(
        "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await
    .ok()
    .flatten()
}

fn ids(device: &NewDevice) -> Result<(DeviceId, HomeId), Problem> {
    let device_id = DeviceId::new(&device.id)
        .map_err(|e| Problem::invalid_field("device.id", e.to_string()))?;
    let home_id = HomeId::new(&device.home_id)
        .map_err(|e| Problem::invalid_field("device.home_id", e.to_string()))?;
    Ok((device_id, home_id))
}

/// Writes the device's catalogue point: `device_catalog,home_id=..,device_id=..,device_type=.. registered=1i`.
async fn catalog_device(store: &TelemetryStore, device: &NewDevice) -> Result<(), Problem> {
    let (device_id, home_id) = ids(device)?;
    let line = format!(
        "device_catalog,device_id={device_id},device_type={},home_id={home_id} registered=1i",
        device.kind
    );
    influx(
        store,
        "write",
        &[("db", store.database.as_str())],
        Some(line),
    )
    .await
}

async fn uncatalog_device(store: &TelemetryStore, device_id: &str) -> Result<(), Problem> {
    // Ids are validated ([A-Za-z0-9_-]), so they are safe in a quoted literal.
    DeviceId::new(device_id).map_err(|e| Problem::invalid_field("device.id", e.to_string()))?;
    let q = format!("DROP SERIES FROM device_catalog WHERE device_id = '{device_id}'");
    influx(
        store,
        "query",
        &[("db", store.database.as_str()), ("q", q.as_str())],
        None,
    )
    .await
}

async fn influx(
    store: &TelemetryStore,
    endpoint: &str,
    query: &[(&str, &str)],
    body: Option<String>,
) -> Result<(), Problem> {
    let unavailable = |detail: String| {
        Problem::new(
            StatusCode::BAD_GATEWAY,
            "telemetry-store-unavailable",
            "Telemetry store unavailable",
            detail,
        )
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| unavailable(format!("HTTP client: {e}")))?;
    let url = format!("{}/{endpoint}", store.influx_url.trim_end_matches('/'));
    let request = client.post(&url).query(query);
    let request = match body {
        Some(body) => request.body(body),
        None => request,
    };
    let response = request
        .send()
        .await
        .map_err(|e| unavailable(format!("InfluxDB at {url}: {e}")))?;
    let status = response.status();
    let text = response.text().await.unwrap_or_default();
    // /query answers 200 even for a failed statement, with an "error" inside.
    if !status.is_success() || text.contains("\"error\"") {
        return Err(unavailable(format!(
            "InfluxDB {endpoint} answered {status}: {text}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!("".parse::<Fault>(), Ok(Fault::None));
        assert_eq!(
            "fail:activate".parse::<Fault>(),
            Ok(Fault::FailAt(Step::Activate))
        );
        assert_eq!(
            "crash:issue_credentials".parse::<Fault>(),
            Ok(Fault::CrashAfter(Step::IssueCredentials))
        );
        assert!("fail:nap"
            .parse::<Fault>()
            .unwrap_err()
            .contains("create_device"));
        assert!("explode:activate".parse::<Fault>().is_err());
    }

    #[test]
    fn steps_round_trip() {
        for step in Step::ALL {
            assert_eq!(Step::parse(step.as_str()), Some(step));
        }
    }
}
