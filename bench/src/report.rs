//! The Markdown report: machine, command, one table a phase, and what the
//! measurements say limits us.

use std::fmt::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::brokers::{BrokerKind, BrokerRun};
use super::e2e::{percentile, E2eOptions, E2eResult};
use super::influx::CeilingResult;
use super::Results;

pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub ram_gib: Option<f64>,
    pub kernel: String,
    pub commit: String,
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".to_string());
        let ram_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find(|l| l.starts_with("MemTotal:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .map(|kb| kb / 1024.0 / 1024.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_string())
            .unwrap_or_else(|_| "unknown".to_string());
        Self {
            cpu,
            cores: super::cores(),
            ram_gib,
            kernel,
            commit: git_commit(),
        }
    }
}

fn git_commit() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let run = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .stderr(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    match run(&["rev-parse", "--short", "HEAD"]) {
        Some(hash) => {
            let dirty = run(&["status", "--porcelain", "--untracked-files=no"])
                .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{hash} + uncommitted changes")
            } else {
                hash
            }
        }
        None => "unknown".to_string(),
    }
}

/// Current UTC time as `YYYY-MM-DD HH:MM UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// 12345.6 -> "12,346".
fn thousands(value: f64) -> String {
    let n = value.round() as i64;
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

fn pct(share: f64) -> String {
    format!("{:.0} %", share * 100.0)
}

fn opt_pct(share: Option<f64>) -> String {
    share.map_or_else(|| "n/a".to_string(), pct)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}", a / b)
    } else {
        "n/a".to_string()
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Sentences on what the end-to-end run says limits us.
fn e2e_limits(e: &E2eResult, ceiling: Option<&CeilingResult>) -> Vec<String> {
    let mut text = Vec::new();
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
    text.push(s);

    // CPU per stored reading, without the load generator when perf can tell.
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
    if total > 0.0 {
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
        text.push(s);
    }

    let all = e.latency.after(0.0);
    let steady = e.latency.after(3.0);
    if let (Some(p50), Some(p99), Some(steady_p99)) = (
        percentile(&all, 50.0),
        percentile(&all, 99.0),
        percentile(&steady, 99.0),
    ) {
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
        text.push(s);
    }
    text
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

/// The round of `kind` with the most acknowledged publishes per second.
fn best_run(results: &Results, kind: BrokerKind) -> Option<&BrokerRun> {
    results
        .brokers
        .iter()
        .filter(|(k, _)| *k == kind)
        .filter_map(|(_, r)| r.as_ref().ok())
        .max_by(|a, b| a.acked_per_sec().total_cmp(&b.acked_per_sec()))
}

/// (min, median, max) of per-second rates.
pub fn spread(rates: &[f64]) -> Option<(f64, f64, f64)> {
    let mut sorted = rates.to_vec();
    sorted.sort_by(f64::total_cmp);
    Some((*sorted.first()?, sorted[sorted.len() / 2], *sorted.last()?))
}

/// An error on one line, without terminal colours, cut to a readable length.
pub(crate) fn one_line(err: &anyhow::Error) -> String {
    let mut text = String::new();
    let mut escape = false;
    for c in format!("{err:#}").chars() {
        match c {
            '\u{1b}' => escape = true,
            c if escape => escape = !c.is_ascii_alphabetic(),
            '\n' => text.push(' '),
            '|' => text.push('/'),
            c => text.push(c),
        }
    }
    if text.chars().count() > 600 {
        text = text.chars().take(600).collect::<String>() + " …";
    }
    text
}

pub fn render(results: &Results) -> String {
    let mut md = String::new();
    let m = &results.machine;
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Produced by `warmhouse-bench` (bench/). The machine is \
         shared with other builds and tests, so every figure is set against a peer measured \
         in the same run: the raw InfluxDB ceiling, Mosquitto.\n"
    );
    let _ = writeln!(md, "| machine | |\n|---|---|");
    let _ = writeln!(md, "| CPU | {} x {} |", m.cores, m.cpu);
    let _ = writeln!(
        md,
        "| RAM | {} |",
        m.ram_gib
            .map_or_else(|| "unknown".to_string(), |g| format!("{g:.1} GiB"))
    );
    let _ = writeln!(md, "| kernel | Linux {} |", m.kernel);
    let _ = writeln!(md, "| date | {} |", results.started_utc);
    let _ = writeln!(md, "| commit | {} |", m.commit);
    let _ = writeln!(
        md,
        "| phase length | {} (whole run {}) |\n",
        secs(results.duration),
        secs(results.total)
    );
    let _ = writeln!(md, "```sh\n{}\n```\n", results.command);

    let ceiling = results.ceiling.as_ref().and_then(|c| c.as_ref().ok());
    render_ceiling(&mut md, results);
    render_brokers(&mut md, results);
    render_e2e(&mut md, results, ceiling);
    render_commands(&mut md, results);
    render_kafka(&mut md, results, ceiling);
    if let Some(fleet) = &results.fleet {
        fleet.render(&mut md, &run_line(results));
    }
    render_limits(&mut md, results, ceiling);
    md
}

const COMMANDS_HEADING: &str = "## 5. Command round trip";

const KAFKA_HEADING: &str = "## 6. Kafka: memory, SQLite, a three-broker cluster";

/// `existing` with the sections of the phases that ran (commands, Kafka)
/// replaced by this run's, or added before "What limits us"; the other
/// sections keep their figures.
pub fn splice_sections(existing: &str, results: &Results) -> String {
    let mut text = existing.to_string();
    if results.commands.is_some() {
        let mut section = String::new();
        render_commands(&mut section, results);
        text = splice_section(&text, COMMANDS_HEADING, &section);
    }
    if let Some(fleet) = &results.fleet {
        let mut section = String::new();
        fleet.render(&mut section, &run_line(results));
        text = splice_section(&text, super::fleet::HEADING, &section);
    }
    if !results.kafka.is_empty() {
        let ceiling = results.ceiling.as_ref().and_then(|c| c.as_ref().ok());
        let mut section = String::new();
        render_kafka(&mut section, results, ceiling);
        text = splice_section(&text, KAFKA_HEADING, &section);
    }
    text
}

fn splice_section(existing: &str, heading: &str, section: &str) -> String {
    let (before, after) = match existing.find(heading) {
        Some(start) => {
            let rest = &existing[start + heading.len()..];
            let end = rest
                .find("\n## ")
                .map_or(existing.len(), |i| start + heading.len() + i + 1);
            (&existing[..start], &existing[end..])
        }
        None => match existing.find("## What limits us") {
            Some(at) => (&existing[..at], &existing[at..]),
            None => (existing, ""),
        },
    };
    format!("{before}{section}{after}")
}

fn render_commands(md: &mut String, results: &Results) {
    let Some((options, result)) = &results.commands else {
        return;
    };
    let _ = writeln!(md, "{COMMANDS_HEADING}\n");
    let _ = writeln!(
        md,
        "REST in, device ack visible through REST: `POST /api/v1/devices/{{id}}/commands`, then \
         `GET` of the command every 2 ms until it is `acked`. The path is registry → outbox → \
         tansu → the broker replica holding the thermostat's connection (its edge bridge) \
         → simulated thermostat → ack → the broker's edge bridge → tansu → registry. \
         Meanwhile {} homes of 4 simulated devices publish telemetry every {} ms (the \
         load). Target (DESIGN.md): p99 under 50 ms. What the time is spent on: two trips \
         through Kafka, each with a consumer fetch wait of up to 1 ms and, on the way back, \
         the 1 ms linger of the producer of device events (telemetry has its own, 20 ms). \
         Every MQTT socket has TCP_NODELAY: with Nagle's algorithm on (rumqttd's and \
         rumqttc's default) the same run measured p50 71 ms, p99 88 ms.\n",
        options.homes, options.interval_ms
    );
    render_run(md, results);
    match result {
        Err(err) => {
            let _ = writeln!(md, "Failed: {}\n", one_line(err));
        }
        Ok(r) => {
            let ms = |q: f64| {
                r.p(q)
                    .map_or_else(|| "-".to_string(), |v| format!("{v:.1} ms"))
            };
            let _ = writeln!(md, "| | |\n|---|---|");
            let _ = writeln!(
                md,
                "| commands sent | {} ({}/s for {}) |",
                r.sent,
                options.rate,
                secs(options.duration)
            );
            let _ = writeln!(
                md,
                "| warm-up (not counted) | first command to each thermostat, all at once: {} |",
                secs(r.warm_up)
            );
            let _ = writeln!(md, "| acked | {} |", r.acked);
            let _ = writeln!(md, "| not acked | {} |", r.not_acked);
            let _ = writeln!(md, "| p50 | {} |", ms(50.0));
            let _ = writeln!(md, "| p90 | {} |", ms(90.0));
            let _ = writeln!(md, "| p99 | {} |", ms(99.0));
            let _ = writeln!(md, "| max | {} |", ms(100.0));
            let median = |v: &[f64]| {
                percentile(v, 50.0).map_or_else(|| "-".to_string(), |x| format!("{x:.1} ms"))
            };
            let _ = writeln!(
                md,
                "| median stages (registry clock) | stored → on Kafka {}, → handed to the device {}, → ack applied {} |",
                median(&r.to_sent_ms),
                median(&r.to_delivered_ms),
                median(&r.to_acked_ms)
            );
            let _ = writeln!(
                md,
                "| telemetry meanwhile | {} readings/s from {} devices |\n",
                thousands(r.readings_per_sec),
                r.devices
            );
            if let Some(problem) = &r.first_problem {
                let _ = writeln!(md, "First problem: {problem}\n");
            }
        }
    }
}

fn render_ceiling(md: &mut String, results: &Results) {
    let _ = writeln!(md, "## 1. Raw InfluxDB write ceiling\n");
    let Some(result) = &results.ceiling else {
        let _ = writeln!(md, "Not run.\n");
        return;
    };
    let c = match result {
        Ok(c) => c,
        Err(err) => {
            let _ = writeln!(md, "**Failed:** {}\n", one_line(err));
            return;
        }
    };
    let _ = writeln!(
        md,
        "A fresh influxd 1.x with the production schema; {} writers post gzipped batches of \
         {} points shaped like ingest-writer's ({} series: 1,000 devices, measurement per \
         metric, 3 tags, fields seq and value, unique ns timestamps), built before the clock \
         starts.\n",
        c.writers,
        thousands(c.batch_points as f64),
        thousands(c.series as f64)
    );
    let _ = writeln!(md, "| measure | value |\n|---|---|");
    let _ = writeln!(
        md,
        "| **points/s** | **{}** |",
        thousands(c.points_per_sec())
    );
    let _ = writeln!(
        md,
        "| written | {} points in {} batches, {} ({:.1} gzip bytes a point) |",
        thousands(c.points as f64),
        c.batches,
        secs(c.elapsed),
        c.gzip_bytes_per_point
    );
    let _ = writeln!(
        md,
        "| CPU (share of {} cores) | influxd {}, bench process {}, other processes {} |",
        super::cores(),
        opt_pct(c.influxd_cpu_share),
        opt_pct(c.bench_cpu_share),
        opt_pct(c.others_cpu_share)
    );
    let _ = writeln!(
        md,
        "| failed batches | {}{} |",
        c.failed_batches,
        c.first_failure
            .as_ref()
            .map(|f| format!(" (first: {})", f.replace('|', "/")))
            .unwrap_or_default()
    );
    if c.built_inline > 0 {
        let _ = writeln!(
            md,
            "| batches built during the run | {} (the pre-built pool ran out) |",
            c.built_inline
        );
    }
    let _ = writeln!(md);
}

fn render_brokers(md: &mut String, results: &Results) {
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
    let rounds = |k: BrokerKind| {
        results
            .brokers
            .iter()
            .filter(|(kind, _)| *kind == k)
            .map(|(_, r)| {
                r.as_ref()
                    .map_or_else(|_| "failed".to_string(), |r| thousands(r.acked_per_sec()))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(
        md,
        "Acked msg/s of every round (alternating brokers): ours {}; Mosquitto {}. The table \
         compares the best round of each.\n",
        rounds(BrokerKind::Ours),
        rounds(BrokerKind::Mosquitto)
    );
    let cell = |r: Option<&BrokerRun>, f: &dyn Fn(&BrokerRun) -> String| {
        r.map_or_else(|| "failed".to_string(), f)
    };
    let both = |f: &dyn Fn(&BrokerRun) -> f64| match (ours, theirs) {
        (Some(o), Some(t)) => ratio(f(o), f(t)),
        _ => "n/a".to_string(),
    };
    let _ = writeln!(
        md,
        "| measure | ours | Mosquitto | ours / Mosquitto |\n|---|---|---|---|"
    );
    let _ = writeln!(
        md,
        "| **published and acked, msg/s** | {} | {} | **{}** |",
        cell(ours, &|r| thousands(r.acked_per_sec())),
        cell(theirs, &|r| thousands(r.acked_per_sec())),
        both(&|r| r.acked_per_sec())
    );
    let _ = writeln!(
        md,
        "| received by the subscriber, msg/s | {} | {} | {} |",
        cell(ours, &|r| thousands(r.received_per_sec())),
        cell(theirs, &|r| thousands(r.received_per_sec())),
        both(&|r| r.received_per_sec())
    );
    let delivered = |r: &BrokerRun| {
        if r.messages_acked > 0 {
            r.received as f64 / r.messages_acked as f64
        } else {
            0.0
        }
    };
    let _ = writeln!(
        md,
        "| delivered to the subscriber (of acked) | {} | {} | |",
        cell(ours, &|r| format!(
            "{} ({} of {})",
            pct(delivered(r)),
            thousands(r.received as f64),
            thousands(r.messages_acked as f64)
        )),
        cell(theirs, &|r| format!(
            "{} ({} of {})",
            pct(delivered(r)),
            thousands(r.received as f64),
            thousands(r.messages_acked as f64)
        )),
    );
    let _ = writeln!(
        md,
        "| broker CPU (share of {} cores) | {} | {} | |",
        super::cores(),
        cell(ours, &|r| opt_pct(r.broker_cpu_share)),
        cell(theirs, &|r| opt_pct(r.broker_cpu_share)),
    );
    let _ = writeln!(
        md,
        "| bench process (simulator, subscriber) / other processes | {} | {} | |",
        cell(ours, &|r| format!(
            "{} / {}",
            opt_pct(r.bench_cpu_share),
            opt_pct(r.others_cpu_share)
        )),
        cell(theirs, &|r| format!(
            "{} / {}",
            opt_pct(r.bench_cpu_share),
            opt_pct(r.others_cpu_share)
        )),
    );
    let _ = writeln!(
        md,
        "| broker CPU per 1,000 acked messages | {} | {} | {} |",
        cell(ours, &|r| r
            .cpu_ms_per_k()
            .map_or("n/a".into(), |v| format!("{v:.1} ms"))),
        cell(theirs, &|r| r
            .cpu_ms_per_k()
            .map_or("n/a".into(), |v| format!("{v:.1} ms"))),
        both(&|r| r.cpu_ms_per_k().unwrap_or(0.0))
    );
    let _ = writeln!(
        md,
        "| unacked at the end / reconnects / subscriber errors | {} | {} | |",
        cell(ours, &|r| format!(
            "{} / {} / {}",
            r.messages_unacked, r.reconnects, r.subscriber_errors
        )),
        cell(theirs, &|r| format!(
            "{} / {} / {}",
            r.messages_unacked, r.reconnects, r.subscriber_errors
        )),
    );
    let version = |r: Option<&BrokerRun>| r.map_or("?".to_string(), |r| r.version.clone());
    let _ = writeln!(md, "\nVersions: {}; {}.\n", version(ours), version(theirs));
}

fn render_e2e(md: &mut String, results: &Results, ceiling: Option<&CeilingResult>) {
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
    // DESIGN.md's 50,000 readings/s assumes 8 readings a message.
    let readings_target = if o.samples > 1 { ">= 50,000" } else { "" };
    let _ = writeln!(md, "| measure | value | target |\n|---|---|---|");
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
        thousands(super::per_sec(e.messages_acked, e.sim_elapsed))
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
    let l = &e.latency;
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
    if e.skipped_ticks > 0 || e.reconnects > 0 || e.messages_unacked > 0 {
        let _ = writeln!(
            md,
            "| simulator trouble | {} skipped samples (backlog full), {} reconnects, {} unacked | |",
            e.skipped_ticks, e.reconnects, e.messages_unacked
        );
    }
    let _ = writeln!(md);
    render_more(md, results, ceiling);
    render_cpu(md, e);
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

/// When, where and how a section that can be re-run alone was measured.
fn render_run(md: &mut String, results: &Results) {
    let _ = writeln!(md, "{}", run_line(results));
}

/// When, where and how a section's figures were measured.
fn run_line(results: &Results) -> String {
    format!(
        "Run {}, commit {}, {} x {}:\n\n```sh\n{}\n```\n",
        results.started_utc,
        results.machine.commit,
        results.machine.cores,
        results.machine.cpu,
        results.command
    )
}

fn render_kafka(md: &mut String, results: &Results, ceiling: Option<&CeilingResult>) {
    if results.kafka.is_empty() {
        return;
    }
    let _ = writeln!(md, "{KAFKA_HEADING}\n");
    render_run(md, results);
    let _ = writeln!(
        md,
        "Phase 3's setup, a fresh stack each, on three Kafka setups: tansu keeping records in \
         memory (every other phase) at the fleet's rate, then, at a rate they carry, tansu on a \
         SQLite file (durable, what the local stack runs) and three tansu brokers on one SQLite \
         file that clients reach through the cluster's front \
         ([ADR 0018](adr/0018-kafka-cluster-locally.md)). What limits SQLite: \
         [ADR 0021](adr/0021-tansu-sqlite-throughput.md).\n\n\
         | Kafka | devices | {SUMMARY_COLUMNS} |\n\
         |---|---|---|---|---|---|---|---|"
    );
    for (label, options, result) in &results.kafka {
        let _ = writeln!(
            md,
            "| {label} | {} | {} |",
            thousands(f64::from(options.devices)),
            summary_cells(options, result, ceiling)
        );
    }
    let stored: Vec<Option<f64>> = results
        .kafka
        .iter()
        .map(|(_, _, r)| r.as_ref().ok().map(E2eResult::stored_per_sec))
        .collect();
    if let [_, Some(sqlite), Some(cluster)] = stored[..] {
        let _ = writeln!(
            md,
            "\nStored per second, three brokers on one SQLite file against one: {}.",
            ratio(cluster, sqlite)
        );
    }
    let _ = writeln!(md);
}

const SUMMARY_COLUMNS: &str =
    "offered/s | stored/s | stored / ceiling | lost / not yet stored / duplicated / seq gaps | \
                               latency p50 / p99 (after 3 s), ms | machine busy";

/// One phase 3 run in the six [`SUMMARY_COLUMNS`].
fn summary_cells(
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

fn render_cpu(md: &mut String, e: &E2eResult) {
    let _ = writeln!(md, "## 4. Where the CPU goes (during phase 3)\n");
    let u = &e.cpu;
    let capacity = u.wall.as_secs_f64() * u.cores as f64;
    let _ = writeln!(
        md,
        "CPU seconds from `/proc/PID/stat` (utime + stime) over {} of load, as shares of {} \
         cores x wall time ({:.1} CPU s).\n",
        secs(u.wall),
        u.cores,
        capacity
    );
    let _ = writeln!(md, "| process | CPU s | share |\n|---|---|---|");
    let mut ours = 0.0;
    for (name, label) in [
        (
            "bench",
            "bench process: broker (with its edge bridge), ingest writer, query API, simulator, probe",
        ),
        ("influxd", "influxd"),
        ("tansu", "tansu (Kafka, in memory)"),
    ] {
        match u.process(name) {
            Some(s) => {
                ours += s;
                let _ = writeln!(md, "| {label} | {s:.1} | {} |", pct(u.share(s)));
            }
            None => {
                let _ = writeln!(md, "| {label} | n/a | n/a |");
            }
        }
    }
    if let Some(busy) = u.machine_busy {
        let others = (busy - ours).max(0.0);
        let _ = writeln!(
            md,
            "| everything else on the machine (other builds and tests) | {others:.1} | {} |",
            pct(u.share(others))
        );
        let _ = writeln!(
            md,
            "| idle | {:.1} | {} |",
            (capacity - busy).max(0.0),
            pct(u.share((capacity - busy).max(0.0)))
        );
    }
    let profiled = matches!(&e.perf, Some(Ok(_)));
    if !u.threads.is_empty() && !profiled {
        let top: Vec<String> = u
            .threads
            .iter()
            .take(8)
            .map(|(name, s)| format!("`{name}` {s:.1} s"))
            .collect();
        let _ = writeln!(
            md,
            "\nBusiest threads of the bench process: {}.",
            top.join(", ")
        );
    }
    match &e.perf {
        None => {
            let _ = writeln!(md, "\n`perf` profile skipped (--no-perf).\n");
        }
        Some(Err(err)) => {
            let _ = writeln!(md, "\n`perf` profile not available: {}.\n", one_line(err));
        }
        Some(Ok(profile)) => {
            let bench = u.process("bench").unwrap_or(0.0);
            let _ = writeln!(
                md,
                "\nThe bench process split by component, from {} `perf record --call-graph dwarf` \
                 samples (by thread for rumqttd's and librdkafka's threads, else by the task's \
                 outermost frame); CPU s = share x the process's {bench:.1} s:\n\n\
                 | component | share | ≈ CPU s |\n|---|---|---|",
                profile.samples
            );
            for (name, share) in profile.components.iter().filter(|(_, s)| *s >= 0.005) {
                let _ = writeln!(md, "| {name} | {} | {:.1} |", pct(*share), share * bench);
            }
            let _ = writeln!(
                md,
                "\nTop symbols by self time:\n\n| self | where | symbol |\n|---|---|---|"
            );
            for (share, dso, symbol) in &profile.top {
                let _ = writeln!(md, "| {share:.1} % | {dso} | `{}` |", short_symbol(symbol));
            }
            let _ = writeln!(md);
        }
    }
}

fn short_symbol(symbol: &str) -> String {
    let mut symbol = symbol.replace('|', "/");
    if symbol.len() > 90 {
        let cut = (0..=90)
            .rev()
            .find(|i| symbol.is_char_boundary(*i))
            .unwrap_or(0);
        symbol.truncate(cut);
        symbol.push('…');
    }
    symbol
}

fn render_limits(md: &mut String, results: &Results, ceiling: Option<&CeilingResult>) {
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
        text.push(format!(
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
        ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_section_is_replaced_in_place_or_added_before_the_limits() {
        let report = "# B\n## 5. Command round trip\nold\n## What limits us\nx\n";
        assert_eq!(
            splice_section(report, COMMANDS_HEADING, "## 5. Command round trip\nnew\n"),
            "# B\n## 5. Command round trip\nnew\n## What limits us\nx\n"
        );
        assert_eq!(
            splice_section(report, KAFKA_HEADING, &format!("{KAFKA_HEADING}\nk\n")),
            format!(
                "# B\n## 5. Command round trip\nold\n{KAFKA_HEADING}\nk\n## What limits us\nx\n"
            )
        );
    }
}
