//! The committed OpenAPI document (docs/api/ingest-query.openapi.json) is
//! the one the code generates and the one the running query API serves.

use serde_json::Value;
use warmhouse_devstack::api_checks::{compare_committed_document, repo_root};
use warmhouse_devstack::Influxd;
use warmhouse_ingest::query::{openapi, start, QueryConfig};
use warmhouse_service_kit::auth::AuthConfig;

const COMMITTED: &str = "docs/api/ingest-query.openapi.json";

#[test]
fn committed_document_is_what_the_code_generates() {
    // Exactly what `ingest-query --print-openapi` prints (println adds the newline).
    let generated = format!(
        "{}\n",
        openapi().to_pretty_json().expect("OpenAPI serializes")
    );
    if let Err(problem) = compare_committed_document(COMMITTED, &generated) {
        panic!("{problem}");
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
        let committed: Value = serde_json::from_str(
            &std::fs::read_to_string(repo_root().join(COMMITTED)).expect("committed document"),
        )
        .expect("the committed document is JSON");
        assert!(
            served == committed,
            "the query API serves another OpenAPI document than {COMMITTED}: \
             run scripts/update-api-docs.sh and commit the result"
        );

        let _ = stop.send(());
        running.wait().await.expect("query API stops");
    });
}
