//! One lifecycle for every service: a [`Lifecycle`] gathers what a service
//! starts (HTTP servers, loops, background tasks) and the signal that stops
//! them; [`Running`] is the started service, its own handles (addresses,
//! state, metrics) reached through `Deref`, with the same four verbs for
//! every service: [`Running::wait`], [`Running::shutdown`],
//! [`Running::failed`] and, for the binaries, [`Running::run_until_signal`].
//!
//! Two kinds of task, by how they end:
//! - **graceful** ones (HTTP servers, the ingest writer's loop) end by
//!   themselves once the stop signal is given, finishing what is in
//!   flight; `wait` and `shutdown` wait for them;
//! - **background** ones (probes, pumps, consumers whose work is safe to
//!   cut) are aborted once the graceful ones are done.
//!
//! Dropping a `Running` (or a `Lifecycle` whose start failed halfway) gives
//! the stop signal and aborts every task, so nothing outlives its service.

use std::future::Future;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// What a service has started so far, and its stop signal.
pub struct Lifecycle {
    /// Names the service in log lines and errors.
    name: &'static str,
    stop: Arc<watch::Sender<bool>>,
    graceful: Vec<JoinHandle<()>>,
    background: Vec<JoinHandle<()>>,
    failure_tx: mpsc::UnboundedSender<anyhow::Error>,
    failures: mpsc::UnboundedReceiver<anyhow::Error>,
}

/// Reports that a service can no longer serve (see [`Running::failed`]).
#[derive(Clone)]
pub struct FailureReporter(mpsc::UnboundedSender<anyhow::Error>);

impl FailureReporter {
    pub fn report(&self, err: anyhow::Error) {
        // The receiver is gone only once the service is: nothing to tell.
        let _ = self.0.send(err);
    }
}

impl Lifecycle {
    pub fn new(name: &'static str) -> Self {
        let (stop, _) = watch::channel(false);
        let (failure_tx, failures) = mpsc::unbounded_channel();
        Self {
            name,
            stop: Arc::new(stop),
            graceful: Vec::new(),
            background: Vec::new(),
            failure_tx,
            failures,
        }
    }

    /// Also stops the service when `shutdown` resolves (a test's trigger,
    /// or the process's signal).
    pub fn stop_on(&mut self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.spawn(async move {
            shutdown.await;
            stop.send_replace(true);
        });
    }

    /// The stop signal, for a task that watches it itself.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Resolves once the service is told to stop.
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        crate::stopped(self.stop_signal())
    }

    /// Binds `addr` and serves `router` until the stop signal, then lets
    /// in-flight requests finish. Returns the bound address (the real port
    /// when port 0 was asked for).
    pub async fn serve(&mut self, addr: SocketAddr, router: Router) -> anyhow::Result<SocketAddr> {
        let (bound, server) = crate::serve(addr, router, self.stopped()).await?;
        self.graceful.push(server);
        Ok(bound)
    }

    /// A task that ends by itself once the stop signal is given; waited for.
    pub fn spawn_graceful(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.graceful.push(tokio::spawn(task));
    }

    /// A task that runs until the service ends; aborted then.
    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.background.push(tokio::spawn(task));
    }

    /// Tasks started elsewhere that run until the service ends.
    pub fn adopt(&mut self, tasks: impl IntoIterator<Item = JoinHandle<()>>) {
        self.background.extend(tasks);
    }

    pub fn failure_reporter(&self) -> FailureReporter {
        FailureReporter(self.failure_tx.clone())
    }

    /// A failure reported while the service is still starting, if any.
    pub fn reported_failure(&mut self) -> Option<anyhow::Error> {
        self.failures.try_recv().ok()
    }

    /// The started service: `parts` is what its users reach (addresses,
    /// state, metrics).
    pub fn running<T>(self, parts: T) -> Running<T> {
        Running {
            parts,
            lifecycle: self,
        }
    }

    /// Waits for every graceful task, then aborts the background ones. An
    /// error when a graceful task panicked.
    async fn finish(&mut self) -> anyhow::Result<()> {
        let mut outcome = Ok(());
        for task in std::mem::take(&mut self.graceful) {
            if let Err(err) = task.await {
                tracing::warn!(service = self.name, %err, "a task ended abnormally");
                if outcome.is_ok() {
                    outcome = Err(err).with_context(|| format!("{} task failed", self.name));
                }
            }
        }
        self.abort_background();
        outcome
    }

    fn abort_background(&mut self) {
        for task in self.background.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        for task in &self.graceful {
            task.abort();
        }
        self.abort_background();
    }
}

/// A started service. `T` is what it exposes, reached through `Deref`.
pub struct Running<T> {
    parts: T,
    lifecycle: Lifecycle,
}

impl<T> Deref for Running<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.parts
    }
}

impl<T> DerefMut for Running<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.parts
    }
}

impl<T> Running<T> {
    /// Waits until the service is told to stop (by the future it was
    /// started with) and its graceful tasks have finished.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        self.lifecycle.stopped().await;
        self.lifecycle.finish().await
    }

    /// Stops the service now and waits until its graceful tasks have
    /// finished (what is in flight completes).
    pub async fn shutdown(mut self) {
        self.lifecycle.stop.send_replace(true);
        // finish() has logged a task that ended abnormally.
        let _ = self.lifecycle.finish().await;
    }

    /// Resolves when the service can no longer serve (a part of it it
    /// cannot do without has ended); never, if that does not happen.
    pub async fn failed(&mut self) -> anyhow::Error {
        match self.lifecycle.failures.recv().await {
            Some(err) => err,
            // Unreachable while the lifecycle holds a sender: wait forever.
            None => std::future::pending().await,
        }
    }

    /// What a service binary does: runs until SIGTERM or Ctrl-C, then
    /// stops gracefully and returns `Ok`; or until the service fails, then
    /// returns the error, so the process exits non-zero and its
    /// orchestrator restarts it.
    pub async fn run_until_signal(mut self) -> anyhow::Result<()> {
        let name = self.lifecycle.name;
        tokio::select! {
            _ = crate::shutdown_signal() => {
                tracing::info!(service = name, "shutdown signal received");
                self.shutdown().await;
                tracing::info!(service = name, "stopped");
                Ok(())
            }
            err = self.failed() => Err(err.context(format!("{name} can no longer serve"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use super::*;

    /// A graceful task that records that it saw the stop signal and ended
    /// by itself, and a background task that records whether it was cut.
    fn service() -> (Lifecycle, Arc<AtomicBool>, Arc<AtomicBool>) {
        let mut lifecycle = Lifecycle::new("test");
        let finished = Arc::new(AtomicBool::new(false));
        let stopped = lifecycle.stopped();
        let graceful_finished = finished.clone();
        lifecycle.spawn_graceful(async move {
            stopped.await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            graceful_finished.store(true, Ordering::SeqCst);
        });
        let background_ran_out = Arc::new(AtomicBool::new(false));
        let ran_out = background_ran_out.clone();
        lifecycle.spawn(async move {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            ran_out.store(true, Ordering::SeqCst);
        });
        (lifecycle, finished, background_ran_out)
    }

    #[tokio::test]
    async fn shutdown_waits_for_graceful_tasks_and_cuts_background_ones() {
        let (lifecycle, finished, background_ran_out) = service();
        let running = lifecycle.running(());
        running.shutdown().await;
        assert!(finished.load(Ordering::SeqCst), "graceful task finished");
        assert!(!background_ran_out.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn wait_returns_once_the_shutdown_future_resolved() {
        let (mut lifecycle, finished, _) = service();
        let (trigger, triggered) = tokio::sync::oneshot::channel::<()>();
        lifecycle.stop_on(async move {
            let _ = triggered.await;
        });
        let running = lifecycle.running(7);
        assert_eq!(*running, 7, "the parts are reached through Deref");
        let waiting = tokio::spawn(running.wait());
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "waits while not told to stop");
        trigger.send(()).expect("the service listens");
        waiting
            .await
            .expect("wait task joins")
            .expect("wait succeeds");
        assert!(finished.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn failed_resolves_with_the_reported_error() {
        let (lifecycle, _, _) = service();
        let reporter = lifecycle.failure_reporter();
        let mut running = lifecycle.running(());
        reporter.report(anyhow::anyhow!("listener gone"));
        let err = running.failed().await;
        assert_eq!(err.to_string(), "listener gone");
    }

    #[tokio::test]
    async fn dropping_stops_every_task() {
        let (mut lifecycle, _, _) = service();
        // Each task holds a sender; its receiver sees it closed once the
        // task is gone.
        let (graceful_alive, graceful_gone) = tokio::sync::oneshot::channel::<()>();
        lifecycle.spawn_graceful(async move {
            let _alive = graceful_alive;
            std::future::pending::<()>().await;
        });
        let (background_alive, background_gone) = tokio::sync::oneshot::channel::<()>();
        lifecycle.spawn(async move {
            let _alive = background_alive;
            std::future::pending::<()>().await;
        });
        let signal = lifecycle.stop_signal();
        drop(lifecycle.running(()));
        assert!(*signal.borrow(), "the stop signal is given");
        let gone = |receiver| tokio::time::timeout(Duration::from_secs(5), receiver);
        assert!(
            gone(graceful_gone).await.is_ok(),
            "a graceful task that ignores the signal is aborted"
        );
        assert!(
            gone(background_gone).await.is_ok(),
            "a background task is aborted"
        );
    }

    #[tokio::test]
    async fn a_panicking_graceful_task_makes_wait_fail() {
        let mut lifecycle = Lifecycle::new("test");
        lifecycle.spawn_graceful(async { panic!("boom") });
        let stop = lifecycle.stop.clone();
        let running = lifecycle.running(());
        stop.send_replace(true);
        let err = running.wait().await.expect_err("the panic is reported");
        assert!(err.to_string().contains("test task failed"), "{err:#}");
    }
}
