//! The query side of device state: what each device last reported and
//! whether it is online, projected from `device-events` into
//! `device_views`. Nothing here is written by a REST request; see
//! docs/adr/0011-cqrs-device-state.md.

use chrono::{DateTime, TimeZone, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use sqlx::{PgExecutor, PgPool, Row};
use utoipa::ToSchema;
use warmhouse_contracts::commands::delta;
use warmhouse_contracts::device::{ReportedState, StatusMessage};
use warmhouse_contracts::kafka::ConnectionRef;

use crate::db::OrProblem;
use crate::problem::Problem;

/// A device's shadow and presence, as `GET /api/v1/devices/{id}` shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeviceState {
    /// What the platform asked for (set by commands).
    #[schema(value_type = Object)]
    pub desired: Map<String, Value>,
    /// Bumped by every change of `desired`.
    pub desired_version: i64,
    /// What the device last reported about itself.
    #[schema(value_type = Object)]
    pub reported: Map<String, Value>,
    /// The device's own time of `reported`.
    pub reported_at: Option<DateTime<Utc>>,
    /// The desired keys the device does not report (yet).
    #[schema(value_type = Object)]
    pub delta: Map<String, Value>,
    /// `online`, `offline`, or `unknown` before the device said anything.
    pub presence: String,
    pub presence_changed_at: Option<DateTime<Utc>>,
    /// Last time any event of the device arrived.
    pub last_seen_at: Option<DateTime<Utc>>,
}

impl DeviceState {
    pub fn new(
        desired: Map<String, Value>,
        desired_version: i64,
        view: Option<DeviceView>,
    ) -> Self {
        let view = view.unwrap_or_default();
        Self {
            delta: delta(&desired, &view.reported),
            desired,
            desired_version,
            reported: view.reported,
            reported_at: view.reported_at,
            presence: match view.online {
                Some(true) => "online",
                Some(false) => "offline",
                None => "unknown",
            }
            .into(),
            presence_changed_at: view.presence_changed_at,
            last_seen_at: view.last_seen_at,
        }
    }
}

/// One row of `device_views`.
#[derive(Debug, Clone, Default)]
pub struct DeviceView {
    pub reported: Map<String, Value>,
    pub reported_at: Option<DateTime<Utc>>,
    pub online: Option<bool>,
    pub presence_changed_at: Option<DateTime<Utc>>,
    pub last_seen_at: Option<DateTime<Utc>>,
}

/// The `device_views` table: written only from `device-events`.
pub struct DeviceViews;

impl DeviceViews {
    pub async fn view(pool: &PgPool, device_id: &str) -> Result<Option<DeviceView>, Problem> {
        let row = sqlx::query(
            "SELECT reported, reported_at, online, presence_changed_at, last_seen_at \
         FROM device_views WHERE device_id = $1",
        )
        .bind(device_id)
        .fetch_optional(pool)
        .await
        .or_problem("device state")?;
        let Some(row) = row else { return Ok(None) };
        let reported: sqlx::types::Json<Map<String, Value>> =
            row.try_get("reported").or_problem("device state")?;
        Ok(Some(DeviceView {
            reported: reported.0,
            reported_at: row.try_get("reported_at").or_problem("device state")?,
            online: row.try_get("online").or_problem("device state")?,
            presence_changed_at: row
                .try_get("presence_changed_at")
                .or_problem("device state")?,
            last_seen_at: row.try_get("last_seen_at").or_problem("device state")?,
        }))
    }

    /// Applies a reported state; an older report than the stored one (events
    /// redelivered, or overtaken) changes nothing.
    pub async fn apply_reported(
        pool: &PgPool,
        device_id: &str,
        state: &ReportedState,
        received_at_ms: i64,
    ) -> sqlx::Result<()> {
        sqlx::query(
        "INSERT INTO device_views (device_id, reported, reported_at, last_seen_at) \
         VALUES ($1, $2, $3, $4) \
         ON CONFLICT (device_id) DO UPDATE SET \
           reported = CASE WHEN device_views.reported_at IS NULL OR device_views.reported_at <= EXCLUDED.reported_at \
                      THEN EXCLUDED.reported ELSE device_views.reported END, \
           reported_at = GREATEST(device_views.reported_at, EXCLUDED.reported_at), \
           last_seen_at = GREATEST(device_views.last_seen_at, EXCLUDED.last_seen_at), \
           updated_at = now()",
    )
    .bind(device_id)
    .bind(sqlx::types::Json(&state.reported))
    .bind(millis(state.ts))
    .bind(millis(received_at_ms))
    .execute(pool)
    .await?;
        Ok(())
    }

    /// Applies a presence message (a status, or the last will the broker
    /// published for a dead connection) that came over `connection`. Returns
    /// whether the device came online on a new connection (from offline,
    /// unknown, or from an older connection, maybe on another broker replica),
    /// which is when it gets its open commands again.
    ///
    /// Presence is ordered by connection first: a message from an older
    /// connection than the one presence was last set by changes nothing (the
    /// last will of a connection the device left for another replica arrives
    /// after the new connection's "online"). Within one connection, and for
    /// messages that name no connection, the later message wins.
    pub async fn apply_presence(
        pool: &PgPool,
        device_id: &str,
        status: &StatusMessage,
        received_at_ms: i64,
        connection: Option<&ConnectionRef>,
    ) -> sqlx::Result<bool> {
        // A last will carries no time of its own: it happened when it arrived.
        let at = millis(status.ts.unwrap_or(received_at_ms));
        // Whether the message replaces the stored presence (see above).
        const TAKE: &str = "(EXCLUDED.presence_connected_at IS NOT NULL AND device_views.presence_connected_at IS NOT NULL \
          AND (EXCLUDED.presence_connected_at, EXCLUDED.presence_broker, EXCLUDED.presence_connection) \
            > (device_views.presence_connected_at, device_views.presence_broker, device_views.presence_connection)) \
       OR ((EXCLUDED.presence_connected_at IS NULL OR device_views.presence_connected_at IS NULL \
            OR (EXCLUDED.presence_connected_at, EXCLUDED.presence_broker, EXCLUDED.presence_connection) \
             = (device_views.presence_connected_at, device_views.presence_broker, device_views.presence_connection)) \
           AND (device_views.presence_changed_at IS NULL OR device_views.presence_changed_at <= EXCLUDED.presence_changed_at))";
        let row = sqlx::query(&format!(
        "WITH before AS (SELECT online, presence_connected_at, presence_broker, presence_connection \
                         FROM device_views WHERE device_id = $1) \
         INSERT INTO device_views (device_id, online, presence_changed_at, last_seen_at, \
                                   presence_connected_at, presence_broker, presence_connection) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (device_id) DO UPDATE SET \
           online = CASE WHEN {TAKE} THEN EXCLUDED.online ELSE device_views.online END, \
           presence_changed_at = CASE WHEN {TAKE} THEN EXCLUDED.presence_changed_at \
                                 ELSE device_views.presence_changed_at END, \
           presence_connected_at = CASE WHEN {TAKE} \
             THEN COALESCE(EXCLUDED.presence_connected_at, device_views.presence_connected_at) \
             ELSE device_views.presence_connected_at END, \
           presence_broker = CASE WHEN {TAKE} \
             THEN COALESCE(EXCLUDED.presence_broker, device_views.presence_broker) \
             ELSE device_views.presence_broker END, \
           presence_connection = CASE WHEN {TAKE} \
             THEN COALESCE(EXCLUDED.presence_connection, device_views.presence_connection) \
             ELSE device_views.presence_connection END, \
           last_seen_at = GREATEST(device_views.last_seen_at, EXCLUDED.last_seen_at), \
           updated_at = now() \
         RETURNING (SELECT online FROM before) AS was_online, online, \
                   (SELECT presence_connected_at FROM before) AS was_connected_at, \
                   (SELECT presence_broker FROM before) AS was_broker, \
                   (SELECT presence_connection FROM before) AS was_connection, \
                   presence_connected_at, presence_broker, presence_connection"
    ))
    .bind(device_id)
    .bind(status.online)
    .bind(at)
    .bind(millis(received_at_ms))
    .bind(connection.and_then(|c| millis(c.connected_at_ms)))
    .bind(connection.map(|c| c.broker.clone()))
    .bind(connection.and_then(|c| i64::try_from(c.number).ok()))
    .fetch_one(pool)
    .await?;
        let was_online: Option<bool> = row.try_get("was_online")?;
        let online: Option<bool> = row.try_get("online")?;
        let key = |at: &str, broker: &str, number: &str| -> sqlx::Result<_> {
            Ok((
                row.try_get::<Option<DateTime<Utc>>, _>(at)?,
                row.try_get::<Option<String>, _>(broker)?,
                row.try_get::<Option<i64>, _>(number)?,
            ))
        };
        let before = key("was_connected_at", "was_broker", "was_connection")?;
        let after = key(
            "presence_connected_at",
            "presence_broker",
            "presence_connection",
        )?;
        let new_connection = after.0.is_some() && after != before;
        Ok(online == Some(true) && (was_online != Some(true) || new_connection))
    }

    /// Any other event still says the device is alive.
    pub async fn touch(pool: &PgPool, device_id: &str, received_at_ms: i64) -> sqlx::Result<()> {
        sqlx::query(
        "INSERT INTO device_views (device_id, last_seen_at) VALUES ($1, $2) \
         ON CONFLICT (device_id) DO UPDATE SET \
           last_seen_at = GREATEST(device_views.last_seen_at, EXCLUDED.last_seen_at), updated_at = now()",
    )
    .bind(device_id)
    .bind(millis(received_at_ms))
    .execute(pool)
    .await?;
        Ok(())
    }

    /// Forgets a deleted device (inside the transaction that deletes it).
    pub async fn forget(db: impl PgExecutor<'_>, device_id: &str) -> sqlx::Result<()> {
        sqlx::query("DELETE FROM device_views WHERE device_id = $1")
            .bind(device_id)
            .execute(db)
            .await?;
        Ok(())
    }
}

fn millis(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}
