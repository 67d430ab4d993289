//! The monolith's `/api/heating/...` endpoints served by the registry, over
//! systems imported from a real PostgreSQL holding the monolith's rows, and
//! (last test) with current temperatures from the real telemetry query API
//! in front of a real influxd.

mod legacy_support;

use std::future::pending;

use legacy_support::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Map, Value};
use sqlx::PgPool;
use warmhouse_contracts::device::ReportedState;
use warmhouse_device_registry::devices::state::DeviceViews;
use warmhouse_device_registry::legacy::import::{self, ImportOptions};
use warmhouse_device_registry::legacy::LegacyConfig;
use warmhouse_devstack::{free_port, Influxd};
use warmhouse_ingest::influx::{InfluxClient, InfluxSettings};
use warmhouse_ingest::query::QueryConfig;
use warmhouse_service_kit::now_ms;

/// A monolith and a registry database, the first imported into the second.
fn imported(pg: &warmhouse_devstack::Postgres) -> String {
    let monolith = monolith_database(pg);
    let registry_url = pg.create_database("registry").expect("createdb registry");
    runtime().block_on(async {
        import::run(&ImportOptions::new(&monolith, &registry_url))
            .await
            .expect("import");
    });
    registry_url
}

async fn commands_of(pool: &PgPool, device: &str) -> Vec<(String, Value, String)> {
    sqlx::query_as::<_, (String, sqlx::types::Json<Value>, String)>(
        "SELECT name, params, status FROM commands WHERE device_id = $1 ORDER BY created_at, command_id",
    )
    .bind(device)
    .fetch_all(pool)
    .await
    .expect("reading commands")
    .into_iter()
    .map(|(name, params, status)| (name, params.0, status))
    .collect()
}

fn assert_problem(answer: &Answer, status: StatusCode, what: &str) {
    assert_eq!(answer.status, status, "{what}: {}", answer.text);
    assert_eq!(
        answer.json["status"],
        status.as_u16(),
        "{what}: {}",
        answer.text
    );
    assert!(answer.json["detail"].is_string(), "{what}: {}", answer.text);
}

#[test]
fn legacy_endpoints_serve_imported_systems() {
    let (_dir, pg) = postgres();
    let registry_url = imported(&pg);
    runtime().block_on(async {
        let (running, _stop) = registry(&registry_url, LegacyConfig::default()).await;
        let pool = running.state.pool().clone();
        // The monolith's clients have no token; /api/v1 callers do.
        let legacy = Http::new(running.addr, None);
        let api = Http::new(running.addr, Some(admin_token()));

        // The monolith's JSON, with the imported values.
        let answer = legacy.get("/api/heating/1").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        assert_eq!(
            answer.headers.get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/json"[..])
        );
        assert_eq!(
            answer.json,
            json!({"id": 1, "on": true, "targetTemperature": 22.5, "currentTemperature": 21.3})
        );
        assert_eq!(
            legacy.json("/api/heating/4").await,
            json!({"id": 4, "on": false, "targetTemperature": 20.0, "currentTemperature": null})
        );
        // Its 45 °C target was not importable.
        assert_eq!(
            legacy.json("/api/heating/5").await,
            json!({"id": 5, "on": true, "targetTemperature": null, "currentTemperature": 23.1})
        );
        let answer = legacy.get("/api/heating/2/current-temperature").await;
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.text, "19.75", "a bare JSON number");
        assert_eq!(legacy.get("/api/heating/4/current-temperature").await.text, "null");

        // turn-on / turn-off: 204 and a real command each.
        let answer = legacy.call(Method::POST, "/api/heating/2/turn-on", None).await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.text);
        assert_eq!(answer.text, "");
        assert_eq!(
            commands_of(&pool, "legacy-heating-2").await,
            [("turn_on".to_string(), json!({}), "queued".to_string())]
        );
        // The device has not reported: the answer is what was asked.
        assert_eq!(legacy.json("/api/heating/2").await["on"], true);
        let answer = legacy.call(Method::POST, "/api/heating/2/turn-off", None).await;
        assert_eq!(answer.status, StatusCode::NO_CONTENT, "{}", answer.text);
        assert_eq!(legacy.json("/api/heating/2").await["on"], false);
        assert_eq!(commands_of(&pool, "legacy-heating-2").await.len(), 2);

        // set-temperature: 202, the command, the desired state.
        let answer = legacy
            .call(Method::POST, "/api/heating/1/set-temperature?temperature=23.0", None)
            .await;
        assert_eq!(answer.status, StatusCode::ACCEPTED, "{}", answer.text);
        let location = answer.headers["location"].to_str().expect("location").to_string();
        assert!(location.starts_with("/api/v1/devices/legacy-heating-1/commands/"), "{location}");
        let command = api.json(&location).await;
        assert_eq!(command["name"], "set_target_temperature");
        assert_eq!(command["params"], json!({"temperature": 23.0}));
        assert_eq!(command["status"], "queued");
        let state = api.json("/api/v1/devices/legacy-heating-1/state").await;
        assert_eq!(state["desired"]["target_temperature"], 23.0, "{state}");
        assert_eq!(legacy.json("/api/heating/1").await["targetTemperature"], 23.0);

        // PUT: the whole object as the monolith's clients send it; the
        // measured temperature in it is ignored.
        let answer = legacy
            .call(
                Method::PUT,
                "/api/heating/3",
                Some(json!({"id": 3, "on": false, "targetTemperature": 19.0, "currentTemperature": 99.9})),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        let expected =
            json!({"id": 3, "on": false, "targetTemperature": 19.0, "currentTemperature": 17.2});
        assert_eq!(answer.json, expected);
        assert_eq!(legacy.json("/api/heating/3").await, expected);
        assert_eq!(
            commands_of(&pool, "legacy-heating-3").await,
            [
                ("turn_off".to_string(), json!({}), "queued".to_string()),
                ("set_target_temperature".to_string(), json!({"temperature": 19.0}), "queued".to_string()),
            ]
        );

        // Once the device reports, its report is the answer.
        let mut reported = Map::new();
        reported.insert("heating_on".into(), false.into());
        reported.insert("target_temperature".into(), 20.5.into());
        DeviceViews::apply_reported(
            &pool,
            "legacy-heating-7",
            &ReportedState::new(now_ms(), reported),
            now_ms(),
        )
        .await
        .expect("projecting a reported state");
        assert_eq!(
            legacy.json("/api/heating/7").await,
            json!({"id": 7, "on": false, "targetTemperature": 20.5, "currentTemperature": 20.4})
        );

        // Bad ids are 400, unknown ones 404.
        for path in [
            "/api/heating/abc",
            "/api/heating/0",
            "/api/heating/-3",
            "/api/heating/1.5",
            "/api/heating/99999999999999999999",
            "/api/heating/abc/current-temperature",
        ] {
            let answer = legacy.get(path).await;
            assert_problem(&answer, StatusCode::BAD_REQUEST, path);
            assert_eq!(answer.json["parameter"], "id", "{path}");
        }
        let answer = legacy.call(Method::POST, "/api/heating/x/turn-on", None).await;
        assert_problem(&answer, StatusCode::BAD_REQUEST, "turn-on x");
        for (method, path) in [
            (Method::GET, "/api/heating/999"),
            (Method::GET, "/api/heating/6/current-temperature"),
            (Method::POST, "/api/heating/999/turn-on"),
            (Method::POST, "/api/heating/999/set-temperature?temperature=21"),
        ] {
            let answer = legacy.call(method, path, None).await;
            assert_problem(&answer, StatusCode::NOT_FOUND, path);
        }
        let answer = legacy
            .call(Method::PUT, "/api/heating/999", Some(json!({"on": true})))
            .await;
        assert_problem(&answer, StatusCode::NOT_FOUND, "PUT 999");

        // Bad temperatures are 400 and send nothing.
        for query in ["", "?temperature=", "?temperature=hot", "?temperature=99", "?temperature=4.9", "?temperature=NaN", "?temperature=inf"] {
            let path = format!("/api/heating/1/set-temperature{query}");
            let answer = legacy.call(Method::POST, &path, None).await;
            assert_problem(&answer, StatusCode::BAD_REQUEST, &path);
            assert_eq!(answer.json["parameter"], "temperature", "{path}");
        }
        for (body, field) in [
            (json!({"targetTemperature": 31}), Some("targetTemperature")),
            (json!({"id": 2, "on": true}), Some("id")),
            (json!({"on": "yes"}), None),
        ] {
            let answer = legacy.call(Method::PUT, "/api/heating/1", Some(body.clone())).await;
            assert_problem(&answer, StatusCode::BAD_REQUEST, &body.to_string());
            if let Some(field) = field {
                assert_eq!(answer.json["field"], field, "{body}");
            }
        }
        let answer = legacy
            .client
            .put(format!("{}/api/heating/1", legacy.base))
            .header("content-type", "application/json")
            .body("{not json")
            .send()
            .await
            .expect("request");
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST);
        assert_eq!(commands_of(&pool, "legacy-heating-1").await.len(), 1, "only the 23.0");

        // A disabled device takes no commands.
        let answer = api
            .call(
                Method::PATCH,
                "/api/v1/devices/legacy-heating-4",
                Some(json!({"status": "disabled"})),
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text);
        let answer = legacy.call(Method::POST, "/api/heating/4/turn-on", None).await;
        assert_problem(&answer, StatusCode::CONFLICT, "turn-on disabled");

        // The legacy routes take no token; /api/v1 still does.
        let answer = legacy.get("/api/v1/devices/legacy-heating-1").await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);

        // Documented, tagged `legacy`, without the bearer requirement.
        let doc = legacy.json("/api-docs/openapi.json").await;
        for (path, method) in [
            ("/api/heating/{id}", "get"),
            ("/api/heating/{id}", "put"),
            ("/api/heating/{id}/turn-on", "post"),
            ("/api/heating/{id}/turn-off", "post"),
            ("/api/heating/{id}/set-temperature", "post"),
            ("/api/heating/{id}/current-temperature", "get"),
        ] {
            let operation = &doc["paths"][path][method];
            assert_eq!(operation["tags"], json!(["legacy"]), "{method} {path}");
            assert!(operation["security"].is_null(), "{method} {path}: {operation}");
        }
        assert!(doc["paths"]["/api/v1/homes"]["get"]["security"].is_array());

        // Counted per route template.
        let metrics = legacy.get("/metrics").await.text;
        assert!(
            metrics.contains(r#"route="/api/heating/{id}""#),
            "legacy routes missing from /metrics"
        );
    });
}

#[test]
fn a_query_api_that_is_down_falls_back_to_the_imported_temperature() {
    let (_dir, pg) = postgres();
    let registry_url = imported(&pg);
    runtime().block_on(async {
        let nothing_there = format!("http://127.0.0.1:{}", free_port().expect("port"));
        let (running, _stop) = registry(
            &registry_url,
            LegacyConfig {
                telemetry_url: Some(nothing_there),
                telemetry_token: Some(admin_token()),
            },
        )
        .await;
        let legacy = Http::new(running.addr, None);
        assert_eq!(
            legacy.json("/api/heating/1").await,
            json!({"id": 1, "on": true, "targetTemperature": 22.5, "currentTemperature": 21.3})
        );
        assert_eq!(
            legacy.get("/api/heating/1/current-temperature").await.text,
            "21.3"
        );
        // Nothing imported to fall back on: the outage shows.
        let answer = legacy.get("/api/heating/4").await;
        assert_problem(&answer, StatusCode::SERVICE_UNAVAILABLE, "system 4");
        let answer = legacy.get("/api/heating/4/current-temperature").await;
        assert_problem(
            &answer,
            StatusCode::SERVICE_UNAVAILABLE,
            "system 4 temperature",
        );
    });
}

#[test]
fn a_telemetry_url_without_a_token_is_refused_at_start() {
    let (_dir, pg) = postgres();
    let registry_url = pg.create_database("registry").expect("createdb registry");
    runtime().block_on(async {
        let mut config = warmhouse_device_registry::RegistryConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            registry_url,
        );
        config.auth = warmhouse_service_kit::auth::AuthConfig::with_secret(SECRET);
        config.legacy.telemetry_url = Some("http://127.0.0.1:1".into());
        let err = warmhouse_device_registry::start(config, pending())
            .await
            .err()
            .expect("refused");
        assert!(
            format!("{err:#}").contains("WARMHOUSE_REGISTRY_TELEMETRY_TOKEN"),
            "{err:#}"
        );
    });
}

#[test]
fn current_temperature_comes_from_the_telemetry_query_api() {
    let (_dir, pg) = postgres();
    let registry_url = imported(&pg);
    let influx_dir = tempfile::tempdir().expect("tempdir");
    let influxd = Influxd::start(influx_dir.path()).expect("influxd starts");
    runtime().block_on(async {
        let influx = InfluxClient::new(InfluxSettings::new(influxd.url(), "warmhouse"))
            .expect("influx client");
        influx.ensure_schema().await.expect("influx schema");
        // Readings as ingest-writer stores them: the thermostat of system 1
        // and the thermostat of system 4 (which the monolith never measured).
        let ts_ms = now_ms() - 5_000;
        let lines = [
            ("legacy-heating-1", "legacy-1", 20.0, 1_u64, ts_ms - 60_000),
            ("legacy-heating-1", "legacy-1", 24.25, 2, ts_ms),
            ("legacy-heating-4", "legacy-4", 18.5, 1, ts_ms),
        ]
        .iter()
        .map(|(device, home, value, seq, ts)| {
            let ns = ts * 1_000_000 + (*seq % 1_000_000) as i64;
            format!("temperature,device_id={device},device_type=thermostat,home_id={home} value={value:?},seq={seq}i {ns}")
        })
        .collect::<Vec<_>>()
        .join("\n");
        let written = reqwest::Client::new()
            .post(format!("{}/write", influxd.url()))
            .query(&[("db", "warmhouse"), ("rp", "raw"), ("precision", "ns")])
            .body(lines)
            .send()
            .await
            .expect("write sent");
        assert_eq!(written.status(), 204, "{:?}", written.text().await);

        let mut query_config = QueryConfig::new("127.0.0.1:0".parse().expect("addr"), influxd.url());
        query_config.auth = warmhouse_service_kit::auth::AuthConfig::with_secret(SECRET);
        let query = warmhouse_ingest::query::start(query_config, pending())
            .await
            .expect("query API starts");

        let (running, _stop) = registry(
            &registry_url,
            LegacyConfig {
                telemetry_url: Some(format!("http://{}", query.addr)),
                telemetry_token: Some(admin_token()),
            },
        )
        .await;
        let legacy = Http::new(running.addr, None);
        assert_eq!(
            legacy.json("/api/heating/1").await,
            json!({"id": 1, "on": true, "targetTemperature": 22.5, "currentTemperature": 24.25})
        );
        assert_eq!(legacy.get("/api/heating/1/current-temperature").await.text, "24.25");
        assert_eq!(legacy.json("/api/heating/4").await["currentTemperature"], 18.5);
        // No telemetry for system 2 yet: the imported value.
        assert_eq!(legacy.json("/api/heating/2").await["currentTemperature"], 19.75);
    });
}
