//! `warmhouse-bench`: measures the pipeline against peers measured in the
//! same run on the same machine, because the machine is shared and absolute
//! numbers are noisy.
//!
//! 1. raw InfluxDB write ceiling (batched line protocol straight to influxd);
//! 2. our broker against Mosquitto under the same simulator load;
//! 3. the whole pipeline end to end at a target load: throughput, drain time,
//!    zero lost / zero duplicated, publish-to-queryable latency;
//! 4. where the CPU went during 3;
//! 5. the command round trip, REST to the device and back;
//! 6. phase 3's setup on each Kafka setup (memory, SQLite, a cluster);
//! 7. the fleet: one replica against Mosquitto, then every device.
//!
//! Every phase that fails is reported as a failure in the results; the run
//! goes on with the next one. The stack it measures is `warmhouse-stack`'s
//! harness; `src/main.rs` is the thin binary.

mod brokers;
mod commands;
mod cpu;
mod e2e;
mod fleet;
mod influx;
mod registry_api;
mod report;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use warmhouse_devstack::KafkaStorage;

/// Benchmarks Warmhouse on this machine and writes docs/benchmarks.md.
#[derive(Parser, Debug, Clone)]
#[command(name = "warmhouse-bench")]
pub struct Args {
    /// Short phases (5 s unless --duration-secs): a smoke run.
    #[arg(long)]
    pub quick: bool,
    /// Length of each measured phase in seconds (default 20, 5 with --quick).
    #[arg(long)]
    pub duration_secs: Option<u64>,
    /// Also write the report (Markdown) to this file.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Phases to run, comma separated. With `--out` pointing at an existing
    /// report and only `commands` and/or `kafka`, just those sections of the
    /// report are replaced.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "influx,brokers,e2e,commands,kafka"
    )]
    pub phases: Vec<Phase>,

    /// Concurrent writers of the InfluxDB ceiling.
    #[arg(long, default_value_t = 3)]
    pub influx_writers: usize,
    /// Points in one ceiling batch.
    #[arg(long, default_value_t = 10_000)]
    pub influx_batch_points: usize,

    /// Simulated devices in the broker comparison (each publishes flat out).
    #[arg(long, default_value_t = 100)]
    pub broker_devices: u32,
    /// Rounds of the broker comparison (each runs both brokers); the best
    /// round of each broker is compared.
    #[arg(long, default_value_t = 2)]
    pub broker_rounds: u32,
    /// Our broker's binary; default: `warmhouse-broker` next to this
    /// executable, built first with cargo when cargo is at hand.
    #[arg(long)]
    pub broker_bin: Option<PathBuf>,

    /// Simulated devices end to end (4 a home); 1,000 devices every 100 ms
    /// are the assignment's fleet rate (10,000 messages/s).
    #[arg(long, default_value_t = 1000)]
    pub e2e_devices: u32,
    /// Milliseconds between two messages of one device end to end.
    #[arg(long, default_value_t = 100)]
    pub e2e_interval_ms: u64,
    /// Samples (readings of each metric) in one message end to end: 1, one
    /// reading per MQTT message, as devices send them.
    #[arg(long, default_value_t = 1)]
    pub e2e_samples: usize,
    /// Also run phase 3 with this many samples in a message (batched
    /// devices); 0 skips it.
    #[arg(long, default_value_t = 8)]
    pub e2e_batched_samples: usize,
    /// Devices of that batched run (280 x 8 samples every 100 ms: about
    /// 50,000 readings/s).
    #[arg(long, default_value_t = 280)]
    pub e2e_batched_devices: u32,
    /// Also run phase 3 with this many MQTT broker replicas (the main run
    /// has one); 0 skips it.
    #[arg(long, default_value_t = 2)]
    pub e2e_replicas: usize,
    /// Also run phase 3 at these multiples of --e2e-devices (1 is the main
    /// run, reported in full; the others get one summary row each).
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    pub e2e_scales: Vec<u32>,
    /// The ingest writer's batch size end to end.
    #[arg(long, default_value_t = 20_000)]
    pub e2e_batch_points: usize,
    /// Homes (4 devices each, one thermostat) in the command phase.
    #[arg(long, default_value_t = 50)]
    pub command_homes: u32,
    /// Telemetry interval of those devices (the load meanwhile), ms.
    #[arg(long, default_value_t = 100)]
    pub command_interval_ms: u64,
    /// Commands a second in the command phase.
    #[arg(long, default_value_t = 50)]
    pub command_rate: u32,
    /// Simulated devices of the Kafka comparison on tansu in memory (phase
    /// 3's setup); 1,000 devices every 100 ms are the assignment's fleet
    /// rate, 10,000 messages/s.
    #[arg(long, default_value_t = 1000)]
    pub kafka_devices: u32,
    /// Simulated devices of the same comparison on tansu's SQLite setups
    /// (one broker, three on one file). The default stays within what they
    /// carry on one machine (docs/adr/0021-tansu-sqlite-throughput.md); at
    /// the fleet's rate they do not drain and the bench exits non-zero.
    #[arg(long, default_value_t = 100)]
    pub kafka_sqlite_devices: u32,
    /// Devices of the fleet phase (4 a home), spread over simulator
    /// processes of at most 19,000 devices (the open-file limit).
    #[arg(long, default_value_t = 100_000)]
    pub fleet_devices: u32,
    /// Broker replicas of the fleet phase (one process holds at most about
    /// 19,000 devices here).
    #[arg(long, default_value_t = 6)]
    pub fleet_replicas: usize,
    /// Seconds between two readings of one fleet device (the assignment: 10).
    #[arg(long, default_value_t = 10)]
    pub fleet_interval_secs: u64,
    /// Seconds the fleet publishes once every device has started.
    #[arg(long, default_value_t = 150)]
    pub fleet_duration_secs: u64,
    /// Seconds over which the fleet's devices start.
    #[arg(long, default_value_t = 60)]
    pub fleet_connect_spread_secs: u64,
    /// Devices on the one replica compared with Mosquitto in the fleet phase
    /// (at most one process's share); 0 skips the comparison.
    #[arg(long, default_value_t = 19_000)]
    pub fleet_replica_devices: u32,
    /// Keep the working directory (every process's log and data) after the
    /// run, to look into a failure.
    #[arg(long)]
    pub keep_dir: bool,
    /// Skip the `perf record` profile of the bench process.
    #[arg(long)]
    pub no_perf: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Influx,
    Brokers,
    E2e,
    Commands,
    Kafka,
    Fleet,
}

/// What the run measured; a failed phase keeps its error.
pub struct Results {
    pub args: Args,
    pub command: String,
    pub duration: Duration,
    pub machine: report::Machine,
    pub started_utc: String,
    pub total: Duration,
    pub ceiling: Option<anyhow::Result<influx::CeilingResult>>,
    pub brokers: Vec<(brokers::BrokerKind, anyhow::Result<brokers::BrokerRun>)>,
    pub broker_note: Option<String>,
    pub e2e: Option<anyhow::Result<e2e::E2eResult>>,
    pub e2e_options: e2e::E2eOptions,
    /// Phase 3 again at higher loads.
    pub e2e_more: Vec<(e2e::E2eOptions, anyhow::Result<e2e::E2eResult>)>,
    pub commands: Option<(
        commands::CommandOptions,
        anyhow::Result<commands::CommandResult>,
    )>,
    /// Phase 3's setup on each Kafka setup: (what it is, options, result).
    pub kafka: Vec<(
        &'static str,
        e2e::E2eOptions,
        anyhow::Result<e2e::E2eResult>,
    )>,
    /// Phase 7: one replica against Mosquitto, then the whole fleet.
    pub fleet: Option<fleet::FleetResults>,
}

pub fn main() -> ExitCode {
    let args = Args::parse();
    // Our services log every MQTT connect at info; keep the output readable.
    if std::env::var_os("RUST_LOG").is_none() {
        // rumqttd logs clean disconnects as errors: silence it.
        std::env::set_var("RUST_LOG", "warn,rumqttd=off");
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the Tokio runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    // On Ctrl-C or SIGTERM the run is dropped, and with it every child
    // process (influxd, tansu, the brokers), which are stopped on drop.
    let outcome = runtime.block_on(async {
        tokio::select! {
            result = run(args) => result,
            _ = warmhouse_service_kit::shutdown_signal() => {
                Err(anyhow::anyhow!("interrupted; child processes stopped"))
            }
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("warmhouse-bench: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    warmhouse_service_kit::init_tracing();
    let duration = Duration::from_secs(
        args.duration_secs
            .unwrap_or(if args.quick { 5 } else { 20 })
            .max(2),
    );
    let started = Instant::now();
    let dir = tempfile::Builder::new()
        .prefix("warmhouse-bench-")
        .disable_cleanup(args.keep_dir)
        .tempdir()
        .context("creating a temp dir")?;
    let command = command_line();
    eprintln!(
        "warmhouse-bench: {command}\nworking in {}",
        dir.path().display()
    );
    let e2e_options = e2e::E2eOptions {
        duration,
        devices: args.e2e_devices,
        interval_ms: args.e2e_interval_ms,
        samples: args.e2e_samples,
        batch_points: args.e2e_batch_points,
        perf: !args.no_perf,
        kafka_storage: KafkaStorage::Memory,
        kafka_brokers: 1,
        broker_replicas: 1,
    };
    let mut results = Results {
        args: args.clone(),
        command,
        duration,
        machine: report::Machine::read(),
        started_utc: report::utc_now(),
        total: Duration::ZERO,
        ceiling: None,
        brokers: Vec::new(),
        broker_note: None,
        e2e: None,
        e2e_options,
        e2e_more: Vec::new(),
        commands: None,
        kafka: Vec::new(),
        fleet: None,
    };
    // Generous outer limits: every wait inside has its own deadline.
    let phase_limit = duration * 3 + Duration::from_secs(300);

    if args.phases.contains(&Phase::Influx) {
        measure_ceiling(&mut results, dir.path(), phase_limit).await;
    }
    if args.phases.contains(&Phase::Brokers) {
        compare_brokers(&mut results, dir.path(), phase_limit).await;
    }
    if args.phases.contains(&Phase::E2e) {
        measure_e2e(&mut results, dir.path(), phase_limit).await;
    }
    if args.phases.contains(&Phase::Commands) {
        measure_commands(&mut results, dir.path(), phase_limit).await;
    }
    if args.phases.contains(&Phase::Kafka) {
        compare_kafka(&mut results, dir.path(), phase_limit).await;
    }
    if args.phases.contains(&Phase::Fleet) {
        measure_fleet(&mut results, dir.path()).await;
    }

    results.total = started.elapsed();
    write_report(&results)?;
    let failures = results.failures();
    if !failures.is_empty() {
        anyhow::bail!(
            "{} phase(s) failed (the report says how):\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }
    Ok(())
}

/// Phase 1: the raw InfluxDB write ceiling.
async fn measure_ceiling(results: &mut Results, dir: &Path, phase_limit: Duration) {
    let (args, duration) = (&results.args, results.duration);
    eprintln!("== phase 1: raw InfluxDB write ceiling ({duration:?})");
    let options = influx::CeilingOptions {
        duration,
        writers: args.influx_writers,
        batch_points: args.influx_batch_points,
    };
    let t = Instant::now();
    let result = limit(phase_limit, influx::run(&dir.join("ceiling"), &options)).await;
    log_outcome(&result, t);
    results.ceiling = Some(result);
}

/// Phase 2: our broker against Mosquitto, round after round.
async fn compare_brokers(results: &mut Results, dir: &Path, phase_limit: Duration) {
    let (args, duration) = (&results.args, results.duration);
    let (bin, note) = broker_binary(args).await;
    results.broker_note = note;
    let options = brokers::BrokerOptions {
        duration,
        devices: args.broker_devices,
        broker_bin: bin,
    };
    // Rounds alternate the brokers, so a noisy minute does not land on
    // one of them only.
    for round in 1..=args.broker_rounds.max(1) {
        for kind in [brokers::BrokerKind::Ours, brokers::BrokerKind::Mosquitto] {
            eprintln!("== phase 2, round {round}: {} ({duration:?})", kind.label());
            let run_id = format!(
                "brk{}{}",
                if kind == brokers::BrokerKind::Ours {
                    "o"
                } else {
                    "m"
                },
                warmhouse_service_kit::now_ms() % 1_000_000_000
            );
            let t = Instant::now();
            let result = limit(
                phase_limit,
                brokers::run(kind, &dir.join("brokers"), &options, &run_id),
            )
            .await;
            log_outcome(&result, t);
            results.brokers.push((kind, result));
        }
    }
}

/// Phase 3 (and 4, its CPU): the main load, then higher loads, several
/// broker replicas and batched messages.
async fn measure_e2e(results: &mut Results, dir: &Path, phase_limit: Duration) {
    let (args, duration, e2e_options) = (&results.args, results.duration, &results.e2e_options);
    eprintln!("== phase 3: end to end ({duration:?})");
    let t = Instant::now();
    let result = limit(phase_limit, e2e::run(&dir.join("e2e"), e2e_options)).await;
    log_outcome(&result, t);
    results.e2e = Some(result);
    // Higher loads: the same setup with more devices, summarised.
    for scale in args.e2e_scales.iter().copied().filter(|s| *s > 1) {
        let options = e2e::E2eOptions {
            devices: args.e2e_devices.saturating_mul(scale),
            perf: false,
            ..e2e_options.clone()
        };
        eprintln!(
            "== phase 3 at {scale}x: {} devices ({duration:?})",
            options.devices
        );
        let run_dir = dir.join(format!("e2e-x{scale}"));
        let result = run_e2e(phase_limit, &run_dir, &options).await;
        results.e2e_more.push((options, result));
    }
    // The main load again with several broker replicas, and with
    // batched messages.
    let variants = [
        (args.e2e_replicas > 1).then(|| e2e::E2eOptions {
            broker_replicas: args.e2e_replicas,
            perf: false,
            ..e2e_options.clone()
        }),
        (args.e2e_batched_samples > 0 && args.e2e_batched_samples != args.e2e_samples).then(|| {
            e2e::E2eOptions {
                samples: args.e2e_batched_samples,
                devices: args.e2e_batched_devices,
                perf: false,
                ..e2e_options.clone()
            }
        }),
    ];
    for options in variants.into_iter().flatten() {
        eprintln!(
            "== phase 3, {} broker replicas, {} samples a message ({duration:?})",
            options.broker_replicas, options.samples
        );
        let run_dir = dir.join(format!(
            "e2e-r{}-s{}",
            options.broker_replicas, options.samples
        ));
        let result = run_e2e(phase_limit, &run_dir, &options).await;
        results.e2e_more.push((options, result));
    }
}

/// Phase 5: the command round trip.
async fn measure_commands(results: &mut Results, dir: &Path, phase_limit: Duration) {
    let (args, duration) = (&results.args, results.duration);
    let options = commands::CommandOptions {
        duration,
        homes: args.command_homes,
        interval_ms: args.command_interval_ms,
        rate: args.command_rate,
    };
    eprintln!(
        "== phase 5: command round trip, {}/s to {} thermostats ({duration:?})",
        options.rate, options.homes
    );
    let t = Instant::now();
    let result = limit(phase_limit, commands::run(&dir.join("commands"), &options)).await;
    log_outcome(&result, t);
    results.commands = Some((options, result));
}

/// Phase 6: phase 3's setup on each Kafka setup.
async fn compare_kafka(results: &mut Results, dir: &Path, phase_limit: Duration) {
    let (args, duration, e2e_options) = (&results.args, results.duration, &results.e2e_options);
    let setups = [
        ("tansu, memory", KafkaStorage::Memory, 1, args.kafka_devices),
        (
            "tansu, SQLite",
            KafkaStorage::Sqlite,
            1,
            args.kafka_sqlite_devices,
        ),
        (
            "3 tansu brokers, one SQLite file",
            KafkaStorage::Sqlite,
            3,
            args.kafka_sqlite_devices,
        ),
    ];
    for (label, kafka_storage, kafka_brokers, devices) in setups {
        let options = e2e::E2eOptions {
            devices,
            perf: false,
            kafka_storage,
            kafka_brokers,
            ..e2e_options.clone()
        };
        eprintln!(
            "== phase 6: {label}, {} devices ({duration:?})",
            options.devices
        );
        let run_dir = dir.join(format!("kafka-{kafka_brokers}-{kafka_storage:?}"));
        let result = run_e2e(phase_limit, &run_dir, &options).await;
        results.kafka.push((label, options, result));
    }
}

/// Phase 7: the fleet, with the binaries it runs as processes.
async fn measure_fleet(results: &mut Results, dir: &Path) {
    let args = &results.args;
    let (broker_bin, _) = binary("warmhouse-broker", "warmhouse-broker").await;
    let (stack_bin, _) = binary("warmhouse-stack", "warmhouse-stack").await;
    let (sim_bin, _) = binary("warmhouse-simulator", "warmhouse-sim").await;
    let options = fleet::FleetOptions {
        devices: args.fleet_devices,
        replicas: args.fleet_replicas,
        interval: Duration::from_secs(args.fleet_interval_secs.max(1)),
        duration: Duration::from_secs(args.fleet_duration_secs.max(10)),
        connect_spread: Duration::from_secs(args.fleet_connect_spread_secs),
        replica_devices: args.fleet_replica_devices,
        stack_bin,
        broker_bin: args.broker_bin.clone().unwrap_or(broker_bin),
        sim_bin,
    };
    results.fleet = Some(fleet::run(&dir.join("fleet"), options).await);
}

/// Prints the report and writes it to `--out`: only the sections that can
/// stand alone are spliced into an existing report when only they ran.
fn write_report(results: &Results) -> anyhow::Result<()> {
    let args = &results.args;
    // Only the sections that can stand alone: splice them into the report.
    let only_sections = args
        .phases
        .iter()
        .all(|p| matches!(p, Phase::Commands | Phase::Kafka | Phase::Fleet));
    let existing = args
        .out
        .as_ref()
        .and_then(|out| std::fs::read_to_string(out).ok());
    let markdown = match existing {
        Some(existing) if only_sections => report::splice_sections(&existing, results),
        _ => report::render(results),
    };
    println!("{markdown}");
    if let Some(out) = &args.out {
        std::fs::write(out, &markdown).with_context(|| format!("writing {}", out.display()))?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

impl Results {
    /// What went wrong, one line a failed phase: a phase that errored, and
    /// an end-to-end run that did not store every acknowledged reading
    /// exactly once before the bench stopped waiting.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        let mut errored =
            |what: &str, err: &anyhow::Error| failures.push(format!("{what}: {}", one_line(err)));
        if let Some(Err(err)) = &self.ceiling {
            errored("phase 1 (InfluxDB ceiling)", err);
        }
        for (kind, run) in &self.brokers {
            if let Err(err) = run {
                errored(&format!("phase 2 ({})", kind.label()), err);
            }
        }
        if let Some((_, Err(err))) = &self.commands {
            errored("phase 5 (commands)", err);
        }
        if let Some(fleet) = &self.fleet {
            failures.extend(fleet.failures());
        }
        let e2e_runs = self
            .e2e
            .iter()
            .map(|r| ("phase 3".to_string(), r))
            .chain(self.e2e_more.iter().map(|(o, r)| {
                (
                    format!(
                        "phase 3 ({} devices, {} samples, {} replicas)",
                        o.devices, o.samples, o.broker_replicas
                    ),
                    r,
                )
            }))
            .chain(
                self.kafka
                    .iter()
                    .map(|(label, _, r)| (format!("phase 6 ({label})"), r)),
            );
        for (what, run) in e2e_runs {
            match run {
                Err(err) => failures.push(format!("{what}: {}", one_line(err))),
                Ok(e) => {
                    if let Some(problem) = e.delivery_problem() {
                        failures.push(format!("{what}: {problem}"));
                    }
                }
            }
        }
        failures
    }
}

async fn limit<T>(
    limit: Duration,
    phase: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, phase).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!("the phase did not finish within {limit:?}"),
    }
}

/// One phase 3 run within `limit`, logged.
async fn run_e2e(
    limit_to: Duration,
    dir: &std::path::Path,
    options: &e2e::E2eOptions,
) -> anyhow::Result<e2e::E2eResult> {
    let t = Instant::now();
    let result = limit(limit_to, e2e::run(dir, options)).await;
    log_outcome(&result, t);
    result
}

fn log_outcome<T>(result: &anyhow::Result<T>, started: Instant) {
    let took = started.elapsed().as_secs_f64();
    match result {
        Ok(_) => eprintln!("   done in {took:.0} s"),
        Err(err) => eprintln!("   FAILED after {took:.0} s: {err:#}"),
    }
}

/// The command as it would be typed to reproduce this run.
fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut command = String::from("cargo run --release -p warmhouse-bench");
    if !args.is_empty() {
        command.push_str(" -- ");
        command.push_str(&args.join(" "));
    }
    command
}

/// Our broker's binary, next to this executable. When cargo is at hand it is
/// (re)built first, so the comparison never runs a stale broker.
async fn broker_binary(args: &Args) -> (PathBuf, Option<String>) {
    if let Some(bin) = &args.broker_bin {
        return (bin.clone(), None);
    }
    binary("warmhouse-broker", "warmhouse-broker").await
}

/// Binary `bin` of package `package`, next to this executable, built first
/// with cargo when cargo is at hand (a no-op when it is fresh); a note when
/// the build failed and an existing binary is used.
async fn binary(package: &str, bin: &str) -> (PathBuf, Option<String>) {
    let exe_dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("."));
    let path = exe_dir.join(bin);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let mut command = tokio::process::Command::new(cargo);
    command
        .args(["build", "-q", "-p", package, "--bin", bin])
        .arg("--manifest-path")
        .arg(&manifest)
        .kill_on_drop(true);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    eprintln!("== building {bin} (cargo; a no-op when it is fresh)");
    let t = Instant::now();
    let note = match tokio::time::timeout(Duration::from_secs(1200), command.status()).await {
        Ok(Ok(status)) if status.success() => None,
        Ok(Ok(status)) => Some(format!(
            "`cargo build -p {package}` failed ({status}); the existing binary was used"
        )),
        Ok(Err(err)) => Some(format!(
            "cargo not runnable ({err}); the existing binary was used"
        )),
        Err(_) => Some(format!(
            "building {bin} timed out; the existing binary was used"
        )),
    };
    eprintln!("   done in {:.0} s", t.elapsed().as_secs_f64());
    (path, note)
}

type Job = Box<dyn FnOnce() + Send>;

/// Runs `f` (which starts child processes) on one thread that lives as long
/// as the process, not on a Tokio blocking-pool thread that exits after 10 s
/// idle: a child started with `PR_SET_PDEATHSIG` (devstack set it until
/// recently) dies with the *thread* that forked it, and this kept influxd and
/// the broker alive through their phases whatever the spawning code does.
async fn on_process_thread<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    static THREAD: std::sync::OnceLock<std::sync::mpsc::Sender<Job>> = std::sync::OnceLock::new();
    let sender = THREAD.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let spawned = std::thread::Builder::new()
            .name("bench-children".into())
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    job();
                }
            });
        if let Err(err) = spawned {
            eprintln!("cannot start the thread that owns child processes: {err}");
        }
        tx
    });
    let (tx, rx) = tokio::sync::oneshot::channel();
    sender
        .send(Box::new(move || {
            let _ = tx.send(f());
        }))
        .map_err(|_| anyhow::anyhow!("the thread that owns child processes is gone"))?;
    rx.await
        .map_err(|_| anyhow::anyhow!("the thread that owns child processes dropped a job"))
}

/// A simulator configuration for the brokers on `ports` (devices spread
/// over them) from command-line style arguments, whatever the environment.
fn sim_config(ports: &[u16], args: &[&str]) -> anyhow::Result<warmhouse_simulator::SimConfig> {
    let port = ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut argv = vec!["warmhouse-sim", "--host", "127.0.0.1", "--port", &port];
    argv.extend_from_slice(args);
    // The bench's simulators must not change with the shell's WARMHOUSE_* variables.
    warmhouse_service_kit::parse_ignoring_env(argv).context("simulator arguments")
}

fn per_sec(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1)
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
