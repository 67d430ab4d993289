//! Section 5: the command round trip.

use std::fmt::Write;

use super::format::{secs, thousands};
use crate::e2e::percentile;
use crate::one_line;
use crate::Results;

pub(super) const HEADING: &str = "## 5. Command round trip";

pub(super) fn render(md: &mut String, results: &Results) {
    let Some((options, result)) = &results.commands else {
        return;
    };
    let _ = writeln!(md, "{HEADING}\n");
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
    super::render_run(md, results);
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
