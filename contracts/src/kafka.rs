//! Kafka topics and the envelopes on them that are not telemetry.

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::decode::{check_version, from_json, DecodeError};
use crate::device::{Command, CommandAck, ReportedState, StatusMessage};
use crate::ids::DeviceId;
use crate::MAX_PAYLOAD_BYTES;

/// Default topic names; every service lets the operator override them.
pub mod topics {
    /// Validated telemetry, key = device id (one device stays ordered).
    pub const TELEMETRY: &str = "telemetry";
    /// State, presence and command acks from devices, key = device id.
    pub const DEVICE_EVENTS: &str = "device-events";
    /// Commands to devices, key = device id.
    pub const DEVICE_COMMANDS: &str = "device-commands";
    /// What could not be decoded, with the reason; never blocks a partition.
    pub const DEAD_LETTERS: &str = "dead-letters";
    /// Domain events of the device registry ([`crate::domain::DomainEvent`]),
    /// key = device id, or home id for home events.
    pub const REGISTRY_EVENTS: &str = "registry-events";
}

/// Header carrying the envelope version on every record we produce.
pub const VERSION_HEADER: &str = "warmhouse-version";

/// An event a device reported, as the broker's ingress forwards it to
/// `device-events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceEvent {
    pub v: u64,
    pub device_id: DeviceId,
    pub received_at_ms: i64,
    /// The MQTT connection the event came over (absent on events the
    /// platform wrote itself). Presence is ordered by it: a device that
    /// moved to another broker replica must not be marked offline by its
    /// old connection's last will arriving late.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<ConnectionRef>,
    #[serde(flatten)]
    pub event: DeviceEventKind,
}

/// One MQTT connection of a device, as a broker replica saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionRef {
    /// The replica that held the connection.
    pub broker: String,
    /// When that replica accepted the connection, in ms since the epoch.
    pub connected_at_ms: i64,
    /// The connection's number in that replica's process (increasing).
    pub number: u64,
}

impl ConnectionRef {
    /// Whether `self` is a later connection than `other`: accepted later,
    /// or, accepted in the same millisecond, by the same replica with a
    /// higher number.
    pub fn is_newer_than(&self, other: &ConnectionRef) -> bool {
        (self.connected_at_ms, &self.broker, self.number)
            > (other.connected_at_ms, &other.broker, other.number)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum DeviceEventKind {
    Status {
        status: StatusMessage,
    },
    State {
        state: ReportedState,
    },
    CommandAck {
        ack: CommandAck,
    },
    /// Written by the bridge, not the device: the broker accepted the
    /// command for a device that was online at the time.
    CommandDelivered {
        command_id: String,
    },
}

impl DeviceEvent {
    pub fn new(device_id: DeviceId, received_at_ms: i64, event: DeviceEventKind) -> Self {
        Self {
            v: u64::from(crate::WIRE_VERSION),
            device_id,
            received_at_ms,
            connection: None,
            event,
        }
    }

    /// The event as it came over `connection`.
    pub fn over(mut self, connection: ConnectionRef) -> Self {
        self.connection = Some(connection);
        self
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let event: Self = from_json(bytes, 2 * MAX_PAYLOAD_BYTES)?;
        check_version(event.v)?;
        Ok(event)
    }
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A command on its way to a device, as the registry writes it to
/// `device-commands` (key = device id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    pub v: u64,
    pub device_id: DeviceId,
    pub command: Command,
}

impl CommandRecord {
    pub fn new(device_id: DeviceId, command: Command) -> Self {
        Self {
            v: u64::from(crate::WIRE_VERSION),
            device_id,
            command,
        }
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let record: Self = from_json(bytes, 2 * MAX_PAYLOAD_BYTES)?;
        check_version(record.v)?;
        check_version(record.command.v)?;
        if record.command.command_id.is_empty() {
            return Err(DecodeError::field(
                "command.command_id",
                "must not be empty",
            ));
        }
        Ok(record)
    }
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// A record on the dead-letter topic: the original bytes, where they came
/// from and why they were refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub v: u64,
    /// Stable label, e.g. `not_json`, `invalid_field`, `too_large`, `unknown_topic`.
    pub reason_kind: String,
    /// Human-readable reason, naming the offending field where there is one.
    pub reason: String,
    /// Where the bytes came from: `mqtt:{topic}` or `kafka:{topic}/{partition}@{offset}`.
    pub source: String,
    pub received_at_ms: i64,
    /// The original payload when it is UTF-8 ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<String>,
    /// ... otherwise base64 of its bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

impl DeadLetter {
    pub fn new(
        reason_kind: &str,
        reason: String,
        source: String,
        received_at_ms: i64,
        payload: &[u8],
    ) -> Self {
        let (payload, payload_base64) = match std::str::from_utf8(payload) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(payload)),
            ),
        };
        Self {
            v: u64::from(crate::WIRE_VERSION),
            reason_kind: reason_kind.to_string(),
            reason,
            source,
            received_at_ms,
            payload,
            payload_base64,
        }
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let letter: Self = from_json(bytes, usize::MAX)?;
        check_version(letter.v)?;
        Ok(letter)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The original payload bytes.
    pub fn original_payload(&self) -> Vec<u8> {
        match (&self.payload, &self.payload_base64) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_keeps_binary_payloads() {
        let bytes = [0xff, 0x00, 0x10];
        let letter = DeadLetter::new("not_json", "x".into(), "mqtt:/t".into(), 1, &bytes);
        assert!(letter.payload.is_none());
        let back = DeadLetter::decode(&letter.to_json()).unwrap();
        assert_eq!(back.original_payload(), bytes);
        let text = DeadLetter::new("not_json", "x".into(), "mqtt:/t".into(), 1, b"hi");
        assert_eq!(text.payload.as_deref(), Some("hi"));
    }

    #[test]
    fn command_record_round_trips_and_refuses_empty_ids() {
        let command = Command {
            v: 1,
            command_id: "c1".into(),
            name: "turn_on".into(),
            params: Default::default(),
            issued_at_ms: 1_764_000_000_000,
            expires_at_ms: 1_764_000_060_000,
        };
        let record = CommandRecord::new(DeviceId::new("d").unwrap(), command);
        assert_eq!(CommandRecord::decode(&record.to_json()).unwrap(), record);
        let bad = br#"{"v":1,"device_id":"d","command":{"v":1,"command_id":"","name":"x","issued_at_ms":1,"expires_at_ms":2}}"#;
        let err = CommandRecord::decode(bad).unwrap_err().to_string();
        assert!(err.contains("command.command_id"), "{err}");
    }

    #[test]
    fn device_event_is_tagged_by_kind() {
        let event = DeviceEvent::new(
            DeviceId::new("d").unwrap(),
            7,
            DeviceEventKind::Status {
                status: StatusMessage::new(false, None),
            },
        );
        let json = String::from_utf8(event.to_json()).unwrap();
        assert!(json.contains(r#""kind":"status""#), "{json}");
        assert!(!json.contains("connection"), "{json}");
        assert_eq!(DeviceEvent::decode(json.as_bytes()).unwrap(), event);
        let over = event.over(ConnectionRef {
            broker: "broker-1".into(),
            connected_at_ms: 5,
            number: 2,
        });
        assert_eq!(DeviceEvent::decode(&over.to_json()).unwrap(), over);
    }

    #[test]
    fn connections_are_ordered_by_acceptance_then_replica_then_number() {
        let at = |broker: &str, connected_at_ms, number| ConnectionRef {
            broker: broker.into(),
            connected_at_ms,
            number,
        };
        assert!(at("b", 2, 1).is_newer_than(&at("a", 1, 9)));
        assert!(at("a", 1, 2).is_newer_than(&at("a", 1, 1)));
        assert!(!at("a", 1, 1).is_newer_than(&at("a", 1, 1)));
        assert!(!at("a", 1, 9).is_newer_than(&at("b", 2, 1)));
    }
}
