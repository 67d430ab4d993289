//! Domain events of the device registry, on the Kafka topic
//! `registry-events` (key = device id; home id for home events).
//!
//! They are what other systems (the broker, the legacy monolith, analytics)
//! may react to. Every event carries a unique `event_id`, so consumers can
//! drop the duplicates that at-least-once delivery brings. Readers tolerate
//! unknown fields and must ignore unknown `type`s.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::decode::{check_version, from_json, DecodeError};
use crate::ids::{DeviceId, HomeId};

/// One domain event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DomainEvent {
    pub v: u64,
    /// Unique per event (a UUID), for deduplication.
    pub event_id: String,
    pub occurred_at_ms: i64,
    #[serde(flatten)]
    pub event: DomainEventKind,
}

/// Lifecycle status of a command, as the registry tracks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    /// Accepted and stored; not yet on Kafka.
    Queued,
    /// Published to `device-commands`.
    Sent,
    /// Handed by the broker to the device's session while it was online.
    Delivered,
    /// The device executed it.
    Acked,
    /// The device refused it or failed to execute it.
    Failed,
    /// Its time to live ran out before the device executed it.
    Expired,
}

impl CommandStatus {
    pub const ALL: [CommandStatus; 6] = [
        CommandStatus::Queued,
        CommandStatus::Sent,
        CommandStatus::Delivered,
        CommandStatus::Acked,
        CommandStatus::Failed,
        CommandStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Queued => "queued",
            CommandStatus::Sent => "sent",
            CommandStatus::Delivered => "delivered",
            CommandStatus::Acked => "acked",
            CommandStatus::Failed => "failed",
            CommandStatus::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// No transition leaves a terminal status.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            CommandStatus::Acked | CommandStatus::Failed | CommandStatus::Expired
        )
    }
}

/// The kind of a device credential, in `device.credentials_rotated`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RotatedCredential {
    Password,
    Certificate,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum DomainEventKind {
    #[serde(rename = "home.created")]
    HomeCreated { home_id: HomeId, name: String },
    #[serde(rename = "home.deleted")]
    HomeDeleted { home_id: HomeId },
    /// A device finished onboarding and may connect.
    #[serde(rename = "device.registered")]
    DeviceRegistered {
        device_id: DeviceId,
        home_id: HomeId,
        kind: String,
    },
    #[serde(rename = "device.disabled")]
    DeviceDisabled {
        device_id: DeviceId,
        home_id: HomeId,
    },
    #[serde(rename = "device.enabled")]
    DeviceEnabled {
        device_id: DeviceId,
        home_id: HomeId,
    },
    #[serde(rename = "device.deleted")]
    DeviceDeleted {
        device_id: DeviceId,
        home_id: HomeId,
    },
    /// New credentials of `kind` replaced the device's current ones, which
    /// no longer let it in: connections made with them are to be dropped.
    #[serde(rename = "device.credentials_rotated")]
    CredentialsRotated {
        device_id: DeviceId,
        home_id: HomeId,
        kind: RotatedCredential,
    },
    /// Someone changed what the device should be doing (the desired half
    /// of its shadow).
    #[serde(rename = "device.desired_changed")]
    DesiredChanged {
        device_id: DeviceId,
        home_id: HomeId,
        desired: Map<String, Value>,
    },
    #[serde(rename = "command.status_changed")]
    CommandStatusChanged {
        command_id: String,
        device_id: DeviceId,
        home_id: HomeId,
        name: String,
        status: CommandStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        detail: Option<String>,
    },
}

impl DomainEventKind {
    /// The Kafka key: the device the event is about, else its home.
    pub fn key(&self) -> &str {
        match self {
            DomainEventKind::HomeCreated { home_id, .. }
            | DomainEventKind::HomeDeleted { home_id } => home_id.as_str(),
            DomainEventKind::DeviceRegistered { device_id, .. }
            | DomainEventKind::DeviceDisabled { device_id, .. }
            | DomainEventKind::DeviceEnabled { device_id, .. }
            | DomainEventKind::DeviceDeleted { device_id, .. }
            | DomainEventKind::CredentialsRotated { device_id, .. }
            | DomainEventKind::DesiredChanged { device_id, .. }
            | DomainEventKind::CommandStatusChanged { device_id, .. } => device_id.as_str(),
        }
    }

    /// The event's `type` string, e.g. `device.registered`.
    pub fn type_name(&self) -> &'static str {
        match self {
            DomainEventKind::HomeCreated { .. } => "home.created",
            DomainEventKind::HomeDeleted { .. } => "home.deleted",
            DomainEventKind::DeviceRegistered { .. } => "device.registered",
            DomainEventKind::DeviceDisabled { .. } => "device.disabled",
            DomainEventKind::DeviceEnabled { .. } => "device.enabled",
            DomainEventKind::DeviceDeleted { .. } => "device.deleted",
            DomainEventKind::CredentialsRotated { .. } => "device.credentials_rotated",
            DomainEventKind::DesiredChanged { .. } => "device.desired_changed",
            DomainEventKind::CommandStatusChanged { .. } => "command.status_changed",
        }
    }
}

impl DomainEvent {
    pub fn new(event_id: String, occurred_at_ms: i64, event: DomainEventKind) -> Self {
        Self {
            v: u64::from(crate::WIRE_VERSION),
            event_id,
            occurred_at_ms,
            event,
        }
    }

    /// Decodes an event. An unknown `type` is an error here; consumers that
    /// must skip unknown types check [`DecodeError::kind`] or decode the
    /// `type` field first.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let event: Self = from_json(bytes, 1 << 20)?;
        check_version(event.v)?;
        Ok(event)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_tagged_by_type_and_round_trip() {
        let event = DomainEvent::new(
            "e1".into(),
            1_764_000_000_000,
            DomainEventKind::CommandStatusChanged {
                command_id: "c1".into(),
                device_id: DeviceId::new("dev-1").unwrap(),
                home_id: HomeId::new("home-1").unwrap(),
                name: "turn_on".into(),
                status: CommandStatus::Acked,
                detail: None,
            },
        );
        let json = String::from_utf8(event.to_json()).unwrap();
        assert!(
            json.contains(r#""type":"command.status_changed""#),
            "{json}"
        );
        assert!(json.contains(r#""status":"acked""#), "{json}");
        assert_eq!(DomainEvent::decode(json.as_bytes()).unwrap(), event);
        assert_eq!(event.event.key(), "dev-1");
        assert_eq!(event.event.type_name(), "command.status_changed");
    }

    #[test]
    fn status_names_parse_back() {
        for status in CommandStatus::ALL {
            assert_eq!(CommandStatus::parse(status.as_str()), Some(status));
        }
        assert_eq!(CommandStatus::parse("done"), None);
        assert!(CommandStatus::Expired.is_terminal() && !CommandStatus::Sent.is_terminal());
    }

    #[test]
    fn unknown_types_and_bad_ids_are_refused() {
        let unknown = br#"{"v":1,"event_id":"e","occurred_at_ms":1,"type":"device.teleported"}"#;
        assert!(DomainEvent::decode(unknown).is_err());
        let bad_id = br#"{"v":1,"event_id":"e","occurred_at_ms":1,"type":"device.deleted","device_id":"a b","home_id":"h"}"#;
        let err = DomainEvent::decode(bad_id).unwrap_err().to_string();
        assert!(err.contains("device id"), "{err}");
    }
}
