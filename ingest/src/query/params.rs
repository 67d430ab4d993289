//! Request parameters and their validation. Everything a client sends is
//! checked here, before any InfluxQL is built, and every refusal names the
//! parameter and says what would be accepted.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use warmhouse_contracts::ids::{DeviceId, HomeId, MetricName};

use super::timefmt::{format_ms, parse_rfc3339_ms, MAX_MS};
use warmhouse_service_kit::Problem;

/// Range used when the client gives neither `from` nor `to`.
pub const DEFAULT_RANGE_MS: i64 = 3_600_000;
/// Raw points returned when the client gives no `limit`.
pub const DEFAULT_LIMIT: u32 = 1000;
/// Smallest aggregation window: finer than this is raw data anyway.
pub const MIN_EVERY_NS: i64 = 1_000_000_000;

/// Query string of `GET /api/v1/devices/{device_id}/telemetry`. Everything is
/// taken as text and parsed here, so that a bad value gets an error naming
/// its parameter (serde's would not); unknown parameters are refused so a
/// typo is not silently ignored.
#[derive(Debug, Default, Clone, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TelemetryParams {
    /// Metric (InfluxDB measurement), e.g. `temperature`. Optional for raw
    /// points (every metric of the device then); required with `agg`.
    #[param(value_type = Option<String>, example = "temperature")]
    pub metric: Option<String>,
    /// Start of the range, inclusive: RFC 3339 (`2025-11-24T10:00:00Z`) or
    /// milliseconds since the Unix epoch. Default: one hour before `to`.
    #[param(value_type = Option<String>, example = "2025-11-24T10:00:00Z")]
    pub from: Option<String>,
    /// End of the range, exclusive: RFC 3339 or milliseconds since the Unix
    /// epoch. Default: now.
    #[param(value_type = Option<String>, example = "2025-11-24T11:00:00Z")]
    pub to: Option<String>,
    /// Raw points at most (default 1000, at most the server's `max_points`).
    /// Not allowed with `agg`.
    #[param(value_type = Option<u32>, minimum = 1, example = 100)]
    pub limit: Option<String>,
    /// Aggregate each `every` window instead of returning raw points.
    #[param(value_type = Option<Aggregate>)]
    pub agg: Option<String>,
    /// Window length for `agg`, an InfluxQL duration (`30s`, `1m`, `1h30m`,
    /// `1d`), at least 1s. Windows are aligned to the Unix epoch (UTC).
    #[param(value_type = Option<String>, example = "1m")]
    pub every: Option<String>,
}

/// Aggregate function applied to the `value` field of each window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    Mean,
    Min,
    Max,
    Last,
    Count,
}

impl Aggregate {
    pub const ALL: [Aggregate; 5] = [
        Aggregate::Mean,
        Aggregate::Min,
        Aggregate::Max,
        Aggregate::Last,
        Aggregate::Count,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Aggregate::Mean => "mean",
            Aggregate::Min => "min",
            Aggregate::Max => "max",
            Aggregate::Last => "last",
            Aggregate::Count => "count",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == text)
    }
}

/// Half-open range `[from_ms, to_ms)` of device milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeRange {
    pub from_ms: i64,
    pub to_ms: i64,
}

/// A validated aggregation window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Every {
    pub ns: i64,
}

impl Every {
    /// The shortest InfluxQL literal for the window (`90s`, `1h`), used both
    /// in the query and echoed to the client.
    pub fn literal(self) -> String {
        const UNITS: [(i64, &str); 7] = [
            (604_800_000_000_000, "w"),
            (86_400_000_000_000, "d"),
            (3_600_000_000_000, "h"),
            (60_000_000_000, "m"),
            (1_000_000_000, "s"),
            (1_000_000, "ms"),
            (1_000, "u"),
        ];
        UNITS
            .iter()
            .find(|(unit, _)| self.ns % unit == 0)
            .map(|(unit, name)| format!("{}{name}", self.ns / unit))
            .unwrap_or_else(|| format!("{}ns", self.ns))
    }
}

/// What `GET .../telemetry` asks for, once validated.
#[derive(Debug, Clone, PartialEq)]
pub enum RangeRequest {
    Raw {
        metric: Option<MetricName>,
        range: TimeRange,
        limit: u32,
    },
    Aggregated {
        metric: MetricName,
        range: TimeRange,
        agg: Aggregate,
        every: Every,
    },
}

pub fn device_id(raw: &str) -> Result<DeviceId, Problem> {
    DeviceId::new(raw).map_err(|e| Problem::invalid_parameter("device_id", e.to_string()))
}

pub fn home_id(raw: &str) -> Result<HomeId, Problem> {
    HomeId::new(raw).map_err(|e| Problem::invalid_parameter("home_id", e.to_string()))
}

/// Validates the query string of a range request. `now_ms` anchors the
/// default range; `max_points` bounds both `limit` and the number of windows.
pub fn range_request(
    params: &TelemetryParams,
    now_ms: i64,
    max_points: u32,
) -> Result<RangeRequest, Problem> {
    let metric = params
        .metric
        .as_deref()
        .map(|m| {
            MetricName::new(m).map_err(|e| Problem::invalid_parameter("metric", e.to_string()))
        })
        .transpose()?;
    let range = time_range(params, now_ms)?;

    match (params.agg.as_deref(), params.every.as_deref()) {
        (None, None) => {
            let limit = match params.limit.as_deref() {
                None => DEFAULT_LIMIT.min(max_points),
                Some(text) => limit(text, max_points)?,
            };
            Ok(RangeRequest::Raw {
                metric,
                range,
                limit,
            })
        }
        (Some(_), None) => Err(Problem::invalid_parameter(
            "every",
            "every is required with agg: give the window length, e.g. every=1m",
        )),
        (None, Some(_)) => Err(Problem::invalid_parameter(
            "agg",
            format!(
                "agg is required with every: give one of {}",
                aggregate_names()
            ),
        )),
        (Some(agg_text), Some(every_text)) => {
            aggregated_request(params, agg_text, every_text, metric, range, max_points)
        }
    }
}

/// The aggregated form of a range request: `agg` and `every` are given, so
/// the metric must be too, `limit` must not, and the windows must fit in
/// `max_points`.
fn aggregated_request(
    params: &TelemetryParams,
    agg_text: &str,
    every_text: &str,
    metric: Option<MetricName>,
    range: TimeRange,
    max_points: u32,
) -> Result<RangeRequest, Problem> {
    let agg = Aggregate::parse(agg_text).ok_or_else(|| {
        Problem::invalid_parameter(
            "agg",
            format!(
                "agg {agg_text:?} is not supported; use one of {}",
                aggregate_names()
            ),
        )
    })?;
    let every = every(every_text)?;
    let Some(metric) = metric else {
        return Err(Problem::invalid_parameter(
            "metric",
            "metric is required with agg: windows of different metrics do not mix",
        ));
    };
    if params.limit.is_some() {
        return Err(Problem::invalid_parameter(
            "limit",
            "limit applies to raw points only; with agg, from, to and every decide how many windows come back",
        ));
    }
    let windows = window_count(range, every);
    if windows > i64::from(max_points) {
        return Err(Problem::invalid_parameter(
            "every",
            format!(
                "every={} over {} .. {} gives {windows} windows; at most {max_points} are allowed: use a longer every or a shorter range",
                every.literal(),
                format_ms(range.from_ms),
                format_ms(range.to_ms)
            ),
        ));
    }
    Ok(RangeRequest::Aggregated {
        metric,
        range,
        agg,
        every,
    })
}

fn aggregate_names() -> String {
    Aggregate::ALL.map(Aggregate::name).join(", ")
}

fn time_range(params: &TelemetryParams, now_ms: i64) -> Result<TimeRange, Problem> {
    let from = params
        .from
        .as_deref()
        .map(|t| instant("from", t))
        .transpose()?;
    let to = params.to.as_deref().map(|t| instant("to", t)).transpose()?;
    let (from_ms, to_ms) = match (from, to) {
        (Some(from), Some(to)) => (from, to),
        (Some(from), None) => (from, now_ms.clamp(0, MAX_MS)),
        (None, Some(to)) => ((to - DEFAULT_RANGE_MS).max(0), to),
        (None, None) => ((now_ms - DEFAULT_RANGE_MS).max(0), now_ms.clamp(0, MAX_MS)),
    };
    if from_ms >= to_ms {
        let detail = if to.is_none() {
            format!(
                "from ({}) must be before to, which defaults to now ({})",
                format_ms(from_ms),
                format_ms(to_ms)
            )
        } else {
            format!(
                "from ({}) must be before to ({})",
                format_ms(from_ms),
                format_ms(to_ms)
            )
        };
        // Blame what the client actually sent.
        let culprit = if from.is_some() { "from" } else { "to" };
        return Err(Problem::invalid_parameter(culprit, detail));
    }
    Ok(TimeRange { from_ms, to_ms })
}

/// An instant given as milliseconds since the epoch or as RFC 3339.
fn instant(name: &str, text: &str) -> Result<i64, Problem> {
    let ms = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse::<i64>().ok().filter(|ms| *ms <= MAX_MS)
    } else {
        match parse_rfc3339_ms(text) {
            Ok(ms) => Some(ms).filter(|ms| (0..=MAX_MS).contains(ms)),
            Err(why) => {
                return Err(Problem::invalid_parameter(
                    name,
                    format!(
                        "{name}={text:?} {why}; give RFC 3339 (e.g. 2025-11-24T10:00:00Z) or milliseconds since the Unix epoch"
                    ),
                ))
            }
        }
    };
    ms.ok_or_else(|| {
        Problem::invalid_parameter(
            name,
            format!(
                "{name}={text:?} is outside {} .. {}",
                format_ms(0),
                format_ms(MAX_MS)
            ),
        )
    })
}

fn limit(text: &str, max_points: u32) -> Result<u32, Problem> {
    match text.parse::<u64>() {
        Ok(n) if n >= 1 && n <= u64::from(max_points) => Ok(n as u32),
        _ => Err(Problem::invalid_parameter(
            "limit",
            format!("limit must be an integer between 1 and {max_points}; got {text:?}"),
        )),
    }
}

/// Parses an InfluxQL duration (`90s`, `1h30m`, `500ms`): one or more
/// number-unit pairs.
fn every(text: &str) -> Result<Every, Problem> {
    let bad = |why: &str| {
        Problem::invalid_parameter(
            "every",
            format!(
                "every={text:?} {why}; give a duration such as 30s, 1m, 1h30m or 1d (at least 1s)"
            ),
        )
    };
    if text.is_empty() {
        return Err(bad("is empty"));
    }
    let mut total: i64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad("is not an InfluxQL duration"));
        }
        let number: i64 = rest[..digits].parse().map_err(|_| bad("is too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| !b.is_ascii_digit()).count();
        let unit_ns: i64 = match &rest[..unit_len] {
            "ns" => 1,
            "u" | "µ" | "us" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" => 86_400_000_000_000,
            "w" => 604_800_000_000_000,
            "" => return Err(bad("lacks a unit (ns, us, ms, s, m, h, d or w)")),
            _ => return Err(bad("has an unknown unit (use ns, us, ms, s, m, h, d or w)")),
        };
        rest = &rest[unit_len..];
        total = number
            .checked_mul(unit_ns)
            .and_then(|ns| total.checked_add(ns))
            .ok_or_else(|| bad("is too large"))?;
    }
    if total < MIN_EVERY_NS {
        return Err(bad("is shorter than 1s"));
    }
    Ok(Every { ns: total })
}

/// Windows `GROUP BY time(every)` yields over `range`: InfluxDB aligns them
/// to the epoch, so the first one may start before `from`.
pub fn window_count(range: TimeRange, every: Every) -> i64 {
    let from_ns = i128::from(range.from_ms) * 1_000_000;
    let to_ns = i128::from(range.to_ms) * 1_000_000;
    let every_ns = i128::from(every.ns);
    let first = from_ns.div_euclid(every_ns) * every_ns;
    let count = (to_ns - first + every_ns - 1) / every_ns;
    i64::try_from(count).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_764_000_000_000;

    fn params(pairs: &[(&str, &str)]) -> TelemetryParams {
        let query = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        serde_json::from_value(serde_json::Value::Object(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
                .collect(),
        ))
        .unwrap_or_else(|e| panic!("{query}: {e}"))
    }

    fn refused(pairs: &[(&str, &str)]) -> Problem {
        range_request(&params(pairs), NOW, 10_000).unwrap_err()
    }

    #[test]
    fn defaults_to_the_last_hour_of_raw_points() {
        assert_eq!(
            range_request(&params(&[]), NOW, 10_000),
            Ok(RangeRequest::Raw {
                metric: None,
                range: TimeRange {
                    from_ms: NOW - 3_600_000,
                    to_ms: NOW
                },
                limit: 1000
            })
        );
        // A server configured below the default limit caps it.
        assert!(matches!(
            range_request(&params(&[]), NOW, 10),
            Ok(RangeRequest::Raw { limit: 10, .. })
        ));
    }

    #[test]
    fn accepts_both_time_forms_and_aggregations() {
        let request = range_request(
            &params(&[
                ("metric", "temperature"),
                ("from", "1763978400000"),
                ("to", "2025-11-24T11:00:00Z"),
                ("agg", "mean"),
                ("every", "1h30m"),
            ]),
            NOW,
            10_000,
        );
        assert_eq!(
            request,
            Ok(RangeRequest::Aggregated {
                metric: MetricName::new("temperature").unwrap(),
                range: TimeRange {
                    from_ms: 1_763_978_400_000,
                    to_ms: 1_763_982_000_000
                },
                agg: Aggregate::Mean,
                every: Every {
                    ns: 5_400_000_000_000
                },
            })
        );
    }

    #[test]
    fn every_refusal_names_its_parameter() {
        for (pairs, parameter, says) in [
            (
                vec![("metric", "Temp")],
                "metric",
                "metric name contains 'T'",
            ),
            (vec![("from", "yesterday")], "from", "not an RFC 3339"),
            (vec![("to", "2025-02-30T00:00:00Z")], "to", "day 30"),
            (vec![("from", "99999999999999")], "from", "outside"),
            (
                vec![("from", "1970-01-01T00:00:00+01:00")],
                "from",
                "outside",
            ),
            (
                vec![
                    ("from", "2025-11-24T12:00:00Z"),
                    ("to", "2025-11-24T11:00:00Z"),
                ],
                "from",
                "must be before to",
            ),
            (
                vec![("from", "2030-01-01T00:00:00Z")],
                "from",
                "defaults to now",
            ),
            (vec![("limit", "0")], "limit", "between 1 and 10000"),
            (vec![("limit", "10001")], "limit", "between 1 and 10000"),
            (vec![("limit", "-3")], "limit", "between 1 and 10000"),
            (vec![("limit", "ten")], "limit", "between 1 and 10000"),
            (vec![("agg", "mean")], "every", "every is required"),
            (vec![("every", "1m")], "agg", "agg is required"),
            (
                vec![("agg", "median"), ("every", "1m")],
                "agg",
                "mean, min, max, last, count",
            ),
            (
                vec![("metric", "t"), ("agg", "mean"), ("every", "500ms")],
                "every",
                "shorter than 1s",
            ),
            (
                vec![("metric", "t"), ("agg", "mean"), ("every", "1")],
                "every",
                "lacks a unit",
            ),
            (
                vec![("metric", "t"), ("agg", "mean"), ("every", "1y")],
                "every",
                "unknown unit",
            ),
            (
                vec![("metric", "t"), ("agg", "mean"), ("every", "m")],
                "every",
                "not an InfluxQL",
            ),
            (
                vec![
                    ("metric", "t"),
                    ("agg", "mean"),
                    ("every", "99999999999999999w"),
                ],
                "every",
                "too large",
            ),
            (
                vec![("agg", "mean"), ("every", "1m")],
                "metric",
                "metric is required",
            ),
            (
                vec![
                    ("metric", "t"),
                    ("agg", "mean"),
                    ("every", "1m"),
                    ("limit", "5"),
                ],
                "limit",
                "raw points only",
            ),
            (
                vec![
                    ("metric", "t"),
                    ("agg", "mean"),
                    ("every", "1s"),
                    ("from", "0"),
                ],
                "every",
                "windows; at most 10000",
            ),
        ] {
            let problem = refused(&pairs);
            assert_eq!(problem.status, 400, "{pairs:?}");
            assert_eq!(
                problem.parameter.as_deref(),
                Some(parameter),
                "{pairs:?}: {problem:?}"
            );
            assert!(
                problem.detail.contains(says),
                "{pairs:?}: {}",
                problem.detail
            );
        }
    }

    #[test]
    fn every_literals_are_normalised() {
        for (text, literal) in [
            ("1s", "1s"),
            ("60s", "1m"),
            ("90s", "90s"),
            ("1h30m", "90m"),
            ("1500ms", "1500ms"),
            ("24h", "1d"),
            ("14d", "2w"),
            ("1000000001ns", "1000000001ns"),
        ] {
            assert_eq!(
                every(text).map(Every::literal),
                Ok(literal.to_string()),
                "{text}"
            );
        }
    }

    #[test]
    fn counts_epoch_aligned_windows() {
        let minute = Every { ns: 60_000_000_000 };
        let aligned = TimeRange {
            from_ms: 1_763_978_400_000,
            to_ms: 1_763_978_520_000,
        };
        assert_eq!(window_count(aligned, minute), 2);
        let unaligned = TimeRange {
            from_ms: 1_763_978_430_000,
            to_ms: 1_763_978_520_001,
        };
        assert_eq!(window_count(unaligned, minute), 3);
    }

    #[test]
    fn ids_use_the_contract_messages() {
        let problem = device_id("bad.id").unwrap_err();
        assert_eq!(problem.parameter.as_deref(), Some("device_id"));
        assert_eq!(
            problem.detail,
            "device id contains '.'; only ASCII letters, digits, '-' and '_' are allowed"
        );
        assert!(home_id("")
            .unwrap_err()
            .detail
            .contains("home id must not be empty"));
    }
}
