//! Telemetry management. Two processes share this crate (CQRS):
//! * the writer (`ingest-writer`, [`writer`]): Kafka `telemetry` to InfluxDB,
//!   batched, committing offsets only after InfluxDB accepted a batch;
//! * the query API (`ingest-query`, [`query`]): REST over InfluxQL.
//!
//! [`influx`] is the InfluxDB v1 HTTP client and storage layout both use;
//! [`lag`] measures the writer's consumer lag.

pub mod influx;
pub mod lag;
pub mod query;
pub mod writer;
