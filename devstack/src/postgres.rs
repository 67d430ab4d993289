use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::process::{free_port, ChildProcess};

/// Where Debian's `postgresql` package puts the server binaries.
const PG_BIN_DIRS: &[&str] = &["/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin"];

/// PostgreSQL (Debian package `postgresql`) as a child process: its own
/// cluster in `dir/pgdata`, listening on a free loopback port, `trust` auth
/// for the `postgres` superuser.
///
/// PostgreSQL refuses to run as root, so when we are root `initdb` and
/// `postgres` switch to the `postgres` user in the child (`setuid` before
/// `exec`, rather than `runuser`, which would fork and leave the server
/// outside the handle that kills it).
pub struct Postgres {
    dir: PathBuf,
    data: PathBuf,
    bin: PathBuf,
    port: u16,
    /// `(uid, gid)` of the `postgres` user when we run as root.
    run_as: Option<(u32, u32)>,
    process: Option<ChildProcess>,
}

impl Postgres {
    /// Fails (with the log's tail) when the process died on its own; a
    /// stopped one (after `kill`) is fine.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.process.as_mut() {
            Some(process) => process.check_alive(),
            None => Ok(()),
        }
    }

    /// Creates a cluster under `dir` and starts it. Call from the test's
    /// main thread: the server dies when the spawning thread exits.
    pub fn start(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let bin = PG_BIN_DIRS
            .iter()
            .map(PathBuf::from)
            .find(|d| d.join("postgres").is_file())
            .context("PostgreSQL not found; install Debian's `postgresql` package")?;
        let data = dir.join("pgdata");
        std::fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        // SAFETY: geteuid has no preconditions.
        let run_as = if unsafe { libc::geteuid() } == 0 {
            let ids = postgres_user()?;
            // The postgres user must reach its data dir through ours.
            set_mode(dir, 0o755)?;
            chown(&data, ids)?;
            Some(ids)
        } else {
            None
        };
        let mut postgres = Self {
            dir: dir.to_path_buf(),
            data,
            bin,
            port: free_port()?,
            run_as,
            process: None,
        };
        postgres.initdb()?;
        postgres.start_again()?;
        Ok(postgres)
    }

    /// Connection URL of the default `postgres` database.
    pub fn url(&self) -> String {
        self.database_url("postgres")
    }

    /// Connection URL of database `name`.
    pub fn database_url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates database `name` (letters, digits and `_` only) and returns
    /// its URL.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("database name {name:?} must be letters, digits and '_'");
        }
        let output = Command::new(self.bin.join("createdb"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .arg(name)
            .output()
            .context("running createdb")?;
        if !output.status.success() {
            bail!(
                "createdb {name} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(self.database_url(name))
    }

    /// Starts the server (again, after [`Postgres::kill`]) and waits until
    /// it accepts connections.
    pub fn start_again(&mut self) -> anyhow::Result<()> {
        if self.process.is_some() {
            return Ok(());
        }
        let log = self.dir.join("postgres.log");
        // After a SIGKILL the old backends may still hold the shared memory
        // for a moment, which makes a new postmaster give up: retry.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut command = self.command("postgres");
            command
                .arg("-D")
                .arg(&self.data)
                .arg("-p")
                .arg(self.port.to_string())
                .arg("-k")
                .arg(&self.data)
                .args(["-h", "127.0.0.1", "-c", "fsync=off"]);
            let mut process = ChildProcess::spawn("postgres", command, &log)?;
            match self.wait_ready(&mut process) {
                Ok(()) => {
                    self.process = Some(process);
                    return Ok(());
                }
                Err(err) if attempts >= 5 => return Err(err),
                Err(_) => {
                    process.kill();
                    std::thread::sleep(Duration::from_millis(500));
                }
            }
        }
    }

    /// SIGKILL: the crash a resilience test wants.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.kill();
        }
    }

    fn initdb(&self) -> anyhow::Result<()> {
        if self.data.join("PG_VERSION").is_file() {
            return Ok(());
        }
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(&self.data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .output()
            .context("running initdb")?;
        if !output.status.success() {
            bail!(
                "initdb failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(self.bin.join(program));
        // Keep the environment's locale out of the cluster.
        command.env("LC_ALL", "C").env("LANG", "C");
        if let Some((uid, gid)) = self.run_as {
            use std::os::unix::process::CommandExt;
            command.uid(uid).gid(gid);
        }
        command
    }

    /// Polls `pg_isready`: the port opens before the server accepts queries.
    fn wait_ready(&self, process: &mut ChildProcess) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(self.bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-U", "postgres", "-p"])
                .arg(self.port.to_string())
                .status()
                .is_ok_and(|s| s.success());
            if ready {
                return Ok(());
            }
            process.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "postgres did not accept connections on port {}; log:\n{}",
                    self.port,
                    process.log_tail()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn postgres_user() -> anyhow::Result<(u32, u32)> {
    let name = std::ffi::CString::new("postgres").context("user name")?;
    // SAFETY: getpwnam with a valid C string; the result is read at once,
    // before any other passwd call could overwrite it.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        bail!("running as root needs a `postgres` user (Debian's `postgresql` package creates it)");
    }
    // SAFETY: non-null pointer from getpwnam.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok((uid, gid))
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {mode:o} {}", path.display()))
}

fn chown(path: &Path, (uid, gid): (u32, u32)) -> anyhow::Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .with_context(|| format!("chown {}", path.display()))
}
