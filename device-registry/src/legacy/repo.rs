//! The SQL of the legacy API: the heating systems the import made, with
//! their devices' desired state.

use serde_json::{Map, Value};
use sqlx::{PgPool, Row};

/// A monolith heating system and the device the import made of it.
pub struct LegacySystem {
    pub legacy_id: i64,
    pub device_id: String,
    pub desired: Map<String, Value>,
    pub imported_temperature: Option<f64>,
}

/// The `legacy_heating_systems` table (joined with `devices`).
pub struct LegacySystems;

impl LegacySystems {
    pub async fn find(pool: &PgPool, legacy_id: i64) -> sqlx::Result<Option<LegacySystem>> {
        let row = sqlx::query(
            "SELECT l.device_id, l.imported_current_temperature, d.desired \
             FROM legacy_heating_systems l JOIN devices d ON d.id = l.device_id \
             WHERE l.legacy_id = $1",
        )
        .bind(legacy_id)
        .fetch_optional(pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let desired: sqlx::types::Json<Map<String, Value>> = row.try_get("desired")?;
        Ok(Some(LegacySystem {
            legacy_id,
            device_id: row.try_get("device_id")?,
            desired: desired.0,
            imported_temperature: row.try_get("imported_current_temperature")?,
        }))
    }
}
