//! Section 7: the fleet, one replica against Mosquitto, then every device
//! through the pipeline.

use std::fmt::Write;

use crate::e2e;
use crate::fleet::{FleetOptions, FleetResults, FleetRun, ReplicaRun, RestartRun};
use crate::one_line;

pub(super) const HEADING: &str = "## 7. The fleet";

pub(super) fn render(md: &mut String, results: &FleetResults, run_line: &str) {
    let o = &results.options;
    let _ = writeln!(md, "{HEADING}\n");
    let _ = writeln!(md, "{run_line}");
    let _ = writeln!(
        md,
        "One process may hold 20,000 open files here (a hard limit), so one broker replica \
         holds at most about 19,000 devices and the fleet runs on several replicas and \
         simulator processes (each a process of its own).\n"
    );
    if !results.replica.is_empty() {
        render_replicas(md, o, &results.replica);
    }
    let _ = writeln!(
        md,
        "**The whole fleet.** {} devices ({} homes of 4), each publishing one QoS 1 reading \
         every {} s (about {:.0} messages/s), starting over {} s and then publishing for {} \
         s, through the whole pipeline: {} broker replicas (processes, each with its edge \
         bridge) authenticating every device against the registry (a password each, \
         issued through its REST API), tansu in memory, ingest writer, InfluxDB. A third \
         into the load one replica is killed with SIGKILL; its devices reconnect to the \
         others, and it is restarted on its spool. Every acknowledged reading is then \
         counted in InfluxDB by device and seq. Latency: a probe device publishes a reading \
         every 100 ms and polls the query API until it is there.\n",
        o.devices,
        o.devices.div_ceil(4),
        o.interval.as_secs(),
        f64::from(o.devices) / o.interval.as_secs_f64(),
        o.connect_spread.as_secs(),
        o.duration.as_secs(),
        o.replicas
    );
    match &results.fleet {
        Err(err) => {
            let _ = writeln!(md, "Failed: {}\n", one_line(err));
        }
        Ok(f) => render_fleet_run(md, o, f),
    }
}

/// One replica of ours against Mosquitto, each holding one process's share.
fn render_replicas(md: &mut String, o: &FleetOptions, replica: &[anyhow::Result<ReplicaRun>]) {
    let _ = writeln!(
        md,
        "**One replica against Mosquitto.** {} devices (one simulator process) connect \
         at once to one broker process without authentication (ours with its Kafka \
         ingress on tansu in memory), then each publishes one QoS 1 reading every {} s \
         for 20 s. Accept rate: devices over the time until the broker held all of \
         their sockets. Memory: RSS with all connected, less RSS before, per \
         connection.\n",
        o.replica_devices,
        o.interval.as_secs()
    );
    let _ = writeln!(
        md,
        "| broker | connected | all in after | accept rate | RSS | RSS per connection | CPU, connect storm | CPU, steady | acked / unacked | reconnects |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|---|");
    for run in replica {
        match run {
            Err(err) => {
                let _ = writeln!(md, "| failed: {} |||||||||", one_line(err));
            }
            Ok(r) => {
                let _ = writeln!(
                    md,
                    "| {} | {} of {} | {} | {} | {} | {} | {} | {} | {} / {} | {} |",
                    r.kind.label(),
                    r.connected,
                    r.devices,
                    r.all_connected_after
                        .map_or("not all".into(), |d| format!("{:.1} s", d.as_secs_f64())),
                    r.accept_rate().map_or("-".into(), |v| format!("{v:.0}/s")),
                    r.rss_mb.map_or("-".into(), |v| format!("{v:.0} MB")),
                    r.rss_per_connection
                        .map_or("-".into(), |v| format!("{:.1} KB", v / 1024.0)),
                    r.connect_cpu_cores
                        .map_or("-".into(), |v| format!("{:.0} %", v * 100.0)),
                    r.steady_cpu_cores
                        .map_or("-".into(), |v| format!("{:.1} %", v * 100.0)),
                    r.messages_acked,
                    r.messages_unacked,
                    r.reconnects,
                );
            }
        }
    }
    if let [Ok(ours), Ok(theirs)] = replica {
        let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".into(),
        };
        let _ = writeln!(
            md,
            "\nOurs against Mosquitto: accept rate {}, RSS per connection {}, CPU in the \
             steady load {} (CPU percentages are of one core).\n",
            ratio(ours.accept_rate(), theirs.accept_rate()),
            ratio(ours.rss_per_connection, theirs.rss_per_connection),
            ratio(ours.steady_cpu_cores, theirs.steady_cpu_cores),
        );
    }
}

/// The table of the whole fleet's run.
fn render_fleet_run(md: &mut String, o: &FleetOptions, f: &FleetRun) {
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(
        md,
        "| devices, replicas, simulator processes | {}, {}, {} |",
        f.devices, f.replicas, f.simulators
    );
    let _ = writeln!(
        md,
        "| provisioning (homes, devices, passwords over REST) | {:.0} s ({:.0} devices/s) |",
        f.provisioned_in.as_secs_f64(),
        crate::per_sec(u64::from(f.devices), f.provisioned_in)
    );
    let _ = writeln!(
        md,
        "| every device connected | {} after the first started (starts spread over {} s) |",
        f.all_connected_after
            .map_or("not all".into(), |d| format!("{:.1} s", d.as_secs_f64())),
        o.connect_spread.as_secs()
    );
    render_delivery_rows(md, f);
    render_cost_rows(md, f);
    if let Some(r) = &f.restart {
        render_restart_rows(md, r);
    }
    let _ = writeln!(md, "| reconnects (all simulators) | {} |\n", f.reconnects);
}

/// What became of the fleet's readings: acknowledged, stored exactly once,
/// drained.
fn render_delivery_rows(md: &mut String, f: &FleetRun) {
    let _ = writeln!(
        md,
        "| messages acked / unacked | {} / {} ({:.0} messages/s over the {:.0} s of starts and load) |",
        f.messages_acked,
        f.messages_unacked,
        crate::per_sec(f.messages_acked, f.published_for),
        f.published_for.as_secs_f64()
    );
    let _ = writeln!(md, "| readings acked | {} |", f.readings_acked);
    match &f.tally {
        Ok(t) => {
            let _ = writeln!(
                md,
                "| stored / lost / duplicated / seq gaps | {} / {} / {} / {} |",
                t.stored,
                t.lost()
                    .map_or("unknown (did not drain)".into(), |l| l.to_string()),
                t.duplicates,
                t.gaps
            );
        }
        Err(err) => {
            let _ = writeln!(md, "| stored | counting failed: {} |", one_line(err));
        }
    }
    let _ = writeln!(
        md,
        "| drained after the load | {} |",
        f.drain
            .map_or("no (gave up after 300 s)".into(), |d| format!(
                "{:.1} s",
                d.as_secs_f64()
            ))
    );
}

/// The probe's latency and what the load cost: broker memory, CPU.
fn render_cost_rows(md: &mut String, f: &FleetRun) {
    let lat = f.latency.after(0.0);
    let p = |q: f64| e2e::percentile(&lat, q).map_or("-".into(), |v| format!("{v:.0} ms"));
    let _ = writeln!(
        md,
        "| publish to queryable, p50 / p99 | {} / {} ({} probe readings{}) |",
        p(50.0),
        p(99.0),
        lat.len(),
        f.latency
            .first_error
            .as_ref()
            .map_or(String::new(), |e| format!("; {e}"))
    );
    let _ = writeln!(
        md,
        "| broker RSS per connection (all replicas) | {} |",
        f.rss_per_connection
            .map_or("-".into(), |v| format!("{:.1} KB", v / 1024.0))
    );
    let cpu: Vec<String> = f
        .cpu_cores
        .iter()
        .map(|(name, cores)| format!("{name} {:.0} %", cores * 100.0))
        .collect();
    let _ = writeln!(
        md,
        "| CPU over the load (% of one core) | {} |",
        cpu.join(", ")
    );
}

/// The replica killed a third into the load.
fn render_restart_rows(md: &mut String, r: &RestartRun) {
    let _ = writeln!(
        md,
        "| replica killed: its devices back on the others | {} devices in {} |",
        r.devices,
        r.back_after.map_or("more than 120 s".into(), |d| format!(
            "{:.1} s ({:.0} connects/s)",
            d.as_secs_f64(),
            crate::per_sec(r.devices, d)
        ))
    );
    let _ = writeln!(
        md,
        "| registry password checks meanwhile | {} remembered (SHA-256), {} verified (Argon2id) |",
        r.remembered, r.verified
    );
}
