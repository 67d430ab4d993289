//! Errors as RFC 9457 problem details (`application/problem+json`), with the
//! same `type` URNs and shape as the telemetry query API.

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Prefix of every problem `type`.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:warmhouse:problem:";

/// Seconds a client should wait before retrying when PostgreSQL is down.
const RETRY_AFTER_SECS: &str = "5";

/// An RFC 9457 problem.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:warmhouse:problem:invalid-body",
    "title": "Invalid request body",
    "status": 422,
    "detail": "name must be 1 to 200 characters; got 0",
    "field": "name"
}))]
pub struct Problem {
    /// URI identifying the kind of problem.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind of problem; the same for every occurrence.
    pub title: &'static str,
    /// HTTP status code.
    pub status: u16,
    /// What went wrong this time, and how to fix it.
    pub detail: String,
    /// The path or query parameter at fault, when there is one.
    // Boxed: keeps `Result<_, Problem>` small (clippy::result_large_err).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub parameter: Option<Box<str>>,
    /// The request body field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub field: Option<Box<str>>,
}

impl Problem {
    fn new(status: StatusCode, slug: &str, title: &'static str, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("{PROBLEM_TYPE_PREFIX}{slug}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            parameter: None,
            field: None,
        }
    }

    /// 400: a path or query parameter is malformed or out of range.
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

    /// 422: the body is well-formed JSON but a field is not acceptable.
    pub fn invalid_field(field: &str, detail: impl Into<String>) -> Self {
        Self {
            field: Some(field.into()),
            ..Self::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid-body",
                "Invalid request body",
                detail,
            )
        }
    }

    /// 404: no such home or device.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 404 for a path no route serves.
    pub fn no_route(path: &str) -> Self {
        Self::not_found(format!("no endpoint serves {path}; see /docs for the API"))
    }

    /// 409: the request contradicts what is stored.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    /// 503: PostgreSQL cannot be reached; retrying later may work.
    pub fn store_unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            "Registry database unavailable",
            detail,
        )
    }

    /// 500: a bug or a database failure the client cannot fix.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the registry failed to answer; the error was logged",
        )
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// axum refuses bodies before our handlers run; its plain-text answers
/// become problems with the status it chose (400 syntax, 413 too large,
/// 415 not JSON, 422 wrong shape or unknown field).
impl From<JsonRejection> for Problem {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let detail = rejection.body_text();
        let (slug, title) = match status {
            StatusCode::PAYLOAD_TOO_LARGE => ("payload-too-large", "Request body too large"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => {
                ("unsupported-media-type", "Request body must be JSON")
            }
            StatusCode::BAD_REQUEST => ("malformed-body", "Malformed request body"),
            _ => ("invalid-body", "Invalid request body"),
        };
        let field = unknown_field(&detail)
            .or_else(|| error_path(&detail))
            .map(String::into_boxed_str);
        Self {
            field,
            ..Self::new(status, slug, title, detail)
        }
    }
}

/// `unknown field `foo`, expected ...` names the field serde refused.
fn unknown_field(detail: &str) -> Option<String> {
    let rest = detail.split("unknown field `").nth(1)?;
    Some(rest.split('`').next()?.to_string())
}

/// axum prefixes data errors with the path of the bad value: `name: ...`.
fn error_path(detail: &str) -> Option<String> {
    let rest = detail.strip_prefix("Failed to deserialize the JSON body into the target type: ")?;
    let (path, _) = rest.split_once(": ")?;
    let plain = !path.is_empty()
        && path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.[]".contains(c));
    plain.then(|| path.to_string())
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
    fn finds_the_field_serde_refused() {
        assert_eq!(
            unknown_field("x: unknown field `colour`, expected one of `id`, `name`"),
            Some("colour".into())
        );
        assert_eq!(
            error_path("Failed to deserialize the JSON body into the target type: status: unknown variant `x`"),
            Some("status".into())
        );
    }

    #[test]
    fn serialises_as_rfc9457() {
        let json = serde_json::to_value(Problem::invalid_field("name", "too long")).unwrap();
        assert_eq!(json["type"], "urn:warmhouse:problem:invalid-body");
        assert_eq!(json["status"], 422);
        assert_eq!(json["field"], "name");
        assert!(json.get("parameter").is_none());
    }
}
