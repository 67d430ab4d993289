//! Section 3: the pipeline end to end, the same setup at higher loads, and
//! the summary of one run that those rows and section 6 share.

use std::fmt::Write;

use super::format::{opt_pct, ratio, secs, spread, thousands};
use crate::e2e::{percentile, E2eOptions, E2eResult, Latency};
use crate::influx::CeilingResult;
use crate::one_line;
use crate::Results;

pub(super) fn render(md: &mut String, results: &Results, ceiling: Option<&CeilingResult>) {
    let _ = writeln!(md, "## 3. End to end\n");
    let Some(result) = &results.e2e else {
        let _ = writeln!(md, "Not run.\n");
        return;
    };
    let o = &results.e2e_options;
    let e = match result {
        Ok(e) => e,
        Err(err) => {
            let _ = writeln!(md, "**Failed:** {}\n", one_line(err));
            return;
        }
    };
    let _ = writeln!(
        md,
        "`Stack::start` (tansu in memory, influxd, and in the bench process our broker (its \
         edge bridge acknowledging a publish only once Kafka has it), ingest writer with \
         batches of up to {} points, query API); the simulator with {} devices, a message \
         every {} ms with {} (run id `{}`); a probe device publishing one \
         reading every 100 ms, timing its PUBACK, and polling \
         `/api/v1/devices/{{id}}/telemetry/latest` every 5 ms until that reading shows.\n",
        thousands(e.batch_points as f64),
        e.devices,
        o.interval_ms,
        match o.samples {
            1 => "one sample".to_string(),
            n => format!("{n} samples"),
        },
        e.run_id
    );
    let _ = writeln!(md, "| measure | value | target |\n|---|---|---|");
    render_throughput(md, e, o, ceiling);
    render_delivery(md, e);
    render_latency(md, &e.latency);
    if e.skipped_ticks > 0 || e.reconnects > 0 || e.messages_unacked > 0 {
        let _ = writeln!(
            md,
            "| simulator trouble | {} skipped samples (backlog full), {} reconnects, {} unacked | |",
            e.skipped_ticks, e.reconnects, e.messages_unacked
        );
    }
    let _ = writeln!(md);
    render_more(md, results, ceiling);
    super::cpu::render(md, e);
}

/// Rows from what was offered to what was stored, and how long the rest took.
fn render_throughput(
    md: &mut String,
    e: &E2eResult,
    o: &E2eOptions,
    ceiling: Option<&CeilingResult>,
) {
    // DESIGN.md's 50,000 readings/s assumes 8 readings a message.
    let readings_target = if o.samples > 1 { ">= 50,000" } else { "" };
    let _ = writeln!(
        md,
        "| offered, readings/s | {} | |",
        e.offered_per_sec
            .map_or_else(|| "as fast as possible".to_string(), thousands)
    );
    let _ = writeln!(
        md,
        "| acked by the broker, readings/s | {} ({} readings in {} messages, {}) | |",
        thousands(e.acked_per_sec()),
        thousands(e.readings_acked as f64),
        thousands(e.messages_acked as f64),
        secs(e.sim_elapsed)
    );
    let _ = writeln!(
        md,
        "| acked by the broker, messages/s | {} | |",
        thousands(crate::per_sec(e.messages_acked, e.sim_elapsed))
    );
    let _ = writeln!(
        md,
        "| **stored in InfluxDB during the load, readings/s** | **{}** | {readings_target} |",
        thousands(e.stored_per_sec())
    );
    for (label, rates) in [
        ("accepted by the brokers' edge bridge", &e.bridged_rates),
        ("stored", &e.stored_rates),
    ] {
        if let Some((min, median, max)) = spread(rates) {
            let _ = writeln!(
                md,
                "| {label} per second (min / median / max, after 2 s) | {} / {} / {} | |",
                thousands(min),
                thousands(median),
                thousands(max)
            );
        }
    }
    if e.batches.count > 0 {
        let _ = writeln!(
            md,
            "| ingest writer's InfluxDB writes | {} batches of {} points on average, {:.0} ms mean, p99 <= {} | |",
            e.batches.count,
            thousands(e.stored_during_load as f64 / e.batches.count as f64),
            e.batches.mean_secs * 1000.0,
            e.batches
                .p99_bucket_secs
                .map_or_else(|| "n/a".to_string(), |s| format!("{:.0} ms", s * 1000.0))
        );
    }
    let _ = writeln!(
        md,
        "| **stored / raw InfluxDB ceiling** | **{}** | |",
        ceiling.map_or_else(
            || "n/a (no ceiling)".to_string(),
            |c| format!(
                "{} ({} / {})",
                ratio(e.stored_per_sec(), c.points_per_sec()),
                thousands(e.stored_per_sec()),
                thousands(c.points_per_sec())
            )
        )
    );
    let _ = writeln!(
        md,
        "| drain after the load stopped | {} | |",
        e.drain
            .map_or_else(|| "not drained within 120 s".to_string(), secs)
    );
}

/// Whether every acknowledged reading was stored exactly once, and how
/// fast the first readings went through the cold pipeline.
fn render_delivery(md: &mut String, e: &E2eResult) {
    let check = match (&e.verification, e.tally()) {
        (Ok(v), Some(t)) => {
            let verdict = format!(
                "**{} lost, {} not yet stored when the bench stopped waiting, {} duplicated, {} seq gaps**",
                t.lost()
                    .map_or_else(|| "unknown (not drained)".to_string(), |n| n.to_string()),
                t.not_stored,
                t.duplicates,
                t.gaps
            );
            let extra = if t.stored > t.acked {
                format!(
                    "; {} more stored than acked ({} messages unacked at shutdown)",
                    t.stored - t.acked,
                    e.messages_unacked
                )
            } else {
                String::new()
            };
            format!(
                "{verdict}: {} stored of {} acked, {} devices{}{extra}",
                thousands(v.stored as f64),
                thousands(e.readings_acked as f64),
                v.devices_with_data,
                if t.exactly_once() {
                    ", seqs distinct and gap-free per series"
                } else {
                    ""
                }
            )
        }
        (Err(err), _) => format!("check failed: {}", one_line(err)),
        (Ok(_), None) => "check failed".to_string(),
    };
    let _ = writeln!(
        md,
        "| lost / not yet stored / duplicated / seq gaps | {check} | 0 / 0 / 0 / 0 |"
    );
    let _ = writeln!(
        md,
        "| cold start: first reading through the just-started pipeline / the next one (before the load) | {} | |",
        match &e.warm_up {
            Ok(w) => format!(
                "{:.0} ms / {:.0} ms",
                w.first.as_secs_f64() * 1000.0,
                w.second.as_secs_f64() * 1000.0
            ),
            Err(err) => format!("failed: {}", one_line(err)),
        }
    );
}

/// The probe's readings: publish to PUBACK, publish to queryable.
fn render_latency(md: &mut String, l: &Latency) {
    let pa = |q: f64| {
        percentile(&l.puback_ms, q).map_or_else(|| "n/a".to_string(), |v| format!("{v:.1}"))
    };
    let _ = writeln!(
        md,
        "| **publish to PUBACK, ms (p50 / p90 / p99 / max)**: the reading is in Kafka | **{} / {} / {} / {}** ({} readings) | |",
        pa(50.0),
        pa(90.0),
        pa(99.0),
        pa(100.0),
        l.puback_ms.len()
    );
    for (label, values) in [
        (
            "**publish to queryable, ms (p50 / p90 / p99 / max)**",
            l.after(0.0),
        ),
        (
            "publish to queryable after the first 3 s (start-up excluded)",
            l.after(3.0),
        ),
    ] {
        let p = |q: f64| {
            percentile(&values, q).map_or_else(|| "n/a".to_string(), |v| format!("{v:.0}"))
        };
        let bold = if label.starts_with("**") { "**" } else { "" };
        let _ = writeln!(
            md,
            "| {label} | {bold}{} / {} / {} / {}{bold} ({} readings) | p99 < 1,000 |",
            p(50.0),
            p(90.0),
            p(99.0),
            p(100.0),
            values.len()
        );
    }
    let _ = writeln!(
        md,
        "| probe readings | {} sent, {} acked, {} seen, {} not seen within 60 s{} | |",
        l.sent,
        l.acked,
        l.samples.len(),
        l.not_seen,
        if l.poll_errors > 0 {
            format!(
                ", {} poll errors (first: {})",
                l.poll_errors,
                l.first_error.as_deref().unwrap_or("").replace('|', "/")
            )
        } else {
            l.first_error
                .as_ref()
                .map(|e| format!(" ({})", e.replace('|', "/")))
                .unwrap_or_default()
        }
    );
}

/// One row per higher load of phase 3.
fn render_more(md: &mut String, results: &Results, ceiling: Option<&CeilingResult>) {
    if results.e2e_more.is_empty() {
        return;
    }
    let _ = writeln!(
        md,
        "The same setup at higher loads, with several broker replicas, and with batched \
         messages (a fresh stack each):\n\n\
         | devices | samples a message | broker replicas | messages/s offered | PUBACK p50 / p99, ms | {SUMMARY_COLUMNS} |\n\
         |---|---|---|---|---|---|---|---|---|---|---|"
    );
    for (options, result) in &results.e2e_more {
        let puback = result.as_ref().map_or_else(
            |_| String::new(),
            |e| {
                let p = |q: f64| {
                    percentile(&e.latency.puback_ms, q)
                        .map_or_else(|| "n/a".to_string(), |v| format!("{v:.1}"))
                };
                format!("{} / {}", p(50.0), p(99.0))
            },
        );
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {puback} | {} |",
            options.devices,
            options.samples,
            options.broker_replicas,
            if options.interval_ms > 0 {
                thousands(options.devices as f64 * 1000.0 / options.interval_ms as f64)
            } else {
                "max".to_string()
            },
            summary_cells(options, result, ceiling)
        );
    }
    let _ = writeln!(md);
}

pub(super) const SUMMARY_COLUMNS: &str =
    "offered/s | stored/s | stored / ceiling | lost / not yet stored / duplicated / seq gaps | \
                               latency p50 / p99 (after 3 s), ms | machine busy";

/// One phase 3 run in the six [`SUMMARY_COLUMNS`].
pub(super) fn summary_cells(
    options: &E2eOptions,
    result: &anyhow::Result<E2eResult>,
    ceiling: Option<&CeilingResult>,
) -> String {
    let e = match result {
        Ok(e) => e,
        Err(err) => {
            return format!(
                "{} | failed: {} | | | |",
                options
                    .offered_per_sec()
                    .map_or_else(|| "max".to_string(), thousands),
                one_line(err)
            )
        }
    };
    let check = match e.tally() {
        Some(t) => format!(
            "{} / {} / {} / {}",
            t.lost().map_or_else(|| "?".to_string(), |n| n.to_string()),
            t.not_stored,
            t.duplicates,
            t.gaps
        ),
        None => "check failed".to_string(),
    };
    let steady = e.latency.after(3.0);
    let p =
        |q: f64| percentile(&steady, q).map_or_else(|| "n/a".to_string(), |v| format!("{v:.0}"));
    format!(
        "{} | {} | {} | {check} | {} / {} | {}",
        e.offered_per_sec
            .map_or_else(|| "max".to_string(), thousands),
        thousands(e.stored_per_sec()),
        ceiling.map_or_else(
            || "n/a".to_string(),
            |c| ratio(e.stored_per_sec(), c.points_per_sec())
        ),
        p(50.0),
        p(99.0),
        opt_pct(e.cpu.machine_busy.map(|b| e.cpu.share(b)))
    )
}
