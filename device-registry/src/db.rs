//! What every repository shares: the one mapping of PostgreSQL errors to
//! problems, and the check of ids read back from the database.
//!
//! Queries are checked at run time (no database at build time); each
//! feature keeps its own in a repository type next to its handlers.

use axum::http::StatusCode;
use sqlx::PgPool;
use warmhouse_contracts::ids::{DeviceId, HomeId};

use crate::kafka::Topics;
use crate::problem::Problem;

/// The database and the topics its outbox announces changes on: what the
/// handlers of every feature need.
#[derive(Clone)]
pub struct Db {
    pub pool: PgPool,
    pub topics: Topics,
}

/// `.or_problem("device")` on a query's result: its error as the problem
/// the client sees, naming what was asked for.
pub trait OrProblem<T> {
    fn or_problem(self, what: &str) -> Result<T, Problem>;
}

impl<T> OrProblem<T> for Result<T, sqlx::Error> {
    fn or_problem(self, what: &str) -> Result<T, Problem> {
        self.map_err(|err| problem(err, what))
    }
}

/// Constraint violations are the client's doing (4xx); losing the
/// database is 503; anything else is ours (500, logged).
pub fn problem(err: sqlx::Error, what: &str) -> Problem {
    if let sqlx::Error::Database(db) = &err {
        match db.code().as_deref() {
            // unique_violation
            Some("23505") => return Problem::conflict(format!("a {what} with this id exists")),
            // foreign_key_violation: a device's home is missing, or a home
            // still has devices.
            Some("23503") if what == "device" => {
                return Problem::invalid_field("home_id", "no home with this home_id")
            }
            Some("23503") => {
                return Problem::conflict("the home still has devices; delete or move them first")
            }
            // character_not_in_repertoire (NUL in a text column) and
            // untranslatable_character (`\u0000` in jsonb): PostgreSQL cannot
            // store NUL, which is the client's doing, not a 500.
            Some("22021") | Some("22P05") => {
                return Problem::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid-body",
                    "Invalid request body",
                    "text and metadata must not contain NUL characters (\\u0000)",
                )
            }
            _ => {}
        }
    }
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            tracing::warn!(%err, "PostgreSQL unavailable");
            Problem::store_unavailable(format!("PostgreSQL cannot be reached: {err}"))
        }
        other => {
            tracing::error!(err = %other, "registry query failed");
            Problem::internal()
        }
    }
}

/// A device id read from the database. Ids are validated before they are
/// stored, so one that is not valid is our fault (500, logged).
pub fn stored_device_id(id: &str) -> Result<DeviceId, Problem> {
    DeviceId::new(id).map_err(|err| stored_id_problem(id, &err))
}

/// A home id read from the database (see [`stored_device_id`]).
pub fn stored_home_id(id: &str) -> Result<HomeId, Problem> {
    HomeId::new(id).map_err(|err| stored_id_problem(id, &err))
}

fn stored_id_problem(id: &str, err: &dyn std::fmt::Display) -> Problem {
    tracing::error!(%err, id, "stored id is not valid");
    Problem::internal()
}
