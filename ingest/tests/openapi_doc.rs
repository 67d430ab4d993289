//! The committed OpenAPI document (docs/api/ingest-query.openapi.json) is
//! the one the code generates and the one the running query API serves.

use std::path::PathBuf;

use serde_json::Value;
use warmhouse_devstack::Influxd;
use warmhouse_ingest::query::{openapi, start, QueryConfig};
use warmhouse_service_kit::auth::AuthConfig;

const COMMITTED: &str = "docs/api/ingest-query.openapi.json";

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
    // Exactly what `ingest-query --print-openapi` prints (println adds the newline).
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

/// influxd is started on the test's own thread: devstack children die with
/// the thread that spawned them.
#[test]
fn running_query_api_serves_the_committed_document() {
    let dir = tempfile::tempdir().expect("temp dir");
    let influxd = Influxd::start(dir.path()).expect("influxd starts");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(async {
        let mut config = QueryConfig::new("127.0.0.1:0".parse().expect("addr"), influxd.url());
        config.auth = AuthConfig::with_secret("openapi-doc-test-secret-0123456789abcdef");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let running = start(config, async {
            let _ = stopped.await;
        })
        .await
        .expect("starting the query API");

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
            "the query API serves another OpenAPI document than {COMMITTED}: \
             run scripts/update-api-docs.sh and commit the result"
        );

        let _ = stop.send(());
        running.wait().await.expect("query API stops");
    });
}
