//! Wire contracts of Warmhouse: what devices, the bridge, ingest and the
//! registry say to each other. Everything that crosses a process boundary is
//! defined (and validated) here, so a change to the wire shows up in one place.
//!
//! * [`topics`]: the MQTT topic tree (`/tenants/{device_id}/...`).
//! * [`ids`]: validated identifiers (device, home, metric, device type).
//! * [`telemetry`]: the device telemetry payload and its Kafka envelope.
//! * [`device`]: state, status (presence) and command payloads.
//! * [`kafka`]: Kafka topic names, device events and dead letters.
//! * [`commands`]: the command catalog (names, parameters, desired state).
//! * [`domain`]: the registry's domain events (`registry-events`).
//! * [`points`]: how a telemetry envelope becomes time-series points.

pub mod commands;
pub mod device;
pub mod domain;
pub mod ids;
pub mod kafka;
pub mod points;
pub mod telemetry;
pub mod topics;

mod decode;

pub use decode::DecodeError;

/// Version of every JSON payload and envelope defined here. Readers accept
/// this version and tolerate unknown fields, so producers may add fields
/// without a version bump.
pub const WIRE_VERSION: u8 = 1;

/// Largest MQTT payload the platform accepts from a device, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
