//! Device credentials and the broker's access check against a real
//! PostgreSQL: what is issued, what is stored (hashes and fingerprints
//! only), rotation, and every refusal `POST /internal/v1/device-access`
//! must give.

use std::net::SocketAddr;
use std::time::Duration;

use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};
use sqlx::Row;
use warmhouse_device_identity::PlatformCa;
use warmhouse_device_registry::identity::{self, CredentialKind};
use warmhouse_device_registry::{start, RegistryConfig, RunningRegistry};
use warmhouse_devstack::Postgres;
use warmhouse_service_kit::auth::{issue_hs256, AuthConfig, Claims};

const SECRET: &str = "identity-test-secret-0123456789abcdef";

fn token(claims: Claims) -> String {
    issue_hs256(SECRET, &claims).expect("token")
}

fn admin() -> String {
    token(Claims::admin("test-admin", Duration::from_secs(600)))
}

struct Api {
    running: RunningRegistry,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    http: Client,
}

impl Api {
    async fn start(database_url: String, ca: Option<&std::path::Path>) -> Self {
        Self::start_with(database_url, ca, |_| {}).await
    }

    async fn start_with(
        database_url: String,
        ca: Option<&std::path::Path>,
        adjust: impl FnOnce(&mut RegistryConfig),
    ) -> Self {
        let mut config = RegistryConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), database_url);
        config.auth = AuthConfig::with_secret(SECRET);
        if let Some(dir) = ca {
            config.identity.ca_cert = Some(dir.join("ca.pem"));
            config.identity.ca_key = Some(dir.join("ca.key"));
            config.identity.device_cert_days = 30;
        }
        adjust(&mut config);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = start(config, async {
            let _ = stopped.await;
        })
        .await
        .expect("starting the registry");
        Self {
            running,
            stop: Some(stop),
            http: Client::new(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("http://{}{path}", self.running.addr))
            .bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn issue(&self, device: &str, kind: &str) -> (StatusCode, Value) {
        self.call(
            Method::POST,
            &format!("/api/v1/devices/{device}/credentials"),
            &admin(),
            Some(json!({ "kind": kind })),
        )
        .await
    }

    async fn access(&self, question: Value) -> Value {
        let (status, body) = self
            .call(
                Method::POST,
                "/internal/v1/device-access",
                &admin(),
                Some(question),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    /// `warmhouse_registry_password_checks_total{outcome}` from `/metrics`.
    async fn password_checks(&self, outcome: &str) -> u64 {
        let (status, body) = self.call(Method::GET, "/metrics", &admin(), None).await;
        assert_eq!(status, StatusCode::OK);
        let text = body.as_str().expect("metrics are text");
        let series = format!("warmhouse_registry_password_checks_total{{outcome=\"{outcome}\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&series))
            .map_or(0, |value| value.trim().parse().expect("a counter value"))
    }

    async fn allowed(&self, question: Value) -> bool {
        self.access(question).await["allowed"]
            .as_bool()
            .expect("allowed is a bool")
    }
}

impl Drop for Api {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

fn password_question(device: &str, password: &str) -> Value {
    json!({"method": "password", "device_id": device, "password": password})
}

fn certificate_question(device: &str, sha256: &str) -> Value {
    json!({"method": "certificate", "device_id": device, "certificate_sha256": sha256})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_issued_once_stored_as_hashes_and_checked_for_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(&dir.path().join("pg")).expect("PostgreSQL");
    let database_url = pg.create_database("identity").unwrap();
    let ca = PlatformCa::generate("test CA", Duration::from_secs(3600)).unwrap();
    ca.save(&dir.path().join("ca.pem"), &dir.path().join("ca.key"))
        .unwrap();
    let api = Api::start(database_url.clone(), Some(dir.path())).await;

    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/homes",
            &admin(),
            Some(json!({"id": "home-a", "name": "A"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    for device in ["dev-pw", "dev-cert", "dev-other"] {
        let (status, body) = api
            .call(
                Method::POST,
                "/api/v1/devices",
                &admin(),
                Some(json!({"id": device, "home_id": "home-a", "kind": "thermostat", "name": device})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }

    // A password: shown once, stored as an Argon2id hash.
    let (status, issued) = api.issue("dev-pw", "password").await;
    assert_eq!(status, StatusCode::CREATED, "{issued}");
    assert_eq!(issued["kind"], "password");
    assert_eq!(issued["username"], "dev-pw");
    let password = issued["password"].as_str().unwrap().to_string();
    assert_eq!(password.len(), 43);
    let pool = sqlx::PgPool::connect(&database_url).await.unwrap();
    let stored: String = sqlx::query(
        "SELECT password_hash FROM device_credentials WHERE device_id = 'dev-pw' AND revoked_at IS NULL",
    )
    .fetch_one(&pool)
    .await
    .unwrap()
    .get(0);
    assert!(stored.starts_with("$argon2id$"), "{stored}");
    assert!(!stored.contains(&password));
    assert!(api.allowed(password_question("dev-pw", &password)).await);
    // Reconnects: the password is remembered, Argon2id runs once.
    assert!(api.allowed(password_question("dev-pw", &password)).await);
    assert!(api.allowed(password_question("dev-pw", &password)).await);
    assert_eq!(api.password_checks("verified").await, 1);
    assert_eq!(api.password_checks("remembered").await, 2);
    let wrong = api.access(password_question("dev-pw", "not-it")).await;
    assert_eq!(wrong["allowed"], false);
    assert_eq!(wrong["reason"], "wrong password");
    assert!(
        !api.allowed(password_question("dev-other", &password)).await,
        "another device's password"
    );

    // Rotation: a new password replaces the old one.
    let (_, again) = api.issue("dev-pw", "password").await;
    let new_password = again["password"].as_str().unwrap().to_string();
    assert_ne!(new_password, password);
    assert!(!api.allowed(password_question("dev-pw", &password)).await);
    assert!(
        api.allowed(password_question("dev-pw", &new_password))
            .await
    );
    // Announced (this registry has no Kafka: the event waits in the
    // outbox), so brokers drop connections made with the old password.
    // The first issue replaced nothing and announced nothing.
    let announced: Vec<Value> = sqlx::query(
        "SELECT convert_from(payload, 'UTF8')::jsonb FROM outbox \
         WHERE key = 'dev-pw' AND convert_from(payload, 'UTF8')::jsonb->>'type' = 'device.credentials_rotated'",
    )
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .map(|row| row.get(0))
    .collect();
    assert_eq!(announced.len(), 1, "{announced:?}");
    assert_eq!(announced[0]["kind"], "password");
    assert_eq!(announced[0]["home_id"], "home-a");

    // A certificate: O = device id, signed by the CA, stored by fingerprint.
    let (status, cert) = api.issue("dev-cert", "certificate").await;
    assert_eq!(status, StatusCode::CREATED, "{cert}");
    let info =
        warmhouse_device_identity::inspect_certificate(cert["certificate_pem"].as_str().unwrap())
            .unwrap();
    assert_eq!(info.organizations, vec!["dev-cert".to_string()]);
    assert!(info.client_auth);
    assert_eq!(cert["ca_pem"].as_str().unwrap(), ca.cert_pem());
    assert!(cert["private_key_pem"]
        .as_str()
        .unwrap()
        .contains("PRIVATE KEY"));
    let sha = cert["certificate_sha256"].as_str().unwrap().to_string();
    assert_eq!(sha, info.sha256);
    let stored: i64 = sqlx::query(
        "SELECT count(*) FROM device_credentials WHERE certificate_sha256 = $1 AND password_hash IS NULL",
    )
    .bind(&sha)
    .fetch_one(&pool)
    .await
    .unwrap()
    .get(0);
    assert_eq!(stored, 1);
    assert!(api.allowed(certificate_question("dev-cert", &sha)).await);
    assert!(
        !api.allowed(certificate_question("dev-other", &sha)).await,
        "someone else's certificate"
    );
    assert!(
        !api.allowed(certificate_question("dev-cert", &"0".repeat(64)))
            .await
    );

    // Unknown devices and nonsense are refused, not errors.
    let unknown = api.access(password_question("dev-none", "x")).await;
    assert_eq!(unknown["allowed"], false);
    assert_eq!(unknown["reason"], "unknown device");
    assert!(!api.allowed(password_question("a b", "x")).await);
    let (status, _) = api
        .call(
            Method::POST,
            "/internal/v1/device-access",
            &admin(),
            Some(json!({"method": "magic", "device_id": "dev-pw"})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // Disabled: refused (and no new credentials); enabled: back.
    let admin_token = admin();
    let patch = |status: &'static str| {
        api.call(
            Method::PATCH,
            "/api/v1/devices/dev-cert",
            &admin_token,
            Some(json!({ "status": status })),
        )
    };
    assert_eq!(patch("disabled").await.0, StatusCode::OK);
    let disabled = api.access(certificate_question("dev-cert", &sha)).await;
    assert_eq!(disabled["allowed"], false);
    assert_eq!(disabled["reason"], "device is disabled");
    assert_eq!(
        api.issue("dev-cert", "certificate").await.0,
        StatusCode::CONFLICT
    );
    assert_eq!(patch("active").await.0, StatusCode::OK);
    assert!(api.allowed(certificate_question("dev-cert", &sha)).await);

    // Deleted: its credentials go with it.
    let (status, _) = api
        .call(Method::DELETE, "/api/v1/devices/dev-pw", &admin(), None)
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert!(
        !api.allowed(password_question("dev-pw", &new_password))
            .await
    );
    let left: i64 =
        sqlx::query("SELECT count(*) FROM device_credentials WHERE device_id = 'dev-pw'")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
    assert_eq!(left, 0);

    // The saga's functions: issue inside a transaction, revoke as compensation.
    let mut tx = pool.begin().await.unwrap();
    let issued = identity::issue_credentials(
        &mut tx,
        api.running.state.identity(),
        api.running.state.topics(),
        "dev-other",
        CredentialKind::Password,
    )
    .await
    .unwrap();
    tx.rollback().await.unwrap();
    let identity::IssuedCredentials::Password { password, .. } = issued else {
        panic!("asked for a password");
    };
    assert!(
        !api.allowed(password_question("dev-other", &password)).await,
        "a rolled-back issue left a credential"
    );
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(
        identity::revoke_credentials(&mut conn, "dev-cert")
            .await
            .unwrap(),
        1
    );
    assert!(!api.allowed(certificate_question("dev-cert", &sha)).await);

    // Authorisation: the access check is for administrators (the broker);
    // credentials of another home's device are "not found".
    let home_b = token(Claims::for_homes(
        "user-b",
        ["home-b"],
        Duration::from_secs(600),
    ));
    let (status, _) = api
        .call(
            Method::POST,
            "/internal/v1/device-access",
            &home_b,
            Some(password_question("dev-other", "x")),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/devices/dev-other/credentials",
            &home_b,
            Some(json!({"kind": "password"})),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let home_a = token(Claims::for_homes(
        "user-a",
        ["home-a"],
        Duration::from_secs(600),
    ));
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/devices/dev-other/credentials",
            &home_a,
            Some(json!({"kind": "password"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _) = api
        .call(
            Method::POST,
            "/internal/v1/device-access",
            "not-a-token",
            Some(password_question("dev-other", "x")),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    drop(api);

    // Without a CA the registry still issues passwords; certificates: 503.
    let no_ca = Api::start(database_url.clone(), None).await;
    let (status, body) = no_ca.issue("dev-other", "certificate").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        no_ca.issue("dev-other", "password").await.0,
        StatusCode::CREATED
    );
    drop(no_ca);

    // Argon2id runs in bounded slots: with one slot and no wait, checks that
    // find it taken are answered 503 (busy) at once instead of hashing on
    // threads of their own for a broker that stopped waiting.
    let one_slot = Api::start_with(database_url, None, |config| {
        config.identity.argon2_parallel = 1;
        config.identity.argon2_wait_ms = 0;
    })
    .await;
    let checks = 16;
    let token = admin();
    let answers = futures::future::join_all((0..checks).map(|i| {
        one_slot.call(
            Method::POST,
            "/internal/v1/device-access",
            &token,
            Some(password_question("dev-other", &format!("guess-{i}"))),
        )
    }))
    .await;
    let mut busy = 0;
    for (status, body) in &answers {
        match *status {
            StatusCode::OK => assert_eq!(body["allowed"], false, "{body}"),
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(body["type"], "urn:warmhouse:problem:busy", "{body}");
                busy += 1;
            }
            other => panic!("unexpected answer {other}: {body}"),
        }
    }
    assert!(
        busy > 0,
        "{checks} checks at once never found the one slot taken"
    );
    assert_eq!(one_slot.password_checks("busy").await, busy);
    assert_eq!(one_slot.password_checks("wrong").await, checks - busy);
}
