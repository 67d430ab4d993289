//! The monolith's REST API, same paths and JSON, on top of the registry:
//!
//! * `GET /api/heating/{id}`, `PUT /api/heating/{id}`
//! * `POST /api/heating/{id}/turn-on`, `POST /api/heating/{id}/turn-off`
//! * `POST /api/heating/{id}/set-temperature?temperature=23.0`
//! * `GET /api/heating/{id}/current-temperature`
//!
//! `{id}` is the monolith's id, resolved through `legacy_heating_systems`.
//! State comes from the device's shadow (reported, else desired), the
//! current temperature from the telemetry query API (else the imported
//! value); changes become ordinary commands. No bearer token: the
//! monolith's clients have none (docs/adr/0013-legacy-monolith-strangler-fig.md).

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRef, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::{IntoParams, OpenApi, ToSchema};
use warmhouse_contracts::commands::{self as catalog, state_keys, TARGET_TEMPERATURE_RANGE};
use warmhouse_service_kit::{track_request, HttpMetrics};

use super::config::LegacyState;
use super::repo::{LegacySystem, LegacySystems};
use crate::commands::{self, CommandView, NewCommand};
use crate::db::{Db, OrProblem};
use crate::devices::state::DeviceViews;
use crate::devices::Devices;
use crate::problem::Problem;
use crate::MAX_BODY_BYTES;

/// What the legacy handlers need.
#[derive(Clone)]
pub struct LegacyContext {
    pub db: Db,
    pub legacy: LegacyState,
}

/// The legacy routes, with their own metrics and body limit but outside the
/// bearer-token layer of `/api/v1`.
pub fn routes<S>(http_metrics: HttpMetrics) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    LegacyContext: FromRef<S>,
{
    Router::new()
        .route("/api/heating/{id}", get(get_heating).put(put_heating))
        .route("/api/heating/{id}/turn-on", post(turn_on))
        .route("/api/heating/{id}/turn-off", post(turn_off))
        .route("/api/heating/{id}/set-temperature", post(set_temperature))
        .route(
            "/api/heating/{id}/current-temperature",
            get(current_temperature),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .route_layer(middleware::from_fn_with_state(http_metrics, track_request))
}

#[derive(OpenApi)]
#[openapi(
    paths(get_heating, put_heating, turn_on, turn_off, set_temperature, current_temperature),
    components(schemas(HeatingSystem, HeatingSystemUpdate)),
    tags((name = "legacy", description = "The legacy heating monolith's API (strangler fig), served \
        from the registry for the monolith's existing clients. No bearer token: expose these \
        paths only where those clients are. New clients use /api/v1."))
)]
pub struct LegacyDoc;

/// A heating system, as the monolith showed it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"id": 1, "on": true, "targetTemperature": 22.5, "currentTemperature": 21.3}))]
pub struct HeatingSystem {
    /// The monolith's id.
    pub id: i64,
    /// Heating switched on: as the device last reported, else as last asked.
    pub on: bool,
    /// Target room temperature (°C): as the device last reported, else as
    /// last asked; null when never set.
    pub target_temperature: Option<f64>,
    /// Room temperature (°C): the device's latest reading, else the value
    /// imported from the monolith; null when neither is known.
    pub current_temperature: Option<f64>,
}

/// Body of `PUT /api/heating/{id}`: the fields given are asked of the
/// device. `currentTemperature` (a measurement) and unknown fields are
/// accepted and ignored, as the monolith's clients send the whole object.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"id": 1, "on": true, "targetTemperature": 21.0, "currentTemperature": 20.4}))]
pub struct HeatingSystemUpdate {
    /// When given, must be the id in the path.
    #[serde(default)]
    pub id: Option<i64>,
    /// Switch the heating on or off.
    #[serde(default)]
    pub on: Option<bool>,
    /// New target temperature, 5 to 30 °C.
    #[serde(default)]
    pub target_temperature: Option<f64>,
}

/// Query of `set-temperature`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct SetTemperatureParams {
    /// Target temperature in °C, 5 to 30, e.g. `23.0`.
    #[param(value_type = f64, minimum = 5, maximum = 30)]
    pub temperature: Option<String>,
}

#[utoipa::path(get, path = "/api/heating/{id}", tag = "legacy",
    params(("id" = i64, Path, minimum = 1, description = "The monolith's heating system id (a positive integer)")),
    responses(
        (status = 200, description = "The heating system", body = HeatingSystem),
        (status = 400, description = "The id is not a positive integer", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No heating system with this id was imported", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The telemetry query API is down and no temperature was imported", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_heating(
    State(state): State<LegacyContext>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<HeatingSystem>, Problem> {
    let system = resolve(&state, id).await?;
    Ok(Json(current(&state, &system).await?))
}

#[utoipa::path(put, path = "/api/heating/{id}", tag = "legacy", request_body = HeatingSystemUpdate,
    params(("id" = i64, Path, minimum = 1, description = "The monolith's heating system id (a positive integer)")),
    responses(
        (status = 200, description = "The heating system with the values asked for; commands carry them to the device", body = HeatingSystem),
        (status = 400, description = "Bad id, malformed body, id in the body differs, or target temperature out of range", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No heating system with this id was imported", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The device is disabled", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn put_heating(
    State(state): State<LegacyContext>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<HeatingSystemUpdate>, JsonRejection>,
) -> Result<Json<HeatingSystem>, Problem> {
    let system = resolve(&state, id).await?;
    let Json(update) = body.map_err(legacy_body_problem)?;
    if let Some(body_id) = update.id.filter(|id| *id != system.legacy_id) {
        return Err(body_problem(
            "id",
            format!(
                "the body's id {body_id} is not the path's id {}",
                system.legacy_id
            ),
        ));
    }
    let target = update
        .target_temperature
        .map(|t| check_target(t).map_err(|detail| body_problem("targetTemperature", detail)))
        .transpose()?;
    // Read before changing anything: a failure here leaves no command
    // behind for a retry to duplicate.
    let mut answer = current(&state, &system).await?;
    if let Some(on) = update.on {
        let name = if on {
            catalog::TURN_ON
        } else {
            catalog::TURN_OFF
        };
        send(&state, &system, name, Map::new()).await?;
        answer.on = on;
    }
    if let Some(t) = target {
        send(
            &state,
            &system,
            catalog::SET_TARGET_TEMPERATURE,
            temperature(t),
        )
        .await?;
        answer.target_temperature = Some(t);
    }
    Ok(Json(answer))
}

#[utoipa::path(post, path = "/api/heating/{id}/turn-on", tag = "legacy",
    params(("id" = i64, Path, minimum = 1, description = "The monolith's heating system id (a positive integer)")),
    responses(
        (status = 204, description = "A turn_on command is queued for the device"),
        (status = 400, description = "The id is not a positive integer", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No heating system with this id was imported", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The device is disabled", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn turn_on(
    State(state): State<LegacyContext>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let system = resolve(&state, id).await?;
    send(&state, &system, catalog::TURN_ON, Map::new()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/heating/{id}/turn-off", tag = "legacy",
    params(("id" = i64, Path, minimum = 1, description = "The monolith's heating system id (a positive integer)")),
    responses(
        (status = 204, description = "A turn_off command is queued for the device"),
        (status = 400, description = "The id is not a positive integer", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No heating system with this id was imported", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The device is disabled", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn turn_off(
    State(state): State<LegacyContext>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let system = resolve(&state, id).await?;
    send(&state, &system, catalog::TURN_OFF, Map::new()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/api/heating/{id}/set-temperature", tag = "legacy",
    params(
        ("id" = i64, Path, minimum = 1, description = "The monolith's heating system id (a positive integer)"),
        SetTemperatureParams,
    ),
    responses(
        (status = 202, description = "A set_target_temperature command is queued; `Location` is its progress under /api/v1 (bearer token needed there)"),
        (status = 400, description = "Bad id, or temperature missing, not a number or outside 5 to 30 °C", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No heating system with this id was imported", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The device is disabled", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn set_temperature(
    State(state): State<LegacyContext>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<SetTemperatureParams>, QueryRejection>,
) -> Result<Response, Problem> {
    let system = resolve(&state, id).await?;
    let Query(params) =
        query.map_err(|r| Problem::invalid_parameter("temperature", r.body_text()))?;
    let Some(text) = params.temperature else {
        return Err(Problem::invalid_parameter(
            "temperature",
            "the temperature query parameter is required, e.g. ?temperature=21.5",
        ));
    };
    let target = text
        .trim()
        .parse::<f64>()
        .map_err(|_| {
            Problem::invalid_parameter(
                "temperature",
                format!("temperature must be a number, got {:?}", clip(&text)),
            )
        })
        .and_then(|t| check_target(t).map_err(|d| Problem::invalid_parameter("temperature", d)))?;
    let command = send(
        &state,
        &system,
        catalog::SET_TARGET_TEMPERATURE,
        temperature(target),
    )
    .await?;
    let location = format!(
        "/api/v1/devices/{}/commands/{}",
        command.device_id, command.command_id
    );
    Ok((StatusCode::ACCEPTED, [(header::LOCATION, location)]).into_response())
}

#[utoipa::path(get, path = "/api/heating/{id}/current-temperature", tag = "legacy",
    params(("id" = i64, Path, minimum = 1, description = "The monolith's heating system id (a positive integer)")),
    responses(
        (status = 200, description = "The room temperature in °C as a bare JSON number (the device's latest reading, else the imported value); null when neither is known", body = Option<f64>, example = json!(21.3)),
        (status = 400, description = "The id is not a positive integer", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No heating system with this id was imported", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The telemetry query API is down and no temperature was imported", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn current_temperature(
    State(state): State<LegacyContext>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Option<f64>>, Problem> {
    let system = resolve(&state, id).await?;
    Ok(Json(room_temperature(&state, &system).await?))
}

/// Parses `{id}` (400 unless a positive integer, as the monolith's ids
/// were) and finds the device the import made of it (404 if none).
async fn resolve(
    state: &LegacyContext,
    id: Result<Path<String>, PathRejection>,
) -> Result<LegacySystem, Problem> {
    let Path(text) = id.map_err(|r| Problem::invalid_parameter("id", r.body_text()))?;
    let legacy_id = text
        .parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| {
            Problem::invalid_parameter(
                "id",
                format!(
                    "a heating system id is a positive whole number, got {:?}",
                    clip(&text)
                ),
            )
        })?;
    LegacySystems::find(&state.db.pool, legacy_id)
        .await
        .or_problem("heating system")?
        .ok_or_else(|| Problem::not_found(format!("no heating system {legacy_id}")))
}

/// The monolith's view of a system: each setting as the device reported
/// it, else as last asked (a device that never reported, or a command it
/// has not executed yet).
async fn current(state: &LegacyContext, system: &LegacySystem) -> Result<HeatingSystem, Problem> {
    let reported = DeviceViews::view(&state.db.pool, &system.device_id)
        .await?
        .map(|view| view.reported)
        .unwrap_or_default();
    fn setting<T>(
        key: &str,
        typed: fn(&Value) -> Option<T>,
        reported: &Map<String, Value>,
        desired: &Map<String, Value>,
    ) -> Option<T> {
        reported
            .get(key)
            .and_then(typed)
            .or_else(|| desired.get(key).and_then(typed))
    }
    let desired = &system.desired;
    Ok(HeatingSystem {
        id: system.legacy_id,
        // The monolith's is_on was never null.
        on: setting(state_keys::HEATING_ON, Value::as_bool, &reported, desired).unwrap_or(false),
        target_temperature: setting(
            state_keys::TARGET_TEMPERATURE,
            Value::as_f64,
            &reported,
            desired,
        ),
        current_temperature: room_temperature(state, system).await?,
    })
}

/// The device's latest `temperature` reading from the query API, else the
/// imported one. A query API that is down only matters when there is no
/// imported value to answer with.
async fn room_temperature(
    state: &LegacyContext,
    system: &LegacySystem,
) -> Result<Option<f64>, Problem> {
    let Some(telemetry) = &state.legacy.telemetry else {
        return Ok(system.imported_temperature);
    };
    match telemetry.latest_temperature(&system.device_id).await {
        Ok(Some(reading)) => Ok(Some(reading)),
        Ok(None) => Ok(system.imported_temperature),
        Err(err) => {
            tracing::warn!(error = %format!("{err:#}"), device_id = %system.device_id,
                "telemetry query API failed; answering the imported temperature");
            match system.imported_temperature {
                Some(imported) => Ok(Some(imported)),
                None => Err(Problem::store_unavailable(format!(
                    "the telemetry query API did not answer and no temperature of heating \
                     system {} was imported",
                    system.legacy_id
                ))),
            }
        }
    }
}

/// Queues a command for the system's device, like
/// `POST /api/v1/devices/{id}/commands` without an idempotency key.
async fn send(
    state: &LegacyContext,
    system: &LegacySystem,
    name: &str,
    params: Map<String, Value>,
) -> Result<CommandView, Problem> {
    let device = Devices::get(&state.db.pool, &system.device_id).await?;
    let new = NewCommand {
        name: name.to_string(),
        params,
        ttl_seconds: None,
    };
    let (command, _) =
        commands::create(&state.db.pool, &state.db.topics, &device, &new, None).await?;
    Ok(command)
}

fn temperature(t: f64) -> Map<String, Value> {
    let mut params = Map::new();
    params.insert("temperature".into(), t.into());
    params
}

/// The catalog's range, checked here so a bad value is the monolith's 400
/// rather than the command API's 422.
fn check_target(t: f64) -> Result<f64, String> {
    if TARGET_TEMPERATURE_RANGE.contains(&t) {
        Ok(t)
    } else {
        Err(format!(
            "temperature must be from {} to {} °C, got {t}",
            TARGET_TEMPERATURE_RANGE.start(),
            TARGET_TEMPERATURE_RANGE.end()
        ))
    }
}

/// 400 for a bad body field: the monolith answered every bad request with
/// 400, where `/api/v1` says 422.
fn body_problem(field: &str, detail: impl Into<String>) -> Problem {
    let mut problem = Problem::new(
        StatusCode::BAD_REQUEST,
        "invalid-body",
        "Invalid request body",
        detail,
    );
    problem.field = Some(field.into());
    problem
}

fn legacy_body_problem(rejection: JsonRejection) -> Problem {
    let mut problem = Problem::from(rejection);
    if problem.status == StatusCode::UNPROCESSABLE_ENTITY.as_u16() {
        problem.status = StatusCode::BAD_REQUEST.as_u16();
    }
    problem
}

/// Echoes at most 40 characters of what the client sent.
fn clip(text: &str) -> String {
    text.chars().take(40).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_range_is_the_catalogs() {
        assert_eq!(check_target(5.0), Ok(5.0));
        assert_eq!(check_target(30.0), Ok(30.0));
        assert!(check_target(30.5).is_err());
        assert!(check_target(f64::NAN).is_err());
        assert!(check_target(f64::INFINITY).is_err());
    }

    #[test]
    fn update_tolerates_the_whole_object_and_unknown_fields() {
        let update: HeatingSystemUpdate = serde_json::from_str(
            r#"{"id": 3, "on": true, "targetTemperature": 19.5, "currentTemperature": 17.2, "room": "hall"}"#,
        )
        .expect("decodes");
        assert_eq!(update.id, Some(3));
        assert_eq!(update.on, Some(true));
        assert_eq!(update.target_temperature, Some(19.5));
    }

    #[test]
    fn heating_system_is_camel_case() {
        let json = serde_json::to_value(HeatingSystem {
            id: 1,
            on: true,
            target_temperature: Some(22.5),
            current_temperature: None,
        })
        .expect("encodes");
        assert_eq!(
            json,
            serde_json::json!({"id": 1, "on": true, "targetTemperature": 22.5, "currentTemperature": null})
        );
    }
}
