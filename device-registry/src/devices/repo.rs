//! The SQL of homes and devices: the `homes` and `devices` tables, whoever
//! needs them (commands change a device's desired state, identity checks
//! its status, onboarding creates and activates it). Changes other services
//! must hear of are announced through the outbox in the same transaction.

use serde_json::{Map, Value};
use sqlx::{PgConnection, PgPool, Row};
use warmhouse_contracts::domain::DomainEventKind;
use warmhouse_contracts::ids::{DeviceId, HomeId};

use super::model::{Device, DevicePatch, DeviceStatus, Home, HomePatch, NewDevice, NewHome};
use super::state::DeviceViews;
use crate::db::{stored_device_id, stored_home_id, OrProblem};
use crate::kafka::Topics;
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
const DEVICE_COLUMNS: &str =
    "id, home_id, kind, name, capabilities, metadata, status, created_at, updated_at";

/// The `homes` table.
pub struct Homes;

impl Homes {
    /// Keyset pagination: `limit + 1` rows after `after`, so a next page is
    /// known to exist without counting.
    pub async fn list(
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
            .or_problem("home")
    }

    pub async fn get(pool: &PgPool, id: &str) -> Result<Home, Problem> {
        let sql = format!("SELECT {HOME_COLUMNS} FROM homes WHERE id = $1");
        sqlx::query_as::<_, Home>(&sql)
            .bind(id)
            .fetch_optional(pool)
            .await
            .or_problem("home")?
            .ok_or_else(|| Problem::not_found(format!("no home {id:?}")))
    }

    /// Creates a home and announces `home.created`.
    pub async fn create(pool: &PgPool, topics: &Topics, home: &NewHome) -> Result<Home, Problem> {
        let sql = format!(
        "INSERT INTO homes (id, name, address, timezone, metadata) \
         VALUES ($1, $2, $3, COALESCE($4, 'UTC'), COALESCE($5, '{{}}'::jsonb)) RETURNING {HOME_COLUMNS}"
    );
        let mut tx = pool.begin().await.or_problem("home")?;
        let created = sqlx::query_as::<_, Home>(&sql)
            .bind(&home.id)
            .bind(&home.name)
            .bind(&home.address)
            .bind(&home.timezone)
            .bind(&home.metadata)
            .fetch_one(&mut *tx)
            .await
            .or_problem("home")?;
        let home_id = stored_home_id(&created.id)?;
        announce(
            &mut tx,
            topics,
            DomainEventKind::HomeCreated {
                home_id,
                name: created.name.clone(),
            },
        )
        .await?;
        tx.commit().await.or_problem("home")?;
        Ok(created)
    }

    pub async fn update(pool: &PgPool, id: &str, patch: &HomePatch) -> Result<Home, Problem> {
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
            .or_problem("home")?
            .ok_or_else(|| Problem::not_found(format!("no home {id:?}")))
    }

    /// Deletes a home (409 while it has devices) and announces `home.deleted`.
    pub async fn delete(pool: &PgPool, topics: &Topics, id: &str) -> Result<(), Problem> {
        let mut tx = pool.begin().await.or_problem("home")?;
        let result = sqlx::query("DELETE FROM homes WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await
            .or_problem("home")?;
        if result.rows_affected() == 0 {
            return Err(Problem::not_found(format!("no home {id:?}")));
        }
        let home_id = stored_home_id(id)?;
        announce(&mut tx, topics, DomainEventKind::HomeDeleted { home_id }).await?;
        tx.commit().await.or_problem("home")
    }
}

/// The `devices` table.
pub struct Devices;

impl Devices {
    pub async fn list(
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
            .or_problem("device")
    }

    pub async fn get(pool: &PgPool, id: &str) -> Result<Device, Problem> {
        let sql = format!("SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1");
        sqlx::query_as::<_, Device>(&sql)
            .bind(id)
            .fetch_optional(pool)
            .await
            .or_problem("device")?
            .ok_or_else(|| Problem::not_found(format!("no device {id:?}")))
    }

    /// Creates a device; one created `active` is announced as registered
    /// (the onboarding saga is the fuller way in).
    pub async fn create(
        pool: &PgPool,
        topics: &Topics,
        device: &NewDevice,
    ) -> Result<Device, Problem> {
        let sql = format!(
            "INSERT INTO devices (id, home_id, kind, name, capabilities, metadata, status) \
         VALUES ($1, $2, $3, $4, $5, COALESCE($6, '{{}}'::jsonb), COALESCE($7, 'provisioning')) \
         RETURNING {DEVICE_COLUMNS}"
        );
        let mut tx = pool.begin().await.or_problem("device")?;
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
            .or_problem("device")?;
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
        tx.commit().await.or_problem("device")?;
        Ok(created)
    }

    /// Updates a device of a home in `scope`; any other is "no device".
    /// Disabling it announces `device.disabled` (the broker then drops its
    /// connections); enabling it again, `device.enabled`.
    pub async fn update(
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
        let mut tx = pool.begin().await.or_problem("device")?;
        let before: Option<String> =
            sqlx::query_scalar("SELECT status FROM devices WHERE id = $1 FOR UPDATE")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .or_problem("device")?;
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
            .or_problem("device")?
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
        tx.commit().await.or_problem("device")?;
        Ok(updated)
    }

    /// Deletes a device of a home in `scope`; any other is "no device".
    /// Announces `device.deleted` (the broker then drops its connections).
    pub async fn delete(
        pool: &PgPool,
        topics: &Topics,
        id: &str,
        scope: HomeScope<'_>,
    ) -> Result<(), Problem> {
        let mut tx = pool.begin().await.or_problem("device")?;
        let home: Option<String> = sqlx::query_scalar(
            "DELETE FROM devices WHERE id = $1 AND ($2::text[] IS NULL OR home_id = ANY($2)) \
         RETURNING home_id",
        )
        .bind(id)
        .bind(scope)
        .fetch_optional(&mut *tx)
        .await
        .or_problem("device")?;
        let Some(home) = home else {
            return Err(Problem::not_found(format!("no device {id:?}")));
        };
        let device_id = stored_device_id(id)?;
        let home_id = stored_home_id(&home)?;
        announce(
            &mut tx,
            topics,
            DomainEventKind::DeviceDeleted { device_id, home_id },
        )
        .await?;
        // The read model forgets it too; a late event may recreate a row, which
        // nothing shows without a device.
        DeviceViews::forget(&mut *tx, id)
            .await
            .or_problem("device")?;
        tx.commit().await.or_problem("device")
    }

    /// The device, or `None` (a read that may fail quietly).
    pub async fn find(pool: &PgPool, id: &str) -> Result<Option<Device>, Problem> {
        sqlx::query_as::<_, Device>(&format!(
            "SELECT {DEVICE_COLUMNS} FROM devices WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(pool)
        .await
        .or_problem("device")
    }

    pub async fn exists(pool: &PgPool, id: &str) -> Result<bool, Problem> {
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM devices WHERE id = $1)")
            .bind(id)
            .fetch_one(pool)
            .await
            .or_problem("device")
    }

    /// The device's status, `None` when there is no such device.
    pub async fn status(pool: &PgPool, id: &str) -> Result<Option<String>, Problem> {
        sqlx::query_scalar("SELECT status FROM devices WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .or_problem("device")
    }

    /// Status and home of the device, its row locked until the caller's
    /// transaction ends; `None` when there is no such device.
    pub async fn lock_status(
        conn: &mut PgConnection,
        id: &str,
    ) -> Result<Option<(String, String)>, Problem> {
        let row = sqlx::query("SELECT status, home_id FROM devices WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(conn)
            .await
            .or_problem("device")?;
        row.map(|row| Ok((row.try_get("status")?, row.try_get("home_id")?)))
            .transpose()
            .or_problem("device")
    }

    /// The desired state (set by commands) and its version.
    pub async fn desired(pool: &PgPool, id: &str) -> Result<(Map<String, Value>, i64), Problem> {
        let row = sqlx::query("SELECT desired, desired_version FROM devices WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await
            .or_problem("device")?
            .ok_or_else(|| Problem::not_found(format!("no device {id:?}")))?;
        let desired: sqlx::types::Json<Map<String, Value>> =
            row.try_get("desired").or_problem("device")?;
        let version: i64 = row.try_get("desired_version").or_problem("device")?;
        Ok((desired.0, version))
    }

    /// Merges `changes` into the desired state (bumping its version);
    /// returns the whole desired state after the change.
    pub async fn merge_desired(
        conn: &mut PgConnection,
        id: &str,
        changes: &Map<String, Value>,
    ) -> Result<Map<String, Value>, Problem> {
        let row = sqlx::query(
            "UPDATE devices SET desired = desired || $2, desired_version = desired_version + 1 \
             WHERE id = $1 RETURNING desired",
        )
        .bind(id)
        .bind(sqlx::types::Json(changes))
        .fetch_one(conn)
        .await
        .or_problem("device")?;
        let desired: sqlx::types::Json<Map<String, Value>> =
            row.try_get("desired").or_problem("device")?;
        Ok(desired.0)
    }

    /// Creates a device `provisioning`, owned by an onboarding saga: only
    /// that saga changes or removes it through the calls below.
    pub async fn create_onboarded(
        pool: &PgPool,
        new: &NewDevice,
        saga_id: &str,
    ) -> Result<Device, Problem> {
        let sql = format!(
            "INSERT INTO devices (id, home_id, kind, name, capabilities, metadata, status, onboarded_by) \
             VALUES ($1, $2, $3, $4, $5, COALESCE($6, '{{}}'::jsonb), 'provisioning', $7) \
             RETURNING {DEVICE_COLUMNS}"
        );
        sqlx::query_as::<_, Device>(&sql)
            .bind(&new.id)
            .bind(&new.home_id)
            .bind(&new.kind)
            .bind(&new.name)
            .bind(&new.capabilities)
            .bind(&new.metadata)
            .bind(saga_id)
            .fetch_one(pool)
            .await
            .or_problem("device")
    }

    /// Sets the status of the device `saga_id` created; any other device
    /// is left alone.
    pub async fn set_onboarded_status(
        pool: &PgPool,
        id: &str,
        saga_id: &str,
        status: DeviceStatus,
    ) -> Result<(), Problem> {
        sqlx::query(
            "UPDATE devices SET status = $3, updated_at = now() WHERE id = $1 AND onboarded_by = $2",
        )
        .bind(id)
        .bind(saga_id)
        .bind(status.as_str())
        .execute(pool)
        .await
        .or_problem("device")?;
        Ok(())
    }

    /// Deletes the device `saga_id` created; never one that was there.
    pub async fn delete_onboarded(pool: &PgPool, id: &str, saga_id: &str) -> Result<(), Problem> {
        sqlx::query("DELETE FROM devices WHERE id = $1 AND onboarded_by = $2")
            .bind(id)
            .bind(saga_id)
            .execute(pool)
            .await
            .or_problem("device")?;
        Ok(())
    }
}

async fn announce(
    conn: &mut PgConnection,
    topics: &Topics,
    event: DomainEventKind,
) -> Result<(), Problem> {
    outbox::enqueue_event(conn, topics, event)
        .await
        .or_problem("event")
}

fn valid_ids(device: &Device) -> Result<(DeviceId, HomeId), Problem> {
    Ok((
        stored_device_id(&device.id)?,
        stored_home_id(&device.home_id)?,
    ))
}
