//! The committed OpenAPI document (docs/api/device-registry.openapi.json) is
//! the one the code generates and the one the running registry serves.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde_json::Value;
use warmhouse_device_registry::{openapi, start, RegistryConfig};
use warmhouse_devstack::Postgres;
use warmhouse_service_kit::auth::AuthConfig;

const COMMITTED: &str = "docs/api/device-registry.openapi.json";

fn committed_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(COMMITTED)
}

fn committed_text() -> String {
    std::fs::read_to_string(committed_path()).unwrap_or_else(|err| {
        panic!("cannot read {COMMITTED} ({err}): run scripts/update-api-docs.sh")
    })
}

#[test]
fn committed_document_is_what_the_code_generates() {
    // Exactly what `--print-openapi` prints (println adds the newline).
    let generated = format!(
        "{}\n",
        openapi().to_pretty_json().expect("OpenAPI serializes")
    );
    let committed = committed_text();
    if committed != generated {
        let line = committed
            .lines()
            .zip(generated.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| committed.lines().count().min(generated.lines().count()));
        panic!(
            "{COMMITTED} is not what the code generates (first difference at line {}: \
             committed {:?}, generated {:?}): run scripts/update-api-docs.sh and commit the result",
            line + 1,
            committed.lines().nth(line).unwrap_or("<end of file>"),
            generated.lines().nth(line).unwrap_or("<end of file>"),
        );
    }
}

/// PostgreSQL is started on the test's own thread: devstack children die
/// with the thread that spawned them.
#[test]
fn running_registry_serves_the_committed_document() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pg = Postgres::start(dir.path()).expect("starting PostgreSQL");
    let url = pg.create_database("openapi_doc").expect("createdb");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let mut config = RegistryConfig::new(SocketAddr::from(([127, 0, 0, 1], 0)), url);
        config.auth = AuthConfig::with_secret("openapi-doc-test-secret-0123456789abcdef");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = start(config, async {
            let _ = stopped.await;
        })
        .await
        .expect("starting the registry");

        // The document is public, like Swagger UI: no token.
        let response = reqwest::get(format!("http://{}/api-docs/openapi.json", running.addr))
            .await
            .expect("GET /api-docs/openapi.json");
        assert_eq!(response.status(), 200, "GET /api-docs/openapi.json");
        let served: Value = response.json().await.expect("JSON document");
        let committed: Value =
            serde_json::from_str(&committed_text()).expect("the committed document is JSON");
        assert!(
            served == committed,
            "the registry serves another OpenAPI document than {COMMITTED}: \
             run scripts/update-api-docs.sh and commit the result"
        );

        let _ = stop.send(());
        running.wait().await.expect("registry stops");
    });
}
