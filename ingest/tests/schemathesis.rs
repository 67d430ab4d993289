//! schemathesis (PyPI, pinned in tools/schemathesis/requirements.txt,
//! installed into .tools/venv by scripts/install-deps.sh) fuzzes the
//! telemetry query API's committed OpenAPI document against the real API on
//! a real influxd holding a little telemetry: no request may get a 5xx, and
//! every documented answer's body must match its schema.

use std::future::pending;
use std::time::Duration;

use warmhouse_devstack::api_checks::Schemathesis;
use warmhouse_devstack::Influxd;
use warmhouse_ingest::influx::{InfluxClient, InfluxSettings};
use warmhouse_ingest::query::{start, QueryConfig};
use warmhouse_service_kit::auth::{issue_hs256, AuthConfig, Claims};

const SECRET: &str = "schemathesis-test-secret-0123456789abcdef";
const DOCUMENT: &str = "docs/api/ingest-query.openapi.json";
/// No 5xx, and every documented answer's body matches its schema.
/// (`status_code_conformance` would also flag answers the document does
/// not list yet, e.g. 401.)
const CHECKS: &str = "not_a_server_error,response_schema_conformance";
/// Test cases per operation and phase: enough to reach the parameter
/// validation, few enough to stay well under two minutes on two cores.
const MAX_EXAMPLES: &str = "100";
/// A fixed seed: a failure here reproduces, and CI does not flake.
const SEED: &str = "20251124";
/// 2025-11-24T10:00:00Z: the time the document's examples query.
const T0_MS: i64 = 1_763_978_400_000;

/// Readings of the devices and home the document's examples name
/// (`thermo-1`, `home-a`), in the hour they query, so the positive paths
/// answer 200 with data.
fn seed_lines() -> Vec<String> {
    let mut lines = Vec::new();
    for (device, kind, metrics) in [
        ("thermo-1", "thermostat", &["temperature", "heating_on"][..]),
        (
            "sensor-2",
            "climate_sensor",
            &["temperature", "humidity"][..],
        ),
    ] {
        for i in 0..30_i64 {
            let seq = 100 + i;
            let ns = (T0_MS + i * 60_000) * 1_000_000 + seq % 1_000_000;
            for metric in metrics {
                let value = 20.0 + i as f64 / 4.0;
                lines.push(format!(
                    "{metric},device_id={device},device_type={kind},home_id=home-a \
                     value={value:?},seq={seq}i {ns}"
                ));
            }
        }
    }
    lines
}

/// influxd is started on the test's own thread: devstack children die with
/// the thread that spawned them.
#[test]
fn schemathesis_finds_no_server_errors_and_no_schema_violations() {
    let dir = tempfile::tempdir().expect("temp dir");
    let influxd = Influxd::start(&dir.path().join("influxd")).expect("influxd starts");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let mut settings = InfluxSettings::new(influxd.url(), "warmhouse");
        // The fixed dates must not fall out of the raw retention.
        settings.raw_retention = "INF".into();
        let influx = InfluxClient::new(settings).expect("influx client");
        influx.ensure_schema().await.expect("schema");
        let response = reqwest::Client::new()
            .post(format!("{}/write", influxd.url()))
            .query(&[("db", "warmhouse"), ("rp", "raw"), ("precision", "ns")])
            .body(seed_lines().join("\n"))
            .send()
            .await
            .expect("write sent");
        assert_eq!(response.status(), 204, "seeding InfluxDB");

        let mut config = QueryConfig::new("127.0.0.1:0".parse().expect("addr"), influxd.url());
        config.auth = AuthConfig::with_secret(SECRET);
        let api = start(config, pending()).await.expect("API starts");
        let base = format!("http://{}", api.addr);
        let token = issue_hs256(
            SECRET,
            &Claims::admin("schemathesis", Duration::from_secs(3600)),
        )
        .expect("signing a token");

        Schemathesis {
            document: DOCUMENT,
            base_url: &base,
            token: &token,
            checks: CHECKS,
            max_examples: MAX_EXAMPLES,
            seed: SEED,
            workdir: dir.path(),
        }
        .run_and_verify("the query API")
        .await
        .unwrap_or_else(|err| panic!("{err:#}"));
    });
}
