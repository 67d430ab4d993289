//! SQL against PostgreSQL (runtime-checked queries: no database at build
//! time), and the mapping of its errors to problems.

use sqlx::{PgConnection, PgPool};
use warmhouse_contracts::domain::DomainEventKind;
use warmhouse_contracts::ids::{DeviceId, HomeId};

use crate::kafka::Topics;
use crate::model::{Device, DevicePatch, DeviceStatus, Home, HomePatch, NewDevice, NewHome};
use crate::outbox;
use crate::problem::Problem;

/// Homes a request may touch: `None` every home (an admin), else these.
/// Applied in SQL, so a check and its write cannot drift apart.
pub type HomeScope<'a> = Option<&'a [String]>;

/// Filters of `GET /api/v1/devices`, already validated.
#[derive(Debug, Default, Clone)]
pub struct DeviceFilter {
    pub home_id: Option<String>,
    /// Only devices of these homes (the caller's), when set.
    pub home_ids: Option<Vec<String>>,
    pub kind: Option<String>,
    pub status: Option<String>,
}

const HOME_COLUMNS: &str = "id, name, address, timezone, metadata, created_at, updated_at";
pub(crate) const DEVICE_COLUMNS: &str =
    "id, home_id, kind, name, capabilities, metadata, status, created_at, updated_at";

/// Keyset pagination: `limit + 1` rows after `after`, so a next page is
/// known to exist without counting.
pub async fn list_homes(
    pool: &PgPool,
    scope: HomeScope<'_>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Home>, Problem> {
    let sql = format!(
        "SELECT {HOME_COLUMNS} FROM homes WHERE ($1::text IS NULL OR id > $1) \
         AND ($3::text[] IS NULL OR id = ANY($3)) ORDER BY id LIMIT $2"
    );
    sqlx::query_as::<_, Home>(&sql)
        .bind(after)
        .bind(limit + 1)
        .bind(scope)
        .fetch_all(pool)
        .await
        .map_err(|e| db_problem(e, "home"))
}

pub async fn get_home(pool: &PgPool, id: &str) -> Result<Home, Problem> {
    let sql = format!("SELECT {HOME_COLUMNS} FROM homes WHERE id = $1");
    sqlx::query_as::<_, Home>(&sql)
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(|e| db_problem(e, "home"))?
        .ok_or_else(|| Problem::not_found(format!("no home {id:?}")))
}

/// Creates a home and announces `home.created`.
pub async fn create_home(pool: &PgPool, topics: &Topics, home: &NewHome) -> Result<Home, Problem> {
    let sql = format!(
        "INSERT INTO homes (id, name, address, timezone, metadata) \
         VALUES ($1, $2, $3, COALESCE($4, 'UTC'), COALESCE($5, '{{}}'::jsonb)) RETURNING {HOME_COLUMNS}"
    );
    let mut tx = pool.begin().await.map_err(|e| db_problem(e, "home"))?;
    let created = sqlx::query_as::<_, Home>(&sql)
        .bind(&home.id)
        .bind(&home.name)
        .bind(&home.address)
        .bind(&home.timezone)
        .bind(&home.metadata)
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| db_problem(e, "home"))?;
    let home_id = valid_home_id(&created.id)?;
    announce(
        &mut tx,
        topics,
        DomainEventKind::HomeCreated {
            home_id,
            name: created.name.clone(),
        },
    )
    .await?;
    tx.commit().await.map_err(|e| db_problem(e, "home"))?;
    Ok(created)
}

pub async fn update_home(pool: &PgPool, id: &str, patch: &HomePatch) -> Result<Home, Problem> {
    let sql = format!(
        "UPDATE homes SET name = COALESCE($2, name), \
         address = CASE WHEN $3 THEN $4 ELSE address END, \
         timezone = COALESCE($5, timezone), metadata = COALESCE($6, metadata), \
         updated_at = now() WHERE id = $1 RETURNING {HOME_COLUMNS}"
    );
    sqlx::query_as::<_, Home>(&sql)
        .bind(id)
        .bind(&patch.name)
        .bind(patch.address.is_some())
        .bind(patch.address.clone().flatten())
        .bind(&patch.timezone)
        .bind(&patch.metadata)
        .fetch_optional(pool)
        .await
        .map_err(|e| db_problem(e, "home"))?
        .ok_or_else(|| Problem::not_found(format!("no home {id:?}")))
}

/// Deletes a home (409 while it has devices) and announces `home.deleted`.
pub async fn delete_home(pool: &PgPool, topics: &Topics, id: &str) -> Result<(), Problem> {
    let mut tx = pool.begin().await.map_err(|e| db_problem(e, "home"))?;
    let result = sqlx::query("DELETE FROM homes WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_problem(e, "home"))?;
    if result.rows_affected() == 0 {
        return Err(Problem::not_found(format!("no home {id:?}")));
    }
    let home_id = valid_home_id(id)?;
    announce(&mut tx, topics, DomainEventKind::HomeDeleted { home_id }).await?;
    tx.commit().await.map_err(|e| db_problem(e, "home"))
}

pub async fn list_devices(
    pool: &PgPool,
    filter: &DeviceFilter,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Device>, Problem> {
    let sql = format!(
        "SELECT {DEVICE_COLUMNS} FROM devices \
         WHERE ($1::text IS NULL OR id > $1) AND ($2::text IS NULL OR home_id = $2) \
         AND ($3::text IS NULL OR kind = $3) AND ($4::text IS NULL OR status = $4) \
         AND ($6::text[] IS NULL OR home_id = ANY($6)) ORDER BY id LIMIT $5"
    );
    sqlx::query_as::<_, Device>(&sql)
        .bind(after)
        .bind(&filter.home_id)
        .bind(&filter.kind)
        .bind(&filter.status)
        .bind(limit + 1)
        .bind(&filter.home_ids)
        .fetch_all(pool)
        .await
        .map_err(|e| db_problem(e, "device"))
}

pub async fn get_device(pool: &PgPool, id: &str) -> Result<Device, Problem> {
    let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1");
    sqlx::query_as::<_, Device>(&sql)
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(|e| db_problem(e, "device"))?
        .ok_or_else(|| Problem::not_found(format!("no device {id:?}")))
}

/// Creates a device; one created `active` is announced as registered
/// (the onboarding saga is the fuller way in).
pub async fn create_device(
    pool: &PgPool,
    topics: &Topics,
    device: &NewDevice,
) -> Result<Device, Problem> {
    let sql = format!(
        "INSERT INTO devices (id, home_id, kind, name, capabilities, metadata, status) \
         VALUES ($1, $2, $3, $4, $5, COALESCE($6, '{{}}'::jsonb), COALESCE($7, 'provisioning')) \
         RETURNING {DEVICE_COLUMNS}"
    );
    let mut tx = pool.begin().await.map_err(|e| db_problem(e, "device"))?;
    let created = sqlx::query_as::<_, Device>(&sql)
        .bind(&device.id)
        .bind(&device.home_id)
        .bind(&device.kind)
        .bind(&device.name)
        .bind(&device.capabilities)
        .bind(&device.metadata)
        .bind(device.status.map(|s| s.as_str()))
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| db_problem(e, "device"))?;
    if created.status == DeviceStatus::Active {
        let (device_id, home_id) = valid_ids(&created)?;
        announce(
            &mut tx,
            topics,
            DomainEventKind::DeviceRegistered {
                device_id,
                home_id,
                kind: created.kind.clone(),
            },
        )
        .await?;
    }
    tx.commit().await.map_err(|e| db_problem(e, "device"))?;
    Ok(created)
}

/// Updates a device of a home in `scope`; any other is "no device".
/// Disabling it announces `device.disabled` (the broker then drops its
/// connections); enabling it again, `device.enabled`.
pub async fn update_device(
    pool: &PgPool,
    topics: &Topics,
    id: &str,
    patch: &DevicePatch,
    scope: HomeScope<'_>,
) -> Result<Device, Problem> {
    let sql = format!(
        "UPDATE devices SET home_id = COALESCE($2, home_id), kind = COALESCE($3, kind), \
         name = COALESCE($4, name), capabilities = COALESCE($5, capabilities), \
         metadata = COALESCE($6, metadata), status = COALESCE($7, status), \
         updated_at = now() WHERE id = $1 AND ($8::text[] IS NULL OR home_id = ANY($8)) \
         RETURNING {DEVICE_COLUMNS}"
    );
    let mut tx = pool.begin().await.map_err(|e| db_problem(e, "device"))?;
    let before: Option<String> =
        sqlx::query_scalar("SELECT status FROM devices WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| db_problem(e, "device"))?;
    let updated = sqlx::query_as::<_, Device>(&sql)
        .bind(id)
        .bind(&patch.home_id)
        .bind(&patch.kind)
        .bind(&patch.name)
        .bind(&patch.capabilities)
        .bind(&patch.metadata)
        .bind(patch.status.map(|s| s.as_str()))
        .bind(scope)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| db_problem(e, "device"))?
        .ok_or_else(|| Problem::not_found(format!("no device {id:?}")))?;
    let was_disabled = before.as_deref() == Some(DeviceStatus::Disabled.as_str());
    let is_disabled = updated.status == DeviceStatus::Disabled;
    if was_disabled != is_disabled {
        let (device_id, home_id) = valid_ids(&updated)?;
        let event = if is_disabled {
            DomainEventKind::DeviceDisabled { device_id, home_id }
        } else {
            DomainEventKind::DeviceEnabled { device_id, home_id }
        };
        announce(&mut tx, topics, event).await?;
    }
    tx.commit().await.map_err(|e| db_problem(e, "device"))?;
    Ok(updated)
}

/// Deletes a device of a home in `scope`; any other is "no device".
/// Announces `device.deleted` (the broker then drops its connections).
pub async fn delete_device(
    pool: &PgPool,
    topics: &Topics,
    id: &str,
    scope: HomeScope<'_>,
) -> Result<(), Problem> {
    let mut tx = pool.begin().await.map_err(|e| db_problem(e, "device"))?;
    let home: Option<String> = sqlx::query_scalar(
        "DELETE FROM devices WHERE id = $1 AND ($2::text[] IS NULL OR home_id = ANY($2)) \
         RETURNING home_id",
    )
    .bind(id)
    .bind(scope)
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| db_problem(e, "device"))?;
    let Some(home) = home else {
        return Err(Problem::not_found(format!("no device {id:?}")));
    };
    let device_id = DeviceId::new(id).map_err(|e| stored_id_problem(&e))?;
    let home_id = valid_home_id(&home)?;
    announce(
        &mut tx,
        topics,
        DomainEventKind::DeviceDeleted { device_id, home_id },
    )
    .await?;
    // The read model forgets it too; a late event may recreate a row, which
    // nothing shows without a device.
    sqlx::query("DELETE FROM device_views WHERE device_id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .map_err(|e| db_problem(e, "device"))?;
    tx.commit().await.map_err(|e| db_problem(e, "device"))
}

async fn announce(
    conn: &mut PgConnection,
    topics: &Topics,
    event: DomainEventKind,
) -> Result<(), Problem> {
    outbox::enqueue_event(conn, topics, event)
        .await
        .map_err(|e| db_problem(e, "event"))
}

fn valid_ids(device: &Device) -> Result<(DeviceId, HomeId), Problem> {
    let device_id = DeviceId::new(&device.id).map_err(|e| stored_id_problem(&e))?;
    Ok((device_id, valid_home_id(&device.home_id)?))
}

fn valid_home_id(id: &str) -> Result<HomeId, Problem> {
    HomeId::new(id).map_err(|e| stored_id_problem(&e))
}

/// Ids are validated before they are stored; one that is not valid is ours.
fn stored_id_problem(err: &dyn std::fmt::Display) -> Problem {
    tracing::error!(%err, "stored id is not valid");
    Problem::internal()
}

/// Constraint violations are the client's doing (4xx); losing the
/// database is 503; anything else is ours (500, logged).
pub(crate) fn db_problem(err: sqlx::Error, what: &str) -> Problem {
    if let sqlx::Error::Database(db) = &err {
        match db.code().as_deref() {
            // unique_violation
            Some("23505") => return Problem::conflict(format!("a {what} with this id exists")),
            // foreign_key_violation: a device's home is missing, or a home
            // still has devices.
            Some("23503") if what == "device" => {
                return Problem::invalid_field("home_id", "no home with this home_id")
            }
            Some("23503") => {
                return Problem::conflict("the home still has devices; delete or move them first")
            }
            // character_not_in_repertoire (NUL in a text column) and
            // untranslatable_character (`\u0000` in jsonb): PostgreSQL cannot
            // store NUL, which is the client's doing, not a 500.
            Some("22021") | Some("22P05") => {
                return Problem::new(
                    axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid-body",
                    "Invalid request body",
                    "text and metadata must not contain NUL characters (\\u0000)",
                )
            }
            _ => {}
        }
    }
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            tracing::warn!(%err, "PostgreSQL unavailable");
            Problem::store_unavailable(format!("PostgreSQL cannot be reached: {err}"))
        }
        other => {
            tracing::error!(err = %other, "registry query failed");
            Problem::internal()
        }
    }
}
