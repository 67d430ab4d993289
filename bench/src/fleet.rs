//! Phase 7: the fleet. First one broker replica against Mosquitto, each
//! holding as many devices as one process can here (20,000 open files):
//! how fast all of them get in when they connect at once, memory per
//! connection and CPU. Then the assignment's whole fleet (100,000 devices,
//! one reading every 10 s each) through the full pipeline with registry
//! authentication, spread over broker replicas and simulator processes (each
//! a process of its own for the open-file limit), with every acknowledged
//! reading counted by device and seq; halfway through, one replica is
//! killed with SIGKILL and restarted, and the time until its devices are
//! back (on the other replicas) is measured.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::json;
use warmhouse_ingest::influx::{InfluxClient, InfluxSettings};
use warmhouse_stack::broker_process::{sample_value, BrokerProcessConfig};
use warmhouse_stack::fleet::{create, issue_passwords, register_fleet};
use warmhouse_stack::{Stack, StackOptions};

use super::brokers::{self, BrokerKind};
use super::cpu;
use super::e2e::{self, Latency, Tally};
use super::registry_api::RegistryApi;

/// Devices one simulator process holds at most (20,000 open files a process
/// here, and a few for itself).
const DEVICES_PER_SIMULATOR: u32 = 19_000;

#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// Devices of the whole fleet (4 a home).
    pub devices: u32,
    /// Broker replicas the fleet spreads over.
    pub replicas: usize,
    /// Seconds between two readings of one device.
    pub interval: Duration,
    /// How long the fleet publishes (after the last device started).
    pub duration: Duration,
    /// Device start times are spread over this.
    pub connect_spread: Duration,
    /// Devices on the one replica compared with Mosquitto; 0 skips that part.
    pub replica_devices: u32,
    /// `warmhouse-stack` (runs a broker replica: `warmhouse-stack broker`).
    pub stack_bin: PathBuf,
    /// `warmhouse-broker`.
    pub broker_bin: PathBuf,
    /// `warmhouse-sim`.
    pub sim_bin: PathBuf,
}

/// One broker holding `devices` that all connect at once.
#[derive(Debug, Clone)]
pub struct ReplicaRun {
    pub kind: BrokerKind,
    pub devices: u32,
    /// From the simulator's start until every device held a connection.
    pub all_connected_after: Option<Duration>,
    /// Connections held when the bench stopped waiting for the rest.
    pub connected: u64,
    /// RSS with every device connected, less RSS before, per connection.
    pub rss_per_connection: Option<f64>,
    pub rss_mb: Option<f64>,
    /// The broker's CPU over the connect storm and over the steady load
    /// afterwards (each device one QoS 1 reading every interval), as a share
    /// of one core.
    pub connect_cpu_cores: Option<f64>,
    pub steady_cpu_cores: Option<f64>,
    pub messages_acked: u64,
    pub messages_unacked: u64,
    pub reconnects: u64,
}

impl ReplicaRun {
    pub fn accept_rate(&self) -> Option<f64> {
        let after = self.all_connected_after?;
        Some(super::per_sec(u64::from(self.devices), after))
    }
}

/// The whole fleet through the pipeline.
#[derive(Debug)]
pub struct FleetRun {
    pub devices: u32,
    pub replicas: usize,
    pub simulators: usize,
    /// Homes, devices and passwords made through the registry's REST API.
    pub provisioned_in: Duration,
    /// From the first simulator's start until every device was connected.
    pub all_connected_after: Option<Duration>,
    pub readings_acked: u64,
    pub messages_acked: u64,
    pub messages_unacked: u64,
    pub reconnects: u64,
    pub tally: anyhow::Result<Tally>,
    pub drain: Option<Duration>,
    pub latency: Latency,
    /// Broker RSS (all replicas) per connection with the fleet connected.
    pub rss_per_connection: Option<f64>,
    /// CPU over the load, in cores, by process group.
    pub cpu_cores: Vec<(String, f64)>,
    pub load_window: Duration,
    /// From the first simulator's start to the end of the load: the time
    /// over which `messages_acked` were published.
    pub published_for: Duration,
    pub restart: Option<RestartRun>,
}

/// One replica killed with SIGKILL while the fleet publishes.
#[derive(Debug, Clone)]
pub struct RestartRun {
    /// Connections the replica held when it was killed.
    pub devices: u64,
    /// From the kill until the other replicas held the whole fleet again.
    pub back_after: Option<Duration>,
    /// Registry password checks meanwhile: remembered (a SHA-256) and
    /// verified (Argon2id).
    pub remembered: u64,
    pub verified: u64,
}

/// Phase 7's results.
pub struct FleetResults {
    pub options: FleetOptions,
    /// Ours, then Mosquitto (empty when skipped).
    pub replica: Vec<anyhow::Result<ReplicaRun>>,
    pub fleet: anyhow::Result<FleetRun>,
}

/// One replica against Mosquitto, then the whole fleet.
pub async fn run(dir: &Path, options: FleetOptions) -> FleetResults {
    let mut replica = Vec::new();
    if options.replica_devices > 0 {
        for kind in [BrokerKind::Ours, BrokerKind::Mosquitto] {
            eprintln!(
                "== phase 7: {} holding {} devices that connect at once",
                kind.label(),
                options.replica_devices
            );
            let t = Instant::now();
            let result = run_replica(kind, dir, &options).await;
            super::log_outcome(&result, t);
            replica.push(result);
        }
    }
    eprintln!(
        "== phase 7: {} devices over {} replicas, registry authentication",
        options.devices, options.replicas
    );
    let t = Instant::now();
    let fleet = run_fleet(dir, &options).await;
    super::log_outcome(&fleet, t);
    FleetResults {
        options,
        replica,
        fleet,
    }
}

impl FleetResults {
    /// What makes the phase fail: an error, a device that never got in, a
    /// reading not stored exactly once.
    pub fn failures(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for run in &self.replica {
            match run {
                Err(err) => {
                    failures.push(format!("phase 7 (one replica): {}", crate::one_line(err)))
                }
                Ok(r) if r.all_connected_after.is_none() => failures.push(format!(
                    "phase 7 ({}): {} of {} devices connected",
                    r.kind.label(),
                    r.connected,
                    r.devices
                )),
                Ok(_) => {}
            }
        }
        match &self.fleet {
            Err(err) => failures.push(format!("phase 7 (fleet): {}", crate::one_line(err))),
            Ok(f) => {
                if f.all_connected_after.is_none() {
                    failures.push("phase 7 (fleet): not every device connected".into());
                }
                if f.restart.as_ref().is_some_and(|r| r.back_after.is_none()) {
                    failures.push(
                        "phase 7 (fleet): the killed replica's devices were not all back within 120 s"
                            .into(),
                    );
                }
                match &f.tally {
                    Err(err) => failures.push(format!(
                        "phase 7 (fleet): counting stored readings: {}",
                        crate::one_line(err)
                    )),
                    Ok(t) if !t.exactly_once() => {
                        failures.push(format!("phase 7 (fleet): not exactly once: {t:?}"))
                    }
                    Ok(_) => {}
                }
            }
        }
        failures
    }
}

pub async fn run_replica(
    kind: BrokerKind,
    dir: &Path,
    options: &FleetOptions,
) -> anyhow::Result<ReplicaRun> {
    let dir = dir.join(match kind {
        BrokerKind::Ours => "replica-ours",
        BrokerKind::Mosquitto => "replica-mosquitto",
    });
    std::fs::create_dir_all(&dir).context("creating the replica dir")?;
    let mut broker = brokers::start(kind, &dir, &options.broker_bin).await?;
    let pid = broker.process.pid().context("the broker has no pid")?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let base_fds = open_sockets(pid);
    let base_rss = rss_bytes(pid);
    let devices = options.replica_devices.min(DEVICES_PER_SIMULATOR);
    // Connect all at once, then one reading every interval for 20 s.
    let steady = Duration::from_secs(20);
    let run_for = Duration::from_secs(40);
    let sim = Simulator::spawn(
        &dir,
        0,
        &options.sim_bin,
        &[broker.port],
        &SimShare {
            first_home: 1,
            homes: devices / 4,
        },
        &[
            "--interval-ms",
            &options.interval.as_millis().to_string(),
            "--duration-secs",
            &run_for.as_secs().to_string(),
            "--run-id",
            &format!("rep{}", warmhouse_service_kit::now_ms() % 1_000_000),
        ],
        None,
    )?;
    let started = Instant::now();
    let watched = vec![("broker".to_string(), pid)];
    let me = std::process::id();
    let before = cpu::snapshot(&watched, me);
    let (all_connected_after, connected) = wait_for_sockets(
        pid,
        base_fds,
        devices,
        started,
        started + Duration::from_secs(35),
    )
    .await;
    let connected_at = cpu::snapshot(&watched, me);
    let rss = rss_bytes(pid);
    tokio::time::sleep(steady).await;
    let steady_end = cpu::snapshot(&watched, me);
    let summary = sim.finish(run_for + Duration::from_secs(60)).await;
    broker.process.check_alive()?;
    broker.process.terminate(Duration::from_secs(2));
    let summary = summary?;
    Ok(ReplicaRun {
        kind,
        devices: devices / 4 * 4,
        all_connected_after,
        connected,
        rss_per_connection: match (base_rss, rss) {
            (Some(base), Some(rss)) if connected > 0 => {
                Some(rss.saturating_sub(base) as f64 / connected as f64)
            }
            _ => None,
        },
        rss_mb: rss.map(|rss| rss as f64 / (1 << 20) as f64),
        connect_cpu_cores: broker_cores(&before, &connected_at),
        steady_cpu_cores: broker_cores(&connected_at, &steady_end),
        messages_acked: summary.messages_acked,
        messages_unacked: summary.messages_unacked,
        reconnects: summary.reconnects,
    })
}

/// Counts the broker's sockets (above the `base` it held before) every
/// 100 ms until `devices` are in or `deadline` passes: the broker's own
/// view of who is connected, the same for ours and Mosquitto. Returns when
/// all were in (from `started`) and the connections last counted.
async fn wait_for_sockets(
    pid: u32,
    base: u64,
    devices: u32,
    started: Instant,
    deadline: Instant,
) -> (Option<Duration>, u64) {
    let mut connected = 0;
    while Instant::now() < deadline {
        connected = open_sockets(pid).saturating_sub(base);
        if connected >= u64::from(devices) {
            return (Some(started.elapsed()), connected);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (None, connected)
}

/// The process named "broker"'s CPU between two snapshots, in cores.
fn broker_cores(a: &cpu::Snapshot, b: &cpu::Snapshot) -> Option<f64> {
    let usage = cpu::usage(a, b, super::cores());
    usage
        .process("broker")
        .map(|secs| secs / usage.wall.as_secs_f64())
}

pub async fn run_fleet(dir: &Path, options: &FleetOptions) -> anyhow::Result<FleetRun> {
    let replicas = options.replicas.max(1);
    let stack_options = StackOptions {
        registry: true,
        broker_device_auth: true,
        broker_replicas: replicas,
        broker_processes: Some(BrokerProcessConfig::new(&options.stack_bin, "")),
        ..StackOptions::default()
    };
    let mut stack = tokio::time::timeout(
        Duration::from_secs(180),
        Stack::start(&dir.join("stack"), stack_options),
    )
    .await
    .context("the stack did not start within 180 s")?
    .context("starting the stack")?;
    let result = drive_fleet(&mut stack, dir, options).await;
    stack.stop().await;
    result
}

/// The fleet's run, step by step: provision, start the simulators and the
/// latency probe, wait until every device is in, kill one replica a third
/// into the load and watch its devices come back, then count what was
/// stored.
async fn drive_fleet(
    stack: &mut Stack,
    dir: &Path,
    options: &FleetOptions,
) -> anyhow::Result<FleetRun> {
    let run_id = format!("fl{}", warmhouse_service_kit::now_ms() % 1_000_000);
    let homes = options.devices.div_ceil(4).max(1);
    let devices = homes * 4;
    let http = stack
        .api_client_builder()?
        .timeout(Duration::from_secs(30))
        .build()
        .context("HTTP client")?;
    let registry = RegistryApi::new(stack, http)?;

    eprintln!("   provisioning {devices} devices in {homes} homes");
    let shares = shares(homes);
    let provisioned = provision_fleet(&registry, dir, &run_id, &shares).await?;
    let provisioned_in = provisioned.took;
    eprintln!("   provisioned in {:.0} s", provisioned_in.as_secs_f64());

    let ports: Vec<u16> = stack
        .broker_processes
        .iter()
        .map(|b| b.mqtt_v4_port)
        .collect();
    let sims = spawn_fleet(
        dir,
        options,
        &ports,
        &shares,
        &run_id,
        &provisioned.credential_files,
    )?;
    let started = Instant::now();
    let load_end = started + options.connect_spread + options.duration;
    let probe = start_probe(stack, provisioned.probe, load_end).await?;

    let admin_addrs = admin_addrs(stack);
    // The probe's own connection and each replica's self-probe count too.
    let fleet_held = u64::from(devices);
    let connect_deadline = started + options.connect_spread + Duration::from_secs(120);
    let all_connected_after =
        wait_all_connected(stack, &admin_addrs, fleet_held, started, connect_deadline).await?;
    let rss_per_connection = broker_rss_per_connection(stack, devices);

    let load = run_load(
        stack,
        &registry,
        sims,
        &admin_addrs,
        fleet_held,
        options,
        load_end,
    )
    .await?;
    let published_for = started.elapsed();
    let totals = &load.totals;
    let (drain, tally) = count_stored(stack, &run_id, totals.readings_acked).await?;
    let latency = e2e::probe_result(probe, Duration::from_secs(60)).await;
    Ok(FleetRun {
        devices,
        replicas: stack.broker_processes.len(),
        simulators: shares.len(),
        provisioned_in,
        all_connected_after,
        readings_acked: totals.readings_acked,
        messages_acked: totals.messages_acked,
        messages_unacked: totals.messages_unacked,
        reconnects: totals.reconnects,
        tally,
        drain,
        latency,
        rss_per_connection,
        cpu_cores: load.cpu_cores,
        load_window: load.window,
        published_for,
        restart: load.restart,
    })
}

/// What provisioning made: a credentials file per simulator share, the
/// latency probe's device, and how long it took.
struct Provisioned {
    credential_files: Vec<PathBuf>,
    probe: ProbeDevice,
    took: Duration,
}

/// The latency probe's device and its password.
struct ProbeDevice {
    id: String,
    password: String,
}

/// Provisions every home, device and password through the registry, as an
/// installer would (each password is hashed with Argon2id once), and writes
/// each share's passwords where its simulator reads them.
async fn provision_fleet(
    registry: &RegistryApi,
    dir: &Path,
    run_id: &str,
    shares: &[SimShare],
) -> anyhow::Result<Provisioned> {
    let started = Instant::now();
    let mut credential_files = Vec::new();
    for (i, share) in shares.iter().enumerate() {
        let passwords = provision(registry, run_id, share).await?;
        let file = dir.join(format!("credentials-{i}.json"));
        let body: serde_json::Map<String, serde_json::Value> = passwords
            .into_iter()
            .map(|(id, password)| (id, json!({"kind": "password", "password": password})))
            .collect();
        std::fs::write(&file, serde_json::to_vec(&body)?)
            .with_context(|| format!("writing {}", file.display()))?;
        credential_files.push(file);
    }
    let id = format!("probe-{run_id}");
    let password = provision_probe(registry, &id).await?;
    Ok(Provisioned {
        credential_files,
        probe: ProbeDevice { id, password },
        took: started.elapsed(),
    })
}

/// One simulator process a share, each with its credentials, spreading its
/// devices over every replica and their starts over the connect spread.
fn spawn_fleet(
    dir: &Path,
    options: &FleetOptions,
    ports: &[u16],
    shares: &[SimShare],
    run_id: &str,
    credential_files: &[PathBuf],
) -> anyhow::Result<Vec<Simulator>> {
    let spread_ms = options.connect_spread.as_millis().to_string();
    let duration_secs = (options.connect_spread + options.duration)
        .as_secs()
        .to_string();
    let interval_ms = options.interval.as_millis().to_string();
    let mut sims = Vec::new();
    for (i, (share, credentials)) in shares.iter().zip(credential_files).enumerate() {
        sims.push(Simulator::spawn(
            dir,
            i,
            &options.sim_bin,
            ports,
            share,
            &[
                "--interval-ms",
                &interval_ms,
                "--duration-secs",
                &duration_secs,
                "--run-id",
                run_id,
                "--start-delay-spread-ms",
                &spread_ms,
                "--drain-timeout-secs",
                "60",
            ],
            Some(credentials),
        )?);
    }
    Ok(sims)
}

/// Connects the latency probe and starts it publishing until `load_end`.
/// It publishes on the last replica: the first one is killed.
async fn start_probe(
    stack: &Stack,
    device: ProbeDevice,
    load_end: Instant,
) -> anyhow::Result<tokio::task::JoinHandle<e2e::Latency>> {
    let probe_port = stack
        .broker_processes
        .last()
        .context("no broker replica")?
        .mqtt_v4_port;
    let connection = e2e::Connected::connect(probe_port, &device.id, Some(&device.password))
        .await
        .context("the latency probe's connection")?;
    Ok(tokio::spawn(e2e::probe(
        connection,
        stack.api_client_builder()?,
        stack.query_url(),
        device.id,
        load_end,
    )))
}

/// Polls the replicas' connection counts every 500 ms until they hold
/// `fleet_held` or `deadline` passes; fails as soon as a replica exits.
/// Returns when all were in, from `started`.
async fn wait_all_connected(
    stack: &mut Stack,
    admin_addrs: &[SocketAddr],
    fleet_held: u64,
    started: Instant,
    deadline: Instant,
) -> anyhow::Result<Option<Duration>> {
    while Instant::now() < deadline {
        brokers_alive(stack)?;
        if connections_held(admin_addrs).await >= fleet_held {
            return Ok(Some(started.elapsed()));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Ok(None)
}

/// Broker RSS of all replicas over the fleet's devices (`None` when no
/// replica's RSS could be read).
fn broker_rss_per_connection(stack: &Stack, devices: u32) -> Option<f64> {
    let total: u64 = stack
        .broker_processes
        .iter()
        .filter_map(|b| b.pid().and_then(rss_bytes))
        .sum();
    (total > 0).then(|| total as f64 / f64::from(devices))
}

/// The processes whose CPU the load is charged to, by group: the bench
/// itself (registry, writer and query API run in it), the replicas, the
/// simulators and the third-party servers.
fn watched_processes(stack: &Stack, sims: &[Simulator], me: u32) -> Vec<(String, u32)> {
    let mut watched = vec![("bench (registry, writer, query)".to_string(), me)];
    for broker in &stack.broker_processes {
        if let Some(pid) = broker.pid() {
            watched.push(("brokers".to_string(), pid));
        }
    }
    for sim in sims {
        if let Some(pid) = sim.pid {
            watched.push(("simulators".to_string(), pid));
        }
    }
    for name in ["influxd", "tansu", "postgres"] {
        for pid in cpu::children_named(me, name) {
            watched.push((name.to_string(), pid));
        }
    }
    watched
}

/// The load from every device connected until the simulators ended.
struct LoadRun {
    /// Every simulator's summary added up.
    totals: SimSummary,
    window: Duration,
    /// CPU over the load, in cores, by process group.
    cpu_cores: Vec<(String, f64)>,
    restart: Option<RestartRun>,
}

/// The rest of the load once every device is in: a third into it one
/// replica is killed and comes back; then the simulators end (their drain
/// included in the CPU figures). Fails as soon as a replica exits on its own.
async fn run_load(
    stack: &mut Stack,
    registry: &RegistryApi,
    sims: Vec<Simulator>,
    admin_addrs: &[SocketAddr],
    fleet_held: u64,
    options: &FleetOptions,
    load_end: Instant,
) -> anyhow::Result<LoadRun> {
    let me = std::process::id();
    let watched = watched_processes(stack, &sims, me);
    let cpu_before = cpu::snapshot(&watched, me);
    let load_started = Instant::now();
    keep_alive_until(stack, Instant::now() + options.duration / 3).await?;
    let restart = kill_and_recover(stack, registry, admin_addrs, fleet_held).await?;
    keep_alive_until(stack, load_end).await?;
    brokers_alive(stack)?;
    let totals = finish_all(
        sims,
        options.connect_spread + options.duration + Duration::from_secs(180),
    )
    .await?;
    let window = load_started.elapsed();
    Ok(LoadRun {
        totals,
        window,
        cpu_cores: cpu_by_group(&cpu_before, &cpu::snapshot(&watched, me)),
        restart,
    })
}

/// Waits until `until`, failing as soon as a replica exits on its own.
async fn keep_alive_until(stack: &mut Stack, until: Instant) -> anyhow::Result<()> {
    while Instant::now() < until {
        brokers_alive(stack)?;
        tokio::time::sleep(Duration::from_secs(1).min(until - Instant::now())).await;
    }
    Ok(())
}

/// Kills the first replica with SIGKILL and measures how soon the others
/// hold the whole fleet again and what the registry's password checks did
/// meanwhile; then restarts it. `None` with a single replica (nowhere for
/// its devices to go).
async fn kill_and_recover(
    stack: &mut Stack,
    registry: &RegistryApi,
    admin_addrs: &[SocketAddr],
    fleet_held: u64,
) -> anyhow::Result<Option<RestartRun>> {
    if stack.broker_processes.len() <= 1 {
        return Ok(None);
    }
    let victim_connections = broker_connections(admin_addrs[0]).await.unwrap_or(0);
    let checks_before = password_checks(registry).await;
    stack.broker_processes[0].kill();
    let killed = Instant::now();
    let others = &admin_addrs[1..];
    let mut back_after = None;
    while killed.elapsed() < Duration::from_secs(120) {
        if connections_held(others).await >= fleet_held {
            back_after = Some(killed.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let checks_after = password_checks(registry).await;
    // Back with the same spool: what it had acknowledged and not yet
    // handed to Kafka goes now.
    stack.broker_processes[0]
        .start_again()
        .await
        .context("restarting the killed replica")?;
    Ok(Some(RestartRun {
        devices: victim_connections,
        back_after,
        remembered: checks_after.0.saturating_sub(checks_before.0),
        verified: checks_after.1.saturating_sub(checks_before.1),
    }))
}

/// Waits for every simulator to end and adds up their summaries.
async fn finish_all(sims: Vec<Simulator>, timeout: Duration) -> anyhow::Result<SimSummary> {
    let mut totals = SimSummary::default();
    for sim in sims {
        let summary = sim.finish(timeout).await?;
        totals.readings_acked += summary.readings_acked;
        totals.messages_acked += summary.messages_acked;
        totals.messages_unacked += summary.messages_unacked;
        totals.reconnects += summary.reconnects;
    }
    Ok(totals)
}

/// CPU between two snapshots in cores, added up by process group.
fn cpu_by_group(before: &cpu::Snapshot, after: &cpu::Snapshot) -> Vec<(String, f64)> {
    let usage = cpu::usage(before, after, super::cores());
    let mut by_group: BTreeMap<String, f64> = BTreeMap::new();
    for (name, secs) in &usage.processes {
        if let Some(secs) = secs {
            *by_group.entry(name.clone()).or_default() += secs / usage.wall.as_secs_f64();
        }
    }
    by_group.into_iter().collect()
}

/// Waits (at most 300 s) until InfluxDB holds every acknowledged reading,
/// then counts the run by device and seq; an irregular series is printed
/// with its missing seqs, to look into. Returns (drain time, tally).
async fn count_stored(
    stack: &Stack,
    run_id: &str,
    readings_acked: u64,
) -> anyhow::Result<(Option<Duration>, anyhow::Result<Tally>)> {
    let influx = InfluxClient::new(InfluxSettings::new(stack.influxd.url(), "warmhouse"))?;
    let done = Instant::now();
    let mut drain = None;
    while done.elapsed() < Duration::from_secs(300) {
        if let Ok(stored) = e2e::count_run(&influx, run_id).await {
            if stored >= readings_acked {
                drain = Some(done.elapsed());
                break;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let verification = e2e::verify(&influx, run_id).await;
    if let Ok(v) = &verification {
        for series in &v.irregular {
            eprintln!("   irregular series: {series}");
            if let Some((device, metric)) = series.split(':').next().and_then(|s| s.split_once(' '))
            {
                eprintln!(
                    "     missing seqs: {:?}",
                    missing_seqs(&influx, device, metric).await
                );
            }
        }
    }
    let tally = verification.map(|v| Tally::new(readings_acked, &v, drain.is_some()));
    Ok((drain, tally))
}

/// Fails the phase as soon as a broker replica has exited on its own (the
/// one the phase kills is restarted before this is asked again).
fn brokers_alive(stack: &mut Stack) -> anyhow::Result<()> {
    for broker in &mut stack.broker_processes {
        broker
            .check_alive()
            .with_context(|| format!("broker replica {} exited during the load", broker.name))?;
    }
    Ok(())
}

/// The homes one simulator process runs.
#[derive(Debug, Clone, Copy)]
struct SimShare {
    first_home: u32,
    homes: u32,
}

/// `homes` split over as few simulator processes as the open-file limit
/// allows, evenly.
fn shares(homes: u32) -> Vec<SimShare> {
    let per_process_homes = DEVICES_PER_SIMULATOR / 4;
    let processes = homes.div_ceil(per_process_homes).max(1);
    let each = homes.div_ceil(processes);
    (0..processes)
        .map(|i| SimShare {
            first_home: 1 + i * each,
            homes: each.min(homes.saturating_sub(i * each)),
        })
        .filter(|share| share.homes > 0)
        .collect()
}

/// Registers the share's homes and devices in the registry and issues each
/// device a password; returns (device id, password).
async fn provision(
    registry: &RegistryApi,
    run_id: &str,
    share: &SimShare,
) -> anyhow::Result<Vec<(String, String)>> {
    let config = super::sim_config(
        &[1883],
        &[
            "--homes",
            &share.homes.to_string(),
            "--first-home",
            &share.first_home.to_string(),
            "--run-id",
            run_id,
        ],
    )?;
    let RegistryApi { http, url, token } = registry;
    register_fleet(http, url, token, &config).await?;
    let devices = config
        .device_specs()?
        .into_iter()
        .map(|s| s.device_id.to_string());
    issue_passwords(http, url, token, devices).await
}

/// The latency probe's device (in a home of its own) and its password.
async fn provision_probe(registry: &RegistryApi, device: &str) -> anyhow::Result<String> {
    let RegistryApi { http, url, token } = registry;
    let home = format!("probe-home-{device}");
    let home_body = json!({"id": home, "name": "Latency probe"});
    create(http, &format!("{url}/api/v1/homes"), token, &home_body).await?;
    let device_body = json!({"id": device, "home_id": home, "kind": "climate_sensor", "name": "Latency probe", "status": "active"});
    create(http, &format!("{url}/api/v1/devices"), token, &device_body).await?;
    let mut issued = issue_passwords(http, url, token, [device.to_string()]).await?;
    issued
        .pop()
        .map(|(_, password)| password)
        .context("no password issued for the probe")
}

/// Seqs below the highest stored one that `device` has no `metric` point
/// for (to look into a failed run).
async fn missing_seqs(influx: &InfluxClient, device: &str, metric: &str) -> Vec<u64> {
    let query = format!(r#"SELECT "seq" FROM "raw"."{metric}" WHERE "device_id" = '{device}'"#);
    let Ok(results) = influx.query(&query).await else {
        return Vec::new();
    };
    let seen: std::collections::BTreeSet<u64> = results
        .iter()
        .flat_map(|r| &r.series)
        .flat_map(|s| &s.values)
        .filter_map(|row| row.get(1).and_then(serde_json::Value::as_u64))
        .collect();
    let highest = seen.iter().next_back().copied().unwrap_or(0);
    (1..highest).filter(|seq| !seen.contains(seq)).collect()
}

/// Each replica's admin address (its metrics), in replica order.
fn admin_addrs(stack: &Stack) -> Vec<SocketAddr> {
    stack
        .broker_processes
        .iter()
        .map(|b| b.admin_addr)
        .collect()
}

/// Connections the replicas with these admin addresses hold together (one
/// that does not answer counts none).
async fn connections_held(admin_addrs: &[SocketAddr]) -> u64 {
    let mut total = 0u64;
    for addr in admin_addrs {
        total += broker_connections(*addr).await.unwrap_or(0);
    }
    total
}

/// `warmhouse_broker_connections` of the replica with this admin address.
async fn broker_connections(admin: SocketAddr) -> Option<u64> {
    let text = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    sample_value(&text, "warmhouse_broker_connections").map(|v| v as u64)
}

/// The registry's password checks so far: (remembered, verified).
async fn password_checks(registry: &RegistryApi) -> (u64, u64) {
    let Ok(response) = registry
        .http
        .get(format!("{}/metrics", registry.url))
        .send()
        .await
    else {
        return (0, 0);
    };
    let text = response.text().await.unwrap_or_default();
    let value = |outcome: &str| {
        sample_value(
            &text,
            &format!("warmhouse_registry_password_checks_total{{outcome=\"{outcome}\"}}"),
        )
        .map_or(0, |v| v as u64)
    };
    (value("remembered"), value("verified"))
}

/// Sockets a process holds (its open file descriptors that are sockets).
fn open_sockets(pid: u32) -> u64 {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter(|entry| {
            std::fs::read_link(entry.path())
                .map(|target| target.to_string_lossy().starts_with("socket:"))
                .unwrap_or(false)
        })
        .count() as u64
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// What a `warmhouse-sim` process printed at its end.
#[derive(Debug, Default)]
struct SimSummary {
    readings_acked: u64,
    messages_acked: u64,
    messages_unacked: u64,
    reconnects: u64,
}

/// A `warmhouse-sim` process (a process of its own: one may hold 20,000
/// open files).
struct Simulator {
    child: tokio::process::Child,
    pid: Option<u32>,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Simulator {
    fn spawn(
        dir: &Path,
        index: usize,
        program: &Path,
        ports: &[u16],
        share: &SimShare,
        args: &[&str],
        credentials: Option<&Path>,
    ) -> anyhow::Result<Self> {
        if !program.is_file() {
            bail!(
                "{} not found: build it with `cargo build --release -p warmhouse-simulator`",
                program.display()
            );
        }
        let stdout = dir.join(format!("sim-{index}.out"));
        let stderr = dir.join(format!("sim-{index}.log"));
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let mut command = tokio::process::Command::new(program);
        command
            .args(["--host", "127.0.0.1", "--port", &ports.join(",")])
            .args(["--homes", &share.homes.to_string()])
            .args(["--first-home", &share.first_home.to_string()])
            .args(["--devices-per-home", "4"])
            .args(args)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::from(
                std::fs::File::create(&stdout)
                    .with_context(|| format!("creating {}", stdout.display()))?,
            ))
            .stderr(Stdio::from(
                std::fs::File::create(&stderr)
                    .with_context(|| format!("creating {}", stderr.display()))?,
            ))
            .kill_on_drop(true);
        if let Some(credentials) = credentials {
            command.arg("--credentials").arg(credentials);
        }
        let child = command
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self {
            pid: child.id(),
            child,
            stdout,
            stderr,
        })
    }

    /// Waits for the process to end and reads its summary.
    async fn finish(mut self, timeout: Duration) -> anyhow::Result<SimSummary> {
        let status = match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.context("waiting for warmhouse-sim")?,
            Err(_) => {
                let _ = self.child.start_kill();
                bail!("warmhouse-sim did not finish within {timeout:?}");
            }
        };
        let out = std::fs::read_to_string(&self.stdout).unwrap_or_default();
        let field = |label: &str| -> Option<&str> {
            out.lines()
                .find_map(|line| line.strip_prefix(label))
                .map(str::trim)
        };
        let first_number =
            |text: Option<&str>| -> Option<u64> { text?.split_whitespace().next()?.parse().ok() };
        let Some(readings_acked) = first_number(field("readings acked:")) else {
            let log = std::fs::read_to_string(&self.stderr).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            bail!(
                "warmhouse-sim ended ({status}) without a summary; its log ends:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        };
        // "messages: G generated, S sent, A acked, U unacked"
        let messages: Vec<u64> = field("messages:")
            .unwrap_or_default()
            .split(',')
            .filter_map(|part| part.split_whitespace().next()?.parse().ok())
            .collect();
        Ok(SimSummary {
            readings_acked,
            messages_acked: messages.get(2).copied().unwrap_or(0),
            messages_unacked: messages.get(3).copied().unwrap_or(0),
            reconnects: first_number(field("reconnects:")).unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fleet_is_split_evenly_within_the_open_file_limit() {
        let split = shares(25_000);
        assert_eq!(split.len(), 6);
        assert_eq!(split.iter().map(|s| s.homes).sum::<u32>(), 25_000);
        assert!(split.iter().all(|s| s.homes * 4 <= DEVICES_PER_SIMULATOR));
        assert_eq!(split[1].first_home, split[0].first_home + split[0].homes);
        assert_eq!(shares(10).len(), 1);
    }
}
