use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::process::{find_program, free_port, http_get_status, ChildProcess};

/// InfluxDB 1.x (`influxd`, Debian package `influxdb`) as a child process.
pub struct Influxd {
    dir: PathBuf,
    http_port: u16,
    process: Option<ChildProcess>,
}

impl Influxd {
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let http_port = free_port()?;
        let rpc_port = free_port()?;
        let config = format!(
            r#"reporting-disabled = true
bind-address = "127.0.0.1:{rpc_port}"
[meta]
  dir = "{dir}/meta"
[data]
  dir = "{dir}/data"
  wal-dir = "{dir}/wal"
  query-log-enabled = false
[http]
  enabled = true
  bind-address = "127.0.0.1:{http_port}"
  log-enabled = false
  max-body-size = 0
[monitor]
  store-enabled = false
[subscriber]
  enabled = false
[continuous_queries]
  enabled = true
  log-enabled = false
"#,
            dir = dir.display()
        );
        std::fs::write(dir.join("influxdb.conf"), config).context("writing influxdb.conf")?;
        let mut influxd = Self {
            dir: dir.to_path_buf(),
            http_port,
            process: None,
        };
        influxd.start_again()?;
        Ok(influxd)
    }

    /// Base URL of the HTTP API (`/write`, `/query`, `/ping`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
    }

    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.process.is_some() {
            return Ok(());
        }
        let program = find_program(
            "influxd",
            "install Debian's `influxdb` package (scripts/install-deps.sh does)",
        )?;
        let mut command = Command::new(program);
        command.arg("-config").arg(self.dir.join("influxdb.conf"));
        let mut process = ChildProcess::spawn("influxd", command, &self.dir.join("influxd.log"))?;
        let ping = format!("{}/ping", self.url());
        let addr = SocketAddr::from(([127, 0, 0, 1], self.http_port));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if http_get_status(addr, "/ping") == Some(204) {
                break;
            }
            process.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "influxd did not answer {ping}; log:\n{}",
                    process.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.process = Some(process);
        Ok(())
    }

    /// Fails (with the log's tail) when the process died on its own; a
    /// stopped one (after `kill`) is fine.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.process.as_mut() {
            Some(process) => process.check_alive(),
            None => Ok(()),
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }
}
