//! A command as clients send it and as the registry tracks it.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;
use warmhouse_contracts::commands as catalog;

use crate::problem::Problem;

/// Time to live when the request names none.
pub const DEFAULT_TTL_SECONDS: u32 = 300;
/// Longest time to live accepted: a day.
pub const MAX_TTL_SECONDS: u32 = 86_400;
/// Longest idempotency key accepted.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;

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
    pub(super) fn fingerprint(&self, ttl: u32) -> String {
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
