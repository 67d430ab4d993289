//! REST endpoints of commands and device state:
//!
//! * `POST /api/v1/devices/{id}/commands` (header `Idempotency-Key`)
//! * `GET /api/v1/devices/{id}/commands` (`status`, `limit`)
//! * `GET /api/v1/devices/{id}/commands/{command_id}`
//! * `GET /api/v1/devices/{id}/state` (shadow and presence)
//!
//! A device outside the caller's homes answers 404, as if it did not exist.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use utoipa::{IntoParams, OpenApi};
use warmhouse_contracts::domain::CommandStatus;
use warmhouse_service_kit::auth::Caller;

use super::machine;
use super::model::{CommandView, NewCommand};
use crate::db::Db;
use crate::devices::http::{device_state, visible_device};
use crate::devices::model;
use crate::devices::state::DeviceState;
use crate::devices::Device;
use crate::problem::Problem;

/// Header that makes a command request safe to retry.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Most commands one list returns.
pub const MAX_COMMANDS_LIMIT: i64 = 200;

pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Db: FromRef<S>,
{
    Router::new()
        .route(
            "/api/v1/devices/{id}/commands",
            post(create_command).get(list_commands),
        )
        .route(
            "/api/v1/devices/{id}/commands/{command_id}",
            get(get_command),
        )
        .route("/api/v1/devices/{id}/state", get(get_state))
}

#[derive(OpenApi)]
#[openapi(
    paths(create_command, list_commands, get_command, get_state),
    components(schemas(NewCommand, CommandView, DeviceState)),
    tags((name = "commands", description = "Commands to devices and their progress"))
)]
pub struct CommandsDoc;

/// Filters of the command list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CommandListParams {
    /// Only commands in this status (queued, sent, delivered, acked, failed, expired).
    pub status: Option<String>,
    /// How many, newest first: 1 to 200 (default 50).
    pub limit: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/devices/{id}/commands", tag = "commands",
    request_body = NewCommand,
    params(
        ("id" = String, Path, description = "Device id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retrying with the same key returns the first command instead of sending another (1 to 128 ASCII characters)"),
    ),
    responses(
        (status = 202, description = "Accepted and queued; follow `Location` for its progress", body = CommandView),
        (status = 200, description = "Already accepted under this Idempotency-Key", body = CommandView),
        (status = 400, description = "Malformed JSON or bad header", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Device disabled, or key reused for another command", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown command or bad parameters", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_command(
    caller: Caller,
    State(db): State<Db>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Json<NewCommand>, JsonRejection>,
) -> Result<Response, Problem> {
    let device = path_device(&db, &caller, id).await?;
    let key =
        match headers.get(IDEMPOTENCY_KEY) {
            None => None,
            Some(value) => Some(value.to_str().map_err(|_| {
                Problem::invalid_parameter("Idempotency-Key", "must be visible ASCII")
            })?),
        };
    let Json(new) = body?;
    let (command, created) = machine::create(&db.pool, &db.topics, &device, &new, key).await?;
    let status = if created {
        StatusCode::ACCEPTED
    } else {
        StatusCode::OK
    };
    let location = format!(
        "/api/v1/devices/{}/commands/{}",
        device.id, command.command_id
    );
    Ok((status, [(header::LOCATION, location)], Json(command)).into_response())
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/commands", tag = "commands",
    params(("id" = String, Path, description = "Device id"), CommandListParams),
    responses(
        (status = 200, description = "Commands of the device, newest first", body = [CommandView]),
        (status = 400, description = "Bad status or limit", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_commands(
    caller: Caller,
    State(db): State<Db>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<CommandListParams>, QueryRejection>,
) -> Result<Json<Vec<CommandView>>, Problem> {
    let device = path_device(&db, &caller, id).await?;
    let Query(params) = query.map_err(|r| Problem::invalid_parameter("query", r.body_text()))?;
    let status = match params.status.as_deref() {
        None => None,
        Some(text) => Some(CommandStatus::parse(text).ok_or_else(|| {
            Problem::invalid_parameter(
                "status",
                format!("{text:?} is not one of queued, sent, delivered, acked, failed, expired"),
            )
        })?),
    };
    let limit = match params.limit.as_deref() {
        None => 50,
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=MAX_COMMANDS_LIMIT).contains(n))
            .ok_or_else(|| {
                Problem::invalid_parameter(
                    "limit",
                    format!("must be a whole number from 1 to {MAX_COMMANDS_LIMIT}, got {text:?}"),
                )
            })?,
    };
    Ok(Json(
        machine::list(&db.pool, &device.id, status, limit).await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/commands/{command_id}", tag = "commands",
    params(
        ("id" = String, Path, description = "Device id"),
        ("command_id" = String, Path, description = "Command id (from the POST answer)"),
    ),
    responses(
        (status = 200, description = "The command and its status", body = CommandView),
        (status = 404, description = "No such device or command", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_command(
    caller: Caller,
    State(db): State<Db>,
    ids: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<CommandView>, Problem> {
    let Path((id, command_id)) =
        ids.map_err(|r| Problem::invalid_parameter("id", r.body_text()))?;
    let device = visible_device_by_id(&db, &caller, &id).await?;
    if command_id.len() > 64 {
        return Err(Problem::not_found(format!("no command {command_id:?}")));
    }
    Ok(Json(machine::get(&db.pool, &device.id, &command_id).await?))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}/state", tag = "commands",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "Desired and reported state, their delta, and presence", body = DeviceState),
        (status = 404, description = "No such device", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_state(
    caller: Caller,
    State(db): State<Db>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<DeviceState>, Problem> {
    let device = path_device(&db, &caller, id).await?;
    Ok(Json(device_state(&db.pool, &device.id).await?))
}

async fn path_device(
    db: &Db,
    caller: &Caller,
    id: Result<Path<String>, PathRejection>,
) -> Result<Device, Problem> {
    let Path(id) = id.map_err(|r| Problem::invalid_parameter("id", r.body_text()))?;
    visible_device_by_id(db, caller, &id).await
}

/// The device, if it exists and the caller may use its home; 404 otherwise.
async fn visible_device_by_id(db: &Db, caller: &Caller, id: &str) -> Result<Device, Problem> {
    model::device_id("id", id).map_err(|p| Problem::invalid_parameter("id", p.detail))?;
    visible_device(&db.pool, caller, id).await
}
