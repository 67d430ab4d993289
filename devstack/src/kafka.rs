use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use crate::process::{find_program, free_port, wait_for_tcp, ChildProcess};

const TANSU_HINT: &str =
    "install it with `cargo install tansu --locked --version 0.6.0 --features dynostore,libsql` (scripts/install-deps.sh does)";

/// Where tansu keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaStorage {
    /// Fastest; lost when the broker stops.
    Memory,
    /// SQLite file in the broker's directory; survives a restart.
    Sqlite,
}

/// One tansu broker (a Kafka-protocol server) as a child process.
pub struct Tansu {
    dir: PathBuf,
    port: u16,
    storage: KafkaStorage,
    process: Option<ChildProcess>,
}

impl Tansu {
    /// Starts a broker on a free port with its data in `dir`.
    pub fn start(dir: &Path, storage: KafkaStorage) -> anyhow::Result<Self> {
        Self::start_on(dir, free_port()?, storage)
    }

    pub fn start_on(dir: &Path, port: u16, storage: KafkaStorage) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut tansu = Self {
            dir: dir.to_path_buf(),
            port,
            storage,
            process: None,
        };
        tansu.start_again()?;
        Ok(tansu)
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// (Re)starts the broker on the same port and storage.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.process.is_some() {
            return Ok(());
        }
        let program = find_program("tansu", TANSU_HINT)?;
        // tansu mangles absolute SQLite paths: give it one relative to its
        // working directory, which is the broker's own directory.
        let storage = match self.storage {
            KafkaStorage::Memory => "memory://tansu/".to_string(),
            KafkaStorage::Sqlite => "sqlite://tansu.db".to_string(),
        };
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let mut command = Command::new(program);
        command
            .current_dir(&self.dir)
            .arg("broker")
            .env("CLUSTER_ID", "warmhouse")
            .env("LISTENER_URL", &url)
            .env("ADVERTISED_LISTENER_URL", &url)
            .env("STORAGE_ENGINE", storage)
            .env("RUST_LOG", "warn");
        let mut process = ChildProcess::spawn("tansu", command, &self.dir.join("tansu.log"))?;
        if let Err(err) = wait_for_tcp(self.addr(), Duration::from_secs(30)) {
            process.check_alive()?;
            return Err(err.context("tansu did not start listening"));
        }
        self.process = Some(process);
        Ok(())
    }

    /// Kills the broker (SIGKILL): an outage, not a clean shutdown.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// Whether the broker process is still alive, and its last log lines:
    /// for the message of a test that failed.
    pub fn diagnose(&mut self) -> String {
        match self.process.as_mut() {
            None => "tansu is stopped".to_string(),
            Some(process) => match process.check_alive() {
                Ok(()) => format!("tansu is running; log tail:\n{}", process.log_tail()),
                Err(err) => format!("{err:#}"),
            },
        }
    }
}

/// Several tansu brokers on different ports sharing one SQLite file: they
/// behave as one cluster of stateless brokers (see docs/adr).
pub struct TansuCluster {
    pub brokers: Vec<Tansu>,
}

impl TansuCluster {
    pub fn start(dir: &Path, size: usize) -> anyhow::Result<Self> {
        let brokers = (0..size)
            .map(|_| Tansu::start(dir, KafkaStorage::Sqlite))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Self { brokers })
    }

    pub fn bootstrap(&self) -> String {
        self.brokers
            .iter()
            .map(Tansu::bootstrap)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Creates topics (ignoring "already exists") through the Kafka admin API.
pub async fn create_topics(
    bootstrap: &str,
    topics: &[&str],
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("creating Kafka admin client")?;
    let new_topics: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&new_topics, &options)
        .await
        .context("creating Kafka topics")?;
    for result in results {
        if let Err((topic, code)) = result {
            if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                bail!("creating topic {topic}: {code}");
            }
        }
    }
    Ok(())
}
