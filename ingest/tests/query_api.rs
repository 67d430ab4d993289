//! The telemetry query API against a real influxd (Debian `influxdb`).
//!
//! Each test starts its own influxd on free ports in its own temp dir.
//! influxd is started on the test's own thread on purpose: devstack children
//! die with the thread that spawned them (`PR_SET_PDEATHSIG`).

use std::future::pending;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;
use warmhouse_devstack::{free_port, Influxd};
use warmhouse_ingest::influx::{InfluxClient, InfluxSettings};
use warmhouse_ingest::query::{start, QueryConfig, RunningQueryApi};
use warmhouse_service_kit::auth::testing::TestTokens;

/// 2025-11-24T10:00:00Z, on a minute boundary.
const T0: i64 = 1_763_978_400_000;

/// The service under test verifies HS256 tokens from an issuer.
fn tokens() -> TestTokens {
    TestTokens::new(
        "query-api-test-secret-0123456789abcdef",
        Some("warmhouse-tests"),
    )
}

fn admin_token() -> String {
    tokens().admin().expect("signing a token")
}

fn home_token(homes: &[&str]) -> String {
    tokens().for_homes(homes).expect("signing a token")
}

fn config(influx_url: impl Into<String>) -> QueryConfig {
    let mut config = QueryConfig::new("127.0.0.1:0".parse().expect("addr"), influx_url);
    config.auth = tokens().config();
    config
}

struct Stack {
    _dir: TempDir,
    influxd: Influxd,
    api: RunningQueryApi,
    http: reqwest::Client,
    /// Sent with `get` (an admin's, so the data tests see everything).
    token: String,
}

impl Stack {
    /// influxd with the schema, the API in front of it; no data.
    async fn empty() -> Stack {
        let dir = tempfile::tempdir().expect("temp dir");
        let influxd = Influxd::start(dir.path()).expect("influxd starts");
        let mut settings = InfluxSettings::new(influxd.url(), "warmhouse");
        // The fixture's fixed dates must not fall out of the raw retention
        // as the calendar moves on.
        settings.raw_retention = "INF".into();
        let influx = InfluxClient::new(settings).expect("influx client");
        influx.ensure_schema().await.expect("schema");
        Self::with(dir, influxd).await
    }

    async fn with(dir: TempDir, influxd: Influxd) -> Stack {
        let mut config = config(influxd.url());
        config.ready_interval_ms = 100;
        let api = start(config, pending()).await.expect("API starts");
        Stack {
            _dir: dir,
            influxd,
            api,
            http: reqwest::Client::new(),
            token: admin_token(),
        }
    }

    async fn with_data() -> Stack {
        let stack = Self::empty().await;
        stack.write(&fixture_lines()).await;
        stack
    }

    async fn write(&self, lines: &[String]) {
        let response = self
            .http
            .post(format!("{}/write", self.influxd.url()))
            .query(&[("db", "warmhouse"), ("rp", "raw"), ("precision", "ns")])
            .body(lines.join("\n"))
            .send()
            .await
            .expect("write sent");
        assert_eq!(response.status(), 204, "{:?}", response.text().await);
    }

    async fn get(&self, path_and_query: &str) -> reqwest::Response {
        self.get_as(path_and_query, Some(&self.token)).await
    }

    /// GET with `token` as the bearer token, or with no Authorization.
    async fn get_as(&self, path_and_query: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self
            .http
            .get(format!("http://{}{path_and_query}", self.api.addr));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("request sent")
    }

    async fn json(&self, path_and_query: &str) -> Value {
        let response = self.get(path_and_query).await;
        let status = response.status();
        let body = response.text().await.expect("body");
        assert_eq!(status, 200, "GET {path_and_query}: {body}");
        serde_json::from_str(&body).expect("JSON body")
    }

    /// Asserts an RFC 9457 answer with `status` and returns its body.
    async fn problem(&self, path_and_query: &str, status: u16) -> Value {
        let response = self.get(path_and_query).await;
        assert_eq!(response.status(), status, "GET {path_and_query}");
        let content_type = response.headers()["content-type"].clone();
        assert_eq!(
            content_type, "application/problem+json",
            "GET {path_and_query}"
        );
        let body: Value = response.json().await.expect("problem JSON");
        assert_eq!(body["status"], status, "{body}");
        for field in ["type", "title", "detail"] {
            assert!(body[field].is_string(), "{field} missing: {body}");
        }
        body
    }
}

fn line(
    metric: &str,
    device: &str,
    home: &str,
    kind: &str,
    value: f64,
    seq: u64,
    ts_ms: i64,
) -> String {
    // The writer's point identity: device ms plus seq % 1e6 nanoseconds.
    let ns = ts_ms * 1_000_000 + (seq % 1_000_000) as i64;
    format!("{metric},device_id={device},device_type={kind},home_id={home} value={value:?},seq={seq}i {ns}")
}

/// thermo-1 (home-a): 12 samples 10 s apart from T0 (temperature 20..31,
/// humidity 40..51, seq 100..111), then two temperature samples in one
/// millisecond (seq 200: 30.0, seq 201: 31.0).
/// sensor-2 (home-a): one sample with a large seq. relay-9 (home-b): one.
fn fixture_lines() -> Vec<String> {
    let mut lines = Vec::new();
    for i in 0..12u32 {
        let ts = T0 + i64::from(i) * 10_000;
        let seq = 100 + u64::from(i);
        lines.push(line(
            "temperature",
            "thermo-1",
            "home-a",
            "thermostat",
            20.0 + f64::from(i),
            seq,
            ts,
        ));
        lines.push(line(
            "humidity",
            "thermo-1",
            "home-a",
            "thermostat",
            40.0 + f64::from(i),
            seq,
            ts,
        ));
    }
    lines.push(line(
        "temperature",
        "thermo-1",
        "home-a",
        "thermostat",
        30.0,
        200,
        T0 + 150_000,
    ));
    lines.push(line(
        "temperature",
        "thermo-1",
        "home-a",
        "thermostat",
        31.0,
        201,
        T0 + 150_000,
    ));
    lines.push(line(
        "temperature",
        "sensor-2",
        "home-a",
        "climate_sensor",
        19.25,
        1_234_567_891,
        T0 + 5_000,
    ));
    lines.push(line(
        "humidity",
        "sensor-2",
        "home-a",
        "climate_sensor",
        55.5,
        1_234_567_891,
        T0 + 5_000,
    ));
    lines.push(line("heating_on", "relay-9", "home-b", "relay", 1.0, 1, T0));
    lines
}

fn range(from_ms: i64, to_ms: i64) -> String {
    format!("from={from_ms}&to={to_ms}")
}

#[tokio::test]
async fn latest_per_device_and_home_is_exactly_what_was_written() {
    let stack = Stack::with_data().await;

    let latest = stack
        .json("/api/v1/devices/thermo-1/telemetry/latest")
        .await;
    assert_eq!(
        latest,
        json!({
            "device_id": "thermo-1",
            "metrics": [
                {"metric": "humidity", "value": 51.0, "ts": "2025-11-24T10:01:50.000Z",
                 "ts_ms": T0 + 110_000, "seq": 111, "home_id": "home-a", "device_type": "thermostat"},
                // Two samples in one millisecond: the higher seq is the later point.
                {"metric": "temperature", "value": 31.0, "ts": "2025-11-24T10:02:30.000Z",
                 "ts_ms": T0 + 150_000, "seq": 201, "home_id": "home-a", "device_type": "thermostat"}
            ]
        })
    );

    let home = stack.json("/api/v1/homes/home-a/telemetry/latest").await;
    assert_eq!(home["home_id"], "home-a");
    let devices = home["devices"].as_array().expect("devices");
    assert_eq!(devices.len(), 2, "{home}");
    assert_eq!(devices[0]["device_id"], "sensor-2");
    assert_eq!(
        devices[0]["metrics"],
        json!([
            {"metric": "humidity", "value": 55.5, "ts": "2025-11-24T10:00:05.000Z",
             "ts_ms": T0 + 5_000, "seq": 1_234_567_891, "home_id": "home-a", "device_type": "climate_sensor"},
            {"metric": "temperature", "value": 19.25, "ts": "2025-11-24T10:00:05.000Z",
             "ts_ms": T0 + 5_000, "seq": 1_234_567_891, "home_id": "home-a", "device_type": "climate_sensor"}
        ])
    );
    assert_eq!(
        devices[1], latest,
        "a home's device entry equals the device's own latest"
    );

    let home_b = stack.json("/api/v1/homes/home-b/telemetry/latest").await;
    assert_eq!(home_b["devices"][0]["metrics"][0]["metric"], "heating_on");
    assert_eq!(home_b["devices"][0]["metrics"][0]["value"], 1.0);

    let missing = stack
        .problem("/api/v1/devices/nobody/telemetry/latest", 404)
        .await;
    assert!(
        missing["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("nobody"),
        "{missing}"
    );
    stack
        .problem("/api/v1/homes/home-z/telemetry/latest", 404)
        .await;
}

#[tokio::test]
async fn raw_range_returns_points_in_time_order() {
    let stack = Stack::with_data().await;

    let raw = stack
        .json(&format!(
            "/api/v1/devices/thermo-1/telemetry?metric=temperature&{}",
            range(T0, T0 + 3_600_000)
        ))
        .await;
    assert_eq!(raw["device_id"], "thermo-1");
    assert_eq!(raw["metric"], "temperature");
    assert_eq!(raw["from"], "2025-11-24T10:00:00.000Z");
    assert_eq!(raw["to"], "2025-11-24T11:00:00.000Z");
    assert_eq!(raw["limit"], 1000);
    assert_eq!(raw["truncated"], false);
    let points = raw["points"].as_array().expect("points");
    let got: Vec<(i64, i64, f64)> = points
        .iter()
        .map(|p| {
            (
                p["ts_ms"].as_i64().unwrap_or(-1),
                p["seq"].as_i64().unwrap_or(-1),
                p["value"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    let mut expected: Vec<(i64, i64, f64)> = (0..12)
        .map(|i| (T0 + i * 10_000, 100 + i, 20.0 + i as f64))
        .collect();
    expected.push((T0 + 150_000, 200, 30.0));
    expected.push((T0 + 150_000, 201, 31.0));
    assert_eq!(got, expected);
    assert_eq!(points[0]["ts"], "2025-11-24T10:00:00.000Z");
    assert_eq!(points[0]["metric"], "temperature");

    // RFC 3339 bounds, half-open: from is inclusive, to exclusive.
    let window = stack
        .json("/api/v1/devices/thermo-1/telemetry?metric=humidity&from=2025-11-24T10:00:10Z&to=2025-11-24T12:00:30%2B02:00")
        .await;
    let seqs: Vec<i64> = window["points"]
        .as_array()
        .expect("points")
        .iter()
        .filter_map(|p| p["seq"].as_i64())
        .collect();
    assert_eq!(seqs, [101, 102]);

    // Every metric: merged oldest first, metric name breaking ties.
    let all = stack
        .json(&format!(
            "/api/v1/devices/thermo-1/telemetry?{}",
            range(T0, T0 + 20_000)
        ))
        .await;
    assert!(all.get("metric").is_none(), "{all}");
    let order: Vec<(String, i64)> = all["points"]
        .as_array()
        .expect("points")
        .iter()
        .map(|p| {
            (
                p["metric"].as_str().unwrap_or_default().to_string(),
                p["ts_ms"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            ("humidity".to_string(), T0),
            ("temperature".to_string(), T0),
            ("humidity".to_string(), T0 + 10_000),
            ("temperature".to_string(), T0 + 10_000),
        ]
    );

    // limit keeps the oldest points and says there were more.
    let limited = stack
        .json(&format!(
            "/api/v1/devices/thermo-1/telemetry?limit=5&{}",
            range(T0, T0 + 3_600_000)
        ))
        .await;
    assert_eq!(limited["truncated"], true);
    assert_eq!(limited["points"].as_array().map(Vec::len), Some(5));
    assert_eq!(limited["points"][4]["ts_ms"], T0 + 20_000);
    assert_eq!(limited["points"][4]["metric"], "humidity");

    // An empty range is an empty list, not an error.
    let empty = stack
        .json(&format!(
            "/api/v1/devices/thermo-1/telemetry?{}",
            range(T0 - 60_000, T0)
        ))
        .await;
    assert_eq!(empty["points"], json!([]));
    assert_eq!(empty["truncated"], false);
}

#[tokio::test]
async fn default_range_is_the_last_hour() {
    let stack = Stack::empty().await;
    let now = warmhouse_service_kit::now_ms();
    stack
        .write(&[
            line(
                "temperature",
                "recent-1",
                "home-c",
                "thermostat",
                18.0,
                4,
                now - 2 * 3_600_000,
            ),
            line(
                "temperature",
                "recent-1",
                "home-c",
                "thermostat",
                22.0,
                5,
                now - 600_000,
            ),
        ])
        .await;
    let raw = stack.json("/api/v1/devices/recent-1/telemetry").await;
    let points = raw["points"].as_array().expect("points");
    assert_eq!(points.len(), 1, "{raw}");
    assert_eq!(points[0]["seq"], 5);
    assert_eq!(points[0]["ts_ms"], now - 600_000);
}

#[tokio::test]
async fn aggregates_over_minute_windows() {
    let stack = Stack::with_data().await;
    let windows = |body: &Value| -> Vec<(i64, f64)> {
        body["windows"]
            .as_array()
            .expect("windows")
            .iter()
            .map(|w| {
                (
                    w["ts_ms"].as_i64().unwrap_or(-1),
                    w["value"].as_f64().unwrap_or(f64::NAN),
                )
            })
            .collect()
    };
    let base = format!(
        "/api/v1/devices/thermo-1/telemetry?metric=temperature&every=1m&{}",
        range(T0, T0 + 3_600_000)
    );

    let mean = stack.json(&format!("{base}&agg=mean")).await;
    assert_eq!(mean["agg"], "mean");
    assert_eq!(mean["every"], "1m");
    assert_eq!(mean["metric"], "temperature");
    assert_eq!(mean["windows"][0]["time"], "2025-11-24T10:00:00.000Z");
    // Empty windows (fill(none)) are left out: three of sixty minutes.
    assert_eq!(
        windows(&mean),
        [(T0, 22.5), (T0 + 60_000, 28.5), (T0 + 120_000, 30.5)]
    );
    for (agg, expected) in [
        ("count", [6.0, 6.0, 2.0]),
        ("min", [20.0, 26.0, 30.0]),
        ("max", [25.0, 31.0, 31.0]),
        ("last", [25.0, 31.0, 31.0]),
    ] {
        let body = stack.json(&format!("{base}&agg={agg}")).await;
        let values: Vec<f64> = windows(&body).into_iter().map(|(_, v)| v).collect();
        assert_eq!(values, expected, "agg={agg}");
    }

    let hourly = stack
        .json(&format!(
            "/api/v1/devices/thermo-1/telemetry?metric=humidity&agg=mean&every=60m&{}",
            range(T0, T0 + 3_600_000)
        ))
        .await;
    assert_eq!(hourly["every"], "1h");
    assert_eq!(windows(&hourly), [(T0, 45.5)]);
}

/// Validation comes before any InfluxDB call: this API points at a port
/// nothing listens on, and still every bad request is a 400, not a 503.
#[tokio::test]
async fn bad_parameters_are_400_problems_naming_the_parameter() {
    let dead = format!("http://127.0.0.1:{}", free_port().expect("port"));
    let api = start(config(dead), pending())
        .await
        .expect("API starts without InfluxDB");
    let http = reqwest::Client::new();
    let telemetry = "/api/v1/devices/thermo-1/telemetry";
    let cases: Vec<(String, Option<&str>, &str)> = vec![
        (
            "/api/v1/devices/bad.id/telemetry/latest".into(),
            Some("device_id"),
            "device id contains '.'",
        ),
        (
            "/api/v1/devices/bad%20id/telemetry".into(),
            Some("device_id"),
            "device id contains ' '",
        ),
        (
            format!("/api/v1/devices/{}/telemetry/latest", "d".repeat(65)),
            Some("device_id"),
            "at most 64",
        ),
        (
            "/api/v1/devices/%FF/telemetry/latest".into(),
            Some("device_id"),
            "UTF-8",
        ),
        (
            "/api/v1/homes/home%2Fa/telemetry/latest".into(),
            Some("home_id"),
            "home id contains '/'",
        ),
        (
            format!("{telemetry}?metric=Temperature"),
            Some("metric"),
            "metric name contains 'T'",
        ),
        (
            format!("{telemetry}?metric=temperature&agg=median&every=1m"),
            Some("agg"),
            "\"median\" is not supported",
        ),
        (
            format!("{telemetry}?metric=temperature&every=1m"),
            Some("agg"),
            "agg is required with every",
        ),
        (
            format!("{telemetry}?metric=temperature&agg=mean"),
            Some("every"),
            "every is required with agg",
        ),
        (
            format!("{telemetry}?metric=temperature&agg=mean&every=100ms"),
            Some("every"),
            "shorter than 1s",
        ),
        (
            format!("{telemetry}?metric=temperature&agg=mean&every=fortnight"),
            Some("every"),
            "not an InfluxQL duration",
        ),
        (
            format!("{telemetry}?agg=mean&every=1m"),
            Some("metric"),
            "metric is required with agg",
        ),
        (
            format!("{telemetry}?metric=t&agg=mean&every=1s&from=0&to=86400000"),
            Some("every"),
            "86400 windows",
        ),
        (
            format!("{telemetry}?{}", range(T0 + 1000, T0)),
            Some("from"),
            "must be before to",
        ),
        (
            format!("{telemetry}?{}", range(T0, T0)),
            Some("from"),
            "must be before to",
        ),
        (
            format!("{telemetry}?from=yesterday"),
            Some("from"),
            "not an RFC 3339 date-time",
        ),
        (
            format!("{telemetry}?to=2025-11-31T00:00:00Z"),
            Some("to"),
            "day 31",
        ),
        (
            format!("{telemetry}?to=2025-11-24T10:00:00"),
            Some("to"),
            "UTC offset",
        ),
        (
            format!("{telemetry}?from=99999999999999999999"),
            Some("from"),
            "outside",
        ),
        (
            format!("{telemetry}?limit=0"),
            Some("limit"),
            "between 1 and 10000",
        ),
        (
            format!("{telemetry}?limit=10001"),
            Some("limit"),
            "between 1 and 10000",
        ),
        (
            format!("{telemetry}?limit=lots"),
            Some("limit"),
            "between 1 and 10000",
        ),
        (
            format!("{telemetry}?metirc=temperature"),
            None,
            "unknown field `metirc`",
        ),
        (
            format!("{telemetry}?metric=a&metric=b"),
            None,
            "duplicate field `metric`",
        ),
    ];
    let token = admin_token();
    for (path, parameter, says) in cases {
        let response = http
            .get(format!("http://{}{path}", api.addr))
            .bearer_auth(&token)
            .send()
            .await
            .expect("request sent");
        assert_eq!(response.status(), 400, "GET {path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json",
            "GET {path}"
        );
        let body: Value = response.json().await.expect("problem JSON");
        assert_eq!(body["status"], 400, "{body}");
        assert_eq!(
            body["type"], "urn:warmhouse:problem:invalid-parameter",
            "{body}"
        );
        assert_eq!(body["title"], "Invalid request parameter", "{body}");
        assert_eq!(body["parameter"].as_str(), parameter, "GET {path}: {body}");
        let detail = body["detail"].as_str().unwrap_or_default();
        assert!(
            detail.contains(says),
            "GET {path}: {detail:?} lacks {says:?}"
        );
    }

    let response = http
        .get(format!("http://{}/api/v1/nothing-here", api.addr))
        .bearer_auth(&token)
        .send()
        .await
        .expect("request sent");
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
}

#[tokio::test]
async fn serves_openapi_swagger_ui_and_operational_endpoints() {
    let stack = Stack::empty().await;

    let spec = stack.json("/api-docs/openapi.json").await;
    assert!(
        spec["openapi"]
            .as_str()
            .unwrap_or_default()
            .starts_with("3."),
        "{spec}"
    );
    let paths = spec["paths"].as_object().expect("paths");
    for path in [
        "/api/v1/devices/{device_id}/telemetry/latest",
        "/api/v1/homes/{home_id}/telemetry/latest",
        "/api/v1/devices/{device_id}/telemetry",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        assert!(
            paths.contains_key(path),
            "{path} missing from {:?}",
            paths.keys()
        );
    }
    let params: Vec<&str> = spec["paths"]["/api/v1/devices/{device_id}/telemetry"]["get"]
        ["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(
        params,
        ["device_id", "metric", "from", "to", "limit", "agg", "every"]
    );
    assert!(spec["components"]["schemas"]["Problem"].is_object());

    let docs = stack.get("/docs").await;
    assert_eq!(docs.status(), 200);
    assert!(docs.headers()["content-type"]
        .to_str()
        .unwrap_or_default()
        .starts_with("text/html"));
    let html = docs.text().await.expect("html");
    assert!(html.contains("swagger-ui"), "{html}");

    assert_eq!(stack.get("/healthz").await.status(), 200);
    assert_eq!(stack.get("/readyz").await.status(), 200);
    stack
        .problem("/api/v1/devices/nobody/telemetry/latest", 404)
        .await;
    let metrics = stack.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains(r#"warmhouse_query_requests_total{route="/api/v1/devices/{device_id}/telemetry/latest",status="404"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("warmhouse_query_influx_duration_seconds_count 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn influxdb_down_is_503_and_not_ready_until_it_is_back() {
    // No schema yet: a database nobody wrote to is "no data", not an error.
    let dir = tempfile::tempdir().expect("temp dir");
    let influxd = Influxd::start(dir.path()).expect("influxd starts");
    let mut stack = Stack::with(dir, influxd).await;
    stack
        .problem("/api/v1/devices/thermo-1/telemetry/latest", 404)
        .await;

    stack.influxd.kill();
    for path in [
        "/api/v1/devices/thermo-1/telemetry/latest",
        "/api/v1/homes/home-a/telemetry/latest",
        "/api/v1/devices/thermo-1/telemetry?metric=temperature",
        "/api/v1/devices/thermo-1/telemetry?metric=temperature&agg=mean&every=1m",
    ] {
        let body = stack.problem(path, 503).await;
        assert_eq!(
            body["type"], "urn:warmhouse:problem:store-unavailable",
            "{body}"
        );
    }
    let response = stack.get("/api/v1/devices/thermo-1/telemetry/latest").await;
    assert_eq!(response.headers()["retry-after"], "5");
    assert_eq!(stack.get("/readyz").await.status(), 503);
    // Bad input stays 400 while InfluxDB is down.
    stack
        .problem("/api/v1/devices/thermo-1/telemetry?limit=0", 400)
        .await;

    stack.influxd.start_again().expect("influxd restarts");
    let deadline = Instant::now() + Duration::from_secs(10);
    while stack.get("/readyz").await.status() != 200 {
        assert!(
            Instant::now() < deadline,
            "/readyz stayed 503 after influxd came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stack
        .problem("/api/v1/devices/thermo-1/telemetry/latest", 404)
        .await;
}

/// Every `/api/v1` endpoint wants a valid token; the operational endpoints
/// and the docs stay open.
#[tokio::test]
async fn api_refuses_requests_without_a_valid_token() {
    let stack = Stack::with_data().await;
    let cases = tokens().refused().expect("tokens");
    for path in [
        "/api/v1/devices/thermo-1/telemetry/latest",
        "/api/v1/homes/home-a/telemetry/latest",
        "/api/v1/devices/thermo-1/telemetry?metric=temperature",
    ] {
        for (token, says) in &cases {
            let response = stack.get_as(path, token.as_deref()).await;
            assert_eq!(response.status(), 401, "GET {path} with {token:?}");
            let challenge = response.headers()["www-authenticate"]
                .to_str()
                .expect("ASCII")
                .to_string();
            assert!(challenge.starts_with("Bearer"), "{challenge}");
            assert_eq!(
                challenge.contains(r#"error="invalid_token""#),
                token.is_some(),
                "{challenge}"
            );
            assert_eq!(
                response.headers()["content-type"],
                "application/problem+json"
            );
            let body: Value = response.json().await.expect("problem JSON");
            assert_eq!(body["type"], "urn:warmhouse:problem:unauthorized");
            let detail = body["detail"].as_str().unwrap_or_default();
            assert!(
                detail.contains(says),
                "GET {path}: {detail:?} lacks {says:?}"
            );
        }
    }
    // Not even the shape of the request is looked at without a token.
    assert_eq!(
        stack
            .get_as("/api/v1/devices/bad.id/telemetry/latest", None)
            .await
            .status(),
        401
    );
    for open in [
        "/healthz",
        "/readyz",
        "/metrics",
        "/api-docs/openapi.json",
        "/docs/",
    ] {
        assert_eq!(stack.get_as(open, None).await.status(), 200, "GET {open}");
    }
    let metrics = stack.get("/metrics").await.text().await.expect("metrics");
    assert!(
        metrics.contains(r#"warmhouse_query_requests_total{route="/api/v1/homes/{home_id}/telemetry/latest",status="401"} 6"#),
        "{metrics}"
    );
}

/// A token for home-a reads home-a and its devices, and nothing of home-b:
/// home-b itself is 403, its device relay-9 looks like a device without
/// data. An admin reads everything.
#[tokio::test]
async fn a_token_reads_only_its_own_homes() {
    let stack = Stack::with_data().await;
    let home_a = home_token(&["home-a"]);
    let as_a = |path: &'static str| {
        let (stack, token) = (&stack, home_a.clone());
        async move { stack.get_as(path, Some(&token)).await }
    };

    let response = as_a("/api/v1/homes/home-a/telemetry/latest").await;
    assert_eq!(response.status(), 200);
    let home: Value = response.json().await.expect("JSON");
    assert_eq!(home["devices"].as_array().map(Vec::len), Some(2));
    let response = as_a("/api/v1/devices/thermo-1/telemetry/latest").await;
    assert_eq!(response.status(), 200);
    let thermo = stack
        .json("/api/v1/devices/thermo-1/telemetry/latest")
        .await;
    assert_eq!(response.json::<Value>().await.expect("JSON"), thermo);
    let own = format!(
        "/api/v1/devices/thermo-1/telemetry?metric=temperature&{}",
        range(T0, T0 + 3_600_000)
    );
    let response = stack.get_as(&own, Some(&home_a)).await;
    assert_eq!(response.status(), 200);
    let points: Value = response.json().await.expect("JSON");
    assert_eq!(points["points"].as_array().map(Vec::len), Some(14));

    let response = as_a("/api/v1/homes/home-b/telemetry/latest").await;
    assert_eq!(response.status(), 403);
    assert!(response.headers()["www-authenticate"]
        .to_str()
        .expect("ASCII")
        .contains("insufficient_scope"));
    let body: Value = response.json().await.expect("problem");
    assert_eq!(body["type"], "urn:warmhouse:problem:forbidden");

    let response = as_a("/api/v1/devices/relay-9/telemetry/latest").await;
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.expect("problem");
    assert_eq!(body["type"], "urn:warmhouse:problem:no-data");
    let other = format!(
        "/api/v1/devices/relay-9/telemetry?{}",
        range(T0 - 60_000, T0 + 3_600_000)
    );
    let response = stack.get_as(&other, Some(&home_a)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["points"], json!([]), "{body}");
    let aggregated = format!(
        "/api/v1/devices/relay-9/telemetry?metric=heating_on&agg=count&every=1h&{}",
        range(T0, T0 + 3_600_000)
    );
    let response = stack.get_as(&aggregated, Some(&home_a)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.expect("JSON");
    assert_eq!(body["windows"], json!([]), "{body}");

    // A token for no home sees nothing at all.
    let nobody = home_token(&[]);
    let response = stack
        .get_as("/api/v1/devices/thermo-1/telemetry/latest", Some(&nobody))
        .await;
    assert_eq!(response.status(), 404);
    let response = stack
        .get_as("/api/v1/homes/home-a/telemetry/latest", Some(&nobody))
        .await;
    assert_eq!(response.status(), 403);

    // Both homes, or an admin: everything.
    let both = home_token(&["home-b", "home-a"]);
    for token in [both.as_str(), stack.token.as_str()] {
        for path in [
            "/api/v1/homes/home-b/telemetry/latest",
            "/api/v1/devices/relay-9/telemetry/latest",
            "/api/v1/homes/home-a/telemetry/latest",
        ] {
            assert_eq!(
                stack.get_as(path, Some(token)).await.status(),
                200,
                "{path}"
            );
        }
        let response = stack.get_as(&other, Some(token)).await;
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["points"].as_array().map(Vec::len), Some(1), "{body}");
    }
}

/// Readings belong to the home they were reported from: after a device
/// moves from home-a to home-b, a home-a token still sees what it reported
/// in home-a, and nothing it reports from home-b.
#[tokio::test]
async fn a_moved_device_shows_each_home_its_own_readings() {
    let stack = Stack::empty().await;
    stack
        .write(&[
            line("temperature", "mover", "home-a", "thermostat", 20.0, 1, T0),
            line(
                "temperature",
                "mover",
                "home-b",
                "thermostat",
                25.0,
                2,
                T0 + 1_000,
            ),
        ])
        .await;
    for (home, value) in [("home-a", 20.0), ("home-b", 25.0)] {
        let token = home_token(&[home]);
        let response = stack
            .get_as("/api/v1/devices/mover/telemetry/latest", Some(&token))
            .await;
        assert_eq!(response.status(), 200, "{home}");
        let body: Value = response.json().await.expect("JSON");
        assert_eq!(body["metrics"][0]["value"], value, "{home}: {body}");
        assert_eq!(body["metrics"][0]["home_id"], home, "{body}");
    }
    let latest = stack.json("/api/v1/devices/mover/telemetry/latest").await;
    assert_eq!(latest["metrics"][0]["value"], 25.0, "admin sees the newest");
}
