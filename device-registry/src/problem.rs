//! Errors as RFC 9457 problem details: the problem+json type every
//! Warmhouse API shares (`warmhouse_service_kit::problem`), re-exported so
//! the registry's modules name it `crate::problem::Problem`.

pub use warmhouse_service_kit::problem::{Problem, PROBLEM_TYPE_PREFIX};

/// A failure of ours: logged with what was being done, answered as a bare
/// 500 so nothing internal leaks to the client.
pub fn internal(what: &str, err: impl std::fmt::Display) -> Problem {
    tracing::error!(error = %err, "{what}");
    Problem::internal()
}
