//! The SQL of the saga log: `onboarding_sagas` (one row a saga) and
//! `onboarding_saga_steps` (one row a step's outcome), and the advisory
//! lock a live saga holds.

use chrono::{DateTime, Utc};
use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres, Row};

use super::model::{OnboardingRequest, SagaLogEntry, SagaView};

/// A saga left `running` or `compensating`.
pub struct OpenSaga {
    pub saga_id: String,
    pub request: OnboardingRequest,
    pub step: Option<String>,
}

/// The saga log.
pub struct Sagas;

impl Sagas {
    pub async fn insert(
        pool: &PgPool,
        saga_id: &str,
        request: &OnboardingRequest,
    ) -> sqlx::Result<()> {
        sqlx::query(
            "INSERT INTO onboarding_sagas (saga_id, device_id, home_id, request) VALUES ($1, $2, $3, $4)",
        )
        .bind(saga_id)
        .bind(&request.device.id)
        .bind(&request.device.home_id)
        .bind(sqlx::types::Json(request))
        .execute(pool)
        .await?;
        Ok(())
    }

    /// Logs a step's outcome; a step `started` becomes the saga's step.
    pub async fn log(
        pool: &PgPool,
        saga_id: &str,
        step: &str,
        outcome: &str,
        detail: Option<&str>,
    ) -> sqlx::Result<()> {
        let mut tx = pool.begin().await?;
        sqlx::query("INSERT INTO onboarding_saga_steps (saga_id, step, outcome, detail) VALUES ($1, $2, $3, $4)")
            .bind(saga_id)
            .bind(step)
            .bind(outcome)
            .bind(detail)
            .execute(&mut *tx)
            .await?;
        if outcome == "started" {
            sqlx::query(
                "UPDATE onboarding_sagas SET step = $2, updated_at = now() WHERE saga_id = $1",
            )
            .bind(saga_id)
            .bind(step)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    pub async fn set_state(
        pool: &PgPool,
        saga_id: &str,
        state: &str,
        error: Option<&str>,
    ) -> sqlx::Result<()> {
        sqlx::query("UPDATE onboarding_sagas SET state = $2, error = COALESCE($3, error), updated_at = now() WHERE saga_id = $1")
            .bind(saga_id)
            .bind(state)
            .bind(error)
            .execute(pool)
            .await?;
        Ok(())
    }

    /// Whether `step` of the saga finished (`done`).
    pub async fn step_done(pool: &PgPool, saga_id: &str, step: &str) -> sqlx::Result<bool> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM onboarding_saga_steps WHERE saga_id = $1 AND step = $2 AND outcome = 'done')",
        )
        .bind(saga_id)
        .bind(step)
        .fetch_one(pool)
        .await
    }

    /// Sagas still running or compensating, oldest first.
    pub async fn open(pool: &PgPool) -> sqlx::Result<Vec<OpenSaga>> {
        let rows = sqlx::query(
            "SELECT saga_id, request, step FROM onboarding_sagas WHERE state IN ('running', 'compensating') ORDER BY created_at",
        )
        .fetch_all(pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let request: sqlx::types::Json<OnboardingRequest> = row.try_get("request")?;
                Ok(OpenSaga {
                    saga_id: row.try_get("saga_id")?,
                    request: request.0,
                    step: row.try_get("step")?,
                })
            })
            .collect()
    }

    /// The saga and its log, `None` when there is no such saga.
    pub async fn load(pool: &PgPool, saga_id: &str) -> sqlx::Result<Option<SagaView>> {
        let row = sqlx::query(
            "SELECT saga_id, device_id, home_id, state, step, error, created_at, updated_at FROM onboarding_sagas WHERE saga_id = $1",
        )
        .bind(saga_id)
        .fetch_optional(pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let log = sqlx::query("SELECT step, outcome, detail, at FROM onboarding_saga_steps WHERE saga_id = $1 ORDER BY id")
            .bind(saga_id)
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|r| {
                Ok(SagaLogEntry {
                    step: r.try_get("step")?,
                    outcome: r.try_get("outcome")?,
                    detail: r.try_get("detail")?,
                    at: r.try_get::<DateTime<Utc>, _>("at")?,
                })
            })
            .collect::<sqlx::Result<Vec<_>>>()?;
        Ok(Some(SagaView {
            saga_id: row.try_get("saga_id")?,
            device_id: row.try_get("device_id")?,
            home_id: row.try_get("home_id")?,
            state: row.try_get("state")?,
            step: row.try_get("step")?,
            error: row.try_get("error")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            log,
        }))
    }

    /// Waits for the saga's advisory lock on `conn` (held while it runs).
    pub async fn lock(conn: &mut PgConnection, saga_id: &str) -> sqlx::Result<()> {
        sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
            .bind(saga_id)
            .execute(conn)
            .await?;
        Ok(())
    }

    /// Takes the saga's lock if it is free: when it is not, a live registry
    /// is working on the saga.
    pub async fn try_lock(conn: &mut PgConnection, saga_id: &str) -> sqlx::Result<bool> {
        sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))")
            .bind(saga_id)
            .fetch_one(conn)
            .await
    }

    pub async fn unlock(lock: &mut PoolConnection<Postgres>, saga_id: &str) -> sqlx::Result<()> {
        sqlx::query("SELECT pg_advisory_unlock(hashtext($1))")
            .bind(saga_id)
            .execute(&mut **lock)
            .await?;
        Ok(())
    }
}
