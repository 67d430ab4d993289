//! Device registry: homes and their devices (kind, capabilities, metadata,
//! status) in PostgreSQL, behind a REST API.
//!
//! * `POST/GET /api/v1/homes`, `GET/PATCH/DELETE /api/v1/homes/{id}`
//! * `POST/GET /api/v1/devices` (filters `home_id`, `kind`, `status`),
//!   `GET/PATCH/DELETE /api/v1/devices/{id}`
//! * lists page by id: `limit` (1..=500, default 50) and an opaque `cursor`
//! * `/docs` (Swagger UI), `/api-docs/openapi.json`, `/metrics`, `/healthz`,
//!   `/readyz` (PostgreSQL answers)
//!
//! Errors are problem+json with the `urn:warmhouse:problem:*` types the
//! telemetry query API uses.
//!
//! Every `/api/v1` endpoint needs a bearer token
//! ([`warmhouse_service_kit::auth`]): creating and deleting homes takes an
//! admin's; a home needs the home in the token (else 403); a device of a
//! home outside the token answers 404, as if it did not exist, so device
//! ids of other homes are not disclosed.
//!
//! One folder a feature, each with its model, its SQL behind a repository
//! type (`repo.rs`) and its handlers (`http.rs`):
//! [`devices`] (homes and devices, and the device state read model),
//! [`commands`], [`identity`], [`onboarding`], [`legacy`]. Beneath them:
//! [`db`] (the one PostgreSQL-error-to-problem mapping), [`outbox`] (generic:
//! records out to Kafka, nothing about what they mean) and [`kafka`]. Above
//! them: [`device_events`] (the `device-events` consumer), [`background`]
//! (relay, consumer and sweep) and [`app`] (state, router, `start`).

pub mod app;
mod background;
pub mod commands;
pub mod config;
pub mod db;
mod device_events;
pub mod devices;
pub mod identity;
pub mod kafka;
pub mod legacy;
pub mod onboarding;
mod outbox;
mod problem;

pub use app::{
    openapi, router, start, RegistryParts, RegistryState, RunningRegistry, MAX_BODY_BYTES,
    READY_CHECK,
};
pub use config::RegistryConfig;
pub use devices::http::{DEFAULT_LIMIT, MAX_LIMIT};
pub use problem::{Problem, PROBLEM_TYPE_PREFIX};
