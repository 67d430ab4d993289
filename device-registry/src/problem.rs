//! Errors as RFC 9457 problem details: the problem+json type every
//! Warmhouse API shares (`warmhouse_service_kit::problem`), re-exported so
//! the registry's modules name it `crate::problem::Problem`.

pub use warmhouse_service_kit::problem::{Problem, PROBLEM_TYPE_PREFIX};
