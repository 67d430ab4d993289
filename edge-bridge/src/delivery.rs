//! Making a record safe: produced to Kafka (acknowledged by every in-sync
//! replica), or written and fsynced to the local spool when Kafka cannot
//! take it. While the spool holds records, new ones join its tail, and a
//! drainer replays it to Kafka in order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::{mpsc, oneshot};

use crate::kafka::{OnAck, Producer};
use crate::metrics::Metrics;
use crate::spool::{Position, Record, Spool};

enum SpoolCommand {
    Append(Record, oneshot::Sender<anyhow::Result<bool>>),
    Read(
        usize,
        oneshot::Sender<anyhow::Result<(Vec<Record>, Position)>>,
    ),
    Commit(Position, u64, oneshot::Sender<anyhow::Result<()>>),
}

/// Owns the spool on a thread of its own (its I/O is blocking) and groups
/// concurrent appends under one fsync.
#[derive(Clone)]
struct SpoolHandle {
    tx: mpsc::UnboundedSender<SpoolCommand>,
}

impl SpoolHandle {
    fn spawn(mut spool: Spool, spooling: Arc<AtomicBool>, metrics: Metrics) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<SpoolCommand>();
        spooling.store(!spool.is_empty(), Ordering::SeqCst);
        metrics.spool_records.set(spool.pending_records() as i64);
        std::thread::Builder::new()
            .name("bridge-spool".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut waiting = Vec::new();
                    let mut command = Some(first);
                    while let Some(cmd) = command.take() {
                        match cmd {
                            SpoolCommand::Append(record, reply) => match spool.append(&record) {
                                Ok(Ok(())) => {
                                    spooling.store(true, Ordering::SeqCst);
                                    waiting.push(reply);
                                }
                                Ok(Err(full)) => {
                                    tracing::warn!(%full, "spool full: holding MQTT acks");
                                    let _ = reply.send(Ok(false));
                                }
                                Err(err) => {
                                    let _ = reply.send(Err(err));
                                }
                            },
                            SpoolCommand::Read(max, reply) => {
                                let _ = reply.send(spool.read_batch(max));
                            }
                            SpoolCommand::Commit(pos, count, reply) => {
                                let result = spool.commit(pos, count);
                                if spool.is_empty() {
                                    spooling.store(false, Ordering::SeqCst);
                                }
                                let _ = reply.send(result);
                            }
                        }
                        if waiting.len() < 4096 {
                            command = rx.try_recv().ok();
                        }
                    }
                    if !waiting.is_empty() {
                        let synced = spool.sync();
                        for reply in waiting {
                            let _ = reply.send(match &synced {
                                Ok(()) => Ok(true),
                                Err(err) => Err(anyhow::anyhow!("syncing spool: {err:#}")),
                            });
                        }
                    }
                    metrics.spool_records.set(spool.pending_records() as i64);
                    metrics.spool_bytes.set(spool.pending_bytes() as i64);
                }
            })
            .map(|_| ())
            .unwrap_or_else(|err| tracing::error!(%err, "cannot start spool thread"));
        Self { tx }
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<anyhow::Result<T>>) -> SpoolCommand,
    ) -> anyhow::Result<T> {
        self.request(make).await
    }

    /// Queues the request now; the answer comes later.
    fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<anyhow::Result<T>>) -> SpoolCommand,
    ) -> impl std::future::Future<Output = anyhow::Result<T>> {
        let (reply, rx) = oneshot::channel();
        let sent = self
            .tx
            .send(make(reply))
            .map_err(|_| anyhow::anyhow!("spool thread has stopped"));
        async move {
            sent?;
            rx.await.context("spool thread dropped the request")?
        }
    }
}

/// The producers records go out on: telemetry batched, everything else
/// (device events, dead letters) at once.
pub struct Producers {
    pub telemetry_topic: String,
    pub telemetry: Producer,
    pub events: Producer,
}

impl Producers {
    fn for_topic(&self, topic: &str) -> &Producer {
        if topic == self.telemetry_topic {
            &self.telemetry
        } else {
            &self.events
        }
    }
}

pub struct Delivery {
    producers: Producers,
    spool: SpoolHandle,
    /// True while the spool holds records: new records queue behind them.
    spooling: Arc<AtomicBool>,
    metrics: Metrics,
    /// Records Kafka refused, with whom to tell once they are spooled.
    refused: mpsc::UnboundedSender<(Record, oneshot::Sender<()>)>,
    /// Where the waits for safety run (the caller's thread may be a
    /// single-threaded runtime of the MQTT broker's).
    runtime: tokio::runtime::Handle,
}

/// Resolves when a submitted record is safe. Fails only when the process is
/// shutting down before that: the record is not known to be safe then.
pub struct Safe(oneshot::Receiver<()>);

impl std::future::Future for Safe {
    type Output = Result<(), oneshot::error::RecvError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl Delivery {
    /// Must be called inside a Tokio runtime: the one that runs the waits.
    pub fn new(producers: Producers, spool: Spool, metrics: Metrics) -> Arc<Self> {
        let spooling = Arc::new(AtomicBool::new(false));
        let spool = SpoolHandle::spawn(spool, spooling.clone(), metrics.clone());
        let (refused, mut to_spool) = mpsc::unbounded_channel::<(Record, oneshot::Sender<()>)>();
        let delivery = Arc::new(Self {
            producers,
            spool,
            spooling,
            metrics,
            refused,
            runtime: tokio::runtime::Handle::current(),
        });
        // Refused records go to the spool concurrently (one fsync covers
        // many), each completing its own caller.
        let weak = Arc::downgrade(&delivery);
        tokio::spawn(async move {
            while let Some((record, done)) = to_spool.recv().await {
                let Some(delivery) = weak.upgrade() else {
                    return;
                };
                tokio::spawn(async move {
                    delivery.spool_until_safe(record).await;
                    let _ = done.send(());
                });
            }
        });
        delivery
    }

    pub fn kafka_available(&self) -> bool {
        // Both producers share the flag.
        !self.producers.telemetry.kafka_down().load(Ordering::SeqCst)
    }

    /// Resolves once `record` is safe. Never gives up: a full spool or a
    /// failing disk holds the caller (and so the device's ack) until there is
    /// room: backpressure (docs/adr/0019-puback-when-safe.md).
    pub async fn deliver(self: &Arc<Self>, record: Record) {
        let _ = self.submit(record).await;
    }

    /// Starts making `record` safe and returns a handle that resolves when
    /// it is. The record joins the producer's queue (or the spool's) before
    /// this returns, so records submitted one after another keep their
    /// order; the work goes on whether or not the handle is awaited.
    pub fn submit(self: &Arc<Self>, record: Record) -> Safe {
        let (done, safe) = oneshot::channel();
        if !self.spooling.load(Ordering::SeqCst) && self.kafka_available() {
            let produced = self.metrics.produced.with_label_values(&[&record.topic]);
            let refused = self.refused.clone();
            let on_ack: OnAck = Box::new(move |outcome| match outcome {
                Ok(()) => {
                    produced.inc();
                    let _ = done.send(());
                }
                Err((err, record)) => {
                    tracing::debug!(%err, topic = %record.topic, "Kafka refused a record: spooling it");
                    let _ = refused.send((record, done));
                }
            });
            match self
                .producers
                .for_topic(&record.topic)
                .enqueue(&record, on_ack)
            {
                Ok(()) => return Safe(safe),
                Err(err) => {
                    tracing::warn!(%err, topic = %record.topic, "Kafka cannot take a record: spooling it");
                    // `on_ack` (and `done` in it) was dropped: start over.
                    return self.spool_now(record);
                }
            }
        }
        self.spool_now_with(record, done);
        Safe(safe)
    }

    /// `submit` straight to the spool.
    fn spool_now(self: &Arc<Self>, record: Record) -> Safe {
        let (done, safe) = oneshot::channel();
        self.spool_now_with(record, done);
        Safe(safe)
    }

    fn spool_now_with(self: &Arc<Self>, record: Record, done: oneshot::Sender<()>) {
        let this = self.clone();
        let copy = record.clone();
        let appended = self
            .spool
            .request(move |reply| SpoolCommand::Append(copy, reply));
        self.runtime.spawn(async move {
            match appended.await {
                Ok(true) => this.metrics.spooled.inc(),
                Ok(false) | Err(_) => this.spool_until_safe(record).await,
            }
            let _ = done.send(());
        });
    }

    async fn spool_until_safe(&self, record: Record) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let rec = record.clone();
            match self
                .spool
                .call(|reply| SpoolCommand::Append(rec, reply))
                .await
            {
                Ok(true) => {
                    self.metrics.spooled.inc();
                    return;
                }
                Ok(false) => self.metrics.spool_full_waits.inc(),
                Err(err) => tracing::error!("cannot spool a record, retrying: {err:#}"),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Replays the spool to Kafka in order, batch by batch, committing a
    /// batch only after Kafka acknowledged all of it. Runs until the process ends.
    pub async fn drain_forever(self: Arc<Self>, batch: usize) {
        let mut backoff = Duration::from_millis(200);
        loop {
            if !self.spooling.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            match self.drain_once(batch).await {
                Ok(0) => tokio::time::sleep(Duration::from_millis(20)).await,
                Ok(n) => {
                    self.metrics.drained.inc_by(n);
                    backoff = Duration::from_millis(200);
                }
                Err(err) => {
                    tracing::warn!("spool drain failed, retrying in {backoff:?}: {err:#}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    async fn drain_once(&self, batch: usize) -> anyhow::Result<u64> {
        let (records, pos) = self
            .spool
            .call(|reply| SpoolCommand::Read(batch, reply))
            .await?;
        if records.is_empty() {
            // Nothing left (records were committed); let the spool re-check.
            self.spool
                .call(|reply| SpoolCommand::Commit(pos, 0, reply))
                .await?;
            return Ok(0);
        }
        // One producer for the whole batch (the batching one): a spooled
        // backlog is all about throughput.
        let producer = &self.producers.telemetry;
        let results =
            futures::future::join_all(records.iter().map(|record| producer.send(record))).await;
        if let Some(Err(err)) = results.into_iter().find(|r| r.is_err()) {
            producer.reset(&err);
            anyhow::bail!("Kafka still unavailable: {err}");
        }
        for record in &records {
            self.metrics
                .produced
                .with_label_values(&[&record.topic])
                .inc();
        }
        let count = records.len() as u64;
        self.spool
            .call(|reply| SpoolCommand::Commit(pos, count, reply))
            .await?;
        Ok(count)
    }
}
