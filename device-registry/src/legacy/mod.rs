//! The legacy heating monolith, strangled: its `/api/heating/...` REST API
//! served on top of the registry's model ([`http`]), and the import of its
//! database ([`import`], binary `registry-import-monolith`). See
//! docs/adr/0013-legacy-monolith-strangler-fig.md.

mod config;
pub mod http;
pub mod import;
mod repo;
pub mod telemetry;

pub use config::{LegacyConfig, LegacyState};
pub use http::{routes, LegacyContext, LegacyDoc};
