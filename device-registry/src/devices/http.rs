//! REST endpoints of homes and devices:
//!
//! * `POST/GET /api/v1/homes`, `GET/PATCH/DELETE /api/v1/homes/{id}`
//! * `POST/GET /api/v1/devices` (filters `home_id`, `kind`, `status`),
//!   `GET/PATCH/DELETE /api/v1/devices/{id}`
//! * lists page by id: `limit` (1..=500, default 50) and an opaque `cursor`

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::FromRef;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use sqlx::PgPool;
use utoipa::{IntoParams, OpenApi};
use warmhouse_service_kit::auth::Caller;

use super::model::{
    self, Device, DevicePage, DevicePatch, DeviceStatus, Home, HomePage, HomePatch, NewDevice,
    NewHome,
};
use super::repo::{DeviceFilter, Devices, Homes};
use super::state::{DeviceState, DeviceViews};
use crate::db::Db;
use crate::problem::Problem;

/// Page size when `limit` is not given.
pub const DEFAULT_LIMIT: u32 = 50;
/// Largest page size.
pub const MAX_LIMIT: u32 = 500;

type ApiResult<T> = Result<T, Problem>;

/// Pagination of every list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// Filters and pagination of the device list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceListParams {
    /// Only devices of this home.
    pub home_id: Option<String>,
    /// Only devices of this kind.
    pub kind: Option<String>,
    /// Only devices in this status (`provisioning`, `active`, `disabled`).
    pub status: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

pub fn routes<S>() -> Router<S>
where
    S: Clone + Send + Sync + 'static,
    Db: FromRef<S>,
{
    Router::new()
        .route("/api/v1/homes", get(list_homes).post(create_home))
        .route(
            "/api/v1/homes/{id}",
            get(get_home).patch(update_home).delete(delete_home),
        )
        .route("/api/v1/devices", get(list_devices).post(create_device))
        .route(
            "/api/v1/devices/{id}",
            get(get_device).patch(update_device).delete(delete_device),
        )
}

#[derive(OpenApi)]
#[openapi(
    paths(
        list_homes,
        create_home,
        get_home,
        update_home,
        delete_home,
        list_devices,
        create_device,
        get_device,
        update_device,
        delete_device
    ),
    components(schemas(DeviceStatus))
)]
pub struct DevicesDoc;

#[utoipa::path(get, path = "/api/v1/homes", tag = "homes", params(PageParams),
    responses(
        (status = 200, description = "A page of the caller's homes (every home for an admin), by id", body = HomePage),
        (status = 400, description = "Bad limit or cursor", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_homes(
    caller: Caller,
    State(db): State<Db>,
    query: Result<Query<PageParams>, QueryRejection>,
) -> ApiResult<Json<HomePage>> {
    let Query(params) = query.map_err(|r| Problem::invalid_parameter("query", r.body_text()))?;
    let (after, limit) = page(params.limit.as_deref(), params.cursor.as_deref())?;
    let rows = Homes::list(&db.pool, caller.home_scope(), after.as_deref(), limit).await?;
    let (items, next_cursor) = split_page(rows, limit, |h| &h.id);
    Ok(Json(HomePage { items, next_cursor }))
}

#[utoipa::path(post, path = "/api/v1/homes", tag = "homes", request_body = NewHome,
    responses(
        (status = 201, description = "Created", body = Home),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin's token", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A home with this id exists", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid or unknown field", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_home(
    caller: Caller,
    State(db): State<Db>,
    body: Result<Json<NewHome>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Home>)> {
    caller.require_admin()?;
    let Json(home) = body?;
    home.validate()?;
    let created = Homes::create(&db.pool, &db.topics, &home).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, path = "/api/v1/homes/{id}", tag = "homes",
    params(("id" = String, Path, description = "Home id")),
    responses(
        (status = 200, description = "The home", body = Home),
        (status = 403, description = "The token does not grant this home", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such home", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_home(
    caller: Caller,
    State(db): State<Db>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Home>> {
    let id = path_id(id, IdKind::Home)?;
    caller.require_home(&id)?;
    Ok(Json(Homes::get(&db.pool, &id).await?))
}

#[utoipa::path(patch, path = "/api/v1/homes/{id}", tag = "homes", request_body = HomePatch,
    params(("id" = String, Path, description = "Home id")),
    responses(
        (status = 200, description = "The updated home", body = Home),
        (status = 403, description = "The token does not grant this home", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such home", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid or unknown field", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update_home(
    caller: Caller,
    State(db): State<Db>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<HomePatch>, JsonRejection>,
) -> ApiResult<Json<Home>> {
    let id = path_id(id, IdKind::Home)?;
    caller.require_home(&id)?;
    let Json(patch) = body?;
    patch.validate()?;
    Ok(Json(Homes::update(&db.pool, &id, &patch).await?))
}

#[utoipa::path(delete, path = "/api/v1/homes/{id}", tag = "homes",
    params(("id" = String, Path, description = "Home id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 403, description = "Not an admin's token", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such home", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The home still has devices", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_home(
    caller: Caller,
    State(db): State<Db>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    caller.require_admin()?;
    let id = path_id(id, IdKind::Home)?;
    Homes::delete(&db.pool, &db.topics, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/devices", tag = "devices", params(DeviceListParams),
    responses(
        (status = 200, description = "A page of the devices of the caller's homes (every home for an admin), by id", body = DevicePage),
        (status = 400, description = "Bad filter, limit or cursor", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "home_id names a home the token does not grant", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn list_devices(
    caller: Caller,
    State(db): State<Db>,
    query: Result<Query<DeviceListParams>, QueryRejection>,
) -> ApiResult<Json<DevicePage>> {
    let Query(params) = query.map_err(|r| Problem::invalid_parameter("query", r.body_text()))?;
    let (after, limit) = page(params.limit.as_deref(), params.cursor.as_deref())?;
    let mut filter = DeviceFilter::default();
    if let Some(home) = params.home_id {
        model::home_id("home_id", &home)
            .map_err(|p| Problem::invalid_parameter("home_id", p.detail))?;
        caller.require_home(&home)?;
        filter.home_id = Some(home);
    }
    filter.home_ids = caller.home_scope().map(<[String]>::to_vec);
    if let Some(kind) = params.kind {
        model::kind(&kind).map_err(|p| Problem::invalid_parameter("kind", p.detail))?;
        filter.kind = Some(kind);
    }
    if let Some(status) = params.status {
        let status = DeviceStatus::parse(&status).ok_or_else(|| {
            Problem::invalid_parameter(
                "status",
                format!("status must be provisioning, active or disabled; got {status:?}"),
            )
        })?;
        filter.status = Some(status.as_str().to_string());
    }
    let rows = Devices::list(&db.pool, &filter, after.as_deref(), limit).await?;
    let (items, next_cursor) = split_page(rows, limit, |d| &d.id);
    Ok(Json(DevicePage { items, next_cursor }))
}

#[utoipa::path(post, path = "/api/v1/devices", tag = "devices", request_body = NewDevice,
    responses(
        (status = 201, description = "Created", body = Device),
        (status = 400, description = "Malformed JSON", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token does not grant the device's home", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "A device with this id exists", body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body over 64 KiB", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid or unknown field, or no such home", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn create_device(
    caller: Caller,
    State(db): State<Db>,
    body: Result<Json<NewDevice>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Device>)> {
    let Json(device) = body?;
    device.validate()?;
    caller.require_home(&device.home_id)?;
    let created = Devices::create(&db.pool, &db.topics, &device).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

#[utoipa::path(get, path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "The device with its state (shadow) and presence", body = DeviceDetail),
        (status = 404, description = "No such device in the caller's homes", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn get_device(
    caller: Caller,
    State(db): State<Db>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<DeviceDetail>> {
    let id = path_id(id, IdKind::Device)?;
    let device = visible_device(&db.pool, &caller, &id).await?;
    let device_state = device_state(&db.pool, &id).await?;
    Ok(Json(DeviceDetail {
        device,
        state: device_state,
    }))
}

/// A device as `GET /api/v1/devices/{id}` shows it: the registry's record
/// plus its shadow (desired, reported, delta) and presence.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct DeviceDetail {
    #[serde(flatten)]
    pub device: Device,
    pub state: DeviceState,
}

#[utoipa::path(patch, path = "/api/v1/devices/{id}", tag = "devices", request_body = DevicePatch,
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 200, description = "The updated device", body = Device),
        (status = 403, description = "home_id moves the device to a home the token does not grant", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such device in the caller's homes", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid or unknown field, or no such home", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn update_device(
    caller: Caller,
    State(db): State<Db>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<DevicePatch>, JsonRejection>,
) -> ApiResult<Json<Device>> {
    let id = path_id(id, IdKind::Device)?;
    let Json(patch) = body?;
    patch.validate()?;
    if let Some(home) = &patch.home_id {
        caller.require_home(home)?;
    }
    let device = Devices::update(&db.pool, &db.topics, &id, &patch, caller.home_scope()).await?;
    Ok(Json(device))
}

#[utoipa::path(delete, path = "/api/v1/devices/{id}", tag = "devices",
    params(("id" = String, Path, description = "Device id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such device in the caller's homes", body = Problem, content_type = "application/problem+json"),
    ))]
pub async fn delete_device(
    caller: Caller,
    State(db): State<Db>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let id = path_id(id, IdKind::Device)?;
    Devices::delete(&db.pool, &db.topics, &id, caller.home_scope()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Desired state (write side, set by commands) joined with what the device
/// reported and its presence (read model).
pub async fn device_state(pool: &PgPool, device_id: &str) -> ApiResult<DeviceState> {
    let (desired, version) = Devices::desired(pool, device_id).await?;
    let view = DeviceViews::view(pool, device_id).await?;
    Ok(DeviceState::new(desired, version, view))
}

/// The device, if it exists and the caller may use its home. Otherwise
/// the same 404 as for a device that does not exist: ids of other homes'
/// devices are not disclosed.
pub async fn visible_device(pool: &PgPool, caller: &Caller, id: &str) -> ApiResult<Device> {
    let device = Devices::get(pool, id).await?;
    if !caller.may_use_home(&device.home_id) {
        return Err(Problem::not_found(format!("no device {id:?}")));
    }
    Ok(device)
}

enum IdKind {
    Home,
    Device,
}

/// An id that cannot exist is a bad request, not a 404.
fn path_id(path: Result<Path<String>, PathRejection>, kind: IdKind) -> ApiResult<String> {
    let Path(id) = path.map_err(|r| Problem::invalid_parameter("id", r.body_text()))?;
    let checked = match kind {
        IdKind::Home => model::home_id("id", &id).map(|_| ()),
        IdKind::Device => model::device_id("id", &id).map(|_| ()),
    };
    checked.map_err(|p| Problem::invalid_parameter("id", p.detail))?;
    Ok(id)
}

/// Parses `limit` and `cursor`; the cursor is the last id of the previous
/// page, base64url-encoded so clients treat it as opaque.
fn page(limit: Option<&str>, cursor: Option<&str>) -> ApiResult<(Option<String>, i64)> {
    let limit = match limit {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<u32>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(Problem::invalid_parameter(
                    "limit",
                    format!("limit must be an integer from 1 to {MAX_LIMIT}; got {text:?}"),
                ))
            }
        },
    };
    let after = match cursor {
        None | Some("") => None,
        Some(text) => Some(decode_cursor(text).ok_or_else(|| {
            Problem::invalid_parameter(
                "cursor",
                "cursor is not one this API issued; use next_cursor of the previous page",
            )
        })?),
    };
    Ok((after, i64::from(limit)))
}

pub fn encode_cursor(last_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(last_id)
}

fn decode_cursor(cursor: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let id = String::from_utf8(bytes).ok()?;
    // Home and device ids share one alphabet; anything else was not ours.
    model::device_id("cursor", &id).ok()?;
    Some(id)
}

/// Rows come as `limit + 1`: the extra one only says another page exists.
fn split_page<T>(
    mut rows: Vec<T>,
    limit: i64,
    id: impl Fn(&T) -> &String,
) -> (Vec<T>, Option<String>) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(|row| encode_cursor(id(row)));
        (rows, next)
    } else {
        (rows, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_and_refuses_garbage() {
        assert_eq!(decode_cursor(&encode_cursor("dev-7")), Some("dev-7".into()));
        assert_eq!(decode_cursor("!!!"), None);
        assert_eq!(decode_cursor(&URL_SAFE_NO_PAD.encode("a b")), None);
    }

    #[test]
    fn limit_is_bounded() {
        assert_eq!(page(None, None).unwrap().1, 50);
        assert!(page(Some("0"), None).is_err());
        assert!(page(Some("501"), None).is_err());
        assert!(page(Some("x"), None).is_err());
        assert_eq!(page(Some("500"), None).unwrap().1, 500);
    }

    #[test]
    fn openapi_documents_every_route() {
        let doc = crate::openapi();
        for path in [
            "/api/v1/homes",
            "/api/v1/homes/{id}",
            "/api/v1/devices",
            "/api/v1/devices/{id}",
            "/healthz",
            "/readyz",
            "/metrics",
        ] {
            assert!(doc.paths.paths.contains_key(path), "{path} missing");
        }
    }
}
