//! Section 6: phase 3's setup on each Kafka setup.

use std::fmt::Write;

use super::e2e::{summary_cells, SUMMARY_COLUMNS};
use super::format::{ratio, thousands};
use crate::e2e::E2eResult;
use crate::influx::CeilingResult;
use crate::Results;

pub(super) const HEADING: &str = "## 6. Kafka: memory, SQLite, a three-broker cluster";

pub(super) fn render(md: &mut String, results: &Results, ceiling: Option<&CeilingResult>) {
    if results.kafka.is_empty() {
        return;
    }
    let _ = writeln!(md, "{HEADING}\n");
    super::render_run(md, results);
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
