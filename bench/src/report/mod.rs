//! The Markdown report: machine, command, one section a phase, and what the
//! measurements say limits us. Each section is rendered by the module of its
//! name; a section that can be re-run alone (commands, Kafka, the fleet) is
//! spliced into an existing report in place.

mod brokers;
mod ceiling;
mod commands;
mod cpu;
mod e2e;
mod fleet;
mod format;
mod kafka;
mod limits;
mod machine;

use std::fmt::Write;

use crate::Results;
use format::secs;

pub use machine::{utc_now, Machine};

pub fn render(results: &Results) -> String {
    let mut md = String::new();
    render_header(&mut md, results);
    let ceiling = results.ceiling.as_ref().and_then(|c| c.as_ref().ok());
    ceiling::render(&mut md, results);
    brokers::render(&mut md, results);
    e2e::render(&mut md, results, ceiling);
    commands::render(&mut md, results);
    kafka::render(&mut md, results, ceiling);
    if let Some(fleet) = &results.fleet {
        fleet::render(&mut md, fleet, &run_line(results));
    }
    limits::render(&mut md, results, ceiling);
    md
}

/// Title, the machine and the command of the whole run.
fn render_header(md: &mut String, results: &Results) {
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
}

/// `existing` with the sections of the phases that ran (commands, Kafka)
/// replaced by this run's, or added before "What limits us"; the other
/// sections keep their figures.
pub fn splice_sections(existing: &str, results: &Results) -> String {
    let mut text = existing.to_string();
    if results.commands.is_some() {
        let mut section = String::new();
        commands::render(&mut section, results);
        text = splice_section(&text, commands::HEADING, &section);
    }
    if let Some(fleet) = &results.fleet {
        let mut section = String::new();
        fleet::render(&mut section, fleet, &run_line(results));
        text = splice_section(&text, fleet::HEADING, &section);
    }
    if !results.kafka.is_empty() {
        let ceiling = results.ceiling.as_ref().and_then(|c| c.as_ref().ok());
        let mut section = String::new();
        kafka::render(&mut section, results, ceiling);
        text = splice_section(&text, kafka::HEADING, &section);
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

#[cfg(test)]
mod tests {
    use super::*;
    use commands::HEADING as COMMANDS_HEADING;
    use kafka::HEADING as KAFKA_HEADING;

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
