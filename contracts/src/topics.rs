//! The MQTT topic tree. Every device speaks only under its own prefix
//! `/tenants/{device_id}/`, which is exactly the prefix rumqttd's
//! `validate-tenant-prefix` enforces for a client whose certificate names
//! that device: the broker itself keeps a device from speaking for another.
//!
//! | topic | direction | payload |
//! |---|---|---|
//! | `/tenants/{id}/telemetry` | device to cloud | [`crate::telemetry::TelemetryMessage`] |
//! | `/tenants/{id}/state` | device to cloud | [`crate::device::ReportedState`] |
//! | `/tenants/{id}/status` | device to cloud, retained, last will | [`crate::device::StatusMessage`] |
//! | `/tenants/{id}/commands` | cloud to device | [`crate::device::Command`] |
//! | `/tenants/{id}/commands/ack` | device to cloud | [`crate::device::CommandAck`] |

use std::fmt;

use crate::ids::{DeviceId, IdError};

pub const TENANT_ROOT: &str = "/tenants/";

/// What a topic below a device's prefix carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    Telemetry,
    State,
    Status,
    Commands,
    CommandAck,
}

impl Channel {
    pub const ALL: [Channel; 5] = [
        Channel::Telemetry,
        Channel::State,
        Channel::Status,
        Channel::Commands,
        Channel::CommandAck,
    ];

    /// Channels a device publishes and the bridge forwards to Kafka.
    pub const UPSTREAM: [Channel; 4] = [
        Channel::Telemetry,
        Channel::State,
        Channel::Status,
        Channel::CommandAck,
    ];

    pub fn suffix(self) -> &'static str {
        match self {
            Channel::Telemetry => "telemetry",
            Channel::State => "state",
            Channel::Status => "status",
            Channel::Commands => "commands",
            Channel::CommandAck => "commands/ack",
        }
    }

    fn from_suffix(suffix: &str) -> Option<Channel> {
        Channel::ALL.into_iter().find(|c| c.suffix() == suffix)
    }

    /// The MQTT subscription filter matching this channel of every device.
    pub fn filter_all_devices(self) -> String {
        format!("{TENANT_ROOT}+/{}", self.suffix())
    }
}

/// A parsed device topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceTopic {
    pub device_id: DeviceId,
    pub channel: Channel,
}

impl DeviceTopic {
    pub fn new(device_id: DeviceId, channel: Channel) -> Self {
        Self { device_id, channel }
    }

    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let rest = topic
            .strip_prefix(TENANT_ROOT)
            .ok_or_else(|| TopicError::OutsideTree(topic.to_string()))?;
        let (device, suffix) = rest
            .split_once('/')
            .ok_or_else(|| TopicError::UnknownChannel(topic.to_string()))?;
        let device_id = DeviceId::new(device).map_err(TopicError::DeviceId)?;
        let channel = Channel::from_suffix(suffix)
            .ok_or_else(|| TopicError::UnknownChannel(topic.to_string()))?;
        Ok(Self { device_id, channel })
    }
}

impl fmt::Display for DeviceTopic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{TENANT_ROOT}{}/{}",
            self.device_id,
            self.channel.suffix()
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("topic {0:?} is outside the device tree (expected /tenants/{{device_id}}/...)")]
    OutsideTree(String),
    #[error(
        "topic {0:?} names no known channel (telemetry, state, status, commands, commands/ack)"
    )]
    UnknownChannel(String),
    #[error("topic names an invalid device: {0}")]
    DeviceId(IdError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_channel() {
        for channel in Channel::ALL {
            let topic = DeviceTopic::new(DeviceId::new("dev-1").unwrap(), channel);
            let text = topic.to_string();
            assert_eq!(DeviceTopic::parse(&text).unwrap(), topic, "{text}");
        }
        assert_eq!(
            DeviceTopic::new(DeviceId::new("d").unwrap(), Channel::CommandAck).to_string(),
            "/tenants/d/commands/ack"
        );
    }

    #[test]
    fn filters_match_the_tree() {
        assert_eq!(
            Channel::Telemetry.filter_all_devices(),
            "/tenants/+/telemetry"
        );
    }

    #[test]
    fn rejects_foreign_and_malformed_topics() {
        assert!(matches!(
            DeviceTopic::parse("tenants/d/telemetry"),
            Err(TopicError::OutsideTree(_))
        ));
        assert!(matches!(
            DeviceTopic::parse("/tenants/d/telemetry/extra"),
            Err(TopicError::UnknownChannel(_))
        ));
        assert!(matches!(
            DeviceTopic::parse("/tenants/d"),
            Err(TopicError::UnknownChannel(_))
        ));
        assert!(matches!(
            DeviceTopic::parse("/tenants/d+x/telemetry"),
            Err(TopicError::DeviceId(_))
        ));
        assert!(matches!(
            DeviceTopic::parse("/tenants//telemetry"),
            Err(TopicError::DeviceId(_))
        ));
    }
}
