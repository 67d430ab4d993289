//! Section 4: where the CPU went during phase 3.

use std::fmt::Write;

use super::format::{pct, secs};
use crate::cpu::{PerfProfile, Usage};
use crate::e2e::E2eResult;
use crate::one_line;

pub(super) fn render(md: &mut String, e: &E2eResult) {
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
        Some(Ok(profile)) => render_profile(md, u, profile),
    }
}

/// The bench process split by component and the top symbols, from `perf`.
fn render_profile(md: &mut String, u: &Usage, profile: &PerfProfile) {
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
