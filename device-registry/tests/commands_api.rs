//! The command and state endpoints against a real PostgreSQL, without
//! Kafka (commands stay `queued` in the outbox): every kind of bad input
//! gets the right 4xx, idempotency keys hold, and another home's device is
//! invisible. Delivery through Kafka and MQTT is stack/tests/commands.rs.

use std::net::SocketAddr;

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use warmhouse_device_registry::{start, RegistryConfig, RunningRegistry};
use warmhouse_devstack::Postgres;
use warmhouse_service_kit::auth::testing::TestTokens;

async fn registry(url: String, tokens: &TestTokens) -> RunningRegistry {
    let mut config = RegistryConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), url);
    config.auth = tokens.config();
    start(config, std::future::pending())
        .await
        .expect("starting the registry")
}

/// (what, method, path, token, body, Idempotency-Key, expected status)
type Case<'a> = (
    &'a str,
    Method,
    String,
    Option<&'a str>,
    Option<Value>,
    Option<&'a str>,
    u16,
);

async fn call(
    http: &Client,
    base: &str,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = http.request(method, format!("{base}{path}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let response = request.send().await.expect("request");
    let status = response.status();
    let text = response.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_endpoints_refuse_bad_input_with_the_right_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = Postgres::start(dir.path()).expect("PostgreSQL");
    let url = pg.create_database("registry").expect("database");
    let tokens = TestTokens::new("commands-api-test-secret-0123456789abcdef", Some("tests"));
    let running = registry(url, &tokens).await;
    let base = format!("http://{}", running.addr);
    let http = Client::new();
    let admin = tokens.admin().expect("admin token");
    let home_a = tokens.for_homes(&["home-a"]).expect("token");
    let home_b = tokens.for_homes(&["home-b"]).expect("token");

    for (path, body) in [
        ("/api/v1/homes", json!({"id": "home-a", "name": "A"})),
        ("/api/v1/homes", json!({"id": "home-b", "name": "B"})),
        (
            "/api/v1/devices",
            json!({"id": "t-a", "home_id": "home-a", "kind": "thermostat", "name": "T", "status": "active"}),
        ),
        (
            "/api/v1/devices",
            json!({"id": "t-off", "home_id": "home-a", "kind": "thermostat", "name": "T", "status": "disabled"}),
        ),
    ] {
        let (status, answer) = call(
            &http,
            &base,
            Method::POST,
            path,
            Some(&admin),
            Some(body),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{path}: {answer}");
    }

    let commands = "/api/v1/devices/t-a/commands";
    let good = json!({"name": "set_target_temperature", "params": {"temperature": 21.5}, "ttl_seconds": 60});
    let (status, first) = call(
        &http,
        &base,
        Method::POST,
        commands,
        Some(&home_a),
        Some(good.clone()),
        Some("k1"),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    assert_eq!(first["status"], "queued");
    let (status, again) = call(
        &http,
        &base,
        Method::POST,
        commands,
        Some(&home_a),
        Some(good.clone()),
        Some("k1"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["command_id"], first["command_id"]);
    let id = first["command_id"].as_str().expect("id").to_string();

    let long_key = "k".repeat(200);
    let big = json!({"name": "turn_on", "params": {"x": "y".repeat(70 * 1024)}});
    let cases: Vec<Case> = vec![
        (
            "no token",
            Method::POST,
            commands.into(),
            None,
            Some(good.clone()),
            None,
            401,
        ),
        (
            "garbage token",
            Method::POST,
            commands.into(),
            Some("not-a-jwt"),
            Some(good.clone()),
            None,
            401,
        ),
        (
            "another home's device",
            Method::POST,
            commands.into(),
            Some(&home_b),
            Some(good.clone()),
            None,
            404,
        ),
        (
            "another home's command list",
            Method::GET,
            commands.into(),
            Some(&home_b),
            None,
            None,
            404,
        ),
        (
            "another home's command",
            Method::GET,
            format!("{commands}/{id}"),
            Some(&home_b),
            None,
            None,
            404,
        ),
        (
            "another home's state",
            Method::GET,
            "/api/v1/devices/t-a/state".into(),
            Some(&home_b),
            None,
            None,
            404,
        ),
        (
            "unknown device",
            Method::POST,
            "/api/v1/devices/nope/commands".into(),
            Some(&admin),
            Some(good.clone()),
            None,
            404,
        ),
        (
            "unknown command id",
            Method::GET,
            format!("{commands}/no-such-command"),
            Some(&admin),
            None,
            None,
            404,
        ),
        (
            "bad device id",
            Method::POST,
            "/api/v1/devices/bad%20id/commands".into(),
            Some(&admin),
            Some(good.clone()),
            None,
            400,
        ),
        (
            "unknown command",
            Method::POST,
            commands.into(),
            Some(&admin),
            Some(json!({"name": "self_destruct"})),
            None,
            422,
        ),
        (
            "wrong parameter type",
            Method::POST,
            commands.into(),
            Some(&admin),
            Some(json!({"name": "set_target_temperature", "params": {"temperature": "warm"}})),
            None,
            422,
        ),
        (
            "parameter out of range",
            Method::POST,
            commands.into(),
            Some(&admin),
            Some(json!({"name": "set_target_temperature", "params": {"temperature": 90}})),
            None,
            422,
        ),
        (
            "ttl out of range",
            Method::POST,
            commands.into(),
            Some(&admin),
            Some(json!({"name": "turn_on", "ttl_seconds": 0})),
            None,
            422,
        ),
        (
            "ttl of the wrong type",
            Method::POST,
            commands.into(),
            Some(&admin),
            Some(json!({"name": "turn_on", "ttl_seconds": "soon"})),
            None,
            422,
        ),
        (
            "unknown field",
            Method::POST,
            commands.into(),
            Some(&admin),
            Some(json!({"name": "turn_on", "priority": 9})),
            None,
            422,
        ),
        (
            "params not an object",
            Method::POST,
            commands.into(),
            Some(&admin),
            Some(json!({"name": "turn_on", "params": [1]})),
            None,
            422,
        ),
        (
            "oversized body",
            Method::POST,
            commands.into(),
            Some(&admin),
            Some(big),
            None,
            413,
        ),
        (
            "key reused for another command",
            Method::POST,
            commands.into(),
            Some(&admin),
            Some(json!({"name": "turn_off"})),
            Some("k1"),
            409,
        ),
        (
            "key too long",
            Method::POST,
            commands.into(),
            Some(&admin),
            Some(good.clone()),
            Some(long_key.as_str()),
            400,
        ),
        (
            "disabled device",
            Method::POST,
            "/api/v1/devices/t-off/commands".into(),
            Some(&admin),
            Some(json!({"name": "turn_on"})),
            None,
            409,
        ),
        (
            "bad status filter",
            Method::GET,
            format!("{commands}?status=done"),
            Some(&admin),
            None,
            None,
            400,
        ),
        (
            "bad limit",
            Method::GET,
            format!("{commands}?limit=0"),
            Some(&admin),
            None,
            None,
            400,
        ),
    ];
    for (what, method, path, token, body, key, expected) in cases {
        let (status, problem) = call(&http, &base, method.clone(), &path, token, body, key).await;
        assert_eq!(
            status.as_u16(),
            expected,
            "{what}: {method} {path}: {problem}"
        );
        assert!(
            problem["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("urn:warmhouse:problem:")),
            "{what}: not a problem: {problem}"
        );
        assert!(
            problem["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}: {problem}"
        );
    }

    // Nothing above created a command, and the good one is listed and has
    // set the device's desired state.
    let (_, list) = call(
        &http,
        &base,
        Method::GET,
        commands,
        Some(&home_a),
        None,
        None,
    )
    .await;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    let (_, device) = call(
        &http,
        &base,
        Method::GET,
        "/api/v1/devices/t-a",
        Some(&home_a),
        None,
        None,
    )
    .await;
    assert_eq!(
        device["state"]["desired"]["target_temperature"], 21.5,
        "{device}"
    );
    assert_eq!(
        device["state"]["delta"]["target_temperature"], 21.5,
        "{device}"
    );
    assert_eq!(device["state"]["presence"], "unknown", "{device}");
}
