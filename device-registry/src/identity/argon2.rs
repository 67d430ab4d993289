//! Argon2id in bounded slots, so a fleet connecting at once gets "busy"
//! rather than timeouts.

use std::sync::Arc;
use std::time::Duration;

use crate::problem::{internal, Problem};

/// Argon2id runs at most `parallel` at a time, and work waits at most `wait`
/// for its turn; beyond that the registry answers 503 (busy) at once.
///
/// A fleet connecting at once (a cold start, the registry restarted with
/// nothing remembered) asks for more checks than the CPU can do. Unbounded,
/// every check ran on its own blocking thread, all of them slowed down
/// together past the broker's wait (3 s, queue included), and the registry
/// went on hashing for connects the broker had already refused: no device
/// got in. Bounded, the registry does what the cores allow, at full speed,
/// and says "busy" for the rest while the broker still waits, so those
/// devices retry later instead of timing out.
#[derive(Clone)]
pub struct Argon2Slots {
    turns: Arc<tokio::sync::Semaphore>,
    wait: Duration,
}

impl Argon2Slots {
    pub fn new(parallel: usize, wait: Duration) -> Self {
        Self {
            turns: Arc::new(tokio::sync::Semaphore::new(parallel.max(1))),
            wait,
        }
    }

    /// Runs `work` (Argon2id) on a blocking thread once it has a turn; a
    /// 503 when none comes within the wait.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        what: &str,
        work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, Problem> {
        let turn = tokio::time::timeout(self.wait, self.turns.clone().acquire_owned())
            .await
            .map_err(|_| {
                Problem::busy(format!(
                    "every Argon2id slot stayed taken for {} ms; retry",
                    self.wait.as_millis()
                ))
            })?
            .map_err(|err| internal("the Argon2id slots closed", err))?;
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            work()
        })
        .await
        .map_err(|err| internal(&format!("{what}: task failed"), err))?
        .map_err(|err| internal(what, err))
    }
}

impl Default for Argon2Slots {
    /// One at a time per core, waiting up to [`DEFAULT_ARGON2_WAIT_MS`].
    fn default() -> Self {
        Self::new(
            default_argon2_parallel(),
            Duration::from_millis(DEFAULT_ARGON2_WAIT_MS),
        )
    }
}

/// How long a password check or hash waits for an Argon2id slot by default:
/// well within the broker's 3 s wait for an answer.
pub const DEFAULT_ARGON2_WAIT_MS: u64 = 1_500;

pub(super) fn default_argon2_parallel() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}
