//! Section 2: our broker against Mosquitto.

use std::fmt::Write;

use super::format::{opt_pct, pct, ratio, thousands};
use crate::brokers::{BrokerKind, BrokerRun};
use crate::one_line;
use crate::Results;

pub(super) fn render(md: &mut String, results: &Results) {
    let _ = writeln!(md, "## 2. Broker: ours vs Mosquitto\n");
    if results.brokers.is_empty() {
        let _ = writeln!(md, "Not run.\n");
        return;
    }
    let _ = writeln!(
        md,
        "Each broker is its own process, without device authentication (ours with \
         `WARMHOUSE_BROKER_DEVICE_AUTH=open`, Mosquitto with `allow_anonymous`). Load: the simulator with {} devices publishing QoS 1 \
         telemetry flat out (`--interval-ms 0`, 1 sample a message, 100 in flight per \
         connection), plus one QoS 1 subscriber (rumqttc, acking) on `/tenants/+/telemetry`; \
         simulator and subscriber run in the bench process.\n",
        results.args.broker_devices
    );
    if let Some(note) = &results.broker_note {
        let _ = writeln!(md, "Note: {note}.\n");
    }
    for (kind, run) in &results.brokers {
        if let Err(err) = run {
            let _ = writeln!(md, "**{} failed:** {}\n", kind.label(), one_line(err));
        }
    }
    let find = |k: BrokerKind| best_run(results, k);
    let (ours, theirs) = (find(BrokerKind::Ours), find(BrokerKind::Mosquitto));
    if ours.is_none() && theirs.is_none() {
        return;
    }
    let _ = writeln!(
        md,
        "Acked msg/s of every round (alternating brokers): ours {}; Mosquitto {}. The table \
         compares the best round of each.\n",
        acked_rounds(results, BrokerKind::Ours),
        acked_rounds(results, BrokerKind::Mosquitto)
    );
    render_comparison(md, ours, theirs);
    let version = |r: Option<&BrokerRun>| r.map_or("?".to_string(), |r| r.version.clone());
    let _ = writeln!(md, "\nVersions: {}; {}.\n", version(ours), version(theirs));
}

/// Acknowledged publishes per second of every round of `kind`, in order.
fn acked_rounds(results: &Results, kind: BrokerKind) -> String {
    results
        .brokers
        .iter()
        .filter(|(k, _)| *k == kind)
        .map(|(_, r)| {
            r.as_ref()
                .map_or_else(|_| "failed".to_string(), |r| thousands(r.acked_per_sec()))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The table of the best round of each broker, side by side.
fn render_comparison(md: &mut String, ours: Option<&BrokerRun>, theirs: Option<&BrokerRun>) {
    let pair = Pair { ours, theirs };
    let _ = writeln!(
        md,
        "| measure | ours | Mosquitto | ours / Mosquitto |\n|---|---|---|---|"
    );
    render_throughput_rows(md, pair);
    render_cost_rows(md, pair);
}

/// The best round of each broker (`None`: it has none).
#[derive(Clone, Copy)]
struct Pair<'a> {
    ours: Option<&'a BrokerRun>,
    theirs: Option<&'a BrokerRun>,
}

impl Pair<'_> {
    /// One measure of both brokers, "failed" for one without a round.
    fn cells(&self, f: &dyn Fn(&BrokerRun) -> String) -> (String, String) {
        let cell = |r: Option<&BrokerRun>| r.map_or_else(|| "failed".to_string(), f);
        (cell(self.ours), cell(self.theirs))
    }

    /// Ours over Mosquitto's, "n/a" unless both have a round.
    fn both(&self, f: &dyn Fn(&BrokerRun) -> f64) -> String {
        match (self.ours, self.theirs) {
            (Some(o), Some(t)) => ratio(f(o), f(t)),
            _ => "n/a".to_string(),
        }
    }
}

/// Messages acknowledged, received by the subscriber, and the share of
/// them delivered.
fn render_throughput_rows(md: &mut String, pair: Pair<'_>) {
    let (o, t) = pair.cells(&|r| thousands(r.acked_per_sec()));
    let _ = writeln!(
        md,
        "| **published and acked, msg/s** | {o} | {t} | **{}** |",
        pair.both(&|r| r.acked_per_sec())
    );
    let (o, t) = pair.cells(&|r| thousands(r.received_per_sec()));
    let _ = writeln!(
        md,
        "| received by the subscriber, msg/s | {o} | {t} | {} |",
        pair.both(&|r| r.received_per_sec())
    );
    let delivered = |r: &BrokerRun| {
        if r.messages_acked > 0 {
            r.received as f64 / r.messages_acked as f64
        } else {
            0.0
        }
    };
    let (o, t) = pair.cells(&|r| {
        format!(
            "{} ({} of {})",
            pct(delivered(r)),
            thousands(r.received as f64),
            thousands(r.messages_acked as f64)
        )
    });
    let _ = writeln!(
        md,
        "| delivered to the subscriber (of acked) | {o} | {t} | |"
    );
}

/// What the throughput cost (CPU of the broker, the bench and the rest) and
/// what went wrong meanwhile.
fn render_cost_rows(md: &mut String, pair: Pair<'_>) {
    let (o, t) = pair.cells(&|r| opt_pct(r.broker_cpu_share));
    let _ = writeln!(
        md,
        "| broker CPU (share of {} cores) | {o} | {t} | |",
        crate::cores()
    );
    let (o, t) = pair.cells(&|r| {
        format!(
            "{} / {}",
            opt_pct(r.bench_cpu_share),
            opt_pct(r.others_cpu_share)
        )
    });
    let _ = writeln!(
        md,
        "| bench process (simulator, subscriber) / other processes | {o} | {t} | |"
    );
    let (o, t) = pair.cells(&|r| {
        r.cpu_ms_per_k()
            .map_or("n/a".into(), |v| format!("{v:.1} ms"))
    });
    let _ = writeln!(
        md,
        "| broker CPU per 1,000 acked messages | {o} | {t} | {} |",
        pair.both(&|r| r.cpu_ms_per_k().unwrap_or(0.0))
    );
    let (o, t) = pair.cells(&|r| {
        format!(
            "{} / {} / {}",
            r.messages_unacked, r.reconnects, r.subscriber_errors
        )
    });
    let _ = writeln!(
        md,
        "| unacked at the end / reconnects / subscriber errors | {o} | {t} | |"
    );
}

/// The round of `kind` with the most acknowledged publishes per second.
pub(super) fn best_run(results: &Results, kind: BrokerKind) -> Option<&BrokerRun> {
    results
        .brokers
        .iter()
        .filter(|(k, _)| *k == kind)
        .filter_map(|(_, r)| r.as_ref().ok())
        .max_by(|a, b| a.acked_per_sec().total_cmp(&b.acked_per_sec()))
}
