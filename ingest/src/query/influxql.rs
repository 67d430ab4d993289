//! The only place InfluxQL is written, and the only place InfluxDB's answers
//! are taken apart.
//!
//! Ids and metric names are embedded as literals: they are validated
//! contract types whose alphabet (`[A-Za-z0-9_-]`) contains no quote or
//! backslash, so a single-quoted literal or double-quoted identifier cannot
//! be escaped from. Times are integer nanoseconds (InfluxQL's native form).

use std::collections::BTreeMap;

use serde_json::Value;
use warmhouse_contracts::ids::{DeviceId, HomeId, MetricName};

use crate::influx::{StatementResult, RAW_RP};

use super::params::{Aggregate, Every, TimeRange};

/// A read the API performs.
#[derive(Debug, Clone, PartialEq)]
pub enum TelemetryQuery {
    /// Newest point of each metric of a device.
    LatestOfDevice(DeviceId),
    /// Newest point of each metric of each device of a home.
    LatestOfHome(HomeId),
    /// Points in `range`, oldest first; `limit` per metric (the caller
    /// merges metrics and cuts to its own limit).
    Raw {
        device: DeviceId,
        metric: Option<MetricName>,
        range: TimeRange,
        limit: u32,
    },
    /// `agg` of the value over epoch-aligned `every` windows; empty windows
    /// are left out.
    Aggregated {
        device: DeviceId,
        metric: MetricName,
        range: TimeRange,
        agg: Aggregate,
        every: Every,
    },
}

impl TelemetryQuery {
    /// The statement over every home (what an admin's query reads).
    #[cfg(test)]
    pub fn influxql(&self) -> String {
        self.influxql_within(None)
    }

    /// The InfluxQL statement, reading the `raw` retention policy, limited
    /// to points reported from `homes` (`None`: every home). Points carry the home they were reported from, so a caller
    /// sees a device's readings from its own homes and nothing of others.
    /// `Some(&[])` matches nothing; callers skip the query instead.
    pub fn influxql_within(&self, homes: Option<&[HomeId]>) -> String {
        let scope = home_condition(homes);
        // `last(value), seq`: one selector plus a plain field returns the
        // selected point's own timestamp and seq (with two selectors,
        // InfluxDB 1.x would report time 0).
        const LATEST: &str = r#"SELECT last("value") AS "value", "seq""#;
        const BY_SERIES: &str = r#"GROUP BY "device_id", "home_id", "device_type""#;
        match self {
            TelemetryQuery::LatestOfDevice(device) => format!(
                r#"{LATEST} FROM "{RAW_RP}"./.*/ WHERE "device_id" = '{device}'{scope} {BY_SERIES}"#
            ),
            TelemetryQuery::LatestOfHome(home) => {
                format!(
                    r#"{LATEST} FROM "{RAW_RP}"./.*/ WHERE "home_id" = '{home}'{scope} {BY_SERIES}"#
                )
            }
            TelemetryQuery::Raw {
                device,
                metric,
                range,
                limit,
            } => format!(
                r#"SELECT "value", "seq" FROM {} WHERE "device_id" = '{device}'{scope} AND {} ORDER BY time ASC LIMIT {limit}"#,
                measurement(metric.as_ref()),
                time_condition(*range)
            ),
            TelemetryQuery::Aggregated {
                device,
                metric,
                range,
                agg,
                every,
            } => format!(
                r#"SELECT {}("value") AS "value" FROM {} WHERE "device_id" = '{device}'{scope} AND {} GROUP BY time({}) fill(none)"#,
                agg.name(),
                measurement(Some(metric)),
                time_condition(*range),
                every.literal()
            ),
        }
    }
}

/// ` AND ("home_id" = 'a' OR ...)`, or nothing for every home. Tag
/// equality, not a regex, so InfluxDB answers from its series index.
fn home_condition(homes: Option<&[HomeId]>) -> String {
    match homes {
        None => String::new(),
        Some([]) => r#" AND "home_id" = '' AND "home_id" != ''"#.to_string(),
        Some(homes) => {
            let any: Vec<String> = homes
                .iter()
                .map(|home| format!(r#""home_id" = '{home}'"#))
                .collect();
            format!(" AND ({})", any.join(" OR "))
        }
    }
}

fn measurement(metric: Option<&MetricName>) -> String {
    match metric {
        Some(metric) => format!(r#""{RAW_RP}"."{metric}""#),
        None => format!(r#""{RAW_RP}"./.*/"#),
    }
}

fn time_condition(range: TimeRange) -> String {
    format!(
        "time >= {} AND time < {}",
        range.from_ms * 1_000_000,
        range.to_ms * 1_000_000
    )
}

/// InfluxDB answered with something this module does not understand.
#[derive(Debug, thiserror::Error)]
#[error("unexpected InfluxDB answer: {0}")]
pub struct ShapeError(String);

/// The newest point of one series (metric of a device in a home).
#[derive(Debug, Clone, PartialEq)]
pub struct LatestRow {
    pub metric: String,
    pub device_id: String,
    pub home_id: String,
    pub device_type: String,
    pub time_ns: i64,
    pub value: f64,
    pub seq: Option<i64>,
}

/// A stored reading.
#[derive(Debug, Clone, PartialEq)]
pub struct RawRow {
    pub metric: String,
    pub time_ns: i64,
    pub value: f64,
    pub seq: Option<i64>,
}

/// One aggregated window (start time, aggregate).
#[derive(Debug, Clone, PartialEq)]
pub struct WindowRow {
    pub time_ns: i64,
    pub value: f64,
}

/// Newest point per device and metric. A device whose home or type changed
/// has several series for one metric; the newest point of them wins.
pub fn latest_rows(results: &[StatementResult]) -> Result<Vec<LatestRow>, ShapeError> {
    let mut newest: BTreeMap<(String, String), LatestRow> = BTreeMap::new();
    for series in results.iter().flat_map(|r| &r.series) {
        let cols = Columns::of(&series.columns, &["time", "value", "seq"])?;
        let tag = |name: &str| series.tags.get(name).cloned().unwrap_or_default();
        for row in &series.values {
            let Some(value) = cols.f64(row, 1) else {
                continue;
            };
            let candidate = LatestRow {
                metric: series.name.clone(),
                device_id: tag("device_id"),
                home_id: tag("home_id"),
                device_type: tag("device_type"),
                time_ns: cols.time(row)?,
                value,
                seq: cols.i64(row, 2),
            };
            let key = (candidate.device_id.clone(), candidate.metric.clone());
            match newest.get(&key) {
                Some(kept) if kept.time_ns >= candidate.time_ns => {}
                _ => {
                    newest.insert(key, candidate);
                }
            }
        }
    }
    Ok(newest.into_values().collect())
}

/// Points of all metrics, merged oldest first (ties by metric name).
pub fn raw_rows(results: &[StatementResult]) -> Result<Vec<RawRow>, ShapeError> {
    let mut rows = Vec::new();
    for series in results.iter().flat_map(|r| &r.series) {
        let cols = Columns::of(&series.columns, &["time", "value", "seq"])?;
        for row in &series.values {
            let Some(value) = cols.f64(row, 1) else {
                continue;
            };
            rows.push(RawRow {
                metric: series.name.clone(),
                time_ns: cols.time(row)?,
                value,
                seq: cols.i64(row, 2),
            });
        }
    }
    rows.sort_by(|a, b| {
        a.time_ns
            .cmp(&b.time_ns)
            .then_with(|| a.metric.cmp(&b.metric))
    });
    Ok(rows)
}

/// Windows oldest first.
pub fn window_rows(results: &[StatementResult]) -> Result<Vec<WindowRow>, ShapeError> {
    let mut rows = Vec::new();
    for series in results.iter().flat_map(|r| &r.series) {
        let cols = Columns::of(&series.columns, &["time", "value"])?;
        for row in &series.values {
            if let Some(value) = cols.f64(row, 1) {
                rows.push(WindowRow {
                    time_ns: cols.time(row)?,
                    value,
                });
            }
        }
    }
    rows.sort_by_key(|w| w.time_ns);
    Ok(rows)
}

/// Positions of the wanted columns in a series, looked up by name rather
/// than trusted to be in the order asked for.
struct Columns(Vec<usize>);

impl Columns {
    fn of(columns: &[String], wanted: &[&str]) -> Result<Self, ShapeError> {
        wanted
            .iter()
            .map(|w| {
                columns
                    .iter()
                    .position(|c| c == w)
                    .ok_or_else(|| ShapeError(format!("no column {w:?} in {columns:?}")))
            })
            .collect::<Result<_, _>>()
            .map(Columns)
    }

    fn cell<'a>(&self, row: &'a [Value], which: usize) -> Option<&'a Value> {
        self.0.get(which).and_then(|i| row.get(*i))
    }

    fn time(&self, row: &[Value]) -> Result<i64, ShapeError> {
        self.cell(row, 0)
            .and_then(Value::as_i64)
            .ok_or_else(|| ShapeError(format!("row without integer time: {row:?}")))
    }

    fn f64(&self, row: &[Value], which: usize) -> Option<f64> {
        self.cell(row, which).and_then(Value::as_f64)
    }

    fn i64(&self, row: &[Value], which: usize) -> Option<i64> {
        self.cell(row, which).and_then(Value::as_i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::influx::Series;

    fn device() -> DeviceId {
        DeviceId::new("dev-1").unwrap()
    }

    const RANGE: TimeRange = TimeRange {
        from_ms: 1_763_978_400_000,
        to_ms: 1_763_982_000_000,
    };

    #[test]
    fn builds_latest_queries() {
        assert_eq!(
            TelemetryQuery::LatestOfDevice(device()).influxql(),
            r#"SELECT last("value") AS "value", "seq" FROM "raw"./.*/ WHERE "device_id" = 'dev-1' GROUP BY "device_id", "home_id", "device_type""#
        );
        assert_eq!(
            TelemetryQuery::LatestOfHome(HomeId::new("home_1").unwrap()).influxql(),
            r#"SELECT last("value") AS "value", "seq" FROM "raw"./.*/ WHERE "home_id" = 'home_1' GROUP BY "device_id", "home_id", "device_type""#
        );
    }

    #[test]
    fn limits_queries_to_the_callers_homes() {
        let homes = [
            HomeId::new("home-a").unwrap(),
            HomeId::new("home-b").unwrap(),
        ];
        assert_eq!(
            TelemetryQuery::LatestOfDevice(device()).influxql_within(Some(&homes)),
            r#"SELECT last("value") AS "value", "seq" FROM "raw"./.*/ WHERE "device_id" = 'dev-1' AND ("home_id" = 'home-a' OR "home_id" = 'home-b') GROUP BY "device_id", "home_id", "device_type""#
        );
        let raw = TelemetryQuery::Raw {
            device: device(),
            metric: None,
            range: RANGE,
            limit: 5,
        };
        assert_eq!(
            raw.influxql_within(Some(&homes[..1])),
            r#"SELECT "value", "seq" FROM "raw"./.*/ WHERE "device_id" = 'dev-1' AND ("home_id" = 'home-a') AND time >= 1763978400000000000 AND time < 1763982000000000000 ORDER BY time ASC LIMIT 5"#
        );
        assert_eq!(raw.influxql_within(None), raw.influxql());
        // No home at all can match nothing, not everything.
        assert!(raw
            .influxql_within(Some(&[]))
            .contains(r#""home_id" = '' AND "home_id" != ''"#));
    }

    #[test]
    fn builds_raw_queries() {
        let mut query = TelemetryQuery::Raw {
            device: device(),
            metric: Some(MetricName::new("temperature").unwrap()),
            range: RANGE,
            limit: 11,
        };
        assert_eq!(
            query.influxql(),
            r#"SELECT "value", "seq" FROM "raw"."temperature" WHERE "device_id" = 'dev-1' AND time >= 1763978400000000000 AND time < 1763982000000000000 ORDER BY time ASC LIMIT 11"#
        );
        if let TelemetryQuery::Raw { metric, .. } = &mut query {
            *metric = None;
        }
        assert_eq!(
            query.influxql(),
            r#"SELECT "value", "seq" FROM "raw"./.*/ WHERE "device_id" = 'dev-1' AND time >= 1763978400000000000 AND time < 1763982000000000000 ORDER BY time ASC LIMIT 11"#
        );
    }

    #[test]
    fn builds_aggregate_queries() {
        let query = TelemetryQuery::Aggregated {
            device: device(),
            metric: MetricName::new("humidity").unwrap(),
            range: RANGE,
            agg: Aggregate::Count,
            every: Every {
                ns: 300_000_000_000,
            },
        };
        assert_eq!(
            query.influxql(),
            r#"SELECT count("value") AS "value" FROM "raw"."humidity" WHERE "device_id" = 'dev-1' AND time >= 1763978400000000000 AND time < 1763982000000000000 GROUP BY time(5m) fill(none)"#
        );
    }

    fn series(name: &str, device: &str, home: &str, rows: Value) -> Series {
        Series {
            name: name.into(),
            tags: [
                ("device_id".to_string(), device.to_string()),
                ("home_id".to_string(), home.to_string()),
                ("device_type".to_string(), "thermostat".to_string()),
            ]
            .into(),
            // Deliberately not in the order the query asked for.
            columns: vec!["time".into(), "seq".into(), "value".into()],
            values: serde_json::from_value(rows).unwrap(),
        }
    }

    fn result(series: Vec<Series>) -> Vec<StatementResult> {
        vec![StatementResult {
            statement_id: 0,
            series,
            error: None,
        }]
    }

    #[test]
    fn newest_series_wins_when_a_device_moved() {
        let rows = latest_rows(&result(vec![
            series(
                "temperature",
                "d",
                "old-home",
                serde_json::json!([[100, 1, 20.0]]),
            ),
            series(
                "temperature",
                "d",
                "new-home",
                serde_json::json!([[200, 2, 21]]),
            ),
            series(
                "humidity",
                "d",
                "old-home",
                serde_json::json!([[100, 1, 40.0]]),
            ),
        ]))
        .unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].metric, "humidity");
        assert_eq!(rows[1].home_id, "new-home");
        assert_eq!(
            (rows[1].time_ns, rows[1].value, rows[1].seq),
            (200, 21.0, Some(2))
        );
    }

    #[test]
    fn raw_rows_merge_metrics_in_time_order() {
        let rows = raw_rows(&result(vec![
            series(
                "temperature",
                "d",
                "h",
                serde_json::json!([[100, 1, 20.0], [300, 3, 22.0]]),
            ),
            series(
                "humidity",
                "d",
                "h",
                serde_json::json!([[100, 1, 40.0], [200, null, 41.0]]),
            ),
        ]))
        .unwrap();
        let order: Vec<_> = rows
            .iter()
            .map(|r| (r.time_ns, r.metric.as_str(), r.seq))
            .collect();
        assert_eq!(
            order,
            [
                (100, "humidity", Some(1)),
                (100, "temperature", Some(1)),
                (200, "humidity", None),
                (300, "temperature", Some(3)),
            ]
        );
    }

    #[test]
    fn odd_answers_are_errors_not_panics() {
        let mut bad = series("t", "d", "h", serde_json::json!([["soon", 1, 2.0]]));
        assert!(raw_rows(&result(vec![bad.clone()])).is_err());
        bad.columns = vec!["time".into(), "value".into()];
        assert!(latest_rows(&result(vec![bad])).is_err());
        assert_eq!(window_rows(&[]).unwrap(), vec![]);
    }
}
