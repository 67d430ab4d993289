//! Errors as RFC 9457 problem details (`application/problem+json`), one
//! type for every Warmhouse REST API so clients see the same shape and the
//! same `type` URNs from the registry and the telemetry query API.
//!
//! Each `type` has one `title` platform-wide (RFC 9457: the title does not
//! change from occurrence to occurrence); `detail` says what happened this
//! time and, where it matters, which store or service is concerned.

use axum::extract::rejection::JsonRejection;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Prefix of every problem `type`. A URN rather than a URL: nothing has to
/// be hosted for it, and it still identifies the kind of problem for clients.
pub const PROBLEM_TYPE_PREFIX: &str = "urn:warmhouse:problem:";

/// Seconds a client should wait before retrying when a store is down.
const RETRY_AFTER_SECS: &str = "5";

/// An RFC 9457 problem: what went wrong, for people (`title`, `detail`) and
/// for programs (`type`, `status`, `parameter`, `field`).
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
    /// `WWW-Authenticate` challenge sent with 401 and 403 (RFC 6750); a
    /// header, not part of the body.
    #[serde(skip)]
    challenge: Option<Box<str>>,
}

impl Problem {
    /// A problem of type `urn:warmhouse:problem:{slug}`. Prefer the named
    /// constructors; this is for kinds only one service has.
    pub fn new(
        status: StatusCode,
        slug: &str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind: format!("{PROBLEM_TYPE_PREFIX}{slug}"),
            title,
            status: status.as_u16(),
            detail: detail.into(),
            parameter: None,
            field: None,
            challenge: None,
        }
    }

    /// 400: `parameter` (path or query) is malformed or out of range.
    pub fn invalid_parameter(parameter: &str, detail: impl Into<String>) -> Self {
        Self {
            parameter: Some(parameter.into()),
            ..Self::bad_request(detail)
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

    /// 422: the body is well-formed JSON but `field` is not acceptable.
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

    /// 401: no usable bearer token. `error` is the RFC 6750 error code
    /// (`invalid_token`, `invalid_request`), `None` when the request carried
    /// no credentials at all (then the challenge names no error).
    pub fn unauthorized(error: Option<&str>, detail: impl Into<String>) -> Self {
        let detail = detail.into();
        let challenge = match error {
            // A quote or backslash would end or escape the quoted-string.
            Some(error) => format!(
                r#"Bearer realm="warmhouse", error="{error}", error_description="{}""#,
                detail.replace(['"', '\\'], "'")
            ),
            None => r#"Bearer realm="warmhouse""#.to_string(),
        };
        Self {
            challenge: Some(challenge.into()),
            ..Self::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "Authentication required",
                detail,
            )
        }
    }

    /// 403: the token is valid but does not grant this.
    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self {
            challenge: Some(r#"Bearer realm="warmhouse", error="insufficient_scope""#.into()),
            ..Self::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
        }
    }

    /// 404: no such resource (or none the caller may know of).
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 404 for a path no route serves.
    pub fn no_route(path: &str) -> Self {
        Self::not_found(format!("no endpoint serves {path}; see /docs for the API"))
    }

    /// 404: nothing stored for what was asked (telemetry).
    pub fn no_data(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "no-data",
            "No telemetry found",
            detail,
        )
    }

    /// 409: the request contradicts what is stored.
    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    /// 503 with `Retry-After`: the service's store (PostgreSQL, InfluxDB)
    /// cannot be reached; retrying later may work. `detail` names the store.
    pub fn store_unavailable(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store-unavailable",
            "Store unavailable",
            detail,
        )
    }

    /// 503 with `Retry-After`: the service is at its capacity for this kind
    /// of work right now (not broken); retrying later will work.
    pub fn busy(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "busy", "Busy", detail)
    }

    /// 502: the store answered, but not with something usable.
    pub fn store_error(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "store-error",
            "Store error",
            detail,
        )
    }

    /// 500: a bug or a failure the client cannot fix; log the cause before
    /// answering with this.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Internal error",
            "the service failed to answer; the error was logged",
        )
    }

    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

/// axum refuses bodies before the handlers run; its plain-text answers
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
        let headers = response.headers_mut();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(
                header::RETRY_AFTER,
                HeaderValue::from_static(RETRY_AFTER_SECS),
            );
        }
        if let Some(challenge) = self
            .challenge
            .as_deref()
            .and_then(|c| HeaderValue::from_str(c).ok())
        {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
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
        let json = serde_json::to_value(Problem::invalid_field("name", "too long")).unwrap();
        assert_eq!(json["type"], "urn:warmhouse:problem:invalid-body");
        assert_eq!(json["status"], 422);
        assert_eq!(json["field"], "name");
        assert!(json.get("parameter").is_none());
        let json = serde_json::to_value(Problem::unauthorized(None, "no token")).unwrap();
        assert!(json.get("challenge").is_none(), "{json}");
    }

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
    fn unavailable_says_when_to_retry() {
        let response = Problem::store_unavailable("down").into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }

    #[test]
    fn auth_problems_carry_a_bearer_challenge() {
        let response =
            Problem::unauthorized(Some("invalid_token"), "token expired").into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="warmhouse", error="invalid_token", error_description="token expired""#
        );
        let response = Problem::unauthorized(None, "no token").into_response();
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            r#"Bearer realm="warmhouse""#
        );
        let response = Problem::forbidden("not your home").into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(response.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .contains("insufficient_scope"));
        assert!(Problem::bad_request("x")
            .into_response()
            .headers()
            .get(header::WWW_AUTHENTICATE)
            .is_none());
    }

    #[test]
    fn schema_documents_the_body_only() {
        use utoipa::PartialSchema;
        let schema = serde_json::to_string(&Problem::schema()).unwrap();
        for field in ["type", "title", "status", "detail", "parameter", "field"] {
            assert!(
                schema.contains(&format!("\"{field}\"")),
                "{field}: {schema}"
            );
        }
        assert!(!schema.contains("challenge"), "{schema}");
    }
}
