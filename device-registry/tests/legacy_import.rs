//! The monolith import against a real PostgreSQL holding the monolith's
//! schema and rows (tests/fixtures/monolith.sql): what it creates, seen
//! through the registry's REST API, and that running it again changes
//! nothing.

mod legacy_support;

use std::collections::BTreeMap;
use std::process::Command;

use legacy_support::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::PgPool;
use warmhouse_contracts::domain::DomainEvent;
use warmhouse_device_registry::legacy::import::{self, ImportOptions, ImportReport};
use warmhouse_device_registry::legacy::LegacyConfig;

/// Everything the import could touch, as JSON (with `updated_at`, so a
/// rewritten row shows too).
async fn snapshot(pool: &PgPool) -> Value {
    let mut all = serde_json::Map::new();
    for (name, sql) in [
        ("homes", "SELECT to_jsonb(t) FROM homes t ORDER BY id"),
        ("devices", "SELECT to_jsonb(t) FROM devices t ORDER BY id"),
        (
            "heating",
            "SELECT to_jsonb(t) FROM legacy_heating_systems t ORDER BY legacy_id",
        ),
        (
            "sensors",
            "SELECT to_jsonb(t) FROM legacy_temperature_sensors t ORDER BY legacy_id",
        ),
        ("outbox", "SELECT to_jsonb(t) FROM outbox t ORDER BY id"),
        (
            "commands",
            "SELECT to_jsonb(t) FROM commands t ORDER BY command_id",
        ),
    ] {
        let rows: Vec<Value> = sqlx::query_scalar(sql)
            .fetch_all(pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        all.insert(name.into(), Value::Array(rows));
    }
    Value::Object(all)
}

/// Domain events waiting in the outbox, by type.
async fn events_by_type(pool: &PgPool) -> BTreeMap<String, usize> {
    let payloads: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT payload FROM outbox WHERE topic = 'registry-events' ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .expect("reading the outbox");
    let mut counts = BTreeMap::new();
    for payload in payloads {
        let event = DomainEvent::decode(&payload).expect("a valid domain event");
        *counts
            .entry(event.event.type_name().to_string())
            .or_default() += 1;
    }
    counts
}

fn counts(report: &Value, part: &str) -> (u64, u64, u64) {
    let c = &report[part];
    (
        c["created"].as_u64().expect("created"),
        c["already_present"].as_u64().expect("already_present"),
        c["skipped"].as_u64().expect("skipped"),
    )
}

fn run_binary(monolith: &str, registry: &str) -> Value {
    let output = Command::new(env!("CARGO_BIN_EXE_registry-import-monolith"))
        .args(["--from", monolith, "--to", registry])
        .env_remove("WARMHOUSE_MONOLITH_DATABASE_URL")
        .env_remove("WARMHOUSE_REGISTRY_DATABASE_URL")
        .output()
        .expect("running registry-import-monolith");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "import failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(&stdout).expect("the report is JSON")
}

#[test]
fn import_creates_homes_and_devices_once() {
    let (_dir, pg) = postgres();
    let monolith = monolith_database(&pg);
    let registry_url = pg.create_database("registry").expect("createdb registry");
    runtime().block_on(async {
        let report = import::run(&ImportOptions::new(&monolith, &registry_url))
            .await
            .expect("first import");
        let report = serde_json::to_value(&report).expect("report as JSON");
        // Homes legacy-1..5 and 7, plus legacy-sensors for sensors 10 and 11.
        assert_eq!(counts(&report, "homes"), (7, 0, 0), "{report}");
        assert_eq!(counts(&report, "heating_systems"), (6, 0, 0), "{report}");
        assert_eq!(counts(&report, "temperature_sensors"), (6, 0, 0), "{report}");
        let warnings = report["warnings"].as_array().expect("warnings");
        assert_eq!(warnings.len(), 1, "{report}");
        assert!(
            warnings[0].as_str().is_some_and(|w| w.contains("heating system 5") && w.contains("45")),
            "{report}"
        );

        let (running, _stop) = registry(&registry_url, LegacyConfig::default()).await;
        let pool = running.state.pool().clone();
        let api = Http::new(running.addr, Some(admin_token()));

        let homes = api.json("/api/v1/homes?limit=500").await;
        let ids: Vec<&str> = homes["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|h| h["id"].as_str().expect("id"))
            .collect();
        assert_eq!(
            ids,
            ["legacy-1", "legacy-2", "legacy-3", "legacy-4", "legacy-5", "legacy-7", "legacy-sensors"]
        );

        let devices = api.json("/api/v1/devices?limit=500").await;
        let devices: BTreeMap<&str, &Value> = devices["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|d| (d["id"].as_str().expect("id"), d))
            .collect();
        assert_eq!(devices.len(), 12, "{devices:?}");
        let thermostat = devices["legacy-heating-1"];
        assert_eq!(thermostat["home_id"], "legacy-1");
        assert_eq!(thermostat["kind"], "thermostat");
        assert_eq!(thermostat["status"], "active");
        assert_eq!(thermostat["capabilities"], json!(["temperature", "setpoint", "switch"]));
        assert_eq!(
            thermostat["metadata"],
            json!({"legacy": {"table": "heating_systems", "id": 1}})
        );
        // Sensors sit in the home of the heating system with their id, or
        // in legacy-sensors.
        for (sensor, home) in [
            ("legacy-sensor-1", "legacy-1"),
            ("legacy-sensor-3", "legacy-3"),
            ("legacy-sensor-7", "legacy-7"),
            ("legacy-sensor-10", "legacy-sensors"),
            ("legacy-sensor-11", "legacy-sensors"),
        ] {
            assert_eq!(devices[sensor]["home_id"], home, "{sensor}");
            assert_eq!(devices[sensor]["kind"], "climate_sensor", "{sensor}");
            assert_eq!(devices[sensor]["status"], "active", "{sensor}");
        }

        for (device, desired) in [
            ("legacy-heating-1", json!({"heating_on": true, "target_temperature": 22.5})),
            ("legacy-heating-2", json!({"heating_on": false, "target_temperature": 18.0})),
            // 45 °C is outside what a command may ask: left out.
            ("legacy-heating-5", json!({"heating_on": true})),
        ] {
            let state = api.json(&format!("/api/v1/devices/{device}/state")).await;
            assert_eq!(state["desired"], desired, "{device}: {state}");
            assert_eq!(state["desired_version"], 1, "{device}: {state}");
            assert_eq!(state["presence"], "unknown", "{device}: {state}");
        }

        // The monolith's timestamps are read as UTC (the default zone).
        let last_updated: String = sqlx::query_scalar(
            "SELECT to_char(imported_last_updated AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS') \
             FROM legacy_temperature_sensors WHERE legacy_id = 1",
        )
        .fetch_one(&pool)
        .await
        .expect("sensor 1 mapping");
        assert_eq!(last_updated, "2025-11-20 08:15:00");

        // One event per home and device, and the desired state of each
        // thermostat, all waiting in the outbox (no Kafka here).
        let events = events_by_type(&pool).await;
        let expected: BTreeMap<String, usize> = [
            ("home.created".to_string(), 7),
            ("device.registered".to_string(), 12),
            ("device.desired_changed".to_string(), 6),
        ]
        .into_iter()
        .collect();
        assert_eq!(events, expected);
        assert_eq!(report["events"], 25);

        // The registry owns the state now: a user turns heating 1 off.
        let answer = api
            .call(
                Method::POST,
                "/api/v1/devices/legacy-heating-1/commands",
                Some(json!({"name": "turn_off"})),
            )
            .await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text);

        // The second run goes through the binary and changes nothing, not
        // even what the user changed since.
        let before = snapshot(&pool).await;
        let monolith_for_binary = monolith.clone();
        let registry_for_binary = registry_url.clone();
        let second = tokio::task::spawn_blocking(move || {
            run_binary(&monolith_for_binary, &registry_for_binary)
        })
        .await
        .expect("binary task");
        assert_eq!(counts(&second, "homes"), (0, 0, 0), "{second}");
        assert_eq!(counts(&second, "heating_systems"), (0, 6, 0), "{second}");
        assert_eq!(counts(&second, "temperature_sensors"), (0, 6, 0), "{second}");
        assert_eq!(second["events"], 0, "{second}");
        assert_eq!(snapshot(&pool).await, before, "the second import changed something");
        let state = api.json("/api/v1/devices/legacy-heating-1/state").await;
        assert_eq!(state["desired"]["heating_on"], false, "{state}");

        // Rows added to the monolith later are picked up by another run; a
        // device of the same id made by hand is left alone.
        let monolith_pool = PgPool::connect(&monolith).await.expect("monolith");
        sqlx::query(
            "INSERT INTO heating_systems (id, is_on, target_temperature, current_temperature) \
             VALUES (8, true, 21.5, 20.0), (9, false, 19.0, 18.5)",
        )
        .execute(&monolith_pool)
        .await
        .expect("adding systems 8 and 9");
        monolith_pool.close().await;
        let answer = api
            .call(Method::POST, "/api/v1/homes", Some(json!({"id": "manual", "name": "By hand"})))
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
        let answer = api
            .call(
                Method::POST,
                "/api/v1/devices",
                Some(json!({"id": "legacy-heating-9", "home_id": "manual", "kind": "relay", "name": "Not from the monolith"})),
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED, "{}", answer.text);
        let third: ImportReport = import::run(&ImportOptions::new(&monolith, &registry_url))
            .await
            .expect("third import");
        let third = serde_json::to_value(&third).expect("report as JSON");
        assert_eq!(counts(&third, "homes"), (1, 0, 0), "{third}");
        assert_eq!(counts(&third, "heating_systems"), (1, 6, 1), "{third}");
        assert_eq!(counts(&third, "temperature_sensors"), (0, 6, 0), "{third}");
        assert!(
            third["warnings"].to_string().contains("legacy-heating-9 already exists"),
            "{third}"
        );
        let added = api.json("/api/v1/devices/legacy-heating-8").await;
        assert_eq!(added["home_id"], "legacy-8");
        let manual = api.json("/api/v1/devices/legacy-heating-9").await;
        assert_eq!(manual["home_id"], "manual");
        assert_eq!(manual["kind"], "relay");
        let home_9 = api.get("/api/v1/homes/legacy-9").await;
        assert_eq!(home_9.status, StatusCode::NOT_FOUND, "a skipped row leaves no home");
    });
}

#[test]
fn import_reports_what_it_cannot_reach() {
    let (_dir, pg) = postgres();
    let registry_url = pg.create_database("registry").expect("createdb registry");
    // A database without the monolith's tables.
    let empty = pg.create_database("not_a_monolith").expect("createdb");
    runtime().block_on(async {
        let err = import::run(&ImportOptions::new(&empty, &registry_url))
            .await
            .expect_err("no heating_systems table");
        let err = format!("{err:#}");
        assert!(
            err.contains("reading heating_systems from the monolith"),
            "{err}"
        );

        let closed = format!(
            "postgres://postgres@127.0.0.1:{}/x",
            warmhouse_devstack::free_port().expect("port")
        );
        let err = import::run(&ImportOptions::new(&closed, &registry_url))
            .await
            .expect_err("nothing listens there");
        assert!(
            format!("{err:#}").contains("connecting to the monolith's database"),
            "{err:#}"
        );
    });
}
