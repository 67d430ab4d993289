//! Phase 5: command round trip under load. A simulated fleet publishes
//! telemetry (the load) while commands go to its thermostats at a steady
//! rate through the REST API. Each command's latency is from sending the
//! POST to the first GET that shows it `acked`, polled every 2 ms, so it is
//! what a client sees (REST in, device ack visible in REST).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::e2e::percentile;
use super::registry_api::RegistryApi;
use warmhouse_stack::fleet::register_fleet;
use warmhouse_stack::{Stack, StackOptions};

#[derive(Debug, Clone)]
pub struct CommandOptions {
    pub duration: Duration,
    /// Homes of the fleet (4 devices each; device 1 is a thermostat).
    pub homes: u32,
    /// Telemetry interval of each device (the load).
    pub interval_ms: u64,
    /// Commands sent a second, spread over the thermostats.
    pub rate: u32,
}

#[derive(Debug, Clone, Default)]
pub struct CommandResult {
    pub sent: u64,
    pub acked: u64,
    /// Ended in another status, or not acked within 10 s.
    pub not_acked: u64,
    pub first_problem: Option<String>,
    /// Round-trip latencies in milliseconds.
    pub latencies_ms: Vec<f64>,
    /// Where the time went, from the registry's timestamps (ms): stored →
    /// on Kafka (sent), → handed to the device (delivered), → ack applied.
    pub to_sent_ms: Vec<f64>,
    pub to_delivered_ms: Vec<f64>,
    pub to_acked_ms: Vec<f64>,
    /// Readings/s the simulator published meanwhile.
    pub readings_per_sec: f64,
    pub devices: usize,
    /// How long the first command to every thermostat took, all at once
    /// (consumer groups joining): reported, not part of the figures.
    pub warm_up: Duration,
}

impl CommandResult {
    pub fn p(&self, q: f64) -> Option<f64> {
        percentile(&self.latencies_ms, q)
    }
}

pub async fn run(dir: &Path, options: &CommandOptions) -> anyhow::Result<CommandResult> {
    let stack = Stack::start(
        dir,
        StackOptions {
            registry: true,
            ..StackOptions::default()
        },
    )
    .await?;
    let result = drive(&stack, options).await;
    stack.stop().await;
    result
}

/// The command phase, step by step: register the fleet, start its load and
/// wait for every thermostat, warm up, then send commands at the rate for
/// the duration and stop the load.
async fn drive(stack: &Stack, options: &CommandOptions) -> anyhow::Result<CommandResult> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .context("HTTP client")?;
    let registry = RegistryApi::new(stack, http)?;
    let homes = options.homes.max(1).to_string();
    let interval = options.interval_ms.to_string();
    let sim_args = [
        "--homes",
        homes.as_str(),
        "--devices-per-home",
        "4",
        "--interval-ms",
        interval.as_str(),
        "--run-id",
        "bcmd",
    ];
    let sim = stack.simulator(&sim_args);
    let devices = register_fleet(&registry.http, &registry.url, &registry.token, &sim).await?;
    let thermostats: Vec<String> = sim
        .device_specs()?
        .into_iter()
        .filter(|s| s.kind == warmhouse_simulator::DeviceKind::Thermostat)
        .map(|s| s.device_id.to_string())
        .collect();
    if thermostats.is_empty() {
        bail!("the fleet has no thermostat");
    }

    let (stop_sim, sim_stopped) = tokio::sync::oneshot::channel::<()>();
    let simulator = tokio::spawn(warmhouse_simulator::run(sim, async {
        let _ = sim_stopped.await;
    }));
    // Every thermostat online before the clock starts.
    for device in &thermostats {
        wait_online(&registry, device).await?;
    }
    let warm_up = warm_up(&registry, &thermostats).await?;

    let result = Arc::new(Mutex::new(CommandResult {
        warm_up,
        devices,
        ..CommandResult::default()
    }));
    send_commands(&registry, &thermostats, options, &result).await;
    let _ = stop_sim.send(());
    let summary = simulator
        .await
        .context("simulator task")?
        .context("simulator run")?;
    let mut result = result.lock().unwrap_or_else(|e| e.into_inner()).clone();
    result.readings_per_sec = summary.readings_per_sec();
    Ok(result)
}

/// Warm-up, not measured: one command to each thermostat, all at once, so
/// every consumer group has joined and every connection is open. How long
/// it took.
async fn warm_up(registry: &RegistryApi, thermostats: &[String]) -> anyhow::Result<Duration> {
    let warm_up = Instant::now();
    let mut warmers = Vec::new();
    for device in thermostats {
        let (registry, device) = (registry.clone(), device.clone());
        warmers.push(tokio::spawn(async move {
            round_trip(&registry, &device, 20.0).await
        }));
    }
    for warmer in warmers {
        warmer
            .await
            .context("warm-up task")?
            .context("warm-up command")?;
    }
    Ok(warm_up.elapsed())
}

/// Commands at `options.rate` a second for `options.duration`, to the
/// thermostats in turn, each followed to its end in a task of its own;
/// returns once every one has ended, each recorded in `result`.
async fn send_commands(
    registry: &RegistryApi,
    thermostats: &[String],
    options: &CommandOptions,
    result: &Arc<Mutex<CommandResult>>,
) {
    let period = Duration::from_secs_f64(1.0 / f64::from(options.rate.max(1)));
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let started = Instant::now();
    let mut waiters = Vec::new();
    let mut n: u64 = 0;
    while started.elapsed() < options.duration {
        ticker.tick().await;
        let device = thermostats[(n as usize) % thermostats.len()].clone();
        let temperature = 18.0 + (n % 8) as f64 * 0.5;
        n += 1;
        let (registry, result) = (registry.clone(), result.clone());
        waiters.push(tokio::spawn(async move {
            let outcome = round_trip(&registry, &device, temperature).await;
            result
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .record(outcome);
        }));
    }
    for waiter in waiters {
        let _ = waiter.await;
    }
}

impl CommandResult {
    /// One command's outcome: its latency and stages, or why it was not
    /// acked.
    fn record(&mut self, outcome: anyhow::Result<(f64, Option<[f64; 3]>)>) {
        self.sent += 1;
        match outcome {
            Ok((ms, stages)) => {
                self.acked += 1;
                self.latencies_ms.push(ms);
                if let Some([sent, delivered, acked]) = stages {
                    self.to_sent_ms.push(sent);
                    self.to_delivered_ms.push(delivered);
                    self.to_acked_ms.push(acked);
                }
            }
            Err(err) => {
                self.not_acked += 1;
                self.first_problem.get_or_insert(format!("{err:#}"));
            }
        }
    }
}

/// POST a command, then GET it every 2 ms until it is acked. Returns the
/// latency and the registry's stage durations.
async fn round_trip(
    registry: &RegistryApi,
    device: &str,
    temperature: f64,
) -> anyhow::Result<(f64, Option<[f64; 3]>)> {
    let RegistryApi { http, url, token } = registry;
    let started = Instant::now();
    let response = http
        .post(format!("{url}/api/v1/devices/{device}/commands"))
        .bearer_auth(token)
        .json(&json!({"name": "set_target_temperature", "params": {"temperature": temperature}, "ttl_seconds": 30}))
        .send()
        .await?;
    if response.status() != reqwest::StatusCode::ACCEPTED {
        bail!("POST answered {}", response.status());
    }
    let command: Value = response.json().await?;
    let id = command["command_id"]
        .as_str()
        .context("no command_id")?
        .to_string();
    let command_url = format!("{url}/api/v1/devices/{device}/commands/{id}");
    loop {
        let status: Value = http
            .get(&command_url)
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        match status["status"].as_str() {
            Some("acked") => {
                return Ok((started.elapsed().as_secs_f64() * 1000.0, stages(&status)))
            }
            Some("failed") | Some("expired") => bail!("command ended {status}"),
            _ if started.elapsed() > Duration::from_secs(10) => {
                bail!("not acked within 10 s: {status}")
            }
            _ => tokio::time::sleep(Duration::from_millis(2)).await,
        }
    }
}

async fn wait_online(registry: &RegistryApi, device: &str) -> anyhow::Result<()> {
    let RegistryApi { http, url, token } = registry;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state: Value = http
            .get(format!("{url}/api/v1/devices/{device}/state"))
            .bearer_auth(token)
            .send()
            .await?
            .json()
            .await?;
        if state["presence"] == "online" {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{device} did not come online: {state}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (created → sent, sent → delivered, delivered → completed) in ms.
fn stages(command: &Value) -> Option<[f64; 3]> {
    let at = |field: &str| {
        command[field]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_micros() as f64 / 1000.0)
    };
    let (created, sent, delivered, completed) = (
        at("created_at")?,
        at("sent_at")?,
        at("delivered_at")?,
        at("completed_at")?,
    );
    Some([sent - created, delivered - sent, completed - delivered])
}
