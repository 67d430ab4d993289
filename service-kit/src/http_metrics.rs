//! What happens around every request of a REST API: count and latency per
//! route template, and a tracing span carrying the gateway's request id, so
//! a service's log lines can be matched with the gateway's access log.
//!
//! ```ignore
//! let http = HttpMetrics::register(&registry, "warmhouse_registry")?;
//! let api = Router::new()
//!     .route("/api/v1/homes", get(list_homes))
//!     .route_layer(axum::middleware::from_fn_with_state(http, track_request));
//! ```

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramVec, IntCounterVec, Registry};
use tracing::Instrument;

/// `{prefix}_requests_total{route,status}` and
/// `{prefix}_request_duration_seconds{route}`.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    request_seconds: HistogramVec,
}

impl HttpMetrics {
    /// Registers the two metrics named after `prefix` (e.g.
    /// `warmhouse_query` gives `warmhouse_query_requests_total`).
    pub fn register(registry: &Registry, prefix: &str) -> anyhow::Result<Self> {
        use crate::metrics::{counter_vec, histogram_vec};
        Ok(Self {
            requests: counter_vec(
                registry,
                format!("{prefix}_requests_total"),
                "HTTP requests answered, by route and status",
                &["route", "status"],
            )?,
            request_seconds: histogram_vec(
                registry,
                format!("{prefix}_request_duration_seconds"),
                "Time to answer an HTTP request, by route",
                &["route"],
                None,
            )?,
        })
    }
}

/// The `X-Request-Id` the gateway sets (or passes on from the client).
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Middleware (`axum::middleware::from_fn_with_state`) that counts and times
/// requests per route template, so the label set stays bounded whatever ids
/// clients send. Put it outermost, so refusals by inner layers (401) count.
///
/// Everything logged while answering is inside a `request` span with the
/// method, the route and the request id (`-` without one; one that is not a
/// plain token of up to 128 characters is not trusted into the logs). A
/// server error is logged here too, with its status.
pub async fn track_request(
    State(metrics): State<HttpMetrics>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let request_id = request
        .headers()
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|id| is_plain_token(id))
        .unwrap_or("-")
        .to_owned();
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        route = %route,
        request_id = %request_id,
    );
    let started = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    if response.status().is_server_error() {
        span.in_scope(|| tracing::warn!(status = %response.status(), "request failed"));
    }
    metrics
        .requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    metrics
        .request_seconds
        .with_label_values(&[route.as_str()])
        .observe(started.elapsed().as_secs_f64());
    response
}

/// What nginx's gateway also accepts as a client's request id.
fn is_plain_token(id: &str) -> bool {
    (1..=128).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use axum::Router;

    #[tokio::test]
    async fn counts_by_route_template() {
        let registry = Registry::new();
        let metrics = HttpMetrics::register(&registry, "test_api").unwrap();
        let router = Router::new()
            .route("/items/{id}", get(|| async { "ok" }))
            .route_layer(axum::middleware::from_fn_with_state(metrics, track_request));
        let (addr, _task) = crate::serve(
            "127.0.0.1:0".parse().unwrap(),
            router,
            std::future::pending(),
        )
        .await
        .unwrap();
        for id in ["a", "b"] {
            let status = reqwest::get(format!("http://{addr}/items/{id}"))
                .await
                .unwrap()
                .status();
            assert_eq!(status, 200);
        }
        let text = {
            use prometheus::Encoder;
            let mut out = Vec::new();
            prometheus::TextEncoder::new()
                .encode(&registry.gather(), &mut out)
                .unwrap();
            String::from_utf8(out).unwrap()
        };
        assert!(
            text.contains(r#"test_api_requests_total{route="/items/{id}",status="200"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"test_api_request_duration_seconds_count{route="/items/{id}"} 2"#),
            "{text}"
        );
    }

    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use axum::body::Body;
    use axum::http::StatusCode;
    use tower::ServiceExt;

    /// Log output, shared with the subscriber.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    async fn failing() -> StatusCode {
        tracing::info!("answering");
        StatusCode::SERVICE_UNAVAILABLE
    }

    async fn request(app: &Router, request_id: Option<&str>) -> StatusCode {
        let mut request = axum::http::Request::get("/things/7");
        if let Some(id) = request_id {
            request = request.header(REQUEST_ID_HEADER, id);
        }
        app.clone()
            .oneshot(request.body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn log_lines_carry_the_request_id_and_server_errors_are_logged() {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        let _guard = tracing::subscriber::set_default(subscriber);
        let metrics = HttpMetrics::register(&Registry::new(), "test").unwrap();
        let app = Router::new()
            .route("/things/{id}", get(failing))
            .route_layer(axum::middleware::from_fn_with_state(metrics, track_request));

        assert_eq!(
            request(&app, Some("abc-123")).await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            request(&app, Some("a b\"c")).await,
            StatusCode::SERVICE_UNAVAILABLE
        );

        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 4, "{text}");
        for (line, id) in lines.iter().zip(["abc-123", "abc-123", "-", "-"]) {
            assert_eq!(line["span"]["request_id"], id, "{line}");
            assert_eq!(line["span"]["route"], "/things/{id}", "{line}");
            assert_eq!(line["span"]["method"], "GET", "{line}");
        }
        assert_eq!(lines[0]["fields"]["message"], "answering");
        assert_eq!(lines[1]["fields"]["message"], "request failed");
        assert_eq!(lines[1]["fields"]["status"], "503 Service Unavailable");
        assert_eq!(lines[1]["level"], "WARN");
    }
}
