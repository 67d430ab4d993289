//! The API gateway end to end: real nginx with gateway/gateway.conf.template
//! in front of the real registry and query API (with PostgreSQL, tansu,
//! influxd, the broker, bridge, ingest and the simulator as devices), every
//! route family driven through it; and nginx in front of recording
//! upstreams, to see exactly what it forwards.

use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warmhouse_device_registry::legacy::import;
use warmhouse_devstack::free_port;
use warmhouse_stack::fleet::register_fleet;
use warmhouse_stack::gateway::{self, GatewayConfig, RateLimit};
use warmhouse_stack::{Stack, StackOptions};

/// One home: a thermostat, a climate sensor and a relay.
const SIM_ARGS: &[&str] = &[
    "--homes",
    "1",
    "--devices-per-home",
    "3",
    "--interval-ms",
    "200",
    "--run-id",
    "gw",
];
const HOME: &str = "home-gw-0001";
const THERMOSTAT: &str = "home-gw-0001-dev-01";
const PATIENCE: Duration = Duration::from_secs(30);
const MONOLITH_SQL: &str = include_str!("../../device-registry/tests/fixtures/monolith.sql");

fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.text))
    }

    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// A problem+json body of `status` and `urn:warmhouse:problem:{slug}`.
    fn assert_problem(&self, status: u16, slug: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text);
        assert_eq!(
            self.header("content-type"),
            "application/problem+json",
            "{}",
            self.text
        );
        let body = self.json();
        assert_eq!(
            body["type"],
            format!("urn:warmhouse:problem:{slug}"),
            "{body}"
        );
        assert_eq!(body["status"], status, "{body}");
        assert!(
            body["title"].is_string() && body["detail"].is_string(),
            "{body}"
        );
        body
    }
}

/// An HTTP client of one base URL, with or without the admin's token.
struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Api {
    fn new(base: String, token: String) -> Self {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20))
            .build()
            .expect("HTTP client");
        Self { http, base, token }
    }

    fn request(&self, method: Method, path: &str, auth: bool) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        if auth {
            request.bearer_auth(&self.token)
        } else {
            request
        }
    }

    async fn send(request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("the gateway answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response.bytes().await.expect("body");
        let text = if headers
            .get("content-encoding")
            .is_some_and(|v| v.as_bytes() == b"gzip")
        {
            let mut text = String::new();
            flate2::read::GzDecoder::new(&bytes[..])
                .read_to_string(&mut text)
                .expect("gzip body");
            text
        } else {
            String::from_utf8_lossy(&bytes).into_owned()
        };
        Answer {
            status,
            headers,
            text,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        Self::send(self.request(Method::GET, path, true)).await
    }

    async fn anonymous(&self, method: Method, path: &str) -> Answer {
        Self::send(self.request(method, path, false)).await
    }

    async fn call(&self, method: Method, path: &str, body: Value) -> Answer {
        Self::send(self.request(method, path, true).json(&body)).await
    }

    /// GETs `path` until `done` holds for a 200 answer's JSON.
    async fn until(&self, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let answer = self.get(path).await;
            if answer.status == 200 && done(&answer.json()) {
                return answer.json();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last: {} {}",
                answer.status,
                answer.text
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_family_works_through_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::start(
        dir.path(),
        StackOptions {
            registry: true,
            gateway: true,
            ..StackOptions::default()
        },
    )
    .await
    .expect("starting the stack with the gateway");
    let token = stack.admin_token().unwrap();
    let gw = Api::new(stack.gateway_url().expect("a gateway"), token.clone());
    let registry = Api::new(stack.registry_url().expect("a registry"), token.clone());
    let query = Api::new(stack.query_url(), token.clone());

    let health = gw.anonymous(Method::GET, "/healthz").await;
    assert_eq!((health.status, health.text.as_str()), (200, "ok\n"));

    // Fleet registration, as the local stack does it, through the gateway.
    register_fleet(&gw.http, &gw.base, &token, &stack.simulator(SIM_ARGS))
        .await
        .expect("registering the simulated fleet through the gateway");

    registry_crud(&gw).await;
    auth_problems_pass_through_unchanged(&gw, &registry, &query).await;
    unknown_paths_are_404(&gw).await;
    body_limit(&gw).await;
    docs(&gw, &registry, &query).await;
    devices_telemetry_commands_and_onboarding(&stack, &gw).await;
    legacy_heating(&stack, &gw).await;
    rate_limit(&stack, dir.path()).await;
    access_log(&stack.dir.join("gateway/access.log"), &token);
    stack.stop().await;
}

async fn registry_crud(gw: &Api) {
    let created = gw
        .call(
            Method::POST,
            "/api/v1/homes",
            json!({"id": "home-crud", "name": "Through the gateway"}),
        )
        .await;
    assert_eq!(created.status, 201, "{}", created.text);
    assert_eq!(created.json()["name"], "Through the gateway");
    let patched = gw
        .call(
            Method::PATCH,
            "/api/v1/homes/home-crud",
            json!({"name": "Renamed"}),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    assert_eq!(
        gw.get("/api/v1/homes/home-crud").await.json()["name"],
        "Renamed"
    );
    let homes = gw.get("/api/v1/homes?limit=500").await.json();
    assert!(
        homes["items"]
            .as_array()
            .is_some_and(|h| h.iter().any(|h| h["id"] == "home-crud")),
        "{homes}"
    );

    let device = gw
        .call(
            Method::POST,
            "/api/v1/devices",
            json!({"id": "crud-dev", "home_id": "home-crud", "kind": "relay", "name": "Boiler"}),
        )
        .await;
    assert_eq!(device.status, 201, "{}", device.text);
    let listed = gw.get("/api/v1/devices?home_id=home-crud").await.json();
    assert_eq!(listed["items"][0]["id"], "crud-dev", "{listed}");
    let patched = gw
        .call(
            Method::PATCH,
            "/api/v1/devices/crud-dev",
            json!({"name": "Boiler relay"}),
        )
        .await;
    assert_eq!(patched.status, 200, "{}", patched.text);
    for path in ["/api/v1/devices/crud-dev", "/api/v1/homes/home-crud"] {
        let deleted = Api::send(gw.request(Method::DELETE, path, true)).await;
        assert_eq!(deleted.status, 204, "DELETE {path}: {}", deleted.text);
    }
    // The registry's own 404 comes back as the registry wrote it.
    let gone = gw.get("/api/v1/homes/home-crud").await;
    let body = gone.assert_problem(404, "not-found");
    assert!(
        body["detail"].as_str().unwrap_or("").contains("home-crud"),
        "{body}"
    );

    // X-Request-Id: the client's is kept, else one is made; both come back.
    let mine = Api::send(
        gw.request(Method::GET, "/api/v1/homes", true)
            .header("X-Request-Id", "test-request-42"),
    )
    .await;
    assert_eq!(mine.header("x-request-id"), "test-request-42");
    let made = gw.get("/api/v1/homes").await;
    assert_eq!(made.header("x-request-id").len(), 32, "{:?}", made.headers);
}

/// No token: the services' 401 problems, challenge included, arrive as the
/// services wrote them.
async fn auth_problems_pass_through_unchanged(gw: &Api, registry: &Api, query: &Api) {
    for (path, direct) in [
        ("/api/v1/homes", registry),
        ("/api/v1/devices/x/state", registry),
        ("/api/v1/homes/h/telemetry/latest", query),
        ("/api/v1/devices/d/telemetry?metric=temperature", query),
    ] {
        let through = gw.anonymous(Method::GET, path).await;
        let straight = direct.anonymous(Method::GET, path).await;
        through.assert_problem(401, "unauthorized");
        assert_eq!(through.text, straight.text, "{path}");
        assert_eq!(
            through.header("www-authenticate"),
            straight.header("www-authenticate"),
            "{path}"
        );
        assert_eq!(
            through.header("www-authenticate"),
            r#"Bearer realm="warmhouse""#
        );
    }
    let bad = Api::send(
        gw.http
            .get(format!("{}/api/v1/homes", gw.base))
            .bearer_auth("not-a-jwt"),
    )
    .await;
    bad.assert_problem(401, "unauthorized");
    assert!(bad.header("www-authenticate").contains("invalid_token"));
}

async fn unknown_paths_are_404(gw: &Api) {
    // Not routed: the gateway's own problem.
    for path in [
        "/",
        "/nope",
        "/metrics",
        "/readyz",
        "/internal/v1/device-access",
        "/api/v2/homes",
    ] {
        let answer = gw.get(path).await;
        let body = answer.assert_problem(404, "not-found");
        assert!(
            body["detail"].as_str().unwrap_or("").contains("/docs"),
            "{path}: {body}"
        );
    }
    // Routed, but no such endpoint: the registry's or the query API's 404.
    let answer = gw.get("/api/v1/nothing-here").await;
    let body = answer.assert_problem(404, "not-found");
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or("")
            .contains("/api/v1/nothing-here"),
        "{body}"
    );
    let answer = gw.get("/api/v1/homes/h/telemetry/nothing").await;
    answer.assert_problem(404, "not-found");
}

async fn body_limit(gw: &Api) {
    let limit = warmhouse_device_registry::MAX_BODY_BYTES;
    let body_of = |size: usize| {
        let head = r#"{"id":"home-big","name":""#;
        let tail = r#""}"#;
        let text = format!("{head}{}{tail}", "x".repeat(size - head.len() - tail.len()));
        assert_eq!(text.len(), size);
        text
    };
    let too_big = Api::send(
        gw.request(Method::POST, "/api/v1/homes", true)
            .header("content-type", "application/json")
            .body(body_of(limit + 1)),
    )
    .await;
    let problem = too_big.assert_problem(413, "payload-too-large");
    assert!(
        problem["detail"].as_str().unwrap_or("").contains("64 KiB"),
        "the gateway answered: {problem}"
    );
    // Exactly the limit passes the gateway; the registry judges the content.
    let at_limit = Api::send(
        gw.request(Method::POST, "/api/v1/homes", true)
            .header("content-type", "application/json")
            .body(body_of(limit)),
    )
    .await;
    let problem = at_limit.assert_problem(422, "invalid-body");
    assert_eq!(problem["field"], "name", "{problem}");
    // The legacy API, without a token, has the same limit.
    let legacy = Api::send(
        gw.request(Method::PUT, "/api/heating/1", false)
            .header("content-type", "application/json")
            .body(body_of(limit + 1)),
    )
    .await;
    legacy.assert_problem(413, "payload-too-large");
}

async fn docs(gw: &Api, registry: &Api, query: &Api) {
    let redirect = gw.anonymous(Method::GET, "/docs").await;
    assert_eq!(
        (redirect.status, redirect.header("location")),
        (301, "/docs/")
    );
    let index = gw.anonymous(Method::GET, "/docs/").await;
    assert_eq!(index.status, 200);
    assert!(index.header("content-type").starts_with("text/html"));
    for link in [
        "href=\"registry/\"",
        "href=\"telemetry/\"",
        "/api-docs/registry/openapi.json",
        "/api-docs/telemetry/openapi.json",
    ] {
        assert!(index.text.contains(link), "{link} in {}", index.text);
    }

    for (name, service, title) in [
        ("registry", registry, "Warmhouse device registry"),
        ("telemetry", query, "Warmhouse telemetry query API"),
    ] {
        let prefix = format!("/docs/{name}");
        let redirect = gw.anonymous(Method::GET, &prefix).await;
        assert_eq!(redirect.status, 301, "{prefix}");
        assert_eq!(redirect.header("location"), format!("{prefix}/"));

        let page = gw.anonymous(Method::GET, &format!("{prefix}/")).await;
        assert_eq!(page.status, 200, "{prefix}/");
        assert!(page.header("content-type").starts_with("text/html"));
        assert!(
            page.text.contains("./swagger-initializer.js"),
            "{}",
            page.text
        );
        for asset in [
            "swagger-ui.css",
            "index.css",
            "swagger-ui-bundle.js",
            "swagger-ui-standalone-preset.js",
        ] {
            let answer = gw
                .anonymous(Method::GET, &format!("{prefix}/{asset}"))
                .await;
            assert_eq!(answer.status, 200, "{prefix}/{asset}");
            assert!(!answer.text.is_empty(), "{prefix}/{asset}");
        }
        let bundle = gw
            .anonymous(Method::GET, &format!("{prefix}/swagger-ui-bundle.js"))
            .await;
        assert!(
            bundle.text.len() > 100_000,
            "the whole bundle streams through"
        );

        // The initializer points Swagger UI at the document through the
        // gateway, also when the browser asks for gzip.
        let spec_path = format!("/api-docs/{name}/openapi.json");
        for encoding in [None, Some("gzip")] {
            let mut request = gw.request(
                Method::GET,
                &format!("{prefix}/swagger-initializer.js"),
                false,
            );
            if let Some(encoding) = encoding {
                request = request.header("accept-encoding", encoding);
            }
            let initializer = Api::send(request).await;
            assert_eq!(initializer.status, 200);
            assert!(
                initializer.text.contains(&format!("\"{spec_path}\"")),
                "{encoding:?}: {}",
                initializer.text
            );
            assert!(!initializer.text.contains("\"/api-docs/openapi.json\""));
        }

        let spec = gw.anonymous(Method::GET, &spec_path).await;
        assert_eq!(spec.status, 200, "{spec_path}");
        assert!(spec.header("content-type").starts_with("application/json"));
        assert_eq!(spec.json()["info"]["title"], title);
        let direct = service
            .anonymous(Method::GET, "/api-docs/openapi.json")
            .await;
        assert_eq!(spec.json(), direct.json(), "{name}: the same document");
    }
}

async fn devices_telemetry_commands_and_onboarding(stack: &Stack, gw: &Api) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let config = stack.simulator(SIM_ARGS);
    let devices = tokio::spawn(async move {
        warmhouse_simulator::run(config, async {
            let _ = stopped.await;
        })
        .await
        .expect("simulator run")
    });

    // State (the registry's read model) and a command's round trip.
    gw.until(
        &format!("/api/v1/devices/{THERMOSTAT}/state"),
        "the thermostat to be online",
        |s| s["presence"] == "online",
    )
    .await;
    let sent = gw
        .call(
            Method::POST,
            &format!("/api/v1/devices/{THERMOSTAT}/commands"),
            json!({"name": "set_target_temperature", "params": {"temperature": 22.5}, "ttl_seconds": 60}),
        )
        .await;
    assert_eq!(sent.status, 202, "{}", sent.text);
    let id = sent.json()["command_id"]
        .as_str()
        .expect("command id")
        .to_string();
    gw.until(
        &format!("/api/v1/devices/{THERMOSTAT}/commands/{id}"),
        "the command to be acked",
        |c| c["status"] == "acked",
    )
    .await;
    let listed = gw
        .get(&format!("/api/v1/devices/{THERMOSTAT}/commands"))
        .await;
    assert_eq!(listed.status, 200, "{}", listed.text);
    assert!(listed.text.contains(&id));
    gw.until(
        &format!("/api/v1/devices/{THERMOSTAT}/state"),
        "the reported target",
        |s| s["reported"]["target_temperature"] == 22.5,
    )
    .await;

    // Telemetry, from the query API.
    let home = gw
        .until(
            &format!("/api/v1/homes/{HOME}/telemetry/latest"),
            "the home's latest readings",
            |h| h["devices"].as_array().is_some_and(|d| d.len() == 3),
        )
        .await;
    assert_eq!(home["home_id"], HOME);
    let latest = gw
        .until(
            &format!("/api/v1/devices/{THERMOSTAT}/telemetry/latest"),
            "the thermostat's latest readings",
            |d| d["metrics"].as_array().is_some_and(|m| !m.is_empty()),
        )
        .await;
    assert_eq!(latest["device_id"], THERMOSTAT);
    let range = gw
        .until(
            &format!("/api/v1/devices/{THERMOSTAT}/telemetry?metric=temperature"),
            "raw temperature points",
            |r| r["points"].as_array().is_some_and(|p| !p.is_empty()),
        )
        .await;
    assert_eq!(range["metric"], "temperature");
    let windows = gw
        .until(
            &format!("/api/v1/devices/{THERMOSTAT}/telemetry?metric=temperature&agg=mean&every=1m"),
            "aggregated temperature",
            |r| r["windows"].as_array().is_some_and(|w| !w.is_empty()),
        )
        .await;
    assert_eq!(windows["agg"], "mean");
    // The query API's own validation comes through.
    let bad = gw
        .get(&format!("/api/v1/devices/{THERMOSTAT}/telemetry?limit=0"))
        .await;
    let problem = bad.assert_problem(400, "invalid-parameter");
    assert_eq!(problem["parameter"], "limit");

    // Onboarding: the saga, then its record.
    let onboarded = gw
        .call(
            Method::POST,
            "/api/v1/onboarding",
            json!({
                "device": {"id": "gw-onboarded", "home_id": HOME, "kind": "thermostat", "name": "Hall"},
                "credentials": "password",
            }),
        )
        .await;
    assert_eq!(onboarded.status, 201, "{}", onboarded.text);
    let body = onboarded.json();
    assert_eq!(body["saga"]["state"], "completed", "{body}");
    let saga_id = body["saga"]["saga_id"].as_str().expect("saga id");
    let saga = gw.get(&format!("/api/v1/onboarding/{saga_id}")).await;
    assert_eq!(saga.status, 200, "{}", saga.text);
    assert_eq!(saga.json()["device_id"], "gw-onboarded");
    let device = gw.get("/api/v1/devices/gw-onboarded").await;
    assert_eq!(device.json()["status"], "active", "{}", device.text);

    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(15), devices).await;
}

async fn legacy_heating(stack: &Stack, gw: &Api) {
    let postgres = stack.postgres.as_ref().expect("the stack runs PostgreSQL");
    let monolith = postgres
        .create_database("monolith")
        .expect("createdb monolith");
    let pool = sqlx::PgPool::connect(&monolith)
        .await
        .expect("connecting to the monolith");
    sqlx::raw_sql(MONOLITH_SQL)
        .execute(&pool)
        .await
        .expect("loading the monolith fixture");
    pool.close().await;
    let report = import::run(&import::ImportOptions::new(
        monolith,
        postgres.database_url("warmhouse"),
    ))
    .await
    .expect("importing the monolith");
    assert!(report.heating_systems.created >= 5, "{report:?}");

    // No token: the monolith's clients have none.
    let system = gw.anonymous(Method::GET, "/api/heating/1").await;
    assert_eq!(system.status, 200, "{}", system.text);
    let body = system.json();
    assert_eq!(
        (body["id"].clone(), body["on"].clone()),
        (json!(1), json!(true))
    );
    assert_eq!(body["targetTemperature"], 22.5);
    let current = gw
        .anonymous(Method::GET, "/api/heating/2/current-temperature")
        .await;
    assert_eq!((current.status, current.text.as_str()), (200, "19.75"));
    let off = gw.anonymous(Method::POST, "/api/heating/1/turn-off").await;
    assert_eq!(off.status, 204, "{}", off.text);
    let set = gw
        .anonymous(
            Method::POST,
            "/api/heating/1/set-temperature?temperature=23.0",
        )
        .await;
    assert_eq!(set.status, 202, "{}", set.text);
    // Its Location is relative and reachable through the gateway too.
    let location = set.header("location").to_string();
    assert!(
        location.starts_with("/api/v1/devices/legacy-heating-1/commands/"),
        "{location}"
    );
    let command = gw.get(&location).await;
    assert_eq!(
        command.json()["name"],
        "set_target_temperature",
        "{}",
        command.text
    );
    let put = Api::send(
        gw.request(Method::PUT, "/api/heating/3", false)
            .json(&json!({"id": 3, "on": false, "targetTemperature": 19.0})),
    )
    .await;
    assert_eq!(put.status, 200, "{}", put.text);
    assert_eq!(put.json()["targetTemperature"], 19.0);
    gw.anonymous(Method::GET, "/api/heating/999")
        .await
        .assert_problem(404, "not-found");
}

/// A second gateway with a tight limit in front of the same services: a
/// client's burst beyond it gets 429 problems, another client does not,
/// and the first is served again once the rate allows.
async fn rate_limit(stack: &Stack, dir: &std::path::Path) {
    let registry = stack.registry.as_ref().expect("a registry").addr;
    let config = GatewayConfig {
        listen: loopback(free_port().unwrap()),
        registry,
        telemetry: stack.query.addr,
        rate_limit: RateLimit {
            per_second: 1,
            burst: 5,
        },
        access_log: dir.join("gateway-strict/access.log"),
        real_ip_from: "127.0.0.1/32".into(),
    };
    let strict = gateway::start(&dir.join("gateway-strict"), &config).expect("strict gateway");
    let api = Api::new(strict.url(), String::new());
    // Without a token the registry answers 401 at once: the burst is over
    // in milliseconds, so the rate adds no token meanwhile.
    let from = |client: &'static str| {
        api.request(Method::GET, "/api/v1/homes", false)
            .header("X-Forwarded-For", client)
    };

    let mut statuses = Vec::new();
    let mut refused = None;
    for _ in 0..20 {
        let answer = Api::send(from("203.0.113.10")).await;
        statuses.push(answer.status);
        if answer.status == 429 {
            refused.get_or_insert(answer);
        }
    }
    // 1 at the rate plus the burst of 5 at once; then at most a token or
    // two more on a slow machine.
    assert_eq!(statuses[..6], [401; 6], "{statuses:?}");
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert!(limited >= 12, "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 401 || *s == 429),
        "{statuses:?}"
    );
    let refused = refused.expect("a 429");
    refused.assert_problem(429, "rate-limited");
    assert_eq!(refused.header("retry-after"), "1");
    assert_eq!(refused.header("x-request-id").len(), 32);

    // Another client (named by a trusted proxy) has its own allowance.
    assert_eq!(Api::send(from("198.51.100.20")).await.status, 401);
    // Health checks and the docs index are never limited.
    assert_eq!(api.anonymous(Method::GET, "/healthz").await.status, 200);
    assert_eq!(api.anonymous(Method::GET, "/docs/").await.status, 200);
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    assert_eq!(Api::send(from("203.0.113.10")).await.status, 401);

    // Refused requests never reached the registry.
    let log = std::fs::read_to_string(dir.join("gateway-strict/access.log")).expect("access log");
    let refusals: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e["status"] == 429)
        .collect();
    assert_eq!(refusals.len(), limited, "{log}");
    assert!(refusals.iter().all(|e| e["upstream"] == ""), "{log}");
    assert!(
        refusals.iter().all(|e| e["client"] == "203.0.113.10"),
        "{log}"
    );
}

/// One JSON object per request, without credentials.
fn access_log(path: &std::path::Path, token: &str) {
    let log = std::fs::read_to_string(path).expect("the gateway's access log");
    let mut saw_create = false;
    for line in log.lines() {
        let entry: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for key in [
            "time",
            "request_id",
            "client",
            "method",
            "uri",
            "status",
            "request_time",
        ] {
            assert!(entry.get(key).is_some(), "{key} in {line}");
        }
        saw_create |= entry["method"] == "POST"
            && entry["uri"] == "/api/v1/homes"
            && entry["status"] == 201
            && entry["upstream"].as_str().is_some_and(|u| !u.is_empty());
    }
    assert!(saw_create, "{log}");
    assert!(!log.contains(token) && !log.contains("Bearer"));
}

/// Requests an upstream received: (upstream name, request head).
type Seen = Arc<Mutex<Vec<(&'static str, String)>>>;

/// A minimal HTTP server that records each request's head and answers
/// 200 naming itself (`Connection: close`, one request per connection).
async fn recording_upstream(name: &'static str, seen: Seen) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&buf).into_owned();
                seen.lock().unwrap().push((name, head));
                let body = format!("{{\"upstream\":\"{name}\"}}");
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    addr
}

/// What nginx forwards, where, with which headers, seen from the upstream
/// side; and its own 502 when a service is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_routes_each_path_and_sets_forwarding_headers() {
    let dir = tempfile::tempdir().unwrap();
    let seen: Seen = Arc::default();
    let registry = recording_upstream("registry", seen.clone()).await;
    let telemetry = recording_upstream("telemetry", seen.clone()).await;
    let mut config = GatewayConfig {
        listen: loopback(free_port().unwrap()),
        registry,
        telemetry,
        rate_limit: RateLimit::GENEROUS,
        access_log: dir.path().join("gateway/access.log"),
        real_ip_from: "127.0.0.1/32".into(),
    };
    let nginx = gateway::start(&dir.path().join("gateway"), &config).expect("gateway");
    let api = Api::new(nginx.url(), "t0ken".into());

    for (path, upstream) in [
        ("/api/v1/devices/d-1/telemetry/latest", "telemetry"),
        (
            "/api/v1/devices/d-1/telemetry?metric=temperature&agg=mean&every=1m",
            "telemetry",
        ),
        ("/api/v1/homes/h-1/telemetry/latest", "telemetry"),
        ("/api/v1/homes/h-1", "registry"),
        ("/api/v1/homes", "registry"),
        ("/api/v1/devices/d-1", "registry"),
        ("/api/v1/devices/d-1/state", "registry"),
        ("/api/v1/devices/d-1/commands/c-1", "registry"),
        ("/api/v1/devices/telemetry", "registry"),
        ("/api/v1/onboarding/s-1", "registry"),
        ("/api/heating/1/current-temperature", "registry"),
    ] {
        seen.lock().unwrap().clear();
        let answer = api.get(path).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.text);
        assert_eq!(answer.json()["upstream"], upstream, "{path}");
        let (name, head) = seen.lock().unwrap().pop().expect("forwarded");
        assert_eq!(name, upstream);
        assert!(
            head.starts_with(&format!("GET {path} HTTP/1.1\r\n")),
            "{head}"
        );
    }

    // Headers, as the upstream received them.
    seen.lock().unwrap().clear();
    let answer = Api::send(
        api.request(Method::GET, "/api/v1/homes", true)
            .header("X-Request-Id", "abc-123")
            .header("X-Forwarded-For", "203.0.113.9"),
    )
    .await;
    assert_eq!(answer.header("x-request-id"), "abc-123");
    let (_, head) = seen.lock().unwrap().pop().expect("forwarded");
    let head = head.to_ascii_lowercase();
    for line in [
        "authorization: bearer t0ken\r\n",
        "x-forwarded-for: 203.0.113.9, 127.0.0.1\r\n",
        "x-forwarded-proto: http\r\n",
        "x-request-id: abc-123\r\n",
        &format!("host: {}\r\n", config.listen),
    ] {
        assert!(head.contains(line), "{line:?} in {head}");
    }
    // A request id that is not a plain token is replaced.
    seen.lock().unwrap().clear();
    let answer = Api::send(
        api.request(Method::GET, "/api/v1/homes", false)
            .header("X-Request-Id", "a b\"c"),
    )
    .await;
    let id = answer.header("x-request-id").to_string();
    assert_eq!(id.len(), 32, "{id}");
    let (_, head) = seen.lock().unwrap().pop().expect("forwarded");
    assert!(head.contains(&format!("X-Request-Id: {id}\r\n")), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("authorization"),
        "{head}"
    );

    // A service that is down: the gateway's 502 problem.
    drop(nginx);
    config.telemetry = loopback(free_port().unwrap());
    let nginx = gateway::start(&dir.path().join("gateway-2"), &config).expect("gateway");
    let api = Api::new(nginx.url(), "t0ken".into());
    let down = api.get("/api/v1/homes/h-1/telemetry/latest").await;
    down.assert_problem(502, "upstream-unavailable");
    assert_eq!(down.header("retry-after"), "5");
    assert_eq!(api.get("/api/v1/homes/h-1").await.status, 200);
}
