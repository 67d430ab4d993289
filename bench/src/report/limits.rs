//! The closing section: what the measurements say limits us.

use std::fmt::Write;

use super::brokers::best_run;
use super::format::{opt_pct, pct, ratio, thousands};
use crate::brokers::{BrokerKind, BrokerRun};
use crate::e2e::{percentile, E2eOptions, E2eResult};
use crate::influx::CeilingResult;
use crate::Results;

pub(super) fn render(md: &mut String, results: &Results, ceiling: Option<&CeilingResult>) {
    let _ = writeln!(md, "## What limits us\n");
    let mut text = Vec::new();
    let mut later = Vec::new();
    if let Some(Ok(e)) = &results.e2e {
        let mut sentences = e2e_limits(e, ceiling).into_iter();
        text.extend(sentences.next());
        later.extend(sentences);
    }
    for (options, more) in &results.e2e_more {
        let Ok(m) = more else { continue };
        text.push(higher_load_sentence(options, m, ceiling));
    }
    text.append(&mut later);
    let find = |k: BrokerKind| best_run(results, k);
    if let (Some(o), Some(t)) = (find(BrokerKind::Ours), find(BrokerKind::Mosquitto)) {
        text.push(broker_limits(o, t));
    }
    if text.is_empty() {
        text.push("No phase produced enough figures to say.".to_string());
    }
    let _ = writeln!(md, "{}", text.join(" "));
}

/// One sentence on phase 3 at a higher load: what it stored, at what cost
/// and latency.
fn higher_load_sentence(
    options: &E2eOptions,
    m: &E2eResult,
    ceiling: Option<&CeilingResult>,
) -> String {
    let lost = m
        .tally()
        .map(|t| {
            if t.exactly_once() {
                0
            } else {
                t.not_stored + t.duplicates + t.gaps
            }
        })
        .ok_or(());
    let steady = m.latency.after(3.0);
    let p50 = percentile(&steady, 50.0);
    let backlog = p50.is_some_and(|p| p > 300.0);
    format!(
        "With {} devices ({} a message, {} broker replica{}; {} readings/s offered) the \
         pipeline stored {} readings/s{} with the machine {} busy, {}, latency p50 {} / \
         p99 {} after the first 3 s{}.",
        m.devices,
        match options.samples {
            1 => "one sample".to_string(),
            n => format!("{n} samples"),
        },
        options.broker_replicas,
        if options.broker_replicas == 1 {
            ""
        } else {
            "s"
        },
        m.offered_per_sec
            .map_or_else(|| "as many as possible".to_string(), thousands),
        thousands(m.stored_per_sec()),
        ceiling.map_or_else(String::new, |c| format!(
            " ({} of the InfluxDB ceiling)",
            ratio(m.stored_per_sec(), c.points_per_sec())
        )),
        opt_pct(m.cpu.machine_busy.map(|b| m.cpu.share(b))),
        match lost {
            Ok(0) => "nothing lost or duplicated".to_string(),
            Ok(n) => format!("{n} readings lost, duplicated or missing"),
            Err(_) => "the exactly-once check failed".to_string(),
        },
        p50.map_or_else(|| "n/a".to_string(), |v| format!("{v:.0} ms")),
        percentile(&steady, 99.0).map_or_else(|| "n/a".to_string(), |v| format!("{v:.0} ms")),
        if backlog {
            ": readings queue up somewhere in the pipeline, so this load is close to what \
             it can carry here"
        } else {
            ""
        }
    )
}

/// Sentences on what the end-to-end run says limits us.
fn e2e_limits(e: &E2eResult, ceiling: Option<&CeilingResult>) -> Vec<String> {
    let mut text = vec![throughput_sentence(e)];
    text.extend(cpu_cost_sentence(e, ceiling));
    text.extend(latency_sentence(e));
    text
}

/// What the pipeline stored against what was offered, and how busy the
/// machine was meanwhile.
fn throughput_sentence(e: &E2eResult) -> String {
    let u = &e.cpu;
    let stored = e.stored_per_sec();
    let kept_up = e.offered_per_sec.is_some_and(|o| stored >= 0.97 * o);
    let part = |name: &str| u.process(name).map_or(0.0, |s| u.share(s));
    let mut s = match e.offered_per_sec {
        Some(offered) if kept_up => format!(
            "End to end the pipeline kept up with the offered {} readings/s (stored {}/s)",
            thousands(offered),
            thousands(stored)
        ),
        Some(offered) => format!(
            "End to end the pipeline stored {} readings/s of the {} offered",
            thousands(stored),
            thousands(offered)
        ),
        None => format!(
            "End to end, publishing as fast as possible, the pipeline stored {} readings/s",
            thousands(stored)
        ),
    };
    let busy = u.machine_busy.map(|b| u.share(b));
    if let Some(busy) = busy {
        let _ = write!(
            s,
            " with the machine {} busy (bench process {}, influxd {}, tansu {}, other processes {})",
            pct(busy),
            pct(part("bench")),
            pct(part("influxd")),
            pct(part("tansu")),
            opt_pct(u.others_share())
        );
        let others = u.others_share().unwrap_or(0.0);
        if busy >= 0.9 && others > 0.2 {
            s.push_str(
                ": the machine was saturated, largely by other processes, so this run \
                 understates what the pipeline can do",
            );
        } else if busy >= 0.9 {
            s.push_str(": the CPU was saturated, the machine itself is the limit");
        } else if kept_up {
            s.push_str(": at this load the offered load is the limit, not capacity");
        }
    }
    s.push('.');
    s
}

/// CPU per stored reading, without the load generator when perf can tell.
fn cpu_cost_sentence(e: &E2eResult, ceiling: Option<&CeilingResult>) -> Option<String> {
    let u = &e.cpu;
    let stored_n = e.stored_during_load.max(1) as f64;
    let bench = u.process("bench").unwrap_or(0.0);
    let profile = e.perf.as_ref().and_then(|p| p.as_ref().ok());
    let generator = profile.map_or(0.0, |p| {
        p.components
            .iter()
            .filter(|(n, _)| n.starts_with("simulator") || n.starts_with("bench probe"))
            .map(|(_, share)| share)
            .sum()
    });
    let services = bench * (1.0 - generator) / stored_n * 1e6;
    let influxd = u.process("influxd").unwrap_or(0.0) / stored_n * 1e6;
    let tansu = u.process("tansu").unwrap_or(0.0) / stored_n * 1e6;
    let total = services + influxd + tansu;
    if total <= 0.0 {
        return None;
    }
    let mut s = format!(
        "Per stored reading the pipeline spent {total:.1} µs of CPU: our in-process services \
         {services:.1} µs{}, influxd {influxd:.1} µs",
        if profile.is_some() {
            format!(
                " (the simulator and probe, {} of the bench process, left out)",
                pct(generator)
            )
        } else {
            " (simulator included: perf was not available to split it)".to_string()
        }
    );
    if let Some(c) = ceiling {
        if let Some(share) = c.influxd_cpu_share {
            let at_ceiling =
                share * c.elapsed.as_secs_f64() * u.cores as f64 / c.points as f64 * 1e6;
            let _ = write!(s, " ({at_ceiling:.1} µs at its ceiling in phase 1)");
        }
    }
    let _ = write!(
        s,
        ", tansu {tansu:.1} µs. Were that cost linear, {} cores would carry about {} \
         readings/s",
        u.cores,
        thousands(1e6 * u.cores as f64 / total)
    );
    if services > influxd + tansu {
        s.push_str(
            "; our services are the largest part, so they, more than InfluxDB, set the \
             ceiling of this machine",
        );
    }
    if let Some(p) = profile {
        let top: Vec<String> = p
            .components
            .iter()
            .filter(|(n, _)| !n.starts_with("simulator") && !n.starts_with("bench probe"))
            .take(3)
            .map(|(n, share)| format!("{n} {}", pct(*share)))
            .collect();
        let _ = write!(
            s,
            " (largest parts of the bench process: {})",
            top.join(", ")
        );
    }
    s.push('.');
    Some(s)
}

/// Publish to queryable over the load, and what the median is made of.
fn latency_sentence(e: &E2eResult) -> Option<String> {
    let all = e.latency.after(0.0);
    let steady = e.latency.after(3.0);
    let (Some(p50), Some(p99), Some(steady_p99)) = (
        percentile(&all, 50.0),
        percentile(&all, 99.0),
        percentile(&steady, 99.0),
    ) else {
        return None;
    };
    let mut s = format!(
        "Publish to queryable: p50 {p50:.0} ms, p99 {p99:.0} ms over the whole load, p99 \
         {steady_p99:.0} ms after the first 3 s"
    );
    let slow: Vec<&(f64, f64)> = e
        .latency
        .samples
        .iter()
        .filter(|(_, ms)| *ms > 2.0 * p50.max(100.0))
        .collect();
    if let Some(last) = slow.iter().map(|(at, _)| *at).reduce(f64::max) {
        if last <= 3.0 {
            let visible = slow
                .iter()
                .map(|(at, ms)| at + ms / 1000.0)
                .fold(0.0, f64::max);
            let _ = write!(
                s,
                "; the {} slow readings were all published in the first {last:.1} s and \
                 became queryable by {visible:.1} s: a start-up transient while {} devices \
                 connect at once",
                slow.len(),
                e.devices
            );
        }
    }
    let _ = write!(
        s,
        ". The median is mostly batching: the ingest writer flushes every {} ms (or {} \
         points), plus the broker's Kafka linger for telemetry (20 ms), the consumer's \
         fetch wait and the InfluxDB write ({:.0} ms mean).",
        e.batch_delay.as_millis(),
        thousands(e.batch_points as f64),
        e.batches.mean_secs * 1000.0
    );
    Some(s)
}

/// Sentences on the broker comparison.
fn broker_limits(o: &BrokerRun, t: &BrokerRun) -> String {
    let mut s = format!(
        "Broker: ours acknowledged {} times Mosquitto's publishes per second ({} vs {} msg/s)",
        ratio(o.acked_per_sec(), t.acked_per_sec()),
        thousands(o.acked_per_sec()),
        thousands(t.acked_per_sec())
    );
    if let (Some(a), Some(b)) = (o.cpu_ms_per_k(), t.cpu_ms_per_k()) {
        let _ = write!(s, " at {} times its CPU per message", ratio(a, b));
    }
    let full = |r: &BrokerRun| {
        r.broker_cpu_share.unwrap_or(0.0)
            + r.bench_cpu_share.unwrap_or(0.0)
            + r.others_cpu_share.unwrap_or(0.0)
            >= 0.9
    };
    if t.broker_cpu_share.is_some_and(|c| c >= 0.4) {
        let _ = write!(
            s,
            "; Mosquitto, single-threaded, was using a whole core ({} of 2)",
            opt_pct(t.broker_cpu_share)
        );
    }
    if full(o) {
        let _ = write!(
            s,
            ", while with ours the machine was full and the load generator (simulator and \
             subscriber, {}) needed more CPU than the broker ({}): our broker was not the limit",
            opt_pct(o.bench_cpu_share),
            opt_pct(o.broker_cpu_share)
        );
    }
    s.push('.');
    let delivered = |r: &BrokerRun| r.received as f64 / r.messages_acked.max(1) as f64;
    if delivered(o) < 0.95 || delivered(t) < 0.95 {
        let _ = write!(
            s,
            " To the single QoS 1 subscriber ours passed on {} of the acknowledged messages \
             ({}/s) and Mosquitto {} ({}/s{}).",
            pct(delivered(o)),
            thousands(o.received_per_sec()),
            pct(delivered(t)),
            thousands(t.received_per_sec()),
            if delivered(t) < 0.95 {
                ", dropping what exceeded its queue of 100,000 for the subscriber"
            } else {
                ""
            }
        );
        if delivered(o) < 0.95 {
            s.push_str(
                " rumqttd 0.20 keeps at most 100 unacknowledged QoS 1 messages towards a \
                 subscriber, so one subscriber is bound by round trips, and one that falls \
                 more than the filter's in-memory log (256 MiB by default) behind skips ahead (the \
                 `cursor_jump` alert). The platform no longer depends on it: the edge \
                 bridge takes devices' publishes inside the broker, before the PUBACK, not \
                 as a subscriber (docs/adr/0019-puback-when-safe.md).",
            );
        }
    }
    s
}
