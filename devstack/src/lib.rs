//! Real infrastructure as child processes: tansu (Kafka protocol) and influxd,
//! each on free loopback ports in its own directory. Used by the integration
//! tests, the local stack and the benchmark, so all three run the same thing.
//!
//! Children are killed when their handle is dropped, so a failed test leaves
//! nothing running (see [`ChildProcess`]).

pub mod api_checks;
mod front;
mod influxd;
mod kafka;
mod nginx;
mod postgres;
mod process;
mod prometheus;

pub use influxd::Influxd;
pub use kafka::{create_topics, KafkaStorage, Tansu, TansuCluster};
pub use nginx::Nginx;
pub use postgres::Postgres;
pub use process::{find_program, free_port, http_get_status, wait_for_tcp, ChildProcess};
pub use prometheus::{scrape_config, Prometheus, ScrapeTarget};
