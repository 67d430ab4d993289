//! The HTTP side of device identity: issuing credentials, and the
//! broker's access question.

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRef, Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use utoipa::OpenApi;
use warmhouse_contracts::ids::DeviceId;
use warmhouse_device_identity::access::{AccessDecision, AccessRequest, DEVICE_ACCESS_PATH};
use warmhouse_device_identity::password;
use warmhouse_service_kit::auth::Caller;

use super::{
    check_access, issue_credentials, CredentialKind, CredentialRequest, Identity, IssuedCredentials,
};
use crate::db::{Db, OrProblem};
use crate::devices::http::visible_device;
use crate::problem::Problem;

/// What the identity handlers need.
#[derive(Clone)]
pub struct IdentityState {
    pub db: Db,
    pub identity: Arc<Identity>,
}

/// The routes of this module; they sit behind the registry's bearer-token
/// layer like every `/api/v1` route.
pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    IdentityState: FromRef<S>,
{
    Router::new()
        .route("/api/v1/devices/{id}/credentials", post(create_credentials))
        .route(DEVICE_ACCESS_PATH, post(device_access))
}

#[derive(OpenApi)]
#[openapi(
    paths(create_credentials, device_access),
    components(schemas(CredentialRequest, CredentialKind, IssuedCredentials)),
    tags(
        (name = "identity", description = "Device credentials and the broker's access check")
    )
)]
pub struct IdentityDoc;

/// This module's OpenAPI paths, with `/internal/` marked as needing a
/// bearer token too (the registry marks `/api/`).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = IdentityDoc::openapi();
    warmhouse_service_kit::auth::document_bearer_auth(&mut doc, "/internal/");
    doc
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/credentials", tag = "identity",
    request_body = CredentialRequest,
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 201, description = "Issued; the secret is in this answer only. Replaces the device's current credential of this kind.", body = IssuedCredentials),
        (status = 400, description = "Malformed JSON or id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device (or not in the caller's homes)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The device is disabled", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown kind", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "No platform CA configured (certificates only), or PostgreSQL unavailable", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_credentials(
    caller: Caller,
    State(state): State<IdentityState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<CredentialRequest>, JsonRejection>,
) -> Result<Response, Problem> {
    let Path(id) = id.map_err(|r| Problem::invalid_parameter("id", r.body_text()))?;
    DeviceId::new(id.as_str()).map_err(|err| Problem::invalid_parameter("id", err.to_string()))?;
    let Json(request) = body?;
    // A device of a home outside the token is "not found", as elsewhere.
    visible_device(&state.db.pool, &caller, &id).await?;
    let mut tx = state.db.pool.begin().await.or_problem("credential")?;
    let issued = issue_credentials(
        &mut tx,
        &state.identity,
        &state.db.topics,
        &id,
        request.kind,
    )
    .await?;
    tx.commit().await.or_problem("credential")?;
    let mut response = (StatusCode::CREATED, Json(issued)).into_response();
    // Secrets: no cache may keep this answer.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

#[utoipa::path(post, path = "/internal/v1/device-access", tag = "identity",
    request_body(content = Object, description = "`{\"method\":\"password\",\"device_id\":..,\"password\":..}` or `{\"method\":\"certificate\",\"device_id\":..,\"certificate_sha256\":..}`"),
    responses(
        (status = 200, description = "`{\"allowed\":bool,\"reason\":string?}`; the broker refuses the connect unless allowed", body = Object),
        (status = 403, description = "Not an administrator's token", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Malformed question", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "PostgreSQL unavailable (the broker refuses the connect)", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn device_access(
    caller: Caller,
    State(state): State<IdentityState>,
    body: Result<Json<AccessRequest>, JsonRejection>,
) -> Result<Json<AccessDecision>, Problem> {
    caller.require_admin()?;
    let Json(request) = body?;
    if let AccessRequest::Password { password, .. } = &request {
        if password.len() > password::MAX_PASSWORD_BYTES {
            return Ok(Json(AccessDecision::refuse("wrong password")));
        }
    }
    let decision = check_access(&state.db.pool, &state.identity, &request).await?;
    tracing::debug!(
        device_id = request.device_id(),
        method = request.method(),
        allowed = decision.allowed,
        reason = decision.reason.as_deref().unwrap_or(""),
        "device access decided"
    );
    Ok(Json(decision))
}
