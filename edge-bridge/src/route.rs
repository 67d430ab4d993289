//! What to do with one MQTT publish: pure decoding, no I/O, so every case is
//! unit-tested. Good input becomes a Kafka record keyed by device id; bad
//! input becomes a dead letter that says why.

use warmhouse_contracts::device::{CommandAck, ReportedState, StatusMessage};
use warmhouse_contracts::kafka::{ConnectionRef, DeadLetter, DeviceEvent, DeviceEventKind};
use warmhouse_contracts::telemetry::{TelemetryEnvelope, TelemetryMessage};
use warmhouse_contracts::topics::{Channel, DeviceTopic};
use warmhouse_contracts::DecodeError;

use crate::spool::Record;

/// Kafka topic names the bridge writes to.
#[derive(Debug, Clone)]
pub struct Topics {
    pub telemetry: String,
    pub device_events: String,
    pub dead_letters: String,
}

/// The outcome of routing one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    Telemetry { record: Record, readings: usize },
    DeviceEvent(Record),
    DeadLetter { record: Record, reason_kind: String },
}

impl Routed {
    pub fn record(&self) -> &Record {
        match self {
            Routed::Telemetry { record, .. } | Routed::DeviceEvent(record) => record,
            Routed::DeadLetter { record, .. } => record,
        }
    }
    pub fn into_record(self) -> Record {
        match self {
            Routed::Telemetry { record, .. } | Routed::DeviceEvent(record) => record,
            Routed::DeadLetter { record, .. } => record,
        }
    }
}

/// Routes one publish that came over `connection` (device events carry it:
/// presence is ordered by connection).
pub fn route(
    topics: &Topics,
    mqtt_topic: &str,
    payload: &[u8],
    now_ms: i64,
    connection: Option<&ConnectionRef>,
) -> Routed {
    let dead = |kind: &str, reason: String| {
        let letter = DeadLetter::new(kind, reason, format!("mqtt:{mqtt_topic}"), now_ms, payload);
        Routed::DeadLetter {
            record: Record {
                topic: topics.dead_letters.clone(),
                key: mqtt_topic.as_bytes().to_vec(),
                payload: letter.to_json(),
            },
            reason_kind: kind.to_string(),
        }
    };
    let topic = match DeviceTopic::parse(mqtt_topic) {
        Ok(topic) => topic,
        Err(err) => return dead("unknown_topic", err.to_string()),
    };
    let key = topic.device_id.as_str().as_bytes().to_vec();
    let event = |event: Result<DeviceEventKind, DecodeError>| match event {
        Ok(event) => {
            let mut event = DeviceEvent::new(topic.device_id.clone(), now_ms, event);
            event.connection = connection.cloned();
            Routed::DeviceEvent(Record {
                topic: topics.device_events.clone(),
                key: key.clone(),
                payload: event.to_json(),
            })
        }
        Err(err) => dead(err.kind(), err.to_string()),
    };
    match topic.channel {
        Channel::Telemetry => match TelemetryMessage::decode(payload) {
            Ok(message) => {
                let readings = message.reading_count();
                let envelope =
                    TelemetryEnvelope::from_message(topic.device_id.clone(), message, now_ms);
                Routed::Telemetry {
                    record: Record {
                        topic: topics.telemetry.clone(),
                        key,
                        payload: envelope.to_json(),
                    },
                    readings,
                }
            }
            Err(err) => dead(err.kind(), err.to_string()),
        },
        Channel::Status => {
            event(StatusMessage::decode(payload).map(|status| DeviceEventKind::Status { status }))
        }
        Channel::State => {
            event(ReportedState::decode(payload).map(|state| DeviceEventKind::State { state }))
        }
        Channel::CommandAck => {
            event(CommandAck::decode(payload).map(|ack| DeviceEventKind::CommandAck { ack }))
        }
        Channel::Commands => dead(
            "unknown_topic",
            format!("{mqtt_topic} carries commands to the device; devices must not publish there"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics {
            telemetry: "telemetry".into(),
            device_events: "device-events".into(),
            dead_letters: "dead-letters".into(),
        }
    }

    const GOOD: &str = r#"{"v":1,"home_id":"h1","device_type":"thermostat","samples":[{"seq":1,"ts":1764000000000,"values":{"temperature":21.5}}]}"#;

    #[test]
    fn telemetry_is_keyed_by_the_topic_device() {
        let routed = route(
            &topics(),
            "/tenants/dev-1/telemetry",
            GOOD.as_bytes(),
            5,
            None,
        );
        let Routed::Telemetry { record, readings } = routed else {
            panic!("not telemetry: {routed:?}")
        };
        assert_eq!(readings, 1);
        assert_eq!(record.topic, "telemetry");
        assert_eq!(record.key, b"dev-1");
        let envelope = TelemetryEnvelope::decode(&record.payload).unwrap();
        assert_eq!(envelope.device_id.as_str(), "dev-1");
        assert_eq!(envelope.received_at_ms, 5);
    }

    #[test]
    fn bad_input_becomes_a_dead_letter_with_the_reason() {
        let cases: [(&str, &[u8], &str); 5] = [
            ("/tenants/dev-1/telemetry", b"not json", "not_json"),
            ("/tenants/dev-1/telemetry", br#"{"v":1}"#, "invalid_field"),
            ("/tenants/dev-1/unknown", GOOD.as_bytes(), "unknown_topic"),
            ("/other/thing", GOOD.as_bytes(), "unknown_topic"),
            ("/tenants/dev-1/commands", GOOD.as_bytes(), "unknown_topic"),
        ];
        for (topic, payload, kind) in cases {
            let routed = route(&topics(), topic, payload, 5, None);
            let Routed::DeadLetter {
                record,
                reason_kind,
            } = routed
            else {
                panic!("{topic}: not a dead letter")
            };
            assert_eq!(reason_kind, kind, "{topic}");
            assert_eq!(record.topic, "dead-letters");
            let letter = DeadLetter::decode(&record.payload).unwrap();
            assert_eq!(letter.original_payload(), payload);
            assert_eq!(letter.source, format!("mqtt:{topic}"));
            assert!(!letter.reason.is_empty());
        }
    }

    #[test]
    fn status_state_and_acks_become_device_events() {
        let cases: [(&str, &str, &str); 3] = [
            ("/tenants/d/status", r#"{"v":1,"online":false}"#, "status"),
            (
                "/tenants/d/state",
                r#"{"v":1,"ts":1764000000000,"reported":{"on":true}}"#,
                "state",
            ),
            (
                "/tenants/d/commands/ack",
                r#"{"v":1,"command_id":"c","result":"done","ts":1764000000000}"#,
                "command_ack",
            ),
        ];
        for (topic, payload, kind) in cases {
            let Routed::DeviceEvent(record) = route(&topics(), topic, payload.as_bytes(), 1, None)
            else {
                panic!("{topic}")
            };
            assert_eq!(record.key, b"d");
            let json: serde_json::Value = serde_json::from_slice(&record.payload).unwrap();
            assert_eq!(json["kind"], kind);
        }
    }

    #[test]
    fn device_events_name_the_connection_they_came_over() {
        let connection = ConnectionRef {
            broker: "broker-2".into(),
            connected_at_ms: 10,
            number: 3,
        };
        let payload = br#"{"v":1,"online":false}"#;
        let routed = route(
            &topics(),
            "/tenants/d/status",
            payload,
            1,
            Some(&connection),
        );
        let Routed::DeviceEvent(record) = routed else {
            panic!("not a device event: {routed:?}")
        };
        let event = DeviceEvent::decode(&record.payload).unwrap();
        assert_eq!(event.connection, Some(connection));
    }
}
