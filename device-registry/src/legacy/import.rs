//! Import of the legacy monolith's database: every `heating_systems` row
//! becomes a home `legacy-{id}` with a thermostat `legacy-heating-{id}`,
//! every `temperature_sensors` row a climate sensor `legacy-sensor-{id}`
//! (in home `legacy-{id}` when the import made one, else in
//! `legacy-sensors`). The `legacy_*` mapping tables remember what was
//! imported, so a second run creates nothing and only picks up rows added
//! to the monolith since. Rows already imported are never touched again:
//! after the import the registry owns their state, and the monolith's
//! copy is stale (docs/adr/0013-legacy-monolith-strangler-fig.md).
//!
//! Everything is written in one registry transaction, together with the
//! domain events announcing it (outbox), so a failed run leaves nothing
//! behind and can simply be repeated.

use std::collections::HashSet;

use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{json, Map, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool, Row};
use warmhouse_contracts::commands::{state_keys, TARGET_TEMPERATURE_RANGE};
use warmhouse_contracts::domain::DomainEventKind;
use warmhouse_contracts::ids::{device_types, DeviceId, HomeId};

use crate::kafka::Topics;
use crate::outbox;

/// Home of the sensors whose id matches no imported heating system.
pub const SENSORS_HOME: &str = "legacy-sensors";
/// Serialises concurrent imports into one registry ("warmimpt").
const IMPORT_LOCK: i64 = 0x7761_726d_696d_7074;

/// Home made of heating system `legacy_id`.
pub fn home_id(legacy_id: i64) -> String {
    format!("legacy-{legacy_id}")
}

/// Thermostat made of heating system `legacy_id`.
pub fn heating_device_id(legacy_id: i64) -> String {
    format!("legacy-heating-{legacy_id}")
}

/// Climate sensor made of temperature sensor `legacy_id`.
pub fn sensor_device_id(legacy_id: i64) -> String {
    format!("legacy-sensor-{legacy_id}")
}

/// Where to import from and to.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// PostgreSQL URL of the monolith's database (only read).
    pub from: String,
    /// PostgreSQL URL of the registry's database (migrated first).
    pub to: String,
    /// Time zone the monolith's `timestamp` columns are in.
    pub monolith_timezone: String,
    /// Topic names the outbox records are addressed to; must match the
    /// registry's, whose relay publishes them.
    pub topics: Topics,
}

impl ImportOptions {
    pub fn new(from: impl Into<String>, to: impl Into<String>) -> Self {
        Self {
            from: from.into(),
            to: to.into(),
            monolith_timezone: "UTC".into(),
            topics: Topics::default(),
        }
    }
}

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ImportReport {
    pub homes: Counts,
    pub heating_systems: Counts,
    pub temperature_sensors: Counts,
    /// Domain events queued in the outbox for `registry-events`.
    pub events: u64,
    /// Rows skipped, and values left out, with the reason.
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub created: u64,
    pub already_present: u64,
    /// Rows that could not be imported (see the warnings).
    pub skipped: u64,
}

/// One `heating_systems` row.
#[derive(Debug, Clone, PartialEq)]
pub struct HeatingSystemRow {
    pub id: i64,
    pub is_on: Option<bool>,
    pub target_temperature: Option<f64>,
    pub current_temperature: Option<f64>,
}

/// One `temperature_sensors` row.
#[derive(Debug, Clone, PartialEq)]
pub struct TemperatureSensorRow {
    pub id: i64,
    pub current_temperature: Option<f64>,
    pub last_updated: Option<DateTime<Utc>>,
}

/// Connects to both databases, applies the registry's migrations, and
/// imports.
pub async fn run(options: &ImportOptions) -> anyhow::Result<ImportReport> {
    let mut monolith = PgConnection::connect(&options.from)
        .await
        .context("connecting to the monolith's database (--from)")?;
    let (systems, sensors) = read_monolith(&mut monolith, &options.monolith_timezone).await?;
    // Best effort: the rows are read, nothing depends on a clean goodbye.
    let _ = monolith.close().await;

    let registry = PgPoolOptions::new()
        .max_connections(2)
        .connect(&options.to)
        .await
        .context("connecting to the registry's database (--to)")?;
    sqlx::migrate!("./migrations")
        .run(&registry)
        .await
        .context("applying the registry's migrations")?;
    let report = import(&registry, &options.topics, &systems, &sensors).await;
    registry.close().await;
    report
}

/// Reads both tables from one snapshot. Columns are cast, so a monolith
/// that used `integer` ids or `numeric`/`real` temperatures reads the same.
pub async fn read_monolith(
    conn: &mut PgConnection,
    timezone: &str,
) -> anyhow::Result<(Vec<HeatingSystemRow>, Vec<TemperatureSensorRow>)> {
    let mut tx = conn.begin().await.context("beginning the monolith read")?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .execute(&mut *tx)
        .await
        .context("making the monolith read a read-only snapshot")?;
    // `timestamp` columns have no zone: read them as times in the
    // monolith's, which `::timestamptz` uses.
    sqlx::query("SELECT set_config('TimeZone', $1, true)")
        .bind(timezone)
        .execute(&mut *tx)
        .await
        .with_context(|| format!("setting the monolith's time zone to {timezone:?}"))?;
    let systems = sqlx::query(
        "SELECT id::bigint AS id, is_on::boolean AS is_on, \
         target_temperature::float8 AS target_temperature, \
         current_temperature::float8 AS current_temperature \
         FROM heating_systems ORDER BY id",
    )
    .fetch_all(&mut *tx)
    .await
    .context("reading heating_systems from the monolith")?
    .iter()
    .map(|row| {
        Ok(HeatingSystemRow {
            id: row.try_get("id")?,
            is_on: row.try_get("is_on")?,
            target_temperature: row.try_get("target_temperature")?,
            current_temperature: row.try_get("current_temperature")?,
        })
    })
    .collect::<sqlx::Result<Vec<_>>>()
    .context("decoding heating_systems")?;
    let sensors = sqlx::query(
        "SELECT id::bigint AS id, current_temperature::float8 AS current_temperature, \
         last_updated::timestamptz AS last_updated FROM temperature_sensors ORDER BY id",
    )
    .fetch_all(&mut *tx)
    .await
    .context("reading temperature_sensors from the monolith")?
    .iter()
    .map(|row| {
        Ok(TemperatureSensorRow {
            id: row.try_get("id")?,
            current_temperature: row.try_get("current_temperature")?,
            last_updated: row.try_get("last_updated")?,
        })
    })
    .collect::<sqlx::Result<Vec<_>>>()
    .context("decoding temperature_sensors")?;
    tx.rollback().await.context("ending the monolith read")?;
    Ok((systems, sensors))
}

/// Imports the rows into the registry in one transaction.
pub async fn import(
    registry: &PgPool,
    topics: &Topics,
    systems: &[HeatingSystemRow],
    sensors: &[TemperatureSensorRow],
) -> anyhow::Result<ImportReport> {
    let mut tx = registry.begin().await.context("beginning the import")?;
    // A second import started meanwhile waits here, then finds everything
    // mapped instead of racing for the same ids.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(IMPORT_LOCK)
        .execute(&mut *tx)
        .await
        .context("taking the import lock")?;
    let mut import = Importer {
        conn: &mut tx,
        topics,
        report: ImportReport::default(),
        homes_seen: HashSet::new(),
    };
    for system in systems {
        import
            .heating_system(system)
            .await
            .with_context(|| format!("importing heating system {}", system.id))?;
    }
    for sensor in sensors {
        import
            .temperature_sensor(sensor)
            .await
            .with_context(|| format!("importing temperature sensor {}", sensor.id))?;
    }
    let report = import.report;
    tx.commit().await.context("committing the import")?;
    Ok(report)
}

struct Importer<'a> {
    conn: &'a mut PgConnection,
    topics: &'a Topics,
    report: ImportReport,
    /// Homes counted in this run, so each is counted once.
    homes_seen: HashSet<String>,
}

/// A device to create, with what its mapping row records.
struct NewLegacyDevice {
    id: DeviceId,
    home: HomeId,
    kind: &'static str,
    name: String,
    capabilities: &'static [&'static str],
    metadata: Value,
    desired: Map<String, Value>,
}

impl Importer<'_> {
    async fn heating_system(&mut self, row: &HeatingSystemRow) -> anyhow::Result<()> {
        if row.id <= 0 {
            self.report.heating_systems.skipped += 1;
            self.report.warnings.push(format!(
                "heating system {}: ids must be positive (the legacy API cannot address it); skipped",
                row.id
            ));
            return Ok(());
        }
        if self.mapped("legacy_heating_systems", row.id).await? {
            self.report.heating_systems.already_present += 1;
            return Ok(());
        }
        if self.foreign_device(&heating_device_id(row.id)).await? {
            self.report.heating_systems.skipped += 1;
            return Ok(());
        }
        let home = HomeId::new(home_id(row.id)).context("home id")?;
        self.ensure_home(
            &home,
            &format!("Legacy heating system {}", row.id),
            json!({"heating_system_id": row.id}),
        )
        .await?;
        let mut desired = Map::new();
        if let Some(on) = row.is_on {
            desired.insert(state_keys::HEATING_ON.into(), Value::Bool(on));
        }
        match row.target_temperature {
            Some(t) if TARGET_TEMPERATURE_RANGE.contains(&t) => {
                desired.insert(state_keys::TARGET_TEMPERATURE.into(), t.into());
            }
            Some(t) => self.report.warnings.push(format!(
                "heating system {}: target_temperature {t} is outside {}..={} °C; imported without a target",
                row.id,
                TARGET_TEMPERATURE_RANGE.start(),
                TARGET_TEMPERATURE_RANGE.end()
            )),
            None => {}
        }
        let device = NewLegacyDevice {
            id: DeviceId::new(heating_device_id(row.id)).context("device id")?,
            home,
            kind: device_types::THERMOSTAT,
            name: format!("Heating system {}", row.id),
            capabilities: &["temperature", "setpoint", "switch"],
            metadata: json!({"legacy": {"table": "heating_systems", "id": row.id}}),
            desired,
        };
        if !self.create_device(&device).await? {
            self.report.heating_systems.skipped += 1;
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO legacy_heating_systems (legacy_id, device_id, imported_current_temperature) \
             VALUES ($1, $2, $3)",
        )
        .bind(row.id)
        .bind(device.id.as_str())
        .bind(row.current_temperature.filter(|t| t.is_finite()))
        .execute(&mut *self.conn)
        .await
        .context("recording the heating system's mapping")?;
        self.report.heating_systems.created += 1;
        Ok(())
    }

    async fn temperature_sensor(&mut self, row: &TemperatureSensorRow) -> anyhow::Result<()> {
        if row.id <= 0 {
            self.report.temperature_sensors.skipped += 1;
            self.report.warnings.push(format!(
                "temperature sensor {}: ids must be positive; skipped",
                row.id
            ));
            return Ok(());
        }
        if self.mapped("legacy_temperature_sensors", row.id).await? {
            self.report.temperature_sensors.already_present += 1;
            return Ok(());
        }
        if self.foreign_device(&sensor_device_id(row.id)).await? {
            self.report.temperature_sensors.skipped += 1;
            return Ok(());
        }
        // The monolith paired a sensor with the heating system of the same
        // id; the others get a home of their own.
        let paired = HomeId::new(home_id(row.id)).context("home id")?;
        let home = if self.home_exists(&paired).await? {
            paired
        } else {
            let home = HomeId::new(SENSORS_HOME).context("home id")?;
            self.ensure_home(&home, "Legacy temperature sensors", json!({}))
                .await?;
            home
        };
        let device = NewLegacyDevice {
            id: DeviceId::new(sensor_device_id(row.id)).context("device id")?,
            home,
            kind: device_types::CLIMATE_SENSOR,
            name: format!("Temperature sensor {}", row.id),
            capabilities: &["temperature"],
            metadata: json!({"legacy": {"table": "temperature_sensors", "id": row.id}}),
            desired: Map::new(),
        };
        if !self.create_device(&device).await? {
            self.report.temperature_sensors.skipped += 1;
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO legacy_temperature_sensors \
             (legacy_id, device_id, imported_current_temperature, imported_last_updated) \
             VALUES ($1, $2, $3, $4)",
        )
        .bind(row.id)
        .bind(device.id.as_str())
        .bind(row.current_temperature.filter(|t| t.is_finite()))
        .bind(row.last_updated)
        .execute(&mut *self.conn)
        .await
        .context("recording the temperature sensor's mapping")?;
        self.report.temperature_sensors.created += 1;
        Ok(())
    }

    /// `table` is one of the two mapping tables (never outside input).
    async fn mapped(&mut self, table: &str, legacy_id: i64) -> anyhow::Result<bool> {
        let found = sqlx::query(&format!("SELECT 1 FROM {table} WHERE legacy_id = $1"))
            .bind(legacy_id)
            .fetch_optional(&mut *self.conn)
            .await
            .with_context(|| format!("looking up {table}"))?;
        Ok(found.is_some())
    }

    /// Whether a device of this id exists although the import did not make
    /// it (it is not mapped): it is left alone, with a warning. Checked
    /// before the home is made, so a skipped row leaves no empty home.
    async fn foreign_device(&mut self, device_id: &str) -> anyhow::Result<bool> {
        let found = sqlx::query("SELECT 1 FROM devices WHERE id = $1")
            .bind(device_id)
            .fetch_optional(&mut *self.conn)
            .await
            .context("looking up a device")?;
        if found.is_some() {
            self.report.warnings.push(format!(
                "device {device_id} already exists but was not made by an import; left alone and not mapped"
            ));
        }
        Ok(found.is_some())
    }

    async fn home_exists(&mut self, home: &HomeId) -> anyhow::Result<bool> {
        let found = sqlx::query("SELECT 1 FROM homes WHERE id = $1")
            .bind(home.as_str())
            .fetch_optional(&mut *self.conn)
            .await
            .context("looking up a home")?;
        Ok(found.is_some())
    }

    /// Creates the home unless it exists (made by an earlier run, or by
    /// hand: either way it is used as it is).
    async fn ensure_home(
        &mut self,
        home: &HomeId,
        name: &str,
        legacy: Value,
    ) -> anyhow::Result<()> {
        if !self.homes_seen.insert(home.as_str().to_owned()) {
            return Ok(());
        }
        let created = sqlx::query(
            "INSERT INTO homes (id, name, metadata) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        .bind(home.as_str())
        .bind(name)
        .bind(json!({"legacy": legacy}))
        .fetch_optional(&mut *self.conn)
        .await
        .context("creating a home")?;
        if created.is_none() {
            self.report.homes.already_present += 1;
            return Ok(());
        }
        self.report.homes.created += 1;
        self.event(DomainEventKind::HomeCreated {
            home_id: home.clone(),
            name: name.to_string(),
        })
        .await
    }

    /// Creates the device and announces it; false (with a warning) when a
    /// device of that id appeared since [`Self::foreign_device`] looked.
    async fn create_device(&mut self, device: &NewLegacyDevice) -> anyhow::Result<bool> {
        let desired_version: i64 = if device.desired.is_empty() { 0 } else { 1 };
        let created = sqlx::query(
            "INSERT INTO devices (id, home_id, kind, name, capabilities, metadata, status, desired, desired_version) \
             VALUES ($1, $2, $3, $4, $5, $6, 'active', $7, $8) \
             ON CONFLICT (id) DO NOTHING RETURNING id",
        )
        .bind(device.id.as_str())
        .bind(device.home.as_str())
        .bind(device.kind)
        .bind(&device.name)
        .bind(device.capabilities)
        .bind(&device.metadata)
        .bind(sqlx::types::Json(&device.desired))
        .bind(desired_version)
        .fetch_optional(&mut *self.conn)
        .await
        .context("creating a device")?;
        if created.is_none() {
            self.report.warnings.push(format!(
                "device {} already exists but was not made by an import; left alone and not mapped",
                device.id
            ));
            return Ok(false);
        }
        self.event(DomainEventKind::DeviceRegistered {
            device_id: device.id.clone(),
            home_id: device.home.clone(),
            kind: device.kind.to_string(),
        })
        .await?;
        if !device.desired.is_empty() {
            self.event(DomainEventKind::DesiredChanged {
                device_id: device.id.clone(),
                home_id: device.home.clone(),
                desired: device.desired.clone(),
            })
            .await?;
        }
        Ok(true)
    }

    async fn event(&mut self, event: DomainEventKind) -> anyhow::Result<()> {
        let kind = event.type_name();
        outbox::enqueue_event(&mut *self.conn, self.topics, event)
            .await
            .with_context(|| format!("queueing a {kind} event"))?;
        self.report.events += 1;
        Ok(())
    }
}
