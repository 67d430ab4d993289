//! Request metrics of a REST API: count and latency per route template.
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
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

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
        use crate::register;
        Ok(Self {
            requests: register(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        format!("{prefix}_requests_total"),
                        "HTTP requests answered, by route and status",
                    ),
                    &["route", "status"],
                )?,
            )?,
            request_seconds: register(
                registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        format!("{prefix}_request_duration_seconds"),
                        "Time to answer an HTTP request, by route",
                    ),
                    &["route"],
                )?,
            )?,
        })
    }
}

/// Middleware (`axum::middleware::from_fn_with_state`) that counts and times
/// requests per route template, so the label set stays bounded whatever ids
/// clients send. Put it outermost, so refusals by inner layers (401) count.
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
    let started = Instant::now();
    let response = next.run(request).await;
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
}
