//! Telemetry: what a device publishes on `/tenants/{id}/telemetry`, and the
//! envelope the bridge puts on the Kafka `telemetry` topic.
//!
//! Device payload (JSON, one or more samples per message):
//! ```json
//! {"v":1,"home_id":"home-1","device_type":"thermostat",
//!  "samples":[{"seq":41,"ts":1764000000123,"values":{"temperature":21.4,"heating_on":1}}]}
//! ```
//! `ts` is the device's clock in milliseconds since the Unix epoch; `seq`
//! counts the device's samples (it never repeats for a device, it may have
//! gaps). Every value of a sample is one *reading*.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::decode::{check_version, from_json, DecodeError};
use crate::ids::{DeviceId, DeviceType, HomeId, MetricName};
use crate::MAX_PAYLOAD_BYTES;

/// At most this many samples in one message.
pub const MAX_SAMPLES_PER_MESSAGE: usize = 1000;
/// At most this many metrics in one sample.
pub const MAX_VALUES_PER_SAMPLE: usize = 32;
/// Device timestamps must fall in [2020-01-01, 2100-01-01): anything else is a
/// device with an unset or broken clock, and would land where nobody looks.
pub const MIN_TIMESTAMP_MS: i64 = 1_577_836_800_000;
pub const MAX_TIMESTAMP_MS: i64 = 4_102_444_800_000;

/// One moment of a device: several metrics read at the same time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub seq: u64,
    /// Device clock, milliseconds since the Unix epoch.
    pub ts: i64,
    pub values: BTreeMap<MetricName, f64>,
}

/// The payload a device publishes on its telemetry topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryMessage {
    pub v: u64,
    pub home_id: HomeId,
    pub device_type: DeviceType,
    pub samples: Vec<Sample>,
}

impl TelemetryMessage {
    pub fn new(home_id: HomeId, device_type: DeviceType, samples: Vec<Sample>) -> Self {
        Self {
            v: u64::from(crate::WIRE_VERSION),
            home_id,
            device_type,
            samples,
        }
    }

    /// Decodes and validates a device payload.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let message: Self = from_json(bytes, MAX_PAYLOAD_BYTES)?;
        check_version(message.v)?;
        validate_samples(&message.samples)?;
        Ok(message)
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing plain data with string keys cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Number of readings (metric values) in the message.
    pub fn reading_count(&self) -> usize {
        self.samples.iter().map(|s| s.values.len()).sum()
    }
}

fn validate_samples(samples: &[Sample]) -> Result<(), DecodeError> {
    if samples.is_empty() {
        return Err(DecodeError::field(
            "samples",
            "must hold at least one sample",
        ));
    }
    if samples.len() > MAX_SAMPLES_PER_MESSAGE {
        return Err(DecodeError::field(
            "samples",
            format!(
                "holds {} samples; at most {MAX_SAMPLES_PER_MESSAGE} are allowed in one message",
                samples.len()
            ),
        ));
    }
    for (i, sample) in samples.iter().enumerate() {
        if sample.seq > i64::MAX as u64 {
            return Err(DecodeError::field(
                format!("samples[{i}].seq"),
                format!("{} is larger than {}", sample.seq, i64::MAX),
            ));
        }
        if !(MIN_TIMESTAMP_MS..MAX_TIMESTAMP_MS).contains(&sample.ts) {
            return Err(DecodeError::field(
                format!("samples[{i}].ts"),
                format!(
                    "{} is not a plausible time in milliseconds since the Unix epoch (2020..2100)",
                    sample.ts
                ),
            ));
        }
        if sample.values.is_empty() {
            return Err(DecodeError::field(
                format!("samples[{i}].values"),
                "must hold at least one metric",
            ));
        }
        if sample.values.len() > MAX_VALUES_PER_SAMPLE {
            return Err(DecodeError::field(
                format!("samples[{i}].values"),
                format!(
                    "holds {} metrics; at most {MAX_VALUES_PER_SAMPLE} are allowed",
                    sample.values.len()
                ),
            ));
        }
        if let Some((metric, value)) = sample.values.iter().find(|(_, v)| !v.is_finite()) {
            return Err(DecodeError::field(
                format!("samples[{i}].values.{metric}"),
                format!("{value} is not a finite number"),
            ));
        }
    }
    Ok(())
}

/// The value of a record on the Kafka `telemetry` topic (key: device id).
/// The bridge builds it from a validated device message and the device id
/// taken from the MQTT topic, which the broker vouches for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryEnvelope {
    pub v: u64,
    pub device_id: DeviceId,
    pub home_id: HomeId,
    pub device_type: DeviceType,
    /// When the bridge received the message (bridge clock, ms since epoch).
    pub received_at_ms: i64,
    pub samples: Vec<Sample>,
}

impl TelemetryEnvelope {
    pub fn from_message(
        device_id: DeviceId,
        message: TelemetryMessage,
        received_at_ms: i64,
    ) -> Self {
        Self {
            v: u64::from(crate::WIRE_VERSION),
            device_id,
            home_id: message.home_id,
            device_type: message.device_type,
            received_at_ms,
            samples: message.samples,
        }
    }

    /// Decodes and validates an envelope read from Kafka.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        // The bridge enforces the payload limit; an envelope adds a little.
        let envelope: Self = from_json(bytes, 2 * MAX_PAYLOAD_BYTES)?;
        check_version(envelope.v)?;
        validate_samples(&envelope.samples)?;
        Ok(envelope)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn reading_count(&self) -> usize {
        self.samples.iter().map(|s| s.values.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(text: &str) -> Result<TelemetryMessage, DecodeError> {
        TelemetryMessage::decode(text.as_bytes())
    }

    const GOOD: &str = r#"{"v":1,"home_id":"h1","device_type":"thermostat","samples":[{"seq":1,"ts":1764000000000,"values":{"temperature":21.5,"heating_on":1}}]}"#;

    #[test]
    fn decodes_a_good_message_and_round_trips() {
        let message = decode(GOOD).unwrap();
        assert_eq!(message.reading_count(), 2);
        assert_eq!(
            TelemetryMessage::decode(&message.to_json()).unwrap(),
            message
        );
    }

    #[test]
    fn tolerates_unknown_fields() {
        let text = GOOD.replace(r#""v":1,"#, r#""v":1,"firmware":"2.1","#);
        assert!(decode(&text).is_ok());
    }

    #[test]
    fn not_json() {
        for text in ["", "hello", "{", "{\"v\":1", "\u{0}\u{1}"] {
            assert!(
                matches!(decode(text), Err(DecodeError::NotJson(_))),
                "{text:?}"
            );
        }
        // Trailing garbage after a valid document is not JSON either.
        assert!(matches!(
            decode(&format!("{GOOD}x")),
            Err(DecodeError::NotJson(_))
        ));
    }

    #[test]
    fn names_the_offending_field() {
        let err = decode(&GOOD.replace("21.5", "\"warm\"")).unwrap_err();
        assert_eq!(
            err.to_string(),
            "field `samples[0].values.temperature`: invalid type: string \"warm\", expected f64"
        );
        let err = decode(r#"{"v":1,"device_type":"x","samples":[]}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "field `(payload)`: missing field `home_id`"
        );
        let err = decode(&GOOD.replace("\"h1\"", "\"h/1\"")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("field `home_id`: home id contains '/'"),
            "{err}"
        );
        let err = decode("[1,2]").unwrap_err();
        assert!(matches!(err, DecodeError::Field { .. }), "{err}");
    }

    #[test]
    fn rejects_semantic_errors() {
        let cases = [
            (
                GOOD.replace(r#""v":1"#, r#""v":2"#),
                "unsupported payload version 2",
            ),
            (GOOD.replace("1764000000000", "1764000000"), "samples[0].ts"),
            (GOOD.replace("1764000000000", "-1"), "samples[0].ts"),
            (GOOD.replace(r#""seq":1"#, r#""seq":-1"#), "samples[0].seq"),
            (
                GOOD.replace(r#""seq":1"#, r#""seq":18446744073709551615"#),
                "samples[0].seq",
            ),
            (
                GOOD.replace(r#""temperature":21.5,"heating_on":1"#, ""),
                "samples[0].values",
            ),
            (GOOD.replace("21.5", "1e400"), "number out of range"),
            (
                r#"{"v":1,"home_id":"h","device_type":"t","samples":[]}"#.to_string(),
                "at least one sample",
            ),
        ];
        for (text, needle) in cases {
            let err = decode(&text).unwrap_err().to_string();
            assert!(err.contains(needle), "{text}: {err}");
        }
    }

    #[test]
    fn rejects_oversized_and_too_many() {
        let huge = format!("{}{}", " ".repeat(MAX_PAYLOAD_BYTES), GOOD);
        assert!(matches!(decode(&huge), Err(DecodeError::TooLarge { .. })));
        let samples: Vec<String> = (0..=MAX_SAMPLES_PER_MESSAGE)
            .map(|i| format!(r#"{{"seq":{i},"ts":1764000000000,"values":{{"t":1}}}}"#))
            .collect();
        let text = format!(
            r#"{{"v":1,"home_id":"h","device_type":"t","samples":[{}]}}"#,
            samples.join(",")
        );
        assert!(decode(&text)
            .unwrap_err()
            .to_string()
            .contains("at most 1000"));
        let values: Vec<String> = (0..=MAX_VALUES_PER_SAMPLE)
            .map(|i| format!(r#""m{i}":1"#))
            .collect();
        let text = format!(
            r#"{{"v":1,"home_id":"h","device_type":"t","samples":[{{"seq":1,"ts":1764000000000,"values":{{{}}}}}]}}"#,
            values.join(",")
        );
        assert!(decode(&text)
            .unwrap_err()
            .to_string()
            .contains("at most 32"));
    }

    #[test]
    fn deeply_nested_input_is_an_error_not_a_crash() {
        let text = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(decode(&text[..MAX_PAYLOAD_BYTES.min(text.len())]).is_err());
    }

    #[test]
    fn envelope_round_trips() {
        let message = decode(GOOD).unwrap();
        let envelope =
            TelemetryEnvelope::from_message(DeviceId::new("d1").unwrap(), message.clone(), 5);
        let back = TelemetryEnvelope::decode(&envelope.to_json()).unwrap();
        assert_eq!(back, envelope);
        assert_eq!(back.samples, message.samples);
    }
}
