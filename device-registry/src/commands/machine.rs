//! The state machine: every change of a command, each in one transaction
//! with the outbox records that announce it.

use futures::future::BoxFuture;
use sqlx::{PgConnection, PgPool};
use warmhouse_contracts::commands as catalog;
use warmhouse_contracts::device::{AckResult, Command, CommandAck};
use warmhouse_contracts::domain::{CommandStatus, DomainEventKind};
use warmhouse_contracts::ids::{DeviceId, HomeId};
use warmhouse_contracts::kafka::CommandRecord;

use super::model::{CommandView, NewCommand, MAX_IDEMPOTENCY_KEY};
use super::repo::Commands;
use crate::db::{stored_device_id, stored_home_id, OrProblem};
use crate::devices::{Device, DeviceStatus, Devices};
use crate::kafka::Topics;
use crate::outbox;
use crate::problem::Problem;

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
    let mut tx = pool.begin().await.or_problem("command")?;
    if let Some(key) = idempotency_key {
        if let Some(existing) = find_by_key(&mut tx, &device.id, key, &fingerprint).await? {
            return Ok((existing, false));
        }
    }
    let command_id = uuid::Uuid::new_v4().to_string();
    let insert = Commands::insert(
        &mut tx,
        &command_id,
        device,
        new,
        idempotency_key,
        &fingerprint,
        ttl,
    )
    .await
    .or_problem("command")?;
    let Some(command) = insert else {
        // A concurrent request with the same key won the race.
        drop(tx);
        let mut conn = pool.acquire().await.or_problem("command")?;
        let key = idempotency_key.unwrap_or_default();
        return match find_by_key(&mut conn, &device.id, key, &fingerprint).await? {
            Some(existing) => Ok((existing, false)),
            None => Err(Problem::conflict(
                "a concurrent request used this idempotency key; retry",
            )),
        };
    };

    let device_id = stored_device_id(&device.id)?;
    let home_id = stored_home_id(&device.home_id)?;
    let desired = catalog::desired_effect(&device.kind, &new.name, &new.params);
    if !desired.is_empty() {
        let desired = Devices::merge_desired(&mut tx, &device.id, &desired).await?;
        outbox::enqueue_event(
            &mut tx,
            topics,
            DomainEventKind::DesiredChanged {
                device_id: device_id.clone(),
                home_id: home_id.clone(),
                desired,
            },
        )
        .await
        .or_problem("command")?;
    }
    enqueue_delivery(&mut tx, topics, &command, &device_id).await?;
    announce(&mut tx, topics, &command, device_id, home_id).await?;
    tx.commit().await.or_problem("command")?;
    Ok((command, true))
}

async fn find_by_key(
    conn: &mut PgConnection,
    device_id: &str,
    key: &str,
    fingerprint: &str,
) -> Result<Option<CommandView>, Problem> {
    let Some((command, stored)) = Commands::find_by_key(conn, device_id, key)
        .await
        .or_problem("command")?
    else {
        return Ok(None);
    };
    if stored != fingerprint {
        return Err(Problem::conflict(
            "this Idempotency-Key was already used for a different command on this device",
        ));
    }
    Ok(Some(command))
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
    // The command id comes back to [`MarkSent`] once the record is on Kafka.
    outbox::enqueue(
        conn,
        &topics.device_commands,
        device_id.as_str(),
        &record.to_json(),
        Some(&command.command_id),
    )
    .await
    .or_problem("command")
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
    .or_problem("command")
}

/// Announces every command an UPDATE ... RETURNING changed.
async fn announce_all(
    conn: &mut PgConnection,
    topics: &Topics,
    changed: &[CommandView],
) -> Result<(), Problem> {
    for command in changed {
        let (Ok(device_id), Ok(home_id)) = (
            stored_device_id(&command.device_id),
            stored_home_id(&command.home_id),
        ) else {
            continue;
        };
        announce(conn, topics, command, device_id, home_id).await?;
    }
    Ok(())
}

/// The outbox relay's hook: commands whose records are on Kafka are sent.
pub struct MarkSent {
    topics: Topics,
}

impl MarkSent {
    pub fn new(topics: Topics) -> Self {
        Self { topics }
    }
}

impl outbox::Published for MarkSent {
    fn published<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        command_ids: &'a [String],
    ) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let changed = Commands::mark_sent(conn, command_ids).await?;
            announce_all(conn, &self.topics, &changed)
                .await
                .map_err(|p| anyhow::anyhow!("announcing sent commands: {}", p.detail))
        })
    }
}

/// The bridge handed the command to the broker for an online device.
pub async fn mark_delivered(
    pool: &PgPool,
    topics: &Topics,
    device_id: &str,
    command_id: &str,
) -> Result<bool, Problem> {
    let mut tx = pool.begin().await.or_problem("command")?;
    let changed = Commands::mark_delivered(&mut tx, device_id, command_id)
        .await
        .or_problem("command")?;
    announce_all(&mut tx, topics, &changed).await?;
    tx.commit().await.or_problem("command")?;
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
    let mut tx = pool.begin().await.or_problem("command")?;
    let changed = Commands::record_answer(
        &mut tx,
        device_id,
        &ack.command_id,
        status,
        detail.as_deref(),
        ack.ts,
    )
    .await
    .or_problem("command")?;
    announce_all(&mut tx, topics, &changed).await?;
    tx.commit().await.or_problem("command")?;
    // command_id is the key: at most one row.
    Ok(changed.into_iter().next())
}

/// Expires every open command whose deadline passed; returns how many.
pub async fn expire_due(pool: &PgPool, topics: &Topics) -> Result<usize, Problem> {
    let mut tx = pool.begin().await.or_problem("command")?;
    let changed = Commands::expire_due(&mut tx).await.or_problem("command")?;
    announce_all(&mut tx, topics, &changed).await?;
    tx.commit().await.or_problem("command")?;
    Ok(changed.len())
}

/// Publishes every open, unexpired command of a device that just came
/// online again. Queued ones are still in the outbox and are left alone.
pub async fn redeliver_open(
    pool: &PgPool,
    topics: &Topics,
    device_id: &str,
) -> Result<usize, Problem> {
    let Ok(device) = stored_device_id(device_id) else {
        return Ok(0);
    };
    let mut tx = pool.begin().await.or_problem("command")?;
    let open = Commands::in_flight(&mut tx, device_id)
        .await
        .or_problem("command")?;
    for command in &open {
        enqueue_delivery(&mut tx, topics, command, &device).await?;
    }
    tx.commit().await.or_problem("command")?;
    Ok(open.len())
}

pub async fn get(pool: &PgPool, device_id: &str, command_id: &str) -> Result<CommandView, Problem> {
    Commands::get(pool, device_id, command_id)
        .await
        .or_problem("command")?
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
    Commands::list(pool, device_id, status, limit)
        .await
        .or_problem("command")
}
