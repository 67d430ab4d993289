//! HTTP handlers, response bodies and the OpenAPI document built from them.

use std::time::Instant;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};
use warmhouse_contracts::ids::{DeviceId, HomeId, MetricName};
use warmhouse_contracts::points::device_ms_of_point;
use warmhouse_service_kit::auth::{self, Caller};

use super::influxql::{self, LatestRow, RawRow, TelemetryQuery, WindowRow};
use super::params::{self, Aggregate, Every, RangeRequest, TelemetryParams, TimeRange};
use super::timefmt::format_ms;
use super::QueryState;
use crate::influx::StatementResult;
use warmhouse_service_kit::Problem;

/// Latest reading of one metric.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(example = json!({
    "metric": "temperature", "value": 21.5, "ts": "2025-11-24T10:02:30.000Z",
    "ts_ms": 1763978550000_i64, "seq": 201, "home_id": "home-a", "device_type": "thermostat"
}))]
pub struct LatestMetric {
    pub metric: String,
    pub value: f64,
    /// Device timestamp of the reading (RFC 3339, UTC, milliseconds).
    pub ts: String,
    /// The same instant in milliseconds since the Unix epoch.
    pub ts_ms: i64,
    /// The device's sequence number of the sample (null for points not
    /// written by ingest-writer).
    pub seq: Option<i64>,
    /// Home the device reported from when it took the reading.
    pub home_id: String,
    pub device_type: String,
}

/// Latest reading of every metric of a device.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeviceLatest {
    pub device_id: String,
    /// Sorted by metric name.
    pub metrics: Vec<LatestMetric>,
}

/// Latest readings of every device of a home.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HomeLatest {
    pub home_id: String,
    /// Sorted by device id.
    pub devices: Vec<DeviceLatest>,
}

/// A stored reading.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RawPoint {
    pub metric: String,
    pub value: f64,
    pub seq: Option<i64>,
    /// Device timestamp (RFC 3339, UTC, milliseconds).
    pub ts: String,
    pub ts_ms: i64,
}

impl From<RawRow> for RawPoint {
    /// A stored point as the device took it (its timestamp, not InfluxDB's).
    fn from(row: RawRow) -> Self {
        let ts_ms = device_ms_of_point(row.time_ns);
        Self {
            metric: row.metric,
            value: row.value,
            seq: row.seq,
            ts: format_ms(ts_ms),
            ts_ms,
        }
    }
}

/// Raw readings of a device, oldest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RawTelemetry {
    pub device_id: String,
    /// The metric asked for; absent when every metric was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// Range actually queried, `[from, to)`.
    pub from: String,
    pub to: String,
    pub limit: u32,
    /// True when the range holds more than `limit` points: only the oldest
    /// `limit` are returned.
    pub truncated: bool,
    pub points: Vec<RawPoint>,
}

/// One aggregation window (empty windows are left out).
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Window {
    /// Start of the window (RFC 3339, UTC, milliseconds).
    pub time: String,
    pub ts_ms: i64,
    pub value: f64,
}

impl From<WindowRow> for Window {
    fn from(row: WindowRow) -> Self {
        let ts_ms = device_ms_of_point(row.time_ns);
        Self {
            time: format_ms(ts_ms),
            ts_ms,
            value: row.value,
        }
    }
}

/// A metric of a device aggregated over fixed windows, oldest first.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AggregatedTelemetry {
    pub device_id: String,
    pub metric: String,
    pub agg: Aggregate,
    /// Window length as an InfluxQL duration.
    pub every: String,
    pub from: String,
    pub to: String,
    pub windows: Vec<Window>,
}

/// Raw points, or windows when `agg` and `every` were given.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(untagged)]
pub enum Telemetry {
    Raw(RawTelemetry),
    Aggregated(AggregatedTelemetry),
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Warmhouse telemetry query API",
        description = "Read side of telemetry (CQRS): latest values and time ranges of device \
                       readings stored in InfluxDB by ingest-writer. Every /api/v1 endpoint \
                       needs a bearer token (JWT) naming the caller's homes, or an admin's: a \
                       home's readings need the home in the token (else 403); a device's \
                       readings are those it reported from the caller's homes (none: 404 or \
                       an empty range). Errors are RFC 9457 problem details \
                       (application/problem+json)."
    ),
    paths(device_latest, home_latest, device_telemetry),
    components(schemas(Problem, Aggregate)),
    tags(
        (name = "telemetry", description = "Device readings"),
        (name = "operations", description = "Health, readiness and Prometheus metrics")
    )
)]
pub struct ApiDoc;

/// The OpenAPI document: the telemetry paths plus the operational endpoints
/// merged in from service-kit (documented by hand, they are not ours).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    warmhouse_service_kit::document_admin_endpoints(&mut doc, "InfluxDB answers its ping");
    auth::document_bearer_auth(&mut doc, "/api/");
    doc
}

/// Latest value of every metric of a device.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{device_id}/telemetry/latest",
    tag = "telemetry",
    params(("device_id" = String, Path, description = "Device id ([A-Za-z0-9_-], at most 64)", example = "thermo-1")),
    responses(
        (status = 200, description = "Latest reading of each metric", body = DeviceLatest,
         example = json!({"device_id": "thermo-1", "metrics": [
            {"metric": "humidity", "value": 51.0, "ts": "2025-11-24T10:01:50.000Z", "ts_ms": 1763978510000_i64, "seq": 111, "home_id": "home-a", "device_type": "thermostat"},
            {"metric": "temperature", "value": 21.5, "ts": "2025-11-24T10:02:30.000Z", "ts_ms": 1763978550000_i64, "seq": 201, "home_id": "home-a", "device_type": "thermostat"}]})),
        (status = 400, description = "Invalid device id", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No telemetry stored for the device in the caller's homes", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "InfluxDB answered with an error", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "InfluxDB unreachable", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn device_latest(
    caller: Caller,
    State(state): State<QueryState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<DeviceLatest>, Problem> {
    let device = params::device_id(&path_value(path, "device_id")?)?;
    let results = run(
        &state,
        TelemetryQuery::LatestOfDevice(device.clone()),
        home_scope(&caller).as_deref(),
    )
    .await?;
    let rows = influxql::latest_rows(&results).map_err(shape_problem)?;
    // The WHERE clause leaves only this device's series.
    group_by_device(rows)
        .into_iter()
        .next()
        .map(Json)
        .ok_or_else(|| Problem::no_data(format!("no telemetry stored for device {device}")))
}

/// Latest value of every metric of every device of a home.
#[utoipa::path(
    get,
    path = "/api/v1/homes/{home_id}/telemetry/latest",
    tag = "telemetry",
    params(("home_id" = String, Path, description = "Home id ([A-Za-z0-9_-], at most 64)", example = "home-a")),
    responses(
        (status = 200, description = "Latest readings per device", body = HomeLatest,
         example = json!({"home_id": "home-a", "devices": [
            {"device_id": "sensor-2", "metrics": [
                {"metric": "temperature", "value": 19.25, "ts": "2025-11-24T10:00:05.000Z", "ts_ms": 1763978405000_i64, "seq": 1234567891_i64, "home_id": "home-a", "device_type": "climate_sensor"}]}]})),
        (status = 400, description = "Invalid home id", body = Problem, content_type = "application/problem+json"),
        (status = 403, description = "The token does not grant this home", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No telemetry stored for the home", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "InfluxDB answered with an error", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "InfluxDB unreachable", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn home_latest(
    caller: Caller,
    State(state): State<QueryState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<HomeLatest>, Problem> {
    let home = params::home_id(&path_value(path, "home_id")?)?;
    caller.require_home(home.as_str())?;
    let results = run(&state, TelemetryQuery::LatestOfHome(home.clone()), None).await?;
    let rows = influxql::latest_rows(&results).map_err(shape_problem)?;
    let devices = group_by_device(rows);
    if devices.is_empty() {
        return Err(Problem::no_data(format!(
            "no telemetry stored for home {home}"
        )));
    }
    Ok(Json(HomeLatest {
        home_id: home.to_string(),
        devices,
    }))
}

/// Readings of a device over a time range: raw points, or aggregated windows
/// with `agg` and `every`.
#[utoipa::path(
    get,
    path = "/api/v1/devices/{device_id}/telemetry",
    tag = "telemetry",
    params(
        ("device_id" = String, Path, description = "Device id ([A-Za-z0-9_-], at most 64)", example = "thermo-1"),
        TelemetryParams
    ),
    responses(
        (status = 200, description = "Raw points (RawTelemetry) or, with agg and every, windows (AggregatedTelemetry), of readings from the caller's homes. An empty range gives an empty list, not 404.", body = Telemetry,
         examples(
            ("raw" = (summary = "Raw points", value = json!({"device_id": "thermo-1", "metric": "temperature",
                "from": "2025-11-24T10:00:00.000Z", "to": "2025-11-24T11:00:00.000Z", "limit": 1000, "truncated": false,
                "points": [{"metric": "temperature", "value": 20.0, "seq": 100, "ts": "2025-11-24T10:00:00.000Z", "ts_ms": 1763978400000_i64}]}))),
            ("aggregated" = (summary = "agg=mean&every=1m", value = json!({"device_id": "thermo-1", "metric": "temperature",
                "agg": "mean", "every": "1m", "from": "2025-11-24T10:00:00.000Z", "to": "2025-11-24T11:00:00.000Z",
                "windows": [{"time": "2025-11-24T10:00:00.000Z", "ts_ms": 1763978400000_i64, "value": 22.5}]})))
         )),
        (status = 400, description = "Invalid parameter; `parameter` names it", body = Problem, content_type = "application/problem+json"),
        (status = 502, description = "InfluxDB answered with an error", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "InfluxDB unreachable", body = Problem, content_type = "application/problem+json")
    )
)]
pub async fn device_telemetry(
    caller: Caller,
    State(state): State<QueryState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<TelemetryParams>, QueryRejection>,
) -> Result<Json<Telemetry>, Problem> {
    let device = params::device_id(&path_value(path, "device_id")?)?;
    let Query(query) = query.map_err(|rejection| Problem::bad_request(rejection.body_text()))?;
    let request = params::range_request(&query, warmhouse_service_kit::now_ms(), state.max_points)?;
    let scope = home_scope(&caller);
    let telemetry = match request {
        RangeRequest::Raw {
            metric,
            range,
            limit,
        } => Telemetry::Raw(
            raw_telemetry(&state, scope.as_deref(), device, metric, range, limit).await?,
        ),
        RangeRequest::Aggregated {
            metric,
            range,
            agg,
            every,
        } => Telemetry::Aggregated(
            aggregated_telemetry(&state, scope.as_deref(), device, metric, range, agg, every)
                .await?,
        ),
    };
    Ok(Json(telemetry))
}

/// Up to `limit` raw points of a device in `range`, oldest first.
async fn raw_telemetry(
    state: &QueryState,
    scope: Option<&[HomeId]>,
    device: DeviceId,
    metric: Option<MetricName>,
    range: TimeRange,
    limit: u32,
) -> Result<RawTelemetry, Problem> {
    // One more than asked tells whether the range holds more.
    let fetch = limit.saturating_add(1);
    let query = TelemetryQuery::Raw {
        device: device.clone(),
        metric: metric.clone(),
        range,
        limit: fetch,
    };
    let results = run(state, query, scope).await?;
    let mut rows = influxql::raw_rows(&results).map_err(shape_problem)?;
    let truncated = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok(RawTelemetry {
        device_id: device.to_string(),
        metric: metric.map(String::from),
        from: format_ms(range.from_ms),
        to: format_ms(range.to_ms),
        limit,
        truncated,
        points: rows.into_iter().map(RawPoint::from).collect(),
    })
}

/// `agg` of a device's metric over `every` windows in `range`.
async fn aggregated_telemetry(
    state: &QueryState,
    scope: Option<&[HomeId]>,
    device: DeviceId,
    metric: MetricName,
    range: TimeRange,
    agg: Aggregate,
    every: Every,
) -> Result<AggregatedTelemetry, Problem> {
    let query = TelemetryQuery::Aggregated {
        device: device.clone(),
        metric: metric.clone(),
        range,
        agg,
        every,
    };
    let results = run(state, query, scope).await?;
    let rows = influxql::window_rows(&results).map_err(shape_problem)?;
    Ok(AggregatedTelemetry {
        device_id: device.to_string(),
        metric: metric.to_string(),
        agg,
        every: every.literal(),
        from: format_ms(range.from_ms),
        to: format_ms(range.to_ms),
        windows: rows.into_iter().map(Window::from).collect(),
    })
}

/// Unmatched paths get a problem too, not an empty 404.
pub async fn no_route(uri: axum::http::Uri) -> Problem {
    Problem::no_route(uri.path())
}

fn path_value(path: Result<Path<String>, PathRejection>, name: &str) -> Result<String, Problem> {
    path.map(|Path(value)| value)
        .map_err(|rejection| Problem::invalid_parameter(name, rejection.body_text()))
}

/// The homes whose readings the caller may see (`None`: all). Home ids
/// that are not valid ids cannot name stored points and are dropped here,
/// before anything reaches InfluxQL.
fn home_scope(caller: &Caller) -> Option<Vec<HomeId>> {
    caller.home_scope().map(|homes| {
        homes
            .iter()
            .filter_map(|home| HomeId::new(home.as_str()).ok())
            .collect()
    })
}

/// Runs a query within `homes` (see [`home_scope`]), turning InfluxDB's
/// failures into problems and keeping readiness in step with what queries
/// see.
async fn run(
    state: &QueryState,
    query: TelemetryQuery,
    homes: Option<&[HomeId]>,
) -> Result<Vec<StatementResult>, Problem> {
    if homes.is_some_and(|homes| homes.is_empty()) {
        // A token for no home sees nothing; InfluxDB need not be asked.
        return Ok(Vec::new());
    }
    let influxql = query.influxql_within(homes);
    let started = Instant::now();
    let outcome = state.influx.query(&influxql).await;
    state
        .metrics
        .influx_seconds
        .observe(started.elapsed().as_secs_f64());
    match outcome {
        Ok(results) => {
            state.readiness.set(super::READY_CHECK, true);
            Ok(results)
        }
        // Nothing was ever written (the writer creates the database): that
        // is "no data", not a failure.
        Err(err) if format!("{err:#}").contains("database not found") => Ok(Vec::new()),
        Err(err) if is_unreachable(&err) => {
            state.readiness.set(super::READY_CHECK, false);
            state
                .metrics
                .influx_errors
                .with_label_values(&["unavailable"])
                .inc();
            tracing::warn!(error = %format!("{err:#}"), "InfluxDB unreachable");
            Err(Problem::store_unavailable(
                "InfluxDB, where telemetry is stored, cannot be reached; retry later",
            ))
        }
        Err(err) => {
            state
                .metrics
                .influx_errors
                .with_label_values(&["error"])
                .inc();
            tracing::error!(error = %format!("{err:#}"), %influxql, "InfluxDB query failed");
            Err(Problem::store_error(format!("{err:#}")))
        }
    }
}

/// Failures of the HTTP exchange itself (refused, timed out, cut off,
/// not InfluxDB's JSON) as opposed to an error InfluxDB reported.
fn is_unreachable(err: &anyhow::Error) -> bool {
    err.chain()
        .any(|cause| cause.downcast_ref::<reqwest::Error>().is_some())
}

fn shape_problem(err: influxql::ShapeError) -> Problem {
    tracing::error!(%err, "unexpected InfluxDB answer");
    Problem::store_error(err.to_string())
}

/// Rows (sorted by device, then metric) into one entry per device.
fn group_by_device(rows: Vec<LatestRow>) -> Vec<DeviceLatest> {
    let mut devices: Vec<DeviceLatest> = Vec::new();
    for row in rows {
        let ts_ms = device_ms_of_point(row.time_ns);
        let metric = LatestMetric {
            metric: row.metric,
            value: row.value,
            ts: format_ms(ts_ms),
            ts_ms,
            seq: row.seq,
            home_id: row.home_id,
            device_type: row.device_type,
        };
        match devices.last_mut() {
            Some(device) if device.device_id == row.device_id => device.metrics.push(metric),
            _ => devices.push(DeviceLatest {
                device_id: row.device_id,
                metrics: vec![metric],
            }),
        }
    }
    devices
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openapi_documents_every_route() {
        let doc = openapi();
        let paths: Vec<&str> = doc.paths.paths.keys().map(String::as_str).collect();
        for path in [
            "/api/v1/devices/{device_id}/telemetry/latest",
            "/api/v1/homes/{home_id}/telemetry/latest",
            "/api/v1/devices/{device_id}/telemetry",
            "/healthz",
            "/readyz",
            "/metrics",
        ] {
            assert!(paths.contains(&path), "{path} missing from {paths:?}");
        }
        let json = serde_json::to_string(&doc).unwrap();
        assert!(json.contains("application/problem+json"));
        let value = serde_json::to_value(&doc).unwrap();
        assert_eq!(
            value["components"]["securitySchemes"]["bearer"]["bearerFormat"],
            "JWT"
        );
        let latest = &value["paths"]["/api/v1/homes/{home_id}/telemetry/latest"]["get"];
        assert!(latest["security"].is_array(), "{latest}");
        assert!(latest["responses"]["401"].is_object(), "{latest}");
        assert!(value["paths"]["/healthz"]["get"].get("security").is_none());
    }

    #[test]
    fn groups_rows_per_device() {
        let row = |device: &str, metric: &str| LatestRow {
            metric: metric.into(),
            device_id: device.into(),
            home_id: "h".into(),
            device_type: "thermostat".into(),
            time_ns: 1_764_000_000_123_000_007,
            value: 1.0,
            seq: Some(7),
        };
        let devices = group_by_device(vec![
            row("a", "humidity"),
            row("a", "temperature"),
            row("b", "t"),
        ]);
        assert_eq!(devices.len(), 2);
        assert_eq!(devices[0].metrics.len(), 2);
        assert_eq!(devices[1].metrics[0].ts, "2025-11-24T16:00:00.123Z");
        assert_eq!(devices[1].metrics[0].ts_ms, 1_764_000_000_123);
    }
}
