//! Device state, presence and commands on the MQTT side.
//!
//! * `/tenants/{id}/status` (retained, also the device's last will):
//!   `{"v":1,"online":true,"ts":1764000000000}`; `ts` is optional because a
//!   last will is written at connect time and cannot know when it fires.
//! * `/tenants/{id}/state`: `{"v":1,"ts":...,"reported":{"heating_on":true,"target_temperature":21.0}}`
//! * `/tenants/{id}/commands`: [`Command`], `/tenants/{id}/commands/ack`: [`CommandAck`].

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::decode::{check_version, from_json, DecodeError};
use crate::telemetry::{MAX_TIMESTAMP_MS, MIN_TIMESTAMP_MS};
use crate::MAX_PAYLOAD_BYTES;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusMessage {
    pub v: u64,
    pub online: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts: Option<i64>,
}

impl StatusMessage {
    pub fn new(online: bool, ts: Option<i64>) -> Self {
        Self {
            v: u64::from(crate::WIRE_VERSION),
            online,
            ts,
        }
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let status: Self = from_json(bytes, MAX_PAYLOAD_BYTES)?;
        check_version(status.v)?;
        if let Some(ts) = status.ts {
            check_ts("ts", ts)?;
        }
        Ok(status)
    }
}

/// State a device reports about itself (its side of the shadow).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReportedState {
    pub v: u64,
    pub ts: i64,
    pub reported: Map<String, Value>,
}

impl ReportedState {
    pub fn new(ts: i64, reported: Map<String, Value>) -> Self {
        Self {
            v: u64::from(crate::WIRE_VERSION),
            ts,
            reported,
        }
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let state: Self = from_json(bytes, MAX_PAYLOAD_BYTES)?;
        check_version(state.v)?;
        check_ts("ts", state.ts)?;
        Ok(state)
    }
}

/// A command sent to a device on `/tenants/{id}/commands`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub v: u64,
    pub command_id: String,
    /// What to do: `turn_on`, `turn_off`, `set_target_temperature`, ...
    pub name: String,
    #[serde(default)]
    pub params: Map<String, Value>,
    pub issued_at_ms: i64,
    /// The device must ignore a command received after this instant.
    pub expires_at_ms: i64,
}

impl Command {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let command: Self = from_json(bytes, MAX_PAYLOAD_BYTES)?;
        check_version(command.v)?;
        Ok(command)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckResult {
    /// Executed.
    Done,
    /// Understood but refused (bad parameters, unsupported by this device).
    Rejected,
    /// Tried and failed.
    Failed,
    /// Arrived after `expires_at_ms`; not executed.
    Expired,
}

/// A device's answer to a [`Command`], on `/tenants/{id}/commands/ack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandAck {
    pub v: u64,
    pub command_id: String,
    pub result: AckResult,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub ts: i64,
}

impl CommandAck {
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let ack: Self = from_json(bytes, MAX_PAYLOAD_BYTES)?;
        check_version(ack.v)?;
        check_ts("ts", ack.ts)?;
        if ack.command_id.is_empty() {
            return Err(DecodeError::field("command_id", "must not be empty"));
        }
        Ok(ack)
    }
}

fn check_ts(path: &str, ts: i64) -> Result<(), DecodeError> {
    if (MIN_TIMESTAMP_MS..MAX_TIMESTAMP_MS).contains(&ts) {
        Ok(())
    } else {
        Err(DecodeError::field(
            path,
            format!(
                "{ts} is not a plausible time in milliseconds since the Unix epoch (2020..2100)"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_with_and_without_time() {
        let s = StatusMessage::decode(br#"{"v":1,"online":false}"#).unwrap();
        assert!(!s.online && s.ts.is_none());
        let s = StatusMessage::decode(br#"{"v":1,"online":true,"ts":1764000000000}"#).unwrap();
        assert!(s.online);
        assert!(StatusMessage::decode(br#"{"v":1,"online":"yes"}"#).is_err());
        assert!(StatusMessage::decode(br#"{"v":1,"online":true,"ts":5}"#).is_err());
    }

    #[test]
    fn state_and_ack() {
        let s =
            ReportedState::decode(br#"{"v":1,"ts":1764000000000,"reported":{"heating_on":true}}"#)
                .unwrap();
        assert_eq!(s.reported["heating_on"], Value::Bool(true));
        assert!(ReportedState::decode(br#"{"v":1,"ts":1764000000000,"reported":[]}"#).is_err());
        let a =
            CommandAck::decode(br#"{"v":1,"command_id":"c1","result":"done","ts":1764000000000}"#)
                .unwrap();
        assert_eq!(a.result, AckResult::Done);
        let err =
            CommandAck::decode(br#"{"v":1,"command_id":"c1","result":"maybe","ts":1764000000000}"#)
                .unwrap_err();
        assert!(err.to_string().contains("field `result`"), "{err}");
    }
}
