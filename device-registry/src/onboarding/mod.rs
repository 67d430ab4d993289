//! Device onboarding as an orchestrated saga with a persistent log.
//!
//! Steps, in order, each with its compensation:
//! 1. `create_device`: the device row, status `provisioning` (delete it);
//! 2. `issue_credentials`: a password or client certificate (revoke them);
//! 3. `provision_telemetry`: the device's entry in InfluxDB's
//!    `device_catalog` measurement, which dashboards list devices from
//!    (drop its series);
//! 4. `announce_registered`: `device.registered` on `registry-events`
//!    through the outbox (announce `device.deleted`);
//! 5. `activate`: status `active` (status `disabled`).
//!
//! When a step fails, the steps before it are compensated in reverse order
//! (and the failed step too: every compensation is idempotent and harmless
//! for work that never happened). The log (`onboarding_sagas`,
//! `onboarding_saga_steps`) is written before and after each step. The run
//! holds a PostgreSQL advisory lock on its saga for its whole life; a saga
//! left `running` whose lock is free belongs to a registry that died, and
//! [`recover`] compensates it: its caller never received the credentials,
//! so finishing it would leave a device nobody can connect as.

mod catalog;
mod config;
pub mod http;
mod model;
mod repo;
mod saga;

pub use catalog::TelemetryCatalog;
pub use config::{Fault, OnboardingConfig, Step, DEFAULT_INFLUX_DATABASE};
pub use http::{routes, OnboardingDoc};
pub use model::{Onboarded, OnboardingRequest, SagaLogEntry, SagaView};
pub use saga::{recover, recover_forever, run, Onboarding};
