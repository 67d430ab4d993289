use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use crate::front::Front;
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
    /// Log file name in `dir`: brokers of a cluster share the directory
    /// (and so the SQLite file) but not their logs.
    log_name: String,
    /// What it tells clients to connect to: its own address unless it is
    /// one of a cluster, which advertise their front.
    advertised: Option<SocketAddr>,
    process: Option<ChildProcess>,
}

impl Tansu {
    /// Starts a broker on a free port with its data in `dir`.
    pub fn start(dir: &Path, storage: KafkaStorage) -> anyhow::Result<Self> {
        Self::start_on(dir, free_port()?, storage)
    }

    pub fn start_on(dir: &Path, port: u16, storage: KafkaStorage) -> anyhow::Result<Self> {
        Self::start_logging_to(dir, port, storage, "tansu.log", None)
    }

    fn start_logging_to(
        dir: &Path,
        port: u16,
        storage: KafkaStorage,
        log_name: &str,
        advertised: Option<SocketAddr>,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut tansu = Self {
            dir: dir.to_path_buf(),
            port,
            storage,
            log_name: log_name.to_string(),
            advertised,
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
        let advertised = format!("tcp://{}", self.advertised.unwrap_or(self.addr()));
        // Before it listens, tansu registers itself in its store, with no
        // busy timeout: next to busy brokers sharing the SQLite file that
        // can fail with "database is locked", and tansu exits. Try again.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut command = Command::new(&program);
            command
                .current_dir(&self.dir)
                .arg("broker")
                .env("CLUSTER_ID", "warmhouse")
                .env("LISTENER_URL", &url)
                .env("ADVERTISED_LISTENER_URL", &advertised)
                .env("STORAGE_ENGINE", &storage)
                .env("RUST_LOG", "warn");
            let mut process =
                ChildProcess::spawn("tansu", command, &self.dir.join(&self.log_name))?;
            match wait_for_tcp(self.addr(), Duration::from_secs(30)) {
                Ok(()) => {
                    self.process = Some(process);
                    return Ok(());
                }
                Err(err) => match process.check_alive() {
                    Err(exited) if attempts < 5 => {
                        tracing::warn!(error = %format!("{exited:#}"), "tansu exited while starting: trying again");
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    Err(exited) => return Err(exited),
                    Ok(()) => return Err(err.context("tansu did not start listening")),
                },
            }
        }
    }

    /// Kills the broker (SIGKILL): an outage, not a clean shutdown.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    /// Fails (with the log's tail) when the process died on its own; a
    /// stopped one (after `kill`) is fine.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.process.as_mut() {
            Some(process) => process.check_alive(),
            None => Ok(()),
        }
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// The broker's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(ChildProcess::pid)
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

/// Several tansu brokers on different ports sharing one SQLite file: one
/// cluster of stateless brokers. Every request is a transaction on the
/// shared file, so any live broker serves any partition, group and offset.
/// They all advertise a front (`front.rs`) that forwards to one live broker at a time;
/// clients are given every broker to bootstrap from
/// (docs/adr/0018-kafka-cluster-locally.md). With one broker it is a plain
/// [`Tansu`] in either storage, advertising itself.
pub struct TansuCluster {
    pub brokers: Vec<Tansu>,
    front: Option<Front>,
}

impl TansuCluster {
    /// Starts `size` brokers on free ports with their data in `dir`; more
    /// than one needs [`KafkaStorage::Sqlite`] (memory is not shared).
    pub fn start(dir: &Path, size: usize, storage: KafkaStorage) -> anyhow::Result<Self> {
        if size == 0 {
            bail!("a Kafka cluster needs at least one broker");
        }
        if size == 1 {
            let broker = Tansu::start_logging_to(dir, free_port()?, storage, "tansu.log", None)?;
            return Ok(Self {
                brokers: vec![broker],
                front: None,
            });
        }
        if storage != KafkaStorage::Sqlite {
            bail!("brokers of a tansu cluster share SQLite storage; memory storage is per broker");
        }
        let listener =
            std::net::TcpListener::bind(("127.0.0.1", 0)).context("binding the cluster's front")?;
        let front_addr = listener
            .local_addr()
            .context("reading the front's address")?;
        // One after the other: each creates the schema if missing, and
        // waiting for its port means the next one finds it done.
        let brokers = (0..size)
            .map(|i| {
                let log = format!("tansu-{}.log", i + 1);
                Tansu::start_logging_to(dir, free_port()?, storage, &log, Some(front_addr))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let front = Front::start(listener, brokers.iter().map(Tansu::addr).collect())?;
        Ok(Self {
            brokers,
            front: Some(front),
        })
    }

    /// The address the brokers advertise, when there are several.
    pub fn front(&self) -> Option<SocketAddr> {
        self.front.as_ref().map(Front::addr)
    }

    /// Every broker, comma-separated, for `bootstrap.servers`.
    pub fn bootstrap(&self) -> String {
        self.brokers
            .iter()
            .map(Tansu::bootstrap)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills every broker (SIGKILL): a whole-cluster outage.
    pub fn kill(&mut self) {
        self.brokers.iter_mut().for_each(Tansu::kill);
    }

    /// Starts again every broker that is stopped, on its own port.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        self.brokers.iter_mut().try_for_each(Tansu::start_again)
    }

    /// Fails when a broker died on its own (not after `kill`).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.brokers.iter_mut().try_for_each(Tansu::check_alive)
    }

    pub fn running(&self) -> usize {
        self.brokers.iter().filter(|b| b.is_running()).count()
    }

    /// Each broker's state and log tail, for the message of a failed test.
    pub fn diagnose(&mut self) -> String {
        self.brokers
            .iter_mut()
            .enumerate()
            .map(|(i, b)| format!("broker {} ({}): {}", i + 1, b.bootstrap(), b.diagnose()))
            .collect::<Vec<_>>()
            .join("\n")
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
