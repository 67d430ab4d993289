//! Section 1: the raw InfluxDB write ceiling.

use std::fmt::Write;

use super::format::{opt_pct, secs, thousands};
use crate::one_line;
use crate::Results;

pub(super) fn render(md: &mut String, results: &Results) {
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
        crate::cores(),
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
