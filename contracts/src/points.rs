//! How telemetry becomes time-series points, and why a replay cannot
//! duplicate (see docs/adr/0004-point-identity-and-idempotent-writes.md).
//!
//! One point per reading: measurement = metric name, tags `home_id`,
//! `device_id`, `device_type`, fields `value` and `seq`. InfluxDB identifies a
//! point by measurement + tag set + timestamp, so the timestamp must be a
//! pure function of the reading that differs for every sample of a device:
//!
//! `timestamp_ns = ts_ms * 1_000_000 + seq % 1_000_000`
//!
//! The device's millisecond stays exact (the extra nanoseconds never reach the
//! next millisecond), a replayed reading lands on the same point and
//! overwrites itself, and two samples of one device in the same millisecond
//! differ in `seq` and so in timestamp.

use crate::ids::MetricName;
use crate::telemetry::{Sample, TelemetryEnvelope};

/// Nanosecond timestamp that identifies a sample of a device.
pub fn point_timestamp_ns(sample: &Sample) -> i64 {
    // ts_ms < 4.1e12 (validated), so this stays far below i64::MAX.
    sample.ts * 1_000_000 + (sample.seq % 1_000_000) as i64
}

/// Recovers the device's millisecond from a point timestamp.
pub fn device_ms_of_point(timestamp_ns: i64) -> i64 {
    timestamp_ns.div_euclid(1_000_000)
}

/// One reading as a time-series point.
#[derive(Debug, Clone, PartialEq)]
pub struct Point<'a> {
    pub measurement: &'a MetricName,
    pub home_id: &'a str,
    pub device_id: &'a str,
    pub device_type: &'a str,
    pub value: f64,
    pub seq: i64,
    pub timestamp_ns: i64,
}

/// All points of an envelope, in sample order.
pub fn points(envelope: &TelemetryEnvelope) -> impl Iterator<Item = Point<'_>> {
    envelope.samples.iter().flat_map(move |sample| {
        let timestamp_ns = point_timestamp_ns(sample);
        sample.values.iter().map(move |(metric, value)| Point {
            measurement: metric,
            home_id: envelope.home_id.as_str(),
            device_id: envelope.device_id.as_str(),
            device_type: envelope.device_type.as_str(),
            value: *value,
            seq: sample.seq as i64,
            timestamp_ns,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(seq: u64, ts: i64) -> Sample {
        Sample {
            seq,
            ts,
            values: [(MetricName::new("t").unwrap(), 1.0)].into(),
        }
    }

    #[test]
    fn same_millisecond_different_seq_differs() {
        let a = point_timestamp_ns(&sample(1, 1_764_000_000_000));
        let b = point_timestamp_ns(&sample(2, 1_764_000_000_000));
        assert_ne!(a, b);
        assert_eq!(device_ms_of_point(a), 1_764_000_000_000);
        assert_eq!(device_ms_of_point(b), 1_764_000_000_000);
    }

    #[test]
    fn replay_is_identical_and_ms_is_kept() {
        let s = sample(1_234_567_891, 1_764_000_000_999);
        assert_eq!(point_timestamp_ns(&s), point_timestamp_ns(&s.clone()));
        assert_eq!(
            device_ms_of_point(point_timestamp_ns(&s)),
            1_764_000_000_999
        );
    }
}
