//! The registry's REST API against a real PostgreSQL (devstack).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use warmhouse_device_registry::{start, RegistryConfig, RunningRegistry};
use warmhouse_devstack::Postgres;
use warmhouse_service_kit::auth::testing::TestTokens;

/// The service under test verifies HS256 tokens from an issuer.
fn tokens() -> TestTokens {
    TestTokens::new(
        "registry-test-secret-0123456789abcdef",
        Some("warmhouse-tests"),
    )
}

fn admin_token() -> String {
    tokens().admin().expect("signing a token")
}

fn home_token(homes: &[&str]) -> String {
    tokens().for_homes(homes).expect("signing a token")
}

/// PostgreSQL must be started on the test's own thread: it is killed when
/// the thread that spawned it exits (PR_SET_PDEATHSIG).
fn postgres() -> (tempfile::TempDir, Postgres) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = Postgres::start(dir.path()).expect("starting PostgreSQL");
    (dir, pg)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

async fn registry(url: String) -> (RunningRegistry, tokio::sync::oneshot::Sender<()>) {
    let mut config = RegistryConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), url);
    config.ready_interval_ms = 200;
    config.acquire_timeout_ms = 1_000;
    config.auth = tokens().config();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let running = start(config, async {
        let _ = rx.await;
    })
    .await
    .expect("starting registry");
    (running, tx)
}

struct Api {
    client: Client,
    base: String,
    /// Bearer token sent by `call` and `raw`; `None` sends none.
    token: Option<String>,
}

impl Api {
    /// A client with an admin's token.
    fn new(addr: SocketAddr) -> Self {
        Self {
            client: Client::new(),
            base: format!("http://{addr}"),
            token: Some(admin_token()),
        }
    }

    /// The same API, called with `token`.
    fn with_token(&self, token: Option<String>) -> Self {
        Self {
            client: self.client.clone(),
            base: self.base.clone(),
            token,
        }
    }

    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.request(method, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let problem = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v == "application/problem+json");
        let text = response.text().await.expect("body");
        if status.is_client_error() || status.is_server_error() {
            assert!(problem, "{path}: {status} without problem+json: {text}");
        }
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    async fn raw(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: String,
    ) -> (StatusCode, Value) {
        let mut request = self.request(method, path).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        assert_eq!(
            response.headers().get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/problem+json"[..]),
            "{path}: {status}"
        );
        (status, response.json().await.expect("problem body"))
    }
}

async fn create_homes(api: &Api, homes: &[&str]) {
    for home in homes {
        let (status, problem) = api
            .call(
                Method::POST,
                "/api/v1/homes",
                Some(json!({"id": home, "name": home})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{problem}");
    }
}

fn device(id: &str, home: &str, kind: &str, status: &str) -> Value {
    json!({"id": id, "home_id": home, "kind": kind, "name": format!("Device {id}"),
           "capabilities": ["temperature"], "status": status})
}

#[test]
fn homes_and_devices_round_trip() {
    let (_dir, pg) = postgres();
    let url = pg.create_database("crud").expect("createdb");
    runtime().block_on(async {
        let (running, _stop) = registry(url).await;
        let api = Api::new(running.addr);

        let (status, home) = api
            .call(Method::POST, "/api/v1/homes", Some(json!({
                "id": "home-a", "name": "Lake house", "address": "1 Shore Rd",
                "timezone": "Europe/Berlin", "metadata": {"floors": 2}
            })))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{home}");
        assert_eq!(home["timezone"], "Europe/Berlin");
        assert_eq!(home["metadata"]["floors"], 2);

        let (status, problem) = api
            .call(Method::POST, "/api/v1/homes", Some(json!({"id": "home-a", "name": "Again"})))
            .await;
        assert_eq!(status, StatusCode::CONFLICT);
        assert_eq!(problem["type"], "urn:warmhouse:problem:conflict");

        let (status, got) = api.call(Method::GET, "/api/v1/homes/home-a", None).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(got["name"], "Lake house");

        let (status, patched) = api
            .call(Method::PATCH, "/api/v1/homes/home-a", Some(json!({"name": "Cabin", "address": null})))
            .await;
        assert_eq!(status, StatusCode::OK, "{patched}");
        assert_eq!(patched["name"], "Cabin");
        assert_eq!(patched["address"], Value::Null);
        assert_eq!(patched["timezone"], "Europe/Berlin");

        let (status, _) = api
            .call(Method::POST, "/api/v1/homes", Some(json!({"id": "home-b", "name": "Flat"})))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let (_, list) = api.call(Method::GET, "/api/v1/homes", None).await;
        let ids: Vec<&str> = list["items"].as_array().unwrap().iter().map(|h| h["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["home-a", "home-b"]);
        assert_eq!(list["next_cursor"], Value::Null);
        assert_eq!(list["items"][1]["timezone"], "UTC");

        let (status, created) = api
            .call(Method::POST, "/api/v1/devices", Some(device("dev-1", "home-a", "thermostat", "active")))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        assert_eq!(created["capabilities"], json!(["temperature"]));
        let (status, _) = api
            .call(Method::POST, "/api/v1/devices", Some(device("dev-1", "home-a", "thermostat", "active")))
            .await;
        assert_eq!(status, StatusCode::CONFLICT);

        let (status, moved) = api
            .call(Method::PATCH, "/api/v1/devices/dev-1", Some(json!({
                "home_id": "home-b", "status": "disabled", "capabilities": ["switch", "power_meter"],
                "metadata": {"fw": "1.2"}
            })))
            .await;
        assert_eq!(status, StatusCode::OK, "{moved}");
        assert_eq!(moved["home_id"], "home-b");
        assert_eq!(moved["status"], "disabled");
        assert_eq!(moved["kind"], "thermostat");
        assert_eq!(moved["metadata"]["fw"], "1.2");
        let (_, mut got) = api.call(Method::GET, "/api/v1/devices/dev-1", None).await;
        // GET adds the device's state (shadow and presence) to the record.
        let state = got
            .as_object_mut()
            .and_then(|o| o.remove("state"))
            .expect("GET shows the device's state");
        assert_eq!(state["presence"], "unknown", "{state}");
        assert_eq!(got, moved);

        // A home with devices cannot go.
        let (status, problem) = api.call(Method::DELETE, "/api/v1/homes/home-b", None).await;
        assert_eq!(status, StatusCode::CONFLICT, "{problem}");
        let (status, _) = api.call(Method::DELETE, "/api/v1/devices/dev-1", None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, _) = api.call(Method::DELETE, "/api/v1/devices/dev-1", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let (status, _) = api.call(Method::DELETE, "/api/v1/homes/home-b", None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let (status, problem) = api.call(Method::GET, "/api/v1/homes/home-b", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(problem["type"], "urn:warmhouse:problem:not-found");
    });
}

#[test]
fn filters_and_pagination() {
    let (_dir, pg) = postgres();
    let url = pg.create_database("paging").expect("createdb");
    runtime().block_on(async {
        let (running, _stop) = registry(url).await;
        let api = Api::new(running.addr);
        create_homes(&api, &["home-a", "home-b"]).await;
        let kinds = ["thermostat", "relay", "light"];
        let statuses = ["provisioning", "active", "disabled"];
        for i in 0..120 {
            let home = if i % 2 == 0 { "home-a" } else { "home-b" };
            let body = device(
                &format!("dev-{i:03}"),
                home,
                kinds[i % 3],
                statuses[(i / 3) % 3],
            );
            let (status, problem) = api.call(Method::POST, "/api/v1/devices", Some(body)).await;
            assert_eq!(status, StatusCode::CREATED, "{problem}");
        }

        let collect = |query: String| {
            let api = &api;
            async move {
                let mut seen = Vec::new();
                let mut pages = 0;
                let mut cursor: Option<String> = None;
                loop {
                    let mut path = format!("/api/v1/devices?{query}");
                    if let Some(c) = &cursor {
                        path.push_str(&format!("&cursor={c}"));
                    }
                    let (status, page) = api.call(Method::GET, &path, None).await;
                    assert_eq!(status, StatusCode::OK, "{page}");
                    pages += 1;
                    for item in page["items"].as_array().unwrap() {
                        seen.push(item.clone());
                    }
                    match page["next_cursor"].as_str() {
                        Some(next) => cursor = Some(next.to_string()),
                        None => return (seen, pages),
                    }
                }
            }
        };

        let (all, pages) = collect("limit=50".into()).await;
        assert_eq!(pages, 3);
        let ids: BTreeSet<String> = all
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(all.len(), 120);
        assert_eq!(ids.len(), 120, "every device exactly once");

        let (page, _) = collect("".into()).await;
        assert_eq!(page.len(), 120);

        let (home_a, _) = collect("home_id=home-a&limit=7".into()).await;
        assert_eq!(home_a.len(), 60);
        assert!(home_a.iter().all(|d| d["home_id"] == "home-a"));

        let (relays, _) = collect("kind=relay&limit=500".into()).await;
        assert_eq!(relays.len(), 40);
        assert!(relays.iter().all(|d| d["kind"] == "relay"));

        let (active, _) = collect("status=active&limit=11".into()).await;
        assert_eq!(active.len(), (0..120).filter(|i| (i / 3) % 3 == 1).count());
        assert!(active.iter().all(|d| d["status"] == "active"));

        let (combined, _) =
            collect("home_id=home-b&kind=light&status=disabled&limit=3".into()).await;
        let expected = (0..120)
            .filter(|i| i % 2 == 1 && i % 3 == 2 && (i / 3) % 3 == 2)
            .count();
        assert_eq!(combined.len(), expected);

        let (none, _) = collect("kind=camera".into()).await;
        assert!(none.is_empty());
    });
}

/// (method, path, body, status, problem type, field or parameter at fault)
type Case<'a> = (
    Method,
    &'a str,
    Option<Value>,
    u16,
    &'a str,
    Option<&'a str>,
);

#[test]
fn bad_input_is_a_problem() {
    let (_dir, pg) = postgres();
    let url = pg.create_database("bad").expect("createdb");
    runtime().block_on(async {
        let (running, _stop) = registry(url).await;
        let api = Api::new(running.addr);
        let (status, _) = api
            .call(Method::POST, "/api/v1/homes", Some(json!({"id": "home-a", "name": "A"})))
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _) = api
            .call(Method::POST, "/api/v1/devices", Some(device("dev-1", "home-a", "relay", "active")))
            .await;
        assert_eq!(status, StatusCode::CREATED);

        let big_metadata = json!({"blob": "x".repeat(17 * 1024)});
        let cases: Vec<Case> = vec![
            (Method::POST, "/api/v1/homes", Some(json!({"id": "h2", "name": "x", "colour": "red"})), 422, "invalid-body", Some("colour")),
            (Method::POST, "/api/v1/homes", Some(json!({"id": "h 2", "name": "x"})), 422, "invalid-body", Some("id")),
            (Method::POST, "/api/v1/homes", Some(json!({"id": "h2", "name": ""})), 422, "invalid-body", Some("name")),
            (Method::POST, "/api/v1/homes", Some(json!({"id": "h2", "name": "x".repeat(201)})), 422, "invalid-body", Some("name")),
            (Method::POST, "/api/v1/homes", Some(json!({"id": "h2", "name": "x", "metadata": [1]})), 422, "invalid-body", Some("metadata")),
            (Method::POST, "/api/v1/homes", Some(json!({"id": "h2", "name": "x", "metadata": big_metadata})), 422, "invalid-body", Some("metadata")),
            (Method::POST, "/api/v1/homes", Some(json!({"id": "h2", "name": "x", "timezone": "../etc/passwd"})), 422, "invalid-body", Some("timezone")),
            (Method::POST, "/api/v1/homes", Some(json!({"id": "h2"})), 422, "invalid-body", None),
            (Method::POST, "/api/v1/homes", Some(json!({"id": 5, "name": "x"})), 422, "invalid-body", Some("id")),
            (Method::POST, "/api/v1/homes", Some(json!([1, 2])), 422, "invalid-body", None),
            (Method::PATCH, "/api/v1/homes/home-a", Some(json!({"id": "other"})), 422, "invalid-body", Some("id")),
            (Method::PATCH, "/api/v1/homes/nope", Some(json!({"name": "x"})), 404, "not-found", None),
            (Method::GET, "/api/v1/homes/nope", None, 404, "not-found", None),
            (Method::GET, "/api/v1/homes/bad%20id", None, 400, "invalid-parameter", Some("id")),
            (Method::DELETE, "/api/v1/homes/nope", None, 404, "not-found", None),
            (Method::POST, "/api/v1/devices", Some(device("dev-2", "no-home", "relay", "active")), 422, "invalid-body", Some("home_id")),
            (Method::POST, "/api/v1/devices", Some(device("dev-2", "home-a", "Relay!", "active")), 422, "invalid-body", Some("kind")),
            (Method::POST, "/api/v1/devices", Some(device("dev-2", "home-a", "relay", "broken")), 422, "invalid-body", Some("status")),
            (Method::POST, "/api/v1/devices", Some(json!({"id": "dev-2", "home_id": "home-a", "kind": "relay", "name": "r", "capabilities": ["ok", "Not OK"]})), 422, "invalid-body", Some("capabilities[1]")),
            (Method::POST, "/api/v1/devices", Some(json!({"id": "dev-2", "home_id": "home-a", "kind": "relay", "name": "r", "capabilities": "switch"})), 422, "invalid-body", Some("capabilities")),
            (Method::POST, "/api/v1/devices", Some(json!({"id": "d".repeat(65), "home_id": "home-a", "kind": "relay", "name": "r"})), 422, "invalid-body", Some("id")),
            (Method::PATCH, "/api/v1/devices/dev-1", Some(json!({"home_id": "nowhere"})), 422, "invalid-body", Some("home_id")),
            (Method::PATCH, "/api/v1/devices/dev-1", Some(json!({"serial": "x"})), 422, "invalid-body", Some("serial")),
            (Method::PATCH, "/api/v1/devices/nope", Some(json!({"name": "x"})), 404, "not-found", None),
            (Method::GET, "/api/v1/devices/nope", None, 404, "not-found", None),
            (Method::GET, "/api/v1/devices?limit=0", None, 400, "invalid-parameter", Some("limit")),
            (Method::GET, "/api/v1/devices?limit=501", None, 400, "invalid-parameter", Some("limit")),
            (Method::GET, "/api/v1/devices?limit=ten", None, 400, "invalid-parameter", Some("limit")),
            (Method::GET, "/api/v1/devices?cursor=%21%21", None, 400, "invalid-parameter", Some("cursor")),
            (Method::GET, "/api/v1/homes?cursor=bm90IGFuIGlk", None, 400, "invalid-parameter", Some("cursor")),
            (Method::GET, "/api/v1/devices?status=lost", None, 400, "invalid-parameter", Some("status")),
            (Method::GET, "/api/v1/devices?kind=A%20B", None, 400, "invalid-parameter", Some("kind")),
            (Method::GET, "/api/v1/devices?home_id=a%2Fb", None, 400, "invalid-parameter", Some("home_id")),
            (Method::GET, "/api/v1/nothing", None, 404, "not-found", None),
        ];
        for (method, path, body, status, kind, at_fault) in cases {
            let (got, problem) = api.call(method.clone(), path, body).await;
            assert_eq!(got.as_u16(), status, "{method} {path}: {problem}");
            assert_eq!(problem["type"], format!("urn:warmhouse:problem:{kind}"), "{method} {path}: {problem}");
            assert_eq!(problem["status"], status);
            assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()));
            if let Some(name) = at_fault {
                let blamed = problem.get("field").or_else(|| problem.get("parameter"));
                assert_eq!(blamed.and_then(Value::as_str), Some(name), "{method} {path}: {problem}");
            }
        }

        let (status, problem) = api
            .raw(Method::POST, "/api/v1/homes", Some("application/json"), "{\"id\": ".into())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{problem}");
        assert_eq!(problem["type"], "urn:warmhouse:problem:malformed-body");

        let (status, problem) = api
            .raw(Method::POST, "/api/v1/homes", None, r#"{"id":"x","name":"y"}"#.into())
            .await;
        assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE, "{problem}");

        let huge = json!({"id": "h3", "name": "x".repeat(70 * 1024)}).to_string();
        let (status, problem) = api
            .raw(Method::POST, "/api/v1/homes", Some("application/json"), huge)
            .await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{problem}");
        assert_eq!(problem["type"], "urn:warmhouse:problem:payload-too-large");

        // Nothing of the above got stored.
        let (_, homes) = api.call(Method::GET, "/api/v1/homes", None).await;
        assert_eq!(homes["items"].as_array().map(Vec::len), Some(1));
        let (_, devices) = api.call(Method::GET, "/api/v1/devices", None).await;
        assert_eq!(devices["items"].as_array().map(Vec::len), Some(1));
    });
}

#[test]
fn docs_and_readiness() {
    let (_dir, mut pg) = postgres();
    let url = pg.create_database("ops").expect("createdb");
    let rt = runtime();
    let (running, _stop) = rt.block_on(registry(url));
    let api = Api::new(running.addr);
    rt.block_on(async {
        let (status, doc) = api.call(Method::GET, "/api-docs/openapi.json", None).await;
        assert_eq!(status, StatusCode::OK);
        for path in [
            "/api/v1/homes",
            "/api/v1/homes/{id}",
            "/api/v1/devices",
            "/api/v1/devices/{id}",
            "/healthz",
            "/readyz",
            "/metrics",
        ] {
            assert!(
                doc["paths"].get(path).is_some(),
                "{path} missing from openapi.json"
            );
        }
        for (path, methods) in [
            ("/api/v1/homes", &["get", "post"][..]),
            ("/api/v1/devices/{id}", &["get", "patch", "delete"][..]),
        ] {
            for m in methods {
                assert!(
                    doc["paths"][path].get(m).is_some(),
                    "{m} {path} undocumented"
                );
            }
        }
        assert!(doc.to_string().contains("application/problem+json"));

        let docs = api
            .client
            .get(format!("{}/docs/", api.base))
            .send()
            .await
            .expect("docs");
        assert_eq!(docs.status(), StatusCode::OK);
        assert!(docs.text().await.unwrap().to_lowercase().contains("<html"));

        let (status, _) = api.call(Method::GET, "/readyz", None).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = api.call(Method::GET, "/api/v1/homes", None).await;
        assert_eq!(status, StatusCode::OK);
        let metrics = api
            .client
            .get(format!("{}/metrics", api.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(metrics.contains("warmhouse_registry_requests_total"));
    });

    pg.kill();
    rt.block_on(async {
        wait_for_ready(&api, false).await;
        let (status, problem) = api.call(Method::GET, "/api/v1/homes", None).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{problem}");
        assert_eq!(problem["type"], "urn:warmhouse:problem:store-unavailable");
    });
    pg.start_again().expect("restarting PostgreSQL");
    rt.block_on(async {
        wait_for_ready(&api, true).await;
        let (status, _) = api.call(Method::GET, "/api/v1/homes", None).await;
        assert_eq!(status, StatusCode::OK);
    });
}

async fn wait_for_ready(api: &Api, ready: bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = api
            .client
            .get(format!("{}/readyz", api.base))
            .send()
            .await
            .expect("readyz")
            .status();
        if (status == StatusCode::OK) == ready {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "/readyz never became ready={ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every `/api/v1` endpoint wants a valid token; health, metrics and docs
/// stay open.
#[test]
fn api_refuses_requests_without_a_valid_token() {
    let (_dir, pg) = postgres();
    let url = pg.create_database("authn").expect("createdb");
    runtime().block_on(async {
        let (running, _stop) = registry(url).await;
        let admin = Api::new(running.addr);
        let (status, _) = admin
            .call(
                Method::POST,
                "/api/v1/homes",
                Some(json!({"id": "home-a", "name": "A"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        let (status, _) = admin
            .call(
                Method::POST,
                "/api/v1/devices",
                Some(device("dev-1", "home-a", "relay", "active")),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);

        let tokens = tokens().refused().expect("tokens");
        let requests: [(Method, &str, Option<Value>); 8] = [
            (Method::GET, "/api/v1/homes", None),
            (
                Method::POST,
                "/api/v1/homes",
                Some(json!({"id": "home-x", "name": "X"})),
            ),
            (Method::GET, "/api/v1/homes/home-a", None),
            (Method::DELETE, "/api/v1/homes/home-a", None),
            (Method::GET, "/api/v1/devices", None),
            (
                Method::POST,
                "/api/v1/devices",
                Some(device("dev-2", "home-a", "relay", "active")),
            ),
            (Method::GET, "/api/v1/devices/dev-1", None),
            (
                Method::PATCH,
                "/api/v1/devices/dev-1",
                Some(json!({"name": "x"})),
            ),
        ];
        for (token, says) in &tokens {
            let api = admin.with_token(token.clone());
            for (method, path, body) in &requests {
                let response = api
                    .request(method.clone(), path)
                    .json(body)
                    .send()
                    .await
                    .expect("request");
                assert_eq!(
                    response.status(),
                    StatusCode::UNAUTHORIZED,
                    "{method} {path} {says}"
                );
                let challenge = response.headers()["www-authenticate"]
                    .to_str()
                    .expect("ASCII")
                    .to_string();
                assert!(challenge.starts_with("Bearer"), "{challenge}");
                assert_eq!(
                    challenge.contains("invalid_token"),
                    token.is_some(),
                    "{challenge}"
                );
                let problem: Value = response.json().await.expect("problem");
                assert_eq!(problem["type"], "urn:warmhouse:problem:unauthorized");
                let detail = problem["detail"].as_str().unwrap_or_default();
                assert!(
                    detail.contains(says),
                    "{method} {path}: {detail:?} lacks {says:?}"
                );
            }
        }
        // Nothing of the above got through.
        let (_, homes) = admin.call(Method::GET, "/api/v1/homes", None).await;
        assert_eq!(homes["items"].as_array().map(Vec::len), Some(1));
        let (_, got) = admin.call(Method::GET, "/api/v1/devices/dev-1", None).await;
        assert_eq!(got["name"], "Device dev-1");

        let anonymous = admin.with_token(None);
        for open in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/api-docs/openapi.json",
            "/docs/",
        ] {
            let status = anonymous
                .request(Method::GET, open)
                .send()
                .await
                .expect("request")
                .status();
            assert_eq!(status, StatusCode::OK, "GET {open}");
        }
        let (status, doc) = anonymous
            .call(Method::GET, "/api-docs/openapi.json", None)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        assert!(doc["paths"]["/api/v1/devices/{id}"]["get"]["security"].is_array());
        assert!(doc["paths"]["/api/v1/devices/{id}"]["get"]["responses"]["401"].is_object());
    });
}

/// A token for home-a manages home-a and its devices and cannot see,
/// create in or change home-b; an admin can do everything.
#[test]
fn a_token_uses_only_its_own_homes() {
    let (_dir, pg) = postgres();
    let url = pg.create_database("authz").expect("createdb");
    runtime().block_on(async {
        let (running, _stop) = registry(url).await;
        let admin = Api::new(running.addr);
        create_homes(&admin, &["home-a", "home-b"]).await;
        for (id, home) in [("dev-a1", "home-a"), ("dev-b1", "home-b")] {
            let (status, _) = admin
                .call(
                    Method::POST,
                    "/api/v1/devices",
                    Some(device(id, home, "relay", "active")),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED);
        }
        let a = admin.with_token(Some(home_token(&["home-a"])));

        // Its own home and devices.
        let (status, home) = a.call(Method::GET, "/api/v1/homes/home-a", None).await;
        assert_eq!(status, StatusCode::OK, "{home}");
        let (status, _) = a
            .call(
                Method::PATCH,
                "/api/v1/homes/home-a",
                Some(json!({"name": "Mine"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, created) = a
            .call(
                Method::POST,
                "/api/v1/devices",
                Some(device("dev-a2", "home-a", "light", "active")),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        let (status, _) = a.call(Method::GET, "/api/v1/devices/dev-a1", None).await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = a
            .call(
                Method::PATCH,
                "/api/v1/devices/dev-a2",
                Some(json!({"name": "Lamp"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let (status, _) = a.call(Method::DELETE, "/api/v1/devices/dev-a2", None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);

        // Lists hold only its home.
        let (_, homes) = a.call(Method::GET, "/api/v1/homes", None).await;
        assert_eq!(homes["items"].as_array().map(Vec::len), Some(1), "{homes}");
        assert_eq!(homes["items"][0]["id"], "home-a");
        let (_, devices) = a.call(Method::GET, "/api/v1/devices", None).await;
        let ids: Vec<&str> = devices["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|d| d["id"].as_str())
            .collect();
        assert_eq!(ids, ["dev-a1"]);
        let (status, mine) = a
            .call(Method::GET, "/api/v1/devices?home_id=home-a", None)
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(mine["items"].as_array().map(Vec::len), Some(1));

        // Home-b: 403 for the home, 404 for its device, as if it did not exist.
        let forbidden: Vec<Case> = vec![
            (
                Method::GET,
                "/api/v1/homes/home-b",
                None,
                403,
                "forbidden",
                None,
            ),
            (
                Method::PATCH,
                "/api/v1/homes/home-b",
                Some(json!({"name": "Taken"})),
                403,
                "forbidden",
                None,
            ),
            (
                Method::DELETE,
                "/api/v1/homes/home-b",
                None,
                403,
                "forbidden",
                None,
            ),
            (
                Method::DELETE,
                "/api/v1/homes/home-a",
                None,
                403,
                "forbidden",
                None,
            ),
            (
                Method::POST,
                "/api/v1/homes",
                Some(json!({"id": "home-c", "name": "C"})),
                403,
                "forbidden",
                None,
            ),
            (
                Method::GET,
                "/api/v1/devices?home_id=home-b",
                None,
                403,
                "forbidden",
                None,
            ),
            (
                Method::POST,
                "/api/v1/devices",
                Some(device("dev-b2", "home-b", "relay", "active")),
                403,
                "forbidden",
                None,
            ),
            (
                Method::PATCH,
                "/api/v1/devices/dev-a1",
                Some(json!({"home_id": "home-b"})),
                403,
                "forbidden",
                None,
            ),
            (
                Method::GET,
                "/api/v1/devices/dev-b1",
                None,
                404,
                "not-found",
                None,
            ),
            (
                Method::PATCH,
                "/api/v1/devices/dev-b1",
                Some(json!({"name": "Mine now"})),
                404,
                "not-found",
                None,
            ),
            (
                Method::PATCH,
                "/api/v1/devices/dev-b1",
                Some(json!({"home_id": "home-a"})),
                404,
                "not-found",
                None,
            ),
            (
                Method::DELETE,
                "/api/v1/devices/dev-b1",
                None,
                404,
                "not-found",
                None,
            ),
        ];
        for (method, path, body, status, kind, _) in forbidden {
            let (got, problem) = a.call(method.clone(), path, body).await;
            assert_eq!(got.as_u16(), status, "{method} {path}: {problem}");
            assert_eq!(
                problem["type"],
                format!("urn:warmhouse:problem:{kind}"),
                "{method} {path}"
            );
        }
        // The 404 of another home's device says no more than a missing one.
        let (_, theirs) = a.call(Method::GET, "/api/v1/devices/dev-b1", None).await;
        let (_, missing) = a.call(Method::GET, "/api/v1/devices/dev-zz", None).await;
        assert_eq!(
            theirs["detail"].as_str().map(|d| d.replace("dev-b1", "ID")),
            missing["detail"]
                .as_str()
                .map(|d| d.replace("dev-zz", "ID"))
        );

        // None of that changed anything, as the admin sees.
        let (_, b1) = admin
            .call(Method::GET, "/api/v1/devices/dev-b1", None)
            .await;
        assert_eq!(
            (b1["home_id"].as_str(), b1["name"].as_str()),
            (Some("home-b"), Some("Device dev-b1"))
        );
        let (_, a1) = admin
            .call(Method::GET, "/api/v1/devices/dev-a1", None)
            .await;
        assert_eq!(a1["home_id"], "home-a");
        let (_, home_b) = admin.call(Method::GET, "/api/v1/homes/home-b", None).await;
        assert_eq!(home_b["name"], "home-b");
        let (status, _) = admin
            .call(Method::GET, "/api/v1/devices/dev-b2", None)
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);

        // A token for both homes moves a device between them; an admin does anything.
        let both = admin.with_token(Some(home_token(&["home-a", "home-b"])));
        let (status, moved) = both
            .call(
                Method::PATCH,
                "/api/v1/devices/dev-a1",
                Some(json!({"home_id": "home-b"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{moved}");
        let (status, _) = a.call(Method::GET, "/api/v1/devices/dev-a1", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "moved out of home-a's reach");
        let (_, all) = admin.call(Method::GET, "/api/v1/devices", None).await;
        assert_eq!(all["items"].as_array().map(Vec::len), Some(2));
        for (method, path) in [
            (Method::DELETE, "/api/v1/devices/dev-a1"),
            (Method::DELETE, "/api/v1/devices/dev-b1"),
            (Method::DELETE, "/api/v1/homes/home-b"),
        ] {
            let (status, problem) = admin.call(method, path, None).await;
            assert_eq!(status, StatusCode::NO_CONTENT, "{path}: {problem}");
        }
    });
}
