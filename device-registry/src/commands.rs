//! Commands to devices, the write side: a durable state machine per command
//! (queued → sent → delivered → acked | failed, or expired), changed only
//! here and always together with the outbox records that announce it.
//!
//! * queued: stored; its `device-commands` record is in the outbox.
//! * sent: the relay published it to Kafka.
//! * delivered: the bridge handed it to the broker for an online device.
//! * acked / failed: the device executed it / refused or failed.
//! * expired: its TTL ran out first (the sweeper), or the device said so.
//!
//! When a device comes back online every open command is published again:
//! one that went out while the device was away reaches it now, and a device
//! ignores a command id it has already answered.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sqlx::{PgConnection, PgPool, Postgres, Row, Transaction};
use utoipa::ToSchema;
use warmhouse_contracts::commands as catalog;
use warmhouse_contracts::device::{AckResult, Command, CommandAck};
use warmhouse_contracts::domain::{CommandStatus, DomainEventKind};
use warmhouse_contracts::ids::{DeviceId, HomeId};
use warmhouse_contracts::kafka::CommandRecord;

use crate::kafka::Topics;
use crate::model::{Device, DeviceStatus};
use crate::outbox;
use crate::problem::Problem;

/// Time to live when the request names none.
pub const DEFAULT_TTL_SECONDS: u32 = 300;
/// Longest time to live accepted: a day.
pub const MAX_TTL_SECONDS: u32 = 86_400;
/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;
/// Statuses a command can still leave.
const OPEN: &str = "('queued', 'sent', 'delivered')";

/// Body of `POST /api/v1/devices/{id}/commands`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "set_target_temperature", "params": {"temperature": 21.5}, "ttl_seconds": 60}))]
pub struct NewCommand {
    /// `turn_on`, `turn_off` or `set_target_temperature`.
    pub name: String,
    /// `set_target_temperature` takes `{"temperature": 5..30}`.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: Map<String, Value>,
    /// Seconds the device may still execute it (1..=86400, default 300).
    #[serde(default)]
    pub ttl_seconds: Option<u32>,
}

impl NewCommand {
    pub fn validate(&self) -> Result<u32, Problem> {
        catalog::validate(&self.name, &self.params).map_err(|detail| {
            let field = if catalog::NAMES.contains(&self.name.as_str()) {
                "params"
            } else {
                "name"
            };
            Problem::invalid_field(field, detail)
        })?;
        let ttl = self.ttl_seconds.unwrap_or(DEFAULT_TTL_SECONDS);
        if !(1..=MAX_TTL_SECONDS).contains(&ttl) {
            return Err(Problem::invalid_field(
                "ttl_seconds",
                format!("must be from 1 to {MAX_TTL_SECONDS} seconds, got {ttl}"),
            ));
        }
        Ok(ttl)
    }

    /// What identifies "the same request" for an idempotency key.
    fn fingerprint(&self, ttl: u32) -> String {
        serde_json::json!({"name": self.name, "params": self.params, "ttl": ttl}).to_string()
    }
}

/// A command and where it is in its life.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct CommandView {
    pub command_id: String,
    pub device_id: String,
    pub home_id: String,
    pub name: String,
    #[schema(value_type = Object)]
    pub params: sqlx::types::Json<Map<String, Value>>,
    /// queued, sent, delivered, acked, failed or expired.
    pub status: String,
    /// Why it failed or expired, as the device or the registry said.
    pub detail: Option<String>,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

const COLUMNS: &str = "command_id, device_id, home_id, name, params, status, detail, \
    idempotency_key, created_at, expires_at, sent_at, delivered_at, completed_at, updated_at";

/// Stores a command for `device` and queues it for delivery. With an
/// idempotency key already used for this device, returns the command made
/// the first time (`false`) or a conflict if the request differs.
pub async fn create(
    pool: &PgPool,
    topics: &Topics,
    device: &Device,
    new: &NewCommand,
    idempotency_key: Option<&str>,
) -> Result<(CommandView, bool), Problem> {
    let ttl = new.validate()?;
    if let Some(key) = idempotency_key {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || !key.is_ascii() {
            return Err(Problem::invalid_parameter(
                "Idempotency-Key",
                format!("must be 1 to {MAX_IDEMPOTENCY_KEY} ASCII characters"),
            ));
        }
    }
    if device.status == DeviceStatus::Disabled {
        return Err(Problem::conflict(format!(
            "device {:?} is disabled; enable it before sending commands",
            device.id
        )));
    }
    let fingerprint = new.fingerprint(ttl);
    let mut tx = pool.begin().await.map_err(db_problem)?;
    if let Some(key) = idempotency_key {
        if let Some(existing) = find_by_key(&mut tx, &device.id, key, &fingerprint).await? {
            return Ok((existing, false));
        }
    }
    let command_id = uuid::Uuid::new_v4().to_string();
    let insert = sqlx::query_as::<_, CommandView>(&format!(
        "INSERT INTO commands (command_id, device_id, home_id, name, params, idempotency_key, \
         request_hash, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8)) \
         ON CONFLICT (device_id, idempotency_key) DO NOTHING RETURNING {COLUMNS}"
    ))
    .bind(&command_id)
    .bind(&device.id)
    .bind(&device.home_id)
    .bind(&new.name)
    .bind(sqlx::types::Json(&new.params))
    .bind(idempotency_key)
    .bind(&fingerprint)
    .bind(f64::from(ttl))
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_problem)?;
    let Some(command) = insert else {
        // A concurrent request with the same key won the race.
        drop(tx);
        let mut conn = pool.acquire().await.map_err(db_problem)?;
        let key = idempotency_key.unwrap_or_default();
        return match find_by_key(&mut conn, &device.id, key, &fingerprint).await? {
            Some(existing) => Ok((existing, false)),
            None => Err(Problem::conflict(
                "a concurrent request used this idempotency key; retry",
            )),
        };
    };

    let device_id = valid_device_id(&device.id)?;
    let home_id = valid_home_id(&device.home_id)?;
    let desired = catalog::desired_effect(&device.kind, &new.name, &new.params);
    if !desired.is_empty() {
        let row = sqlx::query(
            "UPDATE devices SET desired = desired || $2, desired_version = desired_version + 1 \
             WHERE id = $1 RETURNING desired",
        )
        .bind(&device.id)
        .bind(sqlx::types::Json(&desired))
        .fetch_one(&mut *tx)
        .await
        .map_err(db_problem)?;
        let desired: sqlx::types::Json<Map<String, Value>> =
            row.try_get("desired").map_err(db_problem)?;
        outbox::enqueue_event(
            &mut tx,
            topics,
            DomainEventKind::DesiredChanged {
                device_id: device_id.clone(),
                home_id: home_id.clone(),
                desired: desired.0,
            },
        )
        .await
        .map_err(db_problem)?;
    }
    enqueue_delivery(&mut tx, topics, &command, &device_id).await?;
    announce(&mut tx, topics, &command, device_id, home_id).await?;
    tx.commit().await.map_err(db_problem)?;
    Ok((command, true))
}

async fn find_by_key(
    conn: &mut PgConnection,
    device_id: &str,
    key: &str,
    fingerprint: &str,
) -> Result<Option<CommandView>, Problem> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS}, request_hash FROM commands WHERE device_id = $1 AND idempotency_key = $2"
    ))
    .bind(device_id)
    .bind(key)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_problem)?;
    let Some(row) = row else { return Ok(None) };
    let stored: String = row.try_get("request_hash").map_err(db_problem)?;
    if stored != fingerprint {
        return Err(Problem::conflict(
            "this Idempotency-Key was already used for a different command on this device",
        ));
    }
    Ok(Some(
        <CommandView as sqlx::FromRow<_>>::from_row(&row).map_err(db_problem)?,
    ))
}

/// Queues the `device-commands` record of `command`.
async fn enqueue_delivery(
    conn: &mut PgConnection,
    topics: &Topics,
    command: &CommandView,
    device_id: &DeviceId,
) -> Result<(), Problem> {
    let record = CommandRecord::new(
        device_id.clone(),
        Command {
            v: u64::from(warmhouse_contracts::WIRE_VERSION),
            command_id: command.command_id.clone(),
            name: command.name.clone(),
            params: command.params.0.clone(),
            issued_at_ms: command.created_at.timestamp_millis(),
            expires_at_ms: command.expires_at.timestamp_millis(),
        },
    );
    outbox::enqueue(
        conn,
        &topics.device_commands,
        device_id.as_str(),
        &record.to_json(),
        Some(&command.command_id),
    )
    .await
    .map_err(db_problem)
}

/// Queues `command.status_changed` for the command's current status.
async fn announce(
    conn: &mut PgConnection,
    topics: &Topics,
    command: &CommandView,
    device_id: DeviceId,
    home_id: HomeId,
) -> Result<(), Problem> {
    let Some(status) = CommandStatus::parse(&command.status) else {
        tracing::error!(status = %command.status, "command row with an unknown status");
        return Err(Problem::internal());
    };
    outbox::enqueue_event(
        conn,
        topics,
        DomainEventKind::CommandStatusChanged {
            command_id: command.command_id.clone(),
            device_id,
            home_id,
            name: command.name.clone(),
            status,
            detail: command.detail.clone(),
        },
    )
    .await
    .map_err(db_problem)
}

/// Announces every command an UPDATE ... RETURNING changed.
async fn announce_all(
    conn: &mut PgConnection,
    topics: &Topics,
    changed: &[CommandView],
) -> Result<(), Problem> {
    for command in changed {
        let (Ok(device_id), Ok(home_id)) = (
            valid_device_id(&command.device_id),
            valid_home_id(&command.home_id),
        ) else {
            continue;
        };
        announce(conn, topics, command, device_id, home_id).await?;
    }
    Ok(())
}

/// Called by the outbox relay once the commands' records are on Kafka.
pub async fn mark_sent(
    tx: &mut Transaction<'_, Postgres>,
    topics: &Topics,
    command_ids: &[String],
) -> anyhow::Result<()> {
    let changed = sqlx::query_as::<_, CommandView>(&format!(
        "UPDATE commands SET status = 'sent', sent_at = now(), updated_at = now() \
         WHERE command_id = ANY($1) AND status = 'queued' RETURNING {COLUMNS}"
    ))
    .bind(command_ids)
    .fetch_all(&mut **tx)
    .await?;
    announce_all(tx, topics, &changed)
        .await
        .map_err(|p| anyhow::anyhow!("announcing sent commands: {}", p.detail))
}

/// The bridge handed the command to the broker for an online device.
pub async fn mark_delivered(
    pool: &PgPool,
    topics: &Topics,
    device_id: &str,
    command_id: &str,
) -> Result<bool, Problem> {
    let mut tx = pool.begin().await.map_err(db_problem)?;
    let changed = sqlx::query_as::<_, CommandView>(&format!(
        "UPDATE commands SET status = 'delivered', sent_at = COALESCE(sent_at, now()), \
         delivered_at = now(), updated_at = now() \
         WHERE command_id = $1 AND device_id = $2 AND status IN ('queued', 'sent') RETURNING {COLUMNS}"
    ))
    .bind(command_id)
    .bind(device_id)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_problem)?;
    announce_all(&mut tx, topics, &changed).await?;
    tx.commit().await.map_err(db_problem)?;
    Ok(!changed.is_empty())
}

/// The device answered. Only the device the command was for may answer it,
/// and an answer does not change a finished command, except that a `done`
/// the device made before the deadline wins over the sweeper's `expired`.
/// Returns the command as changed, or `None` when the answer changed nothing.
pub async fn record_ack(
    pool: &PgPool,
    topics: &Topics,
    device_id: &str,
    ack: &CommandAck,
) -> Result<Option<CommandView>, Problem> {
    let (status, default_detail) = match ack.result {
        AckResult::Done => (CommandStatus::Acked, None),
        AckResult::Rejected => (
            CommandStatus::Failed,
            Some("the device rejected the command"),
        ),
        AckResult::Failed => (
            CommandStatus::Failed,
            Some("the device failed to execute it"),
        ),
        AckResult::Expired => (
            CommandStatus::Expired,
            Some("it reached the device after it expired"),
        ),
    };
    let detail = ack.detail.clone().or(default_detail.map(String::from));
    let mut tx = pool.begin().await.map_err(db_problem)?;
    let changed = sqlx::query_as::<_, CommandView>(&format!(
        "UPDATE commands SET status = $3, detail = $4, completed_at = now(), updated_at = now(), \
         sent_at = COALESCE(sent_at, now()), \
         delivered_at = CASE WHEN $3 = 'expired' THEN delivered_at ELSE COALESCE(delivered_at, now()) END \
         WHERE command_id = $1 AND device_id = $2 AND (status IN {OPEN} \
           OR (status = 'expired' AND $3 = 'acked' AND expires_at >= to_timestamp($5 / 1000.0))) \
         RETURNING {COLUMNS}"
    ))
    .bind(&ack.command_id)
    .bind(device_id)
    .bind(status.as_str())
    .bind(&detail)
    .bind(ack.ts as f64)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_problem)?;
    announce_all(&mut tx, topics, &changed).await?;
    tx.commit().await.map_err(db_problem)?;
    // command_id is the key: at most one row.
    Ok(changed.into_iter().next())
}

/// Expires every open command whose deadline passed; returns how many.
pub async fn expire_due(pool: &PgPool, topics: &Topics) -> Result<usize, Problem> {
    let mut tx = pool.begin().await.map_err(db_problem)?;
    let changed = sqlx::query_as::<_, CommandView>(&format!(
        "UPDATE commands SET status = 'expired', updated_at = now(), completed_at = now(), \
         detail = 'its time to live ran out before the device acknowledged it' \
         WHERE command_id IN (SELECT command_id FROM commands WHERE status IN {OPEN} \
           AND expires_at < now() ORDER BY expires_at LIMIT 1000 FOR UPDATE SKIP LOCKED) \
         RETURNING {COLUMNS}"
    ))
    .fetch_all(&mut *tx)
    .await
    .map_err(db_problem)?;
    announce_all(&mut tx, topics, &changed).await?;
    tx.commit().await.map_err(db_problem)?;
    Ok(changed.len())
}

/// Publishes every open, unexpired command of a device that just came
/// online again. Queued ones are still in the outbox and are left alone.
pub async fn redeliver_open(
    pool: &PgPool,
    topics: &Topics,
    device_id: &str,
) -> Result<usize, Problem> {
    let Ok(device) = valid_device_id(device_id) else {
        return Ok(0);
    };
    let mut tx = pool.begin().await.map_err(db_problem)?;
    let open = sqlx::query_as::<_, CommandView>(&format!(
        "SELECT {COLUMNS} FROM commands WHERE device_id = $1 \
         AND status IN ('sent', 'delivered') AND expires_at > now() ORDER BY created_at"
    ))
    .bind(device_id)
    .fetch_all(&mut *tx)
    .await
    .map_err(db_problem)?;
    for command in &open {
        enqueue_delivery(&mut tx, topics, command, &device).await?;
    }
    tx.commit().await.map_err(db_problem)?;
    Ok(open.len())
}

pub async fn get(pool: &PgPool, device_id: &str, command_id: &str) -> Result<CommandView, Problem> {
    sqlx::query_as::<_, CommandView>(&format!(
        "SELECT {COLUMNS} FROM commands WHERE command_id = $1 AND device_id = $2"
    ))
    .bind(command_id)
    .bind(device_id)
    .fetch_optional(pool)
    .await
    .map_err(db_problem)?
    .ok_or_else(|| {
        Problem::not_found(format!(
            "no command {command_id:?} for device {device_id:?}"
        ))
    })
}

/// Newest first.
pub async fn list(
    pool: &PgPool,
    device_id: &str,
    status: Option<CommandStatus>,
    limit: i64,
) -> Result<Vec<CommandView>, Problem> {
    sqlx::query_as::<_, CommandView>(&format!(
        "SELECT {COLUMNS} FROM commands WHERE device_id = $1 AND ($2::text IS NULL OR status = $2) \
         ORDER BY created_at DESC, command_id LIMIT $3"
    ))
    .bind(device_id)
    .bind(status.map(CommandStatus::as_str))
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(db_problem)
}

fn valid_device_id(id: &str) -> Result<DeviceId, Problem> {
    DeviceId::new(id).map_err(|err| {
        tracing::error!(%err, id, "stored device id is not valid");
        Problem::internal()
    })
}

fn valid_home_id(id: &str) -> Result<HomeId, Problem> {
    HomeId::new(id).map_err(|err| {
        tracing::error!(%err, id, "stored home id is not valid");
        Problem::internal()
    })
}

fn db_problem(err: sqlx::Error) -> Problem {
    crate::store::db_problem(err, "command")
}
