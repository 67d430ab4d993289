//! The SQL of commands: the `commands` table, each change returning the rows
//! it changed so the caller can announce them in the same transaction.

use sqlx::{PgConnection, PgPool, Row};
use warmhouse_contracts::domain::CommandStatus;

use super::model::{CommandView, NewCommand};
use crate::devices::Device;

const COLUMNS: &str = "command_id, device_id, home_id, name, params, status, detail, \
    idempotency_key, created_at, expires_at, sent_at, delivered_at, completed_at, updated_at";
/// Statuses a command can still leave.
const OPEN: &str = "('queued', 'sent', 'delivered')";

/// The `commands` table.
pub struct Commands;

impl Commands {
    /// The command stored under an idempotency key, with the fingerprint of
    /// the request that made it.
    pub async fn find_by_key(
        conn: &mut PgConnection,
        device_id: &str,
        key: &str,
    ) -> sqlx::Result<Option<(CommandView, String)>> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS}, request_hash FROM commands WHERE device_id = $1 AND idempotency_key = $2"
        ))
        .bind(device_id)
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let stored: String = row.try_get("request_hash")?;
        Ok(Some((
            <CommandView as sqlx::FromRow<_>>::from_row(&row)?,
            stored,
        )))
    }

    /// Stores a queued command; `None` when a concurrent request with the
    /// same idempotency key stored one first.
    pub async fn insert(
        conn: &mut PgConnection,
        command_id: &str,
        device: &Device,
        new: &NewCommand,
        idempotency_key: Option<&str>,
        fingerprint: &str,
        ttl_seconds: u32,
    ) -> sqlx::Result<Option<CommandView>> {
        sqlx::query_as::<_, CommandView>(&format!(
            "INSERT INTO commands (command_id, device_id, home_id, name, params, idempotency_key, \
             request_hash, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8)) \
             ON CONFLICT (device_id, idempotency_key) DO NOTHING RETURNING {COLUMNS}"
        ))
        .bind(command_id)
        .bind(&device.id)
        .bind(&device.home_id)
        .bind(&new.name)
        .bind(sqlx::types::Json(&new.params))
        .bind(idempotency_key)
        .bind(fingerprint)
        .bind(f64::from(ttl_seconds))
        .fetch_optional(&mut *conn)
        .await
    }

    /// Queued commands whose records are now on Kafka become `sent`.
    pub async fn mark_sent(
        conn: &mut PgConnection,
        command_ids: &[String],
    ) -> sqlx::Result<Vec<CommandView>> {
        sqlx::query_as::<_, CommandView>(&format!(
            "UPDATE commands SET status = 'sent', sent_at = now(), updated_at = now() \
             WHERE command_id = ANY($1) AND status = 'queued' RETURNING {COLUMNS}"
        ))
        .bind(command_ids)
        .fetch_all(conn)
        .await
    }

    pub async fn mark_delivered(
        conn: &mut PgConnection,
        device_id: &str,
        command_id: &str,
    ) -> sqlx::Result<Vec<CommandView>> {
        sqlx::query_as::<_, CommandView>(&format!(
            "UPDATE commands SET status = 'delivered', sent_at = COALESCE(sent_at, now()), \
             delivered_at = now(), updated_at = now() \
             WHERE command_id = $1 AND device_id = $2 AND status IN ('queued', 'sent') RETURNING {COLUMNS}"
        ))
        .bind(command_id)
        .bind(device_id)
        .fetch_all(conn)
        .await
    }

    /// Records the device's answer (see [`super::record_ack`] for the rules).
    pub async fn record_answer(
        conn: &mut PgConnection,
        device_id: &str,
        command_id: &str,
        status: CommandStatus,
        detail: Option<&str>,
        answered_at_ms: i64,
    ) -> sqlx::Result<Vec<CommandView>> {
        sqlx::query_as::<_, CommandView>(&format!(
            "UPDATE commands SET status = $3, detail = $4, completed_at = now(), updated_at = now(), \
             sent_at = COALESCE(sent_at, now()), \
             delivered_at = CASE WHEN $3 = 'expired' THEN delivered_at ELSE COALESCE(delivered_at, now()) END \
             WHERE command_id = $1 AND device_id = $2 AND (status IN {OPEN} \
               OR (status = 'expired' AND $3 = 'acked' AND expires_at >= to_timestamp($5 / 1000.0))) \
             RETURNING {COLUMNS}"
        ))
        .bind(command_id)
        .bind(device_id)
        .bind(status.as_str())
        .bind(detail)
        .bind(answered_at_ms as f64)
        .fetch_all(conn)
        .await
    }

    /// Expires up to 1000 open commands whose deadline passed.
    pub async fn expire_due(conn: &mut PgConnection) -> sqlx::Result<Vec<CommandView>> {
        sqlx::query_as::<_, CommandView>(&format!(
            "UPDATE commands SET status = 'expired', updated_at = now(), completed_at = now(), \
             detail = 'its time to live ran out before the device acknowledged it' \
             WHERE command_id IN (SELECT command_id FROM commands WHERE status IN {OPEN} \
               AND expires_at < now() ORDER BY expires_at LIMIT 1000 FOR UPDATE SKIP LOCKED) \
             RETURNING {COLUMNS}"
        ))
        .fetch_all(conn)
        .await
    }

    /// Sent or delivered commands of a device that have not expired, oldest
    /// first.
    pub async fn in_flight(
        conn: &mut PgConnection,
        device_id: &str,
    ) -> sqlx::Result<Vec<CommandView>> {
        sqlx::query_as::<_, CommandView>(&format!(
            "SELECT {COLUMNS} FROM commands WHERE device_id = $1 \
             AND status IN ('sent', 'delivered') AND expires_at > now() ORDER BY created_at"
        ))
        .bind(device_id)
        .fetch_all(conn)
        .await
    }

    pub async fn get(
        pool: &PgPool,
        device_id: &str,
        command_id: &str,
    ) -> sqlx::Result<Option<CommandView>> {
        sqlx::query_as::<_, CommandView>(&format!(
            "SELECT {COLUMNS} FROM commands WHERE command_id = $1 AND device_id = $2"
        ))
        .bind(command_id)
        .bind(device_id)
        .fetch_optional(pool)
        .await
    }

    /// Newest first.
    pub async fn list(
        pool: &PgPool,
        device_id: &str,
        status: Option<CommandStatus>,
        limit: i64,
    ) -> sqlx::Result<Vec<CommandView>> {
        sqlx::query_as::<_, CommandView>(&format!(
            "SELECT {COLUMNS} FROM commands WHERE device_id = $1 AND ($2::text IS NULL OR status = $2) \
             ORDER BY created_at DESC, command_id LIMIT $3"
        ))
        .bind(device_id)
        .bind(status.map(CommandStatus::as_str))
        .bind(limit)
        .fetch_all(pool)
        .await
    }
}
