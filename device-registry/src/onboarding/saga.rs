//! The saga's run, its compensation and the recovery of sagas whose
//! registry died; the steps' SQL is the devices' and identity's, the log's
//! is in [`super::repo`].

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use warmhouse_contracts::domain::DomainEventKind;
use warmhouse_contracts::ids::{DeviceId, HomeId};

use super::catalog::TelemetryCatalog;
use super::config::{Fault, Step};
use super::model::{Onboarded, OnboardingRequest, SagaView};
use super::repo::Sagas;
use crate::db::{Db, OrProblem};
use crate::devices::{Device, DeviceStatus, Devices, NewDevice};
use crate::identity::{self, Identity, IssuedCredentials};
use crate::outbox;
use crate::problem::Problem;

/// What a saga works with.
#[derive(Clone)]
pub struct Onboarding {
    pub db: Db,
    pub identity: Arc<Identity>,
    pub fault: Fault,
    /// `None`: no InfluxDB configured, `provision_telemetry` is skipped.
    pub catalog: Option<TelemetryCatalog>,
}

/// Runs a whole onboarding. On failure, the answer names the saga.
pub async fn run(saga: &Onboarding, request: &OnboardingRequest) -> Result<Onboarded, Problem> {
    let pool = &saga.db.pool;
    let (saga_id, lock) = open_saga(pool, request).await?;
    let mut credentials = None;
    let mut device = None;
    for step in Step::ALL {
        log(pool, &saga_id, step, "started", None).await?;
        match attempt(saga, &saga_id, request, step).await {
            Ok(StepOutput::Device(d)) => device = Some(d),
            Ok(StepOutput::Credentials(c)) => credentials = Some(c),
            Ok(StepOutput::Nothing) => {}
            Err(problem) => {
                log(pool, &saga_id, step, "failed", Some(&problem.detail)).await?;
                let compensated = compensate(saga, &saga_id, &request.device, step).await;
                release(lock, &saga_id).await;
                return Err(failed_at(&saga_id, step, &problem, compensated));
            }
        }
        log(pool, &saga_id, step, "done", None).await?;
        if saga.fault == Fault::CrashAfter(step) {
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
    onboarded(pool, &saga_id, device, credentials).await
}

/// Starts the saga's log and takes its lock (held on the returned
/// connection while the saga runs, so recovery leaves it alone).
async fn open_saga(
    pool: &PgPool,
    request: &OnboardingRequest,
) -> Result<(String, PoolConnection<Postgres>), Problem> {
    // Fail fast, before any log: a clash is the caller's mistake, not a saga.
    if Devices::exists(pool, &request.device.id).await? {
        return Err(Problem::conflict(format!(
            "a device with id {:?} exists",
            request.device.id
        )));
    }
    let saga_id = uuid::Uuid::new_v4().to_string();
    let mut lock = pool.acquire().await.or_problem("saga")?;
    Sagas::lock(&mut lock, &saga_id).await.or_problem("saga")?;
    Sagas::insert(pool, &saga_id, request)
        .await
        .or_problem("saga")?;
    Ok((saga_id, lock))
}

/// Performs `step`, unless the configured fault makes it fail.
async fn attempt(
    saga: &Onboarding,
    saga_id: &str,
    request: &OnboardingRequest,
    step: Step,
) -> Result<StepOutput, Problem> {
    match saga.fault {
        Fault::FailAt(failing) if failing == step => Err(Problem::new(
            StatusCode::BAD_GATEWAY,
            "onboarding-failed",
            "Onboarding failed",
            format!("injected failure at step {}", step.as_str()),
        )),
        _ => perform(saga, saga_id, request, step).await,
    }
}

/// The answer to a saga that failed at `step`: which saga, why, and whether
/// it was undone.
fn failed_at(saga_id: &str, step: Step, problem: &Problem, compensated: bool) -> Problem {
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
    Problem::new(status, "onboarding-failed", "Onboarding failed", detail)
}

/// The answer to a completed saga: its log, the device, its credentials.
async fn onboarded(
    pool: &PgPool,
    saga_id: &str,
    device: Option<Device>,
    credentials: Option<IssuedCredentials>,
) -> Result<Onboarded, Problem> {
    let (Some(device), Some(credentials)) = (device, credentials) else {
        tracing::error!(saga_id, "saga completed without a device or credentials");
        return Err(Problem::internal());
    };
    // Activated since it was created; the row as created will do if the
    // read fails.
    let device = Devices::find(pool, &device.id)
        .await
        .ok()
        .flatten()
        .unwrap_or(device);
    Ok(Onboarded {
        saga: load(pool, saga_id).await?,
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
    saga: &Onboarding,
    saga_id: &str,
    request: &OnboardingRequest,
    step: Step,
) -> Result<StepOutput, Problem> {
    let Db { pool, topics } = &saga.db;
    let new = &request.device;
    match step {
        Step::CreateDevice => Ok(StepOutput::Device(
            Devices::create_onboarded(pool, new, saga_id).await?,
        )),
        Step::IssueCredentials => {
            let mut tx = pool.begin().await.or_problem("credential")?;
            let issued = identity::issue_credentials(
                &mut tx,
                &saga.identity,
                topics,
                &new.id,
                request.credentials,
            )
            .await?;
            tx.commit().await.or_problem("credential")?;
            Ok(StepOutput::Credentials(issued))
        }
        Step::ProvisionTelemetry => {
            match &saga.catalog {
                Some(catalog) => {
                    let (device_id, home_id) = ids(new)?;
                    catalog.add(&device_id, &new.kind, &home_id).await?;
                }
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
            announce(
                &saga.db,
                DomainEventKind::DeviceRegistered {
                    device_id,
                    home_id,
                    kind: new.kind.clone(),
                },
            )
            .await?;
            Ok(StepOutput::Nothing)
        }
        Step::Activate => {
            Devices::set_onboarded_status(pool, &new.id, saga_id, DeviceStatus::Active).await?;
            Ok(StepOutput::Nothing)
        }
    }
}

/// Undoes `failed` and every step before it, newest first. Returns whether
/// every compensation succeeded.
async fn compensate(saga: &Onboarding, saga_id: &str, device: &NewDevice, failed: Step) -> bool {
    let pool = &saga.db.pool;
    if set_state(pool, saga_id, "compensating", None)
        .await
        .is_err()
    {
        return false;
    }
    let upto = Step::ALL.iter().position(|s| *s == failed).unwrap_or(0);
    let mut all_ok = true;
    for step in Step::ALL[..=upto].iter().rev().copied() {
        let result = undo(saga, saga_id, device, step).await;
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
    saga: &Onboarding,
    saga_id: &str,
    device: &NewDevice,
    step: Step,
) -> Result<(), Problem> {
    let pool = &saga.db.pool;
    match step {
        // Only the device this saga created; never one that was there.
        Step::CreateDevice => Devices::delete_onboarded(pool, &device.id, saga_id).await?,
        Step::IssueCredentials => {
            let mut conn = pool.acquire().await.or_problem("credential")?;
            identity::revoke_credentials(&mut conn, &device.id).await?;
        }
        Step::ProvisionTelemetry => {
            if let Some(catalog) = &saga.catalog {
                catalog.remove(&device.id).await?;
            }
        }
        Step::AnnounceRegistered => {
            // Announce the removal only if the registration was announced.
            let announced = Sagas::step_done(pool, saga_id, Step::AnnounceRegistered.as_str())
                .await
                .or_problem("saga")?;
            if announced {
                let (device_id, home_id) = ids(device)?;
                announce(
                    &saga.db,
                    DomainEventKind::DeviceDeleted { device_id, home_id },
                )
                .await?;
            }
        }
        Step::Activate => {
            Devices::set_onboarded_status(pool, &device.id, saga_id, DeviceStatus::Disabled).await?
        }
    }
    Ok(())
}

/// Compensates every saga whose registry died mid-run (its lock is free).
/// Runs at start and then every `every`.
pub async fn recover_forever(
    saga: Onboarding,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        match recover(&saga).await {
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
pub async fn recover(saga: &Onboarding) -> Result<usize, Problem> {
    let pool = &saga.db.pool;
    let open = Sagas::open(pool).await.or_problem("saga")?;
    let mut recovered = 0;
    for left in open {
        let mut lock = pool.acquire().await.or_problem("saga")?;
        let free = Sagas::try_lock(&mut lock, &left.saga_id)
            .await
            .or_problem("saga")?;
        if !free {
            continue; // its registry is alive and working on it
        }
        let last = left
            .step
            .as_deref()
            .and_then(Step::parse)
            .unwrap_or(Step::CreateDevice);
        let _ = log(
            pool,
            &left.saga_id,
            last,
            "recovering",
            Some("the registry running it stopped"),
        )
        .await;
        compensate(saga, &left.saga_id, &left.request.device, last).await;
        release(lock, &left.saga_id).await;
        recovered += 1;
    }
    Ok(recovered)
}

async fn release(mut lock: PoolConnection<Postgres>, saga_id: &str) {
    if Sagas::unlock(&mut lock, saga_id).await.is_err() {
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
    Sagas::log(pool, saga_id, step.as_str(), outcome, detail)
        .await
        .or_problem("saga")
}

async fn set_state(
    pool: &PgPool,
    saga_id: &str,
    state: &str,
    error: Option<&str>,
) -> Result<(), Problem> {
    Sagas::set_state(pool, saga_id, state, error)
        .await
        .or_problem("saga")
}

pub async fn load(pool: &PgPool, saga_id: &str) -> Result<SagaView, Problem> {
    Sagas::load(pool, saga_id)
        .await
        .or_problem("saga")?
        .ok_or_else(|| Problem::not_found(format!("no saga {saga_id:?}")))
}

/// Announces `event` on `registry-events` through the outbox.
async fn announce(db: &Db, event: DomainEventKind) -> Result<(), Problem> {
    let mut tx = db.pool.begin().await.or_problem("saga")?;
    outbox::enqueue_event(&mut tx, &db.topics, event)
        .await
        .or_problem("saga")?;
    tx.commit().await.or_problem("saga")
}

fn ids(device: &NewDevice) -> Result<(DeviceId, HomeId), Problem> {
    let device_id = DeviceId::new(&device.id)
        .map_err(|e| Problem::invalid_field("device.id", e.to_string()))?;
    let home_id = HomeId::new(&device.home_id)
        .map_err(|e| Problem::invalid_field("device.home_id", e.to_string()))?;
    Ok((device_id, home_id))
}
