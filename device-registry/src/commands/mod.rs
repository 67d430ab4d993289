//! Commands to devices, the write side: a durable state machine per command
//! (queued → sent → delivered → acked | failed, or expired), changed only
//! here and always together with the outbox records that announce it.
//!
//! * queued: stored; its `device-commands` record is in the outbox.
//! * sent: the relay published it to Kafka.
//! * delivered: the bridge handed it to the broker for an online device.
//! * acked / failed: the device executed it / refused or failed.
//! * expired: its TTL ran out first (the sweeper), or the device said so.
//!
//! When a device comes back online every open command is published again:
//! one that went out while the device was away reaches it now, and a device
//! ignores a command id it has already answered.

pub mod http;
mod machine;
mod metrics;
mod model;
mod repo;

pub use machine::{
    create, expire_due, get, list, mark_delivered, record_ack, redeliver_open, MarkSent,
};
pub use metrics::CommandMetrics;
pub use model::{
    CommandView, NewCommand, DEFAULT_TTL_SECONDS, MAX_IDEMPOTENCY_KEY, MAX_TTL_SECONDS,
};
