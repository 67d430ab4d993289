//! `POST /api/v1/onboarding` runs a saga; `GET /api/v1/onboarding/{saga_id}`
//! shows it with its log.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRef, Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use utoipa::OpenApi;
use warmhouse_service_kit::auth::Caller;

use super::model::{Onboarded, OnboardingRequest, SagaLogEntry, SagaView};
use super::saga::{self, Onboarding};
use crate::problem::Problem;

pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Onboarding: FromRef<S>,
{
    Router::new()
        .route("/api/v1/onboarding", post(onboard_device))
        .route("/api/v1/onboarding/{saga_id}", get(get_saga))
}

#[derive(OpenApi)]
#[openapi(
    paths(onboard_device, get_saga),
    components(schemas(OnboardingRequest, Onboarded, SagaView, SagaLogEntry)),
    tags((name = "onboarding", description = "Device onboarding saga: create, credentials, telemetry storage, announcement, activation"))
)]
pub struct OnboardingDoc;

#[utoipa::path(post, path = "/api/v1/onboarding", tag = "onboarding",
    request_body = OnboardingRequest,
    responses(
        (status = 201, description = "Onboarded: the device is active; the credentials are shown only now", body = Onboarded),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token does not grant the device's home", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A device with this id exists (nothing was changed)", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid device, or no such home", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "A step failed and the saga was compensated; see GET /api/v1/onboarding/{saga_id}", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn onboard_device(
    caller: Caller,
    State(onboarding): State<Onboarding>,
    body: Result<Json<OnboardingRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<Onboarded>), Problem> {
    let Json(request) = body?;
    request.device.validate()?;
    caller.require_home(&request.device.home_id)?;
    let onboarded = saga::run(&onboarding, &request).await?;
    Ok((StatusCode::CREATED, Json(onboarded)))
}

#[utoipa::path(get, path = "/api/v1/onboarding/{saga_id}", tag = "onboarding",
    params(("saga_id" = String, Path, description = "Saga id")),
    responses(
        (status = 200, description = "The saga and its log", body = SagaView),
        (status = 404, description = "No such saga", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_saga(
    caller: Caller,
    State(onboarding): State<Onboarding>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<SagaView>, Problem> {
    let Path(id) = id.map_err(|r| Problem::invalid_parameter("saga_id", r.body_text()))?;
    let saga = saga::load(&onboarding.db.pool, &id).await?;
    if !caller.may_use_home(&saga.home_id) {
        return Err(Problem::not_found(format!("no saga {id:?}")));
    }
    Ok(Json(saga))
}
