//! Errors as RFC 9457 problem details (`application/problem+json`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Prefix of every problem `type`. A URN rather than a URL: nothing has to
/// be hosted for it, and it still identifies the kind of problem for clients.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:warmhouse:problem:";

/// Seconds a client should wait before retrying when InfluxDB is down.
const RETRY_AFTER_SECS: &str = "5";

/// An RFC 9457 problem: what went wrong, for people (`title`, `detail`) and
/// for programs (`type`, `status`, `parameter`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:warmhouse:problem:invalid-parameter",
    "title": "Invalid request parameter",
    "status": 400,
    "detail": "limit must be between 1 and 10000; got 0",
    "parameter": "limit"
}))]
pub struct Problem {
    /// URI identifying the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind of problem; the same for every occurrence.
    pub title: String,
    /// HTTP status code.
    pub status: u16,
    /// What went wrong this time, and how to fix it.
    pub detail: String,
    /// The request parameter (path or query) at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
}

impl Problem {
    fn new(status: StatusCode, slug: &str, title: &str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("{PROBLEM_TYPE_PREFIX}{slug}"),
            title: title.into(),
            status: status.as_u16(),
            detail: detail.into(),
            parameter: None,
        }
    }

    /// 400: `parameter` is malformed or out of range.
    pub fn invalid_parameter(parameter: &str, detail: impl Into<String>) -> Self {
        Self {
            parameter: Some(parameter.into()),
            ..Self::new(
                StatusCode::BAD_REQUEST,
                "invalid-parameter",
                "Invalid request parameter",
                detail,
            )
        }
    }

    /// 400 that no single parameter can be blamed for (e.g. an undecodable
    /// query string).
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "invalid-parameter",
            "Invalid request parameter",
            detail,
        )
    }

    /// 404: no telemetry for what was asked.
    pub fn no_data(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "no-data",
            "No telemetry found",
            detail,
        )
    }

    /// 404 for a path no route serves.
    pub fn no_route(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not-found",
            "Not found",
            format!("no endpoint serves {path}; see /docs for the API"),
        )
    }

    /// 503: InfluxDB cannot be reached; retrying later may work.
    pub fn store_unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            "Time-series store unavailable",
            detail,
        )
    }

    /// 502: InfluxDB answered, but not with something usable.
    pub fn store_error(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "store-error",
            "Time-series store error",
            detail,
        )
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut response = (
            status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            )],
            body,
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_as_rfc9457() {
        let problem = Problem::invalid_parameter("limit", "limit must be at least 1; got 0");
        let json = serde_json::to_value(&problem).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "type": "urn:warmhouse:problem:invalid-parameter",
                "title": "Invalid request parameter",
                "status": 400,
                "detail": "limit must be at least 1; got 0",
                "parameter": "limit"
            })
        );
        let json = serde_json::to_value(Problem::no_data("nothing")).unwrap();
        assert!(json.get("parameter").is_none());
    }

    #[test]
    fn unavailable_says_when_to_retry() {
        let response = Problem::store_unavailable("down").into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}
