//! Homes and their devices: what a device is ([`model`]), the tables that
//! hold them ([`repo`]), the device's shadow and presence projected from
//! `device-events` ([`state`], docs/adr/0011-cqrs-device-state.md), and the
//! `/api/v1/homes` and `/api/v1/devices` endpoints ([`http`]).

pub mod http;
pub mod model;
pub mod repo;
pub mod state;

pub use model::{Device, DeviceStatus, NewDevice};
pub use repo::Devices;
