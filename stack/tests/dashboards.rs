//! The Grafana dashboards (`dashboards/*.json`) without Grafana: every
//! panel's query runs, with its variables substituted as Grafana would,
//! against the real InfluxDB and the real Prometheus of a stack that has
//! carried telemetry, commands, a dead letter and an InfluxDB outage. A
//! query that errors or finds no data fails the test, naming the dashboard
//! and panel. Prometheus scrapes every service's `/metrics`, and all of them
//! must be up. A fast test checks the JSON and the provisioning files alone.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use tokio::sync::oneshot;
use warmhouse_stack::fleet::register_fleet;
use warmhouse_stack::{Stack, StackOptions};

const DASHBOARDS: [&str; 3] = ["home-overview", "device-detail", "pipeline-health"];
const INFLUX_DS: &str = "influxdb";
const PROMETHEUS_DS: &str = "prometheus";
/// Grafana's own variables the dashboards use; the test gives them values.
const BUILTINS: [&str; 3] = ["timeFilter", "__interval", "__rate_interval"];

/// Two homes with a thermostat, two climate sensors and a relay each.
const SIM_ARGS: &[&str] = &[
    "--homes",
    "2",
    "--devices-per-home",
    "4",
    "--interval-ms",
    "200",
    "--run-id",
    "dash",
];
const HOME: &str = "home-dash-0001";
const THERMOSTAT: &str = "home-dash-0001-dev-01";
const RELAY: &str = "home-dash-0001-dev-03";
/// The dashboards' time range in the test (Grafana: "now-15m" to "now").
const RANGE: Duration = Duration::from_secs(15 * 60);
/// `$__interval` for that range, and the query step: 5 s.
const INTERVAL_S: u64 = 5;
/// `$__rate_interval`: at least four scrapes (the stack scrapes every 1 s).
const RATE_INTERVAL: &str = "15s";
const PATIENCE: Duration = Duration::from_secs(60);

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards")
}

fn load_dashboard(name: &str) -> Value {
    let path = dashboards_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Every panel, including those nested in (collapsed) rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        all.push(panel);
        all.extend(panel["panels"].as_array().into_iter().flatten());
    }
    all
}

fn targets(panel: &Value) -> impl Iterator<Item = &Value> {
    panel["targets"].as_array().into_iter().flatten()
}

/// uid -> type of the provisioned data sources.
fn provisioned_datasources() -> BTreeMap<String, String> {
    let path = dashboards_dir().join("provisioning/datasources/warmhouse.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let docs = yaml_rust2::YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut sources = BTreeMap::new();
    for source in docs[0]["datasources"].as_vec().expect("a datasources list") {
        let uid = source["uid"].as_str().expect("every data source has a uid");
        let kind = source["type"]
            .as_str()
            .expect("every data source has a type");
        assert!(
            sources.insert(uid.to_string(), kind.to_string()).is_none(),
            "data source uid {uid} twice"
        );
        if kind == INFLUX_DS {
            assert_eq!(source["jsonData"]["version"].as_str(), Some("InfluxQL"));
            assert_eq!(source["jsonData"]["dbName"].as_str(), Some("warmhouse"));
        }
    }
    sources
}

/// Names of `$name` and `${name}` references in `text`.
fn references(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let braced = rest.starts_with('{');
        let body = if braced { &rest[1..] } else { rest };
        let len = body
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(body.len());
        if len > 0 {
            names.insert(body[..len].to_string());
        }
    }
    names
}

fn query_text(target: &Value) -> Option<&str> {
    target["query"].as_str().or_else(|| target["expr"].as_str())
}

#[test]
fn dashboards_and_provisioning_are_consistent() {
    let sources = provisioned_datasources();
    let provider =
        std::fs::read_to_string(dashboards_dir().join("provisioning/dashboards/warmhouse.yaml"))
            .unwrap();
    let provider = yaml_rust2::YamlLoader::load_from_str(&provider).unwrap();
    let provider = &provider[0]["providers"][0];
    assert_eq!(provider["type"].as_str(), Some("file"));
    assert!(provider["options"]["path"].as_str().is_some());

    let check_ds = |where_: &str, ds: &Value| {
        let uid = ds["uid"]
            .as_str()
            .unwrap_or_else(|| panic!("{where_}: no datasource uid"));
        let kind = sources
            .get(uid)
            .unwrap_or_else(|| panic!("{where_}: datasource {uid} is not provisioned"));
        assert_eq!(
            ds["type"].as_str(),
            Some(kind.as_str()),
            "{where_}: datasource type"
        );
    };
    let mut uids = BTreeSet::new();
    for name in DASHBOARDS {
        let d = load_dashboard(name);
        let uid = d["uid"].as_str().expect("dashboard uid");
        assert!(uids.insert(uid.to_string()), "dashboard uid {uid} twice");
        assert!(d["title"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(
            d["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
            "{name}: schemaVersion"
        );

        let mut defined: BTreeSet<String> = BUILTINS.iter().map(|b| b.to_string()).collect();
        for variable in d["templating"]["list"].as_array().into_iter().flatten() {
            let var = variable["name"].as_str().expect("variable name");
            check_ds(&format!("{name}: variable {var}"), &variable["datasource"]);
            // A variable may use those defined before it.
            for used in references(variable["query"].as_str().unwrap_or_default()) {
                assert!(
                    defined.contains(&used),
                    "{name}: variable {var} uses ${used}"
                );
            }
            assert!(
                defined.insert(var.to_string()),
                "{name}: variable {var} twice"
            );
        }

        let mut ids = BTreeSet::new();
        let all = panels(&d);
        assert!(!all.is_empty(), "{name}: no panels");
        for panel in all {
            let id = panel["id"].as_u64().expect("every panel has a numeric id");
            let title = panel["title"].as_str().unwrap_or_default();
            let here = format!("{name}: panel {id} \"{title}\"");
            assert!(ids.insert(id), "{here}: id used twice");
            let grid = &panel["gridPos"];
            let (x, w) = (grid["x"].as_u64(), grid["w"].as_u64());
            assert!(
                matches!((x, w), (Some(x), Some(w)) if w > 0 && x + w <= 24)
                    && grid["h"].as_u64().is_some(),
                "{here}: gridPos {grid}"
            );
            if panel["type"] == "row" {
                continue;
            }
            assert!(!title.is_empty(), "{here}: no title");
            check_ds(&here, &panel["datasource"]);
            let mut refs = BTreeSet::new();
            assert!(targets(panel).count() > 0, "{here}: no targets");
            for target in targets(panel) {
                let ref_id = target["refId"].as_str().expect("refId");
                assert!(refs.insert(ref_id), "{here}: refId {ref_id} twice");
                check_ds(&format!("{here} {ref_id}"), &target["datasource"]);
                let query =
                    query_text(target).unwrap_or_else(|| panic!("{here} {ref_id}: no query"));
                if target["datasource"]["type"] == INFLUX_DS {
                    assert_eq!(target["rawQuery"], true, "{here} {ref_id}: raw InfluxQL");
                }
                for used in references(query) {
                    assert!(defined.contains(&used), "{here} {ref_id}: unknown ${used}");
                }
            }
        }
    }
}

// ---- against the running stack -------------------------------------------

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis()
}

/// "30d", "7d", "now-6h" (Grafana's relative times) as a duration.
fn relative(text: &str) -> Duration {
    let text = text.trim_start_matches("now-");
    let (number, unit) = text.split_at(text.len() - 1);
    let n: u64 = number
        .parse()
        .unwrap_or_else(|_| panic!("relative time {text}"));
    let unit_s = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => panic!("relative time {text}"),
    };
    Duration::from_secs(n * unit_s)
}

/// Replaces `$name` and `${name}`, longest names first.
fn substitute(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut names: Vec<&String> = values.keys().collect();
    names.sort_by_key(|n| std::cmp::Reverse(n.len()));
    let mut out = text.to_string();
    for name in names {
        out = out
            .replace(&format!("${{{name}}}"), &values[name])
            .replace(&format!("${name}"), &values[name]);
    }
    out
}

struct Endpoints {
    http: reqwest::Client,
    influx: String,
    prometheus: String,
}

impl Endpoints {
    /// Runs InfluxQL as Grafana's InfluxDB data source does (POST, db,
    /// epoch=ms); the series with at least one value, or why there are none.
    async fn influxql(&self, query: &str) -> Result<Vec<Value>, String> {
        let response = self
            .http
            .post(format!("{}/query", self.influx))
            .form(&[("db", "warmhouse"), ("q", query), ("epoch", "ms")])
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("HTTP {status}, not JSON: {e}"))?;
        if let Some(error) = body["error"].as_str() {
            return Err(format!("InfluxDB error: {error}"));
        }
        let mut series = Vec::new();
        for result in body["results"].as_array().into_iter().flatten() {
            if let Some(error) = result["error"].as_str() {
                return Err(format!("InfluxDB error: {error}"));
            }
            series.extend(result["series"].as_array().into_iter().flatten().cloned());
        }
        let with_values: Vec<Value> = series
            .into_iter()
            .filter(|s| {
                s["values"].as_array().into_iter().flatten().any(|row| {
                    row.as_array()
                        .is_some_and(|cells| cells.iter().skip(1).any(|c| !c.is_null()))
                })
            })
            .collect();
        if with_values.is_empty() {
            return Err("no series with a value".into());
        }
        Ok(with_values)
    }

    /// Runs PromQL over a range as Grafana's Prometheus data source does.
    async fn promql(&self, expr: &str, from_ms: u128, to_ms: u128) -> Result<usize, String> {
        let (start, end) = (
            format!("{:.3}", from_ms as f64 / 1000.0),
            format!("{:.3}", to_ms as f64 / 1000.0),
        );
        let step = INTERVAL_S.to_string();
        let response = self
            .http
            .post(format!("{}/api/v1/query_range", self.prometheus))
            .form(&[
                ("query", expr),
                ("start", &start),
                ("end", &end),
                ("step", &step),
            ])
            .send()
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("not JSON: {e}"))?;
        if body["status"] != "success" {
            return Err(format!("Prometheus error: {}", body["error"]));
        }
        let result = body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if result.is_empty() {
            return Err("no series".into());
        }
        // A quantile of a histogram that saw nothing in the window is NaN:
        // some step must have a number.
        let finite = result.iter().any(|series| {
            series["values"].as_array().into_iter().flatten().any(|v| {
                v[1].as_str()
                    .and_then(|s| s.parse::<f64>().ok())
                    .is_some_and(f64::is_finite)
            })
        });
        if !finite {
            let sample: Vec<&Value> = result[0]["values"]
                .as_array()
                .into_iter()
                .flatten()
                .rev()
                .take(5)
                .collect();
            return Err(format!(
                "{} series, none with a number; latest values: {sample:?}",
                result.len()
            ));
        }
        Ok(result.len())
    }

    /// Values of a Grafana query variable (SHOW TAG VALUES / SHOW
    /// MEASUREMENTS): the last column of every row.
    async fn variable_values(&self, query: &str) -> Result<Vec<String>, String> {
        let series = self.influxql(query).await?;
        let mut values = BTreeSet::new();
        for s in &series {
            for row in s["values"].as_array().into_iter().flatten() {
                if let Some(v) = row
                    .as_array()
                    .and_then(|r| r.last())
                    .and_then(Value::as_str)
                {
                    values.insert(v.to_string());
                }
            }
        }
        Ok(values.into_iter().collect())
    }
}

/// One query of one panel, variables substituted.
struct Check {
    place: String,
    datasource: &'static str,
    query: String,
    range: Duration,
}

/// Resolves each dashboard's variables as Grafana would (running their
/// queries), choosing the run's own home and thermostat, and substitutes
/// them into every target.
async fn checks(endpoints: &Endpoints) -> Vec<Check> {
    let preferred = BTreeMap::from([("home", HOME), ("device", THERMOSTAT)]);
    let mut all = Vec::new();
    for name in DASHBOARDS {
        let d = load_dashboard(name);
        let mut values = BTreeMap::new();
        values.insert("__interval".to_string(), format!("{INTERVAL_S}s"));
        values.insert("__rate_interval".to_string(), RATE_INTERVAL.to_string());
        for variable in d["templating"]["list"].as_array().into_iter().flatten() {
            let var = variable["name"].as_str().unwrap_or_default();
            let query = substitute(variable["query"].as_str().unwrap_or_default(), &values);
            let options = endpoints
                .variable_values(&query)
                .await
                .unwrap_or_else(|e| panic!("{name}: variable {var} ({query}): {e}"));
            let chosen = match preferred.get(var) {
                Some(want) => {
                    assert!(
                        options.iter().any(|o| o == want),
                        "{name}: variable {var} offers {options:?}, not {want}"
                    );
                    want.to_string()
                }
                None => options[0].clone(),
            };
            values.insert(var.to_string(), chosen);
        }
        for panel in panels(&d) {
            let title = panel["title"].as_str().unwrap_or_default();
            let range = panel["timeFrom"].as_str().map(relative).unwrap_or(RANGE);
            for target in targets(panel) {
                let ref_id = target["refId"].as_str().unwrap_or_default();
                let (datasource, query) = match target["datasource"]["type"].as_str() {
                    Some(INFLUX_DS) => (INFLUX_DS, target["query"].as_str()),
                    Some(PROMETHEUS_DS) => (PROMETHEUS_DS, target["expr"].as_str()),
                    other => panic!("{name}: {title}: datasource type {other:?}"),
                };
                all.push(Check {
                    place: format!("{name} / \"{title}\" / {ref_id}"),
                    datasource,
                    query: substitute(query.unwrap_or_default(), &values),
                    range,
                });
            }
        }
    }
    all
}

impl Check {
    async fn run(&self, endpoints: &Endpoints) -> Result<(), String> {
        let to = now_ms();
        let from = to - self.range.as_millis();
        let query = self.query.replace(
            "$timeFilter",
            &format!("time >= {from}ms and time <= {to}ms"),
        );
        let left = references(&query);
        if !left.is_empty() {
            return Err(format!("unresolved variables {left:?} in {query}"));
        }
        match self.datasource {
            INFLUX_DS => endpoints.influxql(&query).await.map(|_| ()),
            _ => endpoints.promql(&query, from, to).await.map(|_| ()),
        }
        .map_err(|e| format!("{e}\n      query: {query}"))
    }
}

fn mosquitto_pub(port: u16, topic: &str, payload: &str) {
    let status = std::process::Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q", "1"])
        .args(["-i", "dashboards-test", "-t", topic, "-m", payload])
        .status()
        .expect("mosquitto_pub (Debian package mosquitto-clients) must be installed");
    assert!(status.success(), "mosquitto_pub to {topic} failed");
}

struct Registry<'a> {
    http: &'a reqwest::Client,
    url: String,
    token: String,
}

impl Registry<'_> {
    async fn get(&self, path: &str) -> Value {
        let response = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("GET the registry");
        response.json().await.unwrap_or(Value::Null)
    }

    async fn until(&self, path: &str, what: &str, done: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let value = self.get(path).await;
            if done(&value) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last: {value}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends a command and waits until it has `final_status`.
    async fn command(&self, device: &str, body: Value, final_status: &str) {
        let response = self
            .http
            .post(format!("{}/api/v1/devices/{device}/commands", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .expect("POST a command");
        assert_eq!(response.status().as_u16(), 202);
        let command: Value = response.json().await.expect("JSON answer");
        let id = command["command_id"]
            .as_str()
            .expect("command id")
            .to_string();
        self.until(
            &format!("/api/v1/devices/{device}/commands/{id}"),
            &format!("command {id} to be {final_status}"),
            |c| c["status"] == final_status,
        )
        .await;
    }
}

/// Runs the rollup continuous query's own statement now, over the last two
/// hours, as influxd will at the end of the hour: the rollup panels then
/// have data in a test that lasts a minute.
async fn roll_up_now(endpoints: &Endpoints) {
    let series = endpoints
        .influxql("SHOW CONTINUOUS QUERIES")
        .await
        .expect("SHOW CONTINUOUS QUERIES");
    let definition = series
        .iter()
        .filter(|s| s["name"] == "warmhouse")
        .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
        .find(|row| row[0] == "rollup_1h")
        .and_then(|row| row[1].as_str().map(String::from))
        .expect("the rollup_1h continuous query exists");
    let body = definition
        .split_once(" BEGIN ")
        .and_then(|(_, rest)| rest.rsplit_once(" END"))
        .map(|(body, _)| body)
        .unwrap_or_else(|| panic!("cannot read {definition}"));
    let (select, group_by) = body
        .split_once(" GROUP BY ")
        .unwrap_or_else(|| panic!("no GROUP BY in {body}"));
    let statement = format!("{select} WHERE time > now() - 2h GROUP BY {group_by}");
    let written = endpoints
        .influxql(&statement)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
    assert!(!written.is_empty());
}

/// Waits until Prometheus has scraped every service. Its first scrapes
/// come seconds after it is ready (target discovery and the scrape manager
/// apply updates every 5 s), and traffic before them would be in the
/// counters' first samples, where `rate` cannot see it.
async fn wait_until_every_service_is_scraped(endpoints: &Endpoints) {
    let expected_jobs = BTreeSet::from([
        "warmhouse-broker",
        "warmhouse-ingest-writer",
        "warmhouse-ingest-query",
        "warmhouse-registry",
    ]);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let targets: Value = endpoints
            .http
            .get(format!("{}/api/v1/targets", endpoints.prometheus))
            .send()
            .await
            .expect("GET /api/v1/targets")
            .json()
            .await
            .expect("targets as JSON");
        let active = targets["data"]["activeTargets"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let up: BTreeSet<&str> = active
            .iter()
            .filter(|t| t["health"] == "up")
            .filter_map(|t| t["labels"]["job"].as_str())
            .collect();
        if up == expected_jobs && active.len() == expected_jobs.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus targets not all up: {targets}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_panel_query_returns_data_from_the_running_stack() {
    let dir = tempfile::tempdir().unwrap();
    let mut stack = Stack::start(
        dir.path(),
        StackOptions {
            registry: true,
            prometheus: true,
            ..StackOptions::default()
        },
    )
    .await
    .expect("starting the stack");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let registry = Registry {
        http: &http,
        url: stack.registry_url().expect("a registry"),
        token: stack.admin_token().unwrap(),
    };
    register_fleet(
        &http,
        &registry.url,
        &registry.token,
        &stack.simulator(SIM_ARGS),
    )
    .await
    .expect("registering the simulated fleet");
    let endpoints = Endpoints {
        http: http.clone(),
        influx: stack.influxd.url(),
        prometheus: stack.prometheus_url().expect("Prometheus"),
    };
    wait_until_every_service_is_scraped(&endpoints).await;

    let (stop_devices, devices_stopped) = oneshot::channel::<()>();
    let sim = stack.simulator(SIM_ARGS);
    let devices = tokio::spawn(async move {
        warmhouse_simulator::run(sim, async {
            let _ = devices_stopped.await;
        })
        .await
        .expect("simulator run")
    });
    registry
        .until(
            &format!("/api/v1/devices/{THERMOSTAT}/state"),
            "the thermostat to be online",
            |s| s["presence"] == "online",
        )
        .await;

    // Commands in two rounds a few scrapes apart, so the round-trip
    // histogram has a rate to take a quantile of.
    let set_target =
        |t: f64| json!({"name": "set_target_temperature", "params": {"temperature": t}});
    registry
        .command(THERMOSTAT, set_target(22.5), "acked")
        .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    registry
        .command(THERMOSTAT, set_target(21.0), "acked")
        .await;
    // A relay has no target temperature: the device refuses it.
    registry.command(RELAY, set_target(20.0), "failed").await;

    // One undecodable publish: a dead letter from the broker's ingress.
    mosquitto_pub(
        stack.mqtt_port(),
        &format!("/tenants/{THERMOSTAT}/telemetry"),
        "not json",
    );

    // A short InfluxDB outage: the writer retries and its lag grows.
    stack.influxd.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    stack.influxd.start_again().expect("restarting influxd");

    // Data is queryable through the REST API again (and the query API has
    // traffic for its panels).
    let latest = format!("{}/api/v1/homes/{HOME}/telemetry/latest", stack.query_url());
    let deadline = Instant::now() + PATIENCE;
    let mut answered = 0;
    // Several answers over a few scrapes, as from a user refreshing.
    while answered < 8 {
        let response = http.get(&latest).bearer_auth(&registry.token).send().await;
        if response.is_ok_and(|r| r.status().is_success()) {
            answered += 1;
        }
        assert!(
            Instant::now() < deadline,
            "no telemetry of {HOME} at {latest}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    roll_up_now(&endpoints).await;

    // The lag gauge measured the outage.
    let peak = endpoints
        .http
        .get(format!("{}/api/v1/query", endpoints.prometheus))
        .query(&[(
            "query",
            "max_over_time(sum(warmhouse_ingest_consumer_lag)[10m:1s])",
        )])
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let peak_lag: f64 = peak["data"]["result"][0]["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no consumer lag in Prometheus: {peak}"));
    assert!(
        peak_lag > 0.0,
        "the consumer lag never rose, not even during the outage"
    );

    // Every panel of every dashboard; a panel whose data is still on its
    // way (the next scrape) gets until the deadline.
    let mut pending = checks(&endpoints).await;
    let total = pending.len();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut failed = Vec::new();
        for check in pending {
            if let Err(why) = check.run(&endpoints).await {
                failed.push((check, why));
            }
        }
        if failed.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let report: Vec<String> = failed
                .iter()
                .map(|(check, why)| format!("  {}: {why}", check.place))
                .collect();
            panic!(
                "{} of {total} panel queries failed:\n{}",
                failed.len(),
                report.join("\n")
            );
        }
        pending = failed.into_iter().map(|(check, _)| check).collect();
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    let _ = stop_devices.send(());
    let _ = devices.await;
    stack.stop().await;
}
