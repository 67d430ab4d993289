//! An MQTT broker replica as a process of its own (`warmhouse-stack broker`,
//! which runs exactly what `warmhouse-broker` runs), so a test can `kill -9`
//! it, restart it on the same ports and spool, or roll it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use warmhouse_devstack::{free_port, http_get_status, ChildProcess};

/// How one replica is run.
#[derive(Debug, Clone)]
pub struct BrokerProcessConfig {
    /// The `warmhouse-stack` binary (`env!("CARGO_BIN_EXE_warmhouse-stack")`
    /// in this crate's tests).
    pub program: PathBuf,
    pub kafka_bootstrap: String,
    /// How long the replica waits for Kafka before spooling a record.
    pub kafka_timeout: Duration,
    /// Largest spool; a full spool holds PUBACKs.
    pub spool_max_bytes: u64,
    /// More `WARMHOUSE_BROKER_*` settings.
    pub env: Vec<(String, String)>,
}

impl BrokerProcessConfig {
    pub fn new(program: &Path, kafka_bootstrap: &str) -> Self {
        Self {
            program: program.to_path_buf(),
            kafka_bootstrap: kafka_bootstrap.to_string(),
            kafka_timeout: Duration::from_secs(3),
            spool_max_bytes: 1 << 30,
            env: Vec::new(),
        }
    }
}

/// One running (or killed) replica. Killed when dropped.
pub struct BrokerProcess {
    pub name: String,
    pub mqtt_v4_port: u16,
    pub mqtt_v5_port: u16,
    pub admin_addr: SocketAddr,
    pub spool_dir: PathBuf,
    config: BrokerProcessConfig,
    log: PathBuf,
    process: Option<ChildProcess>,
}

impl BrokerProcess {
    /// Starts replica `name` on free ports, its spool and log in `dir`, and
    /// waits until every listener passes the broker's self-probe.
    pub async fn start(
        dir: &Path,
        name: &str,
        config: &BrokerProcessConfig,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut replica = Self {
            name: name.to_string(),
            mqtt_v4_port: free_port()?,
            mqtt_v5_port: free_port()?,
            admin_addr: SocketAddr::from(([127, 0, 0, 1], free_port()?)),
            spool_dir: dir.join(format!("{name}-spool")),
            config: config.clone(),
            log: dir.join(format!("{name}.log")),
            process: None,
        };
        replica.start_again().await?;
        Ok(replica)
    }

    /// Starts the process again (same ports, same spool) after
    /// [`kill`](Self::kill) or [`terminate`](Self::terminate), and waits
    /// until it serves.
    pub async fn start_again(&mut self) -> anyhow::Result<()> {
        if self.process.is_some() {
            return Ok(());
        }
        let loopback = |port: u16| format!("127.0.0.1:{port}");
        let mut command = Command::new(&self.config.program);
        command
            .arg("broker")
            .env("RUST_LOG", "info,rumqttd=warn,librdkafka=warn,rdkafka=warn")
            // Plain text in the log file: no terminal colour codes.
            .env("NO_COLOR", "1")
            // The error a replica exits with is the last line of its log, not
            // a backtrace of the runtime's threads (panics keep theirs).
            .env("RUST_LIB_BACKTRACE", "0")
            .env("WARMHOUSE_BROKER_MQTT_V4_ADDR", loopback(self.mqtt_v4_port))
            .env("WARMHOUSE_BROKER_MQTT_V5_ADDR", loopback(self.mqtt_v5_port))
            .env("WARMHOUSE_BROKER_ADMIN_ADDR", self.admin_addr.to_string())
            .env("WARMHOUSE_BROKER_DEVICE_AUTH", "open")
            .env("WARMHOUSE_BROKER_INSTANCE_ID", &self.name)
            .env(
                "WARMHOUSE_BROKER_KAFKA_BOOTSTRAP",
                &self.config.kafka_bootstrap,
            )
            .env(
                "WARMHOUSE_BROKER_KAFKA_TIMEOUT_MS",
                self.config.kafka_timeout.as_millis().to_string(),
            )
            .env("WARMHOUSE_BROKER_SPOOL_DIR", &self.spool_dir)
            .env(
                "WARMHOUSE_BROKER_SPOOL_MAX_BYTES",
                self.config.spool_max_bytes.to_string(),
            )
            .envs(self.config.env.iter().map(|(k, v)| (k, v)));
        self.process = Some(ChildProcess::spawn(&self.name, command, &self.log)?);
        self.wait_ready(Duration::from_secs(30)).await
    }

    /// Waits until `/readyz` says every listener serves.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(process) = self.process.as_mut() {
                process.check_alive()?;
            }
            let addr = self.admin_addr;
            let status = tokio::task::spawn_blocking(move || http_get_status(addr, "/readyz"))
                .await
                .context("ready check task")?;
            if status == Some(200) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "broker {} not ready after {timeout:?}; log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL: nothing flushed, nothing said goodbye.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// SIGTERM, as an orchestrator stops a pod, then SIGKILL after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        if let Some(mut process) = self.process.take() {
            process.terminate(grace);
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(ChildProcess::pid)
    }

    /// Fails with the log's tail when the process died on its own.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.process.as_mut() {
            Some(process) => process.check_alive(),
            None => Ok(()),
        }
    }

    /// The last 40 lines of its log.
    pub fn log_tail(&self) -> String {
        self.log_lines(None, 40)
    }

    /// The last `count` lines of its log that contain `containing` (all
    /// lines when `None`).
    pub fn log_lines(&self, containing: Option<&str>, count: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text
            .lines()
            .filter(|line| containing.is_none_or(|c| line.contains(c)))
            .collect();
        lines[lines.len().saturating_sub(count)..].join("\n")
    }

    /// The value of one sample of its `/metrics`, e.g.
    /// `warmhouse_bridge_spooled_total` or
    /// `warmhouse_bridge_commands_total{outcome="delivered"}`; 0 when absent.
    pub async fn metric(&self, sample: &str) -> anyhow::Result<f64> {
        let text = reqwest::get(format!("http://{}/metrics", self.admin_addr))
            .await
            .context("GET /metrics")?
            .text()
            .await
            .context("reading /metrics")?;
        Ok(sample_value(&text, sample).unwrap_or(0.0))
    }
}

/// The value of `sample` (name with its labels, as Prometheus' text format
/// writes them) in a `/metrics` page.
pub fn sample_value(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            (name == sample).then(|| value.parse().ok())?
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_one_sample_of_a_metrics_page() {
        let text = "# HELP x X\n# TYPE x counter\nx 3\nx_total{outcome=\"delivered\"} 7\nxy 9\n";
        assert_eq!(sample_value(text, "x"), Some(3.0));
        assert_eq!(
            sample_value(text, r#"x_total{outcome="delivered"}"#),
            Some(7.0)
        );
        assert_eq!(sample_value(text, "missing"), None);
    }
}
