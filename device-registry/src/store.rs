//! SQL against PostgreSQL (runtime-checked queries: no database at build
//! time), and the mapping of its errors to problems.

use sqlx::PgPool;

use crate::model::{Device, DevicePatch, Home, HomePatch, NewDevice, NewHome};
use crate::problem::Problem;

/// Filters of `GET /api/v1/devices`, already validated.
#[derive(Debug, Default, Clone)]
pub struct DeviceFilter {
    pub home_id: Option<String>,
    pub kind: Option<String>,
    pub status: Option<String>,
}

const HOME_COLUMNS: &str = "id, name, address, timezone, metadata, created_at, updated_at";
const DEVICE_COLUMNS: &str =
    "id, home_id, kind, name, capabilities, metadata, status, created_at, updated_at";

/// Keyset pagination: `limit + 1` rows after `after`, so a next page is
/// known to exist without counting.
pub async fn list_homes(
    pool: &PgPool,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Home>, Problem> {
    let sql = format!(
        "SELECT {HOME_COLUMNS} FROM homes WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2"
    );
    sqlx::query_as::<_, Home>(&sql)
        .bind(after)
        .bind(limit + 1)
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

pub async fn create_home(pool: &PgPool, home: &NewHome) -> Result<Home, Problem> {
    let sql = format!(
        "INSERT INTO homes (id, name, address, timezone, metadata) \
         VALUES ($1, $2, $3, COALESCE($4, 'UTC'), COALESCE($5, '{{}}'::jsonb)) RETURNING {HOME_COLUMNS}"
    );
    sqlx::query_as::<_, Home>(&sql)
        .bind(&home.id)
        .bind(&home.name)
        .bind(&home.address)
        .bind(&home.timezone)
        .bind(&home.metadata)
        .fetch_one(pool)
        .await
        .map_err(|e| db_problem(e, "home"))
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

pub async fn delete_home(pool: &PgPool, id: &str) -> Result<(), Problem> {
    let result = sqlx::query("DELETE FROM homes WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map_err(|e| db_problem(e, "home"))?;
    if result.rows_affected() == 0 {
        return Err(Problem::not_found(format!("no home {id:?}")));
    }
    Ok(())
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
         ORDER BY id LIMIT $5"
    );
    sqlx::query_as::<_, Device>(&sql)
        .bind(after)
        .bind(&filter.home_id)
        .bind(&filter.kind)
        .bind(&filter.status)
        .bind(limit + 1)
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

pub async fn create_device(pool: &PgPool, device: &NewDevice) -> Result<Device, Problem> {
    let sql = format!(
        "INSERT INTO devices (id, home_id, kind, name, capabilities, metadata, status) \
         VALUES ($1, $2, $3, $4, $5, COALESCE($6, '{{}}'::jsonb), COALESCE($7, 'provisioning')) \
         RETURNING {DEVICE_COLUMNS}"
    );
    sqlx::query_as::<_, Device>(&sql)
        .bind(&device.id)
        .bind(&device.home_id)
        .bind(&device.kind)
        .bind(&device.name)
        .bind(&device.capabilities)
        .bind(&device.metadata)
        .bind(device.status.map(|s| s.as_str()))
        .fetch_one(pool)
        .await
        .map_err(|e| db_problem(e, "device"))
}

pub async fn update_device(
    pool: &PgPool,
    id: &str,
    patch: &DevicePatch,
) -> Result<Device, Problem> {
    let sql = format!(
        "UPDATE devices SET home_id = COALESCE($2, home_id), kind = COALESCE($3, kind), \
         name = COALESCE($4, name), capabilities = COALESCE($5, capabilities), \
         metadata = COALESCE($6, metadata), status = COALESCE($7, status), \
         updated_at = now() WHERE id = $1 RETURNING {DEVICE_COLUMNS}"
    );
    sqlx::query_as::<_, Device>(&sql)
        .bind(id)
        .bind(&patch.home_id)
        .bind(&patch.kind)
        .bind(&patch.name)
        .bind(&patch.capabilities)
        .bind(&patch.metadata)
        .bind(patch.status.map(|s| s.as_str()))
        .fetch_optional(pool)
        .await
        .map_err(|e| db_problem(e, "device"))?
        .ok_or_else(|| Problem::not_found(format!("no device {id:?}")))
}

pub async fn delete_device(pool: &PgPool, id: &str) -> Result<(), Problem> {
    let result = sqlx::query("DELETE FROM devices WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map_err(|e| db_problem(e, "device"))?;
    if result.rows_affected() == 0 {
        return Err(Problem::not_found(format!("no device {id:?}")));
    }
    Ok(())
}

/// Constraint violations are the client's doing (4xx); losing the
/// database is 503; anything else is ours (500, logged).
fn db_problem(err: sqlx::Error, what: &str) -> Problem {
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
