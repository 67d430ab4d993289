//! `warmhouse-stack up`: the whole pipeline on this machine with simulated
//! homes, for trying Warmhouse out. Ctrl-C stops everything.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use warmhouse_devstack::KafkaStorage;
use warmhouse_stack::gateway::RateLimit;
use warmhouse_stack::{Stack, StackOptions};

#[derive(Parser)]
#[command(name = "warmhouse-stack", about = "Run the Warmhouse pipeline locally")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Start tansu, influxd and every service, then simulated homes.
    Up(UpArgs),
    /// Run one MQTT broker replica, exactly as `warmhouse-broker` does (the
    /// system tests and the benchmark start replicas as processes of their
    /// own this way, to kill and restart them).
    #[command(hide = true)]
    Broker(warmhouse_broker::BrokerConfig),
}

#[derive(clap::Args)]
struct UpArgs {
    /// Working directory for data and logs (wiped at start).
    #[arg(long, default_value = ".stack")]
    dir: PathBuf,
    /// MQTT port devices connect to (the first broker replica; the others
    /// listen on the ports after it).
    #[arg(long, default_value_t = 1883)]
    mqtt_port: u16,
    /// MQTT broker replicas; the simulated devices are spread over them
    /// and move to another when theirs goes away.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=9))]
    broker_replicas: u8,
    /// Port of the telemetry query API.
    #[arg(long, default_value_t = 8081)]
    query_port: u16,
    /// Port of the device registry (devices, state, commands).
    #[arg(long, default_value_t = 8082)]
    registry_port: u16,
    /// Port of the API gateway (nginx): the entry point to every REST API.
    #[arg(long, default_value_t = 8080)]
    gateway_port: u16,
    /// Port of Prometheus, which scrapes every service's /metrics (not
    /// 9090: Debian's package starts a system Prometheus there).
    #[arg(long, default_value_t = 9190)]
    prometheus_port: u16,
    /// Simulated homes (0: start no simulator).
    #[arg(long, default_value_t = 5)]
    homes: u32,
    #[arg(long, default_value_t = 4)]
    devices_per_home: u32,
    /// Milliseconds between two messages of one device.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// tansu brokers; more than one form a cluster sharing one SQLite store,
    /// and every client is given all of them (docs/adr/0018).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=9))]
    kafka_brokers: u8,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    if std::env::var_os("RUST_LOG").is_none() {
        std::env::set_var("RUST_LOG", "info,rumqttd=warn,librdkafka=warn,rdkafka=warn");
    }
    match Cli::parse().command {
        Command::Up(args) => up(args).await,
        Command::Broker(config) => {
            config.log.init()?;
            warmhouse_broker::start(config)
                .await?
                .run_until_signal()
                .await
        }
    }
}

/// Starts the stack and the simulated homes, says where everything is,
/// and runs until Ctrl-C or until a process of the stack dies; then stops
/// it all and ends the process.
async fn up(args: UpArgs) -> anyhow::Result<()> {
    let dir = fresh_dir(&args.dir)?;
    let mut stack = Stack::start(&dir, stack_options(&args)).await?;

    let (stop_sim, sim_stopped) = tokio::sync::oneshot::channel::<()>();
    let registry = stack
        .registry_url()
        .context("the local stack runs a registry")?;
    let simulator = if args.homes > 0 {
        Some(start_simulator(&stack, &args, &registry, sim_stopped).await?)
    } else {
        None
    };

    let api = stack
        .gateway_url()
        .context("the local stack runs the gateway")?;
    let token = stack.admin_token()?;
    print_where_to_look(&stack, &dir, &registry, &api, &token)?;
    if simulator.is_some() {
        tokio::spawn(show_first_telemetry(
            format!("{api}/api/v1/homes/home-0001/telemetry/latest"),
            token,
        ));
    }

    let died = run_until_signal_or_death(&mut stack).await;
    if let Some(err) = &died {
        eprintln!("\na process of the stack died: {err:#}\nstopping the rest ...");
    } else {
        println!("\nstopping ...");
    }
    let _ = stop_sim.send(());
    if let Some(simulator) = simulator {
        stop_simulator(simulator).await;
    }
    stack.stop().await;
    println!("stopped; nothing is left running.");
    if died.is_some() {
        std::process::exit(1);
    }
    // Kafka clients closing in the background would keep the runtime alive
    // while they retry a broker that is gone; everything that matters has
    // stopped, so end the process here.
    std::process::exit(0)
}

/// `dir` emptied (a previous run's data would mix with this one's), as an
/// absolute path: the stores are started with it from other directories.
fn fresh_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("wiping {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    dir.canonicalize().context("resolving the stack directory")
}

/// The whole pipeline on the fixed ports `args` names, Kafka kept on disk.
fn stack_options(args: &UpArgs) -> StackOptions {
    StackOptions {
        kafka_storage: KafkaStorage::Sqlite,
        kafka_brokers: usize::from(args.kafka_brokers),
        mqtt_port: Some(args.mqtt_port),
        query_port: Some(args.query_port),
        registry: true,
        registry_port: Some(args.registry_port),
        gateway: true,
        gateway_port: Some(args.gateway_port),
        gateway_rate_limit: RateLimit::RECOMMENDED,
        prometheus: true,
        prometheus_port: Some(args.prometheus_port),
        broker_replicas: usize::from(args.broker_replicas),
        broker_kafka_timeout: Duration::from_secs(10),
        ..StackOptions::default()
    }
}

type SimulatorTask = tokio::task::JoinHandle<anyhow::Result<warmhouse_simulator::Summary>>;

/// Registers the simulated homes in the registry, like real ones, so it
/// shows their state and can command them; then runs them until `stopped`.
async fn start_simulator(
    stack: &Stack,
    args: &UpArgs,
    registry: &str,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<SimulatorTask> {
    let homes = args.homes.to_string();
    let devices = args.devices_per_home.to_string();
    let interval = args.interval_ms.to_string();
    let config = stack.simulator(&[
        "--homes",
        &homes,
        "--devices-per-home",
        &devices,
        "--interval-ms",
        &interval,
        "--progress",
    ]);
    let registered = warmhouse_stack::fleet::register_fleet(
        &reqwest::Client::new(),
        registry,
        &stack.admin_token()?,
        &config,
    )
    .await
    .context("registering the simulated homes")?;
    println!("registered {registered} simulated devices in the device registry");
    Ok(tokio::spawn(warmhouse_simulator::run(config, async {
        let _ = stopped.await;
    })))
}

/// Where every service is and how to try it, with an admin `token`.
fn print_where_to_look(
    stack: &Stack,
    dir: &Path,
    registry: &str,
    api: &str,
    token: &str,
) -> anyhow::Result<()> {
    let query = stack.query_url();
    let prometheus = stack
        .prometheus_url()
        .context("the local stack runs Prometheus")?;
    print!("\n{}{}", mqtt_brokers(stack), kafka_brokers(stack));
    println!(
        "\nWarmhouse is running (data and logs in {dir}).\n\
         \n  The REST APIs want a bearer token. An admin's, valid {ttl_h} h:\
         \n    export TOKEN={token}\
         \n  Tokens for single homes: WARMHOUSE_JWT_SECRET={secret} warmhouse-token --home home-0001\
         \n    (cargo run -p warmhouse-service-kit --bin warmhouse-token -- --help)\n\
         \n  MQTT               127.0.0.1:{mqtt}   e.g. mosquitto_sub -p {mqtt} -t '/tenants/+/telemetry' -v (what devices of that replica publish)\
         \n  REST APIs          {api}   (gateway; Swagger UI of each API: {api}/docs/, Authorize with the token)\
         \n  Latest of a home   curl -s -H \"Authorization: Bearer $TOKEN\" {api}/api/v1/homes/home-0001/telemetry/latest\
         \n  Last hour, 1-min   curl -s -H \"Authorization: Bearer $TOKEN\" '{api}/api/v1/devices/home-0001-dev-01/telemetry?metric=temperature&agg=mean&every=1m'\
         \n  A device + state   curl -s -H \"Authorization: Bearer $TOKEN\" {api}/api/v1/devices/home-0001-dev-01\
         \n  Send a command     curl -s -H \"Authorization: Bearer $TOKEN\" -H 'Content-Type: application/json' -d '{{\"name\":\"set_target_temperature\",\"params\":{{\"temperature\":22.5}}}}' {api}/api/v1/devices/home-0001-dev-01/commands\
         \n  Its progress       curl -s -H \"Authorization: Bearer $TOKEN\" {api}/api/v1/devices/home-0001-dev-01/commands\
         \n  Services directly  query API {query}   registry {registry}   (the gateway allows {rate} r/s per client, burst {burst})\
         \n  Metrics            http://{broker}/metrics (first broker)  http://{writer}/metrics (ingest)  {query}/metrics (query)  {registry}/metrics (registry)\
         \n  Prometheus         {prometheus}   (every service scraped; Grafana dashboards in dashboards/)\
         \n  InfluxDB           influx -host 127.0.0.1 -port {influx_port} -database warmhouse -execute 'SHOW MEASUREMENTS'\
         \n\nCtrl-C stops everything.\n",
        dir = dir.display(),
        mqtt = stack.mqtt_port(),
        broker = stack.broker().admin_addr,
        writer = stack.writer.admin_addr,
        influx_port = stack.influxd.addr().port(),
        ttl_h = warmhouse_stack::TOKEN_TTL.as_secs() / 3600,
        secret = stack.jwt_secret(),
        rate = RateLimit::RECOMMENDED.per_second,
        burst = RateLimit::RECOMMENDED.burst,
    );
    Ok(())
}

/// Checks every 2 s that the stack's processes live, until Ctrl-C (`None`)
/// or until one has died (what it said).
async fn run_until_signal_or_death(stack: &mut Stack) -> Option<anyhow::Error> {
    let shutdown = warmhouse_service_kit::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return None,
            _ = tokio::time::sleep(Duration::from_secs(2)) => {
                if let Err(err) = stack.check_alive() {
                    return Some(err);
                }
            }
        }
    }
}

/// Waits for the simulator, told to stop, to drain and report.
async fn stop_simulator(simulator: SimulatorTask) {
    match tokio::time::timeout(Duration::from_secs(15), simulator).await {
        Ok(Ok(Ok(summary))) => println!("{summary}"),
        Ok(Ok(Err(err))) => eprintln!("simulator failed: {err:#}"),
        _ => eprintln!("simulator did not stop in time"),
    }
}

/// Where the MQTT broker replicas are, with their pids' advice.
fn mqtt_brokers(stack: &Stack) -> String {
    let mut text = String::new();
    for (replica, broker) in stack.brokers.iter().enumerate() {
        text.push_str(&format!(
            "  MQTT broker {replica}      127.0.0.1:{} (MQTT 3.1.1), 127.0.0.1:{} (MQTT 5), admin http://{}\n",
            broker.mqtt_v4_addr.port(),
            broker.mqtt_v5_addr.port(),
            broker.admin_addr,
        ));
    }
    text
}

/// Where the Kafka brokers are, and with a cluster how to try a failover.
fn kafka_brokers(stack: &Stack) -> String {
    let brokers = &stack.tansu.brokers;
    let list = brokers
        .iter()
        .map(|b| match b.pid() {
            Some(pid) => format!("{} (pid {pid})", b.bootstrap()),
            None => b.bootstrap(),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut text = format!("  Kafka (tansu)      {list}");
    if let Some(front) = stack.tansu.front() {
        text.push_str(&format!(
            "\n                     one SQLite store; clients bootstrap from all of them and \
             reach one live broker through {front}:\n                     `kill -9` one \
             and they move to another within a second"
        ));
    }
    text.push('\n');
    text
}

/// Waits until the first readings are queryable and prints them, so whoever
/// started the stack sees telemetry flowing end to end.
async fn show_first_telemetry(url: String, token: String) {
    let http = reqwest::Client::new();
    for _ in 0..120 {
        if let Ok(response) = http.get(&url).bearer_auth(&token).send().await {
            if response.status().is_success() {
                if let Ok(body) = response.text().await {
                    println!(
                        "\nTelemetry is flowing. curl -s -H \"Authorization: Bearer $TOKEN\" {url}\n{body}\n"
                    );
                    return;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("no telemetry visible at {url} after 60 s: check the logs above");
}
