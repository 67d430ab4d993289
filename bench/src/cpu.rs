//! Where the CPU goes: per-process and per-thread CPU time from `/proc`, the
//! machine's busy time from `/proc/stat`, and an optional `perf` profile.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Clock ticks per second of `/proc` CPU times.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// The fields of `/proc/PID/stat` after the command name, which may itself
/// contain spaces and parentheses, plus the command name.
fn stat_fields(path: &Path) -> Option<(String, Vec<String>)> {
    let text = std::fs::read_to_string(path).ok()?;
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let rest = text.get(close + 1..)?;
    Some((comm, rest.split_whitespace().map(str::to_string).collect()))
}

/// utime + stime of a process (all its threads), in clock ticks.
pub fn process_ticks(pid: u32) -> Option<u64> {
    let (_, fields) = stat_fields(Path::new(&format!("/proc/{pid}/stat")))?;
    // After the command: state(0) ppid(1) ... utime(11) stime(12).
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Children of `parent` whose command name is `comm`.
pub fn children_named(parent: u32, comm: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids = Vec::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Some((name, fields)) = stat_fields(&entry.path().join("stat")) else {
            continue;
        };
        let ppid: Option<u32> = fields.get(1).and_then(|p| p.parse().ok());
        if name == comm && ppid == Some(parent) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

/// CPU ticks of every thread of `pid`, summed by thread name with digits
/// folded (`rdk:broker12` and `rdk:broker3` are both `rdk:broker#`).
pub fn thread_ticks(pid: u32) -> BTreeMap<String, u64> {
    let mut by_name = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for entry in entries.flatten() {
        let Some((name, fields)) = stat_fields(&entry.path().join("stat")) else {
            continue;
        };
        let ticks = fields
            .get(11)
            .zip(fields.get(12))
            .and_then(|(u, s)| Some(u.parse::<u64>().ok()? + s.parse::<u64>().ok()?));
        if let Some(ticks) = ticks {
            *by_name.entry(fold_digits(&name)).or_insert(0) += ticks;
        }
    }
    by_name
}

/// `rdk:broker12` -> `rdk:broker#`: a trailing number becomes `#`.
fn fold_digits(name: &str) -> String {
    let stem = name.trim_end_matches(|c: char| c.is_ascii_digit());
    if stem.len() < name.len() {
        format!("{stem}#")
    } else {
        name.to_string()
    }
}

/// (busy, total) jiffies of the whole machine from the `cpu` line of `/proc/stat`.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user already).
    let total: u64 = values.iter().take(8).sum();
    let idle = values.get(3).copied().unwrap_or(0) + values.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// CPU counters at one instant.
#[derive(Debug, Clone)]
pub struct Snapshot {
    at: Instant,
    processes: Vec<(String, Option<u64>)>,
    threads: BTreeMap<String, u64>,
    machine: Option<(u64, u64)>,
}

/// What the processes used between two snapshots.
#[derive(Debug, Clone)]
pub struct Usage {
    pub wall: Duration,
    pub cores: usize,
    /// (name, CPU seconds); `None` when the process could not be read.
    pub processes: Vec<(String, Option<f64>)>,
    /// Threads of the bench process: (name, CPU seconds), busiest first.
    pub threads: Vec<(String, f64)>,
    /// Busy CPU seconds of the whole machine (every process, ours or not).
    pub machine_busy: Option<f64>,
}

impl Usage {
    /// Share of all cores over the wall time.
    pub fn share(&self, cpu_secs: f64) -> f64 {
        let capacity = self.wall.as_secs_f64() * self.cores as f64;
        if capacity > 0.0 {
            cpu_secs / capacity
        } else {
            0.0
        }
    }

    /// Share of the machine used by processes other than the watched ones.
    pub fn others_share(&self) -> Option<f64> {
        let watched: f64 = self.processes.iter().filter_map(|(_, s)| *s).sum();
        self.machine_busy
            .map(|busy| self.share((busy - watched).max(0.0)))
    }

    pub fn process(&self, name: &str) -> Option<f64> {
        self.processes
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, s)| *s)
    }
}

/// Takes a snapshot of the named processes; threads of `threads_of`.
pub fn snapshot(processes: &[(String, u32)], threads_of: u32) -> Snapshot {
    Snapshot {
        at: Instant::now(),
        processes: processes
            .iter()
            .map(|(name, pid)| (name.clone(), process_ticks(*pid)))
            .collect(),
        threads: thread_ticks(threads_of),
        machine: machine_ticks(),
    }
}

pub fn usage(before: &Snapshot, after: &Snapshot, cores: usize) -> Usage {
    let hz = clock_ticks();
    let processes = before
        .processes
        .iter()
        .zip(&after.processes)
        .map(|((name, a), (_, b))| {
            let secs = a.zip(*b).map(|(a, b)| b.saturating_sub(a) as f64 / hz);
            (name.clone(), secs)
        })
        .collect();
    let mut threads: Vec<(String, f64)> = after
        .threads
        .iter()
        .map(|(name, b)| {
            let a = before.threads.get(name).copied().unwrap_or(0);
            (name.clone(), b.saturating_sub(a) as f64 / hz)
        })
        .filter(|(_, secs)| *secs > 0.0)
        .collect();
    threads.sort_by(|a, b| b.1.total_cmp(&a.1));
    // /proc/stat counts jiffies of every core: busy jiffies / hz = CPU seconds.
    let machine_busy = before
        .machine
        .zip(after.machine)
        .map(|((busy_a, _), (busy_b, _))| busy_b.saturating_sub(busy_a) as f64 / hz);
    Usage {
        wall: after.at.saturating_duration_since(before.at),
        cores,
        processes,
        threads,
        machine_busy,
    }
}

/// A `perf record` of one process, running in the background.
pub struct PerfRecording {
    child: std::process::Child,
    data: std::path::PathBuf,
    seconds: u64,
}

/// What `perf` found in the bench process.
#[derive(Debug, Clone)]
pub struct PerfProfile {
    pub samples: usize,
    /// (percent, dso, symbol) by self time.
    pub top: Vec<(f64, String, String)>,
    /// (component, share of samples), largest first.
    pub components: Vec<(String, f64)>,
}

/// Starts `perf record --call-graph dwarf` on `pid` for `seconds`, if perf
/// works here. (Release builds have no frame pointers: DWARF unwinding is
/// what makes the call chains, and so the per-component split, usable.)
pub fn start_perf(pid: u32, seconds: u64, dir: &Path) -> anyhow::Result<PerfRecording> {
    let probe = run_with_timeout(
        Command::new("perf")
            .args(["record", "-q", "-o"])
            .arg(dir.join("probe.data"))
            .args(["--", "true"]),
        Duration::from_secs(20),
    )
    .context("`perf` is not usable here")?;
    if !probe.0 {
        bail!("`perf record` does not work here: {}", probe.1.trim());
    }
    let data = dir.join("perf.data");
    let child = Command::new("perf")
        .args([
            "record",
            "-F",
            "199",
            "--call-graph",
            "dwarf,16384",
            "-q",
            "-o",
        ])
        .arg(&data)
        .args(["-p", &pid.to_string(), "--", "sleep", &seconds.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting perf record")?;
    Ok(PerfRecording {
        child,
        data,
        seconds,
    })
}

impl PerfRecording {
    /// Waits for the recording; returns the top `n` symbols by self time and
    /// the split of samples by component.
    pub fn finish(mut self, n: usize) -> anyhow::Result<PerfProfile> {
        let deadline = Instant::now() + Duration::from_secs(self.seconds + 30);
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for perf")? {
                if !status.success() {
                    let mut err = String::new();
                    if let Some(mut stderr) = self.child.stderr.take() {
                        use std::io::Read;
                        let _ = stderr.read_to_string(&mut err);
                    }
                    bail!("perf record failed ({status}): {}", err.trim());
                }
                break;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("perf record did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let report = self.perf_output(
            &[
                "report",
                "--stdio",
                "--no-children",
                "--no-inline",
                "-g",
                "none",
                "--sort",
                "dso,sym",
                "--percent-limit",
                "0.3",
            ],
            "report.txt",
        )?;
        let top = parse_report(&report, n);
        if top.is_empty() {
            bail!("perf recorded no samples");
        }
        let script = self.perf_output(
            &["script", "--no-inline", "-F", "comm,ip,sym"],
            "script.txt",
        )?;
        let (samples, components) = split_by_component(&script);
        Ok(PerfProfile {
            samples,
            top,
            components,
        })
    }

    /// Runs `perf ARGS -i DATA` with a deadline; its standard output.
    fn perf_output(&self, args: &[&str], out_name: &str) -> anyhow::Result<String> {
        let out_path = self.data.with_file_name(out_name);
        let out = std::fs::File::create(&out_path).context("creating perf output file")?;
        let mut command = Command::new("perf");
        command.args(args).arg("-i").arg(&self.data).stdout(out);
        let (ok, err) = run_with_timeout(&mut command, Duration::from_secs(180))?;
        if !ok {
            bail!("perf {} failed: {}", args[0], err.trim());
        }
        std::fs::read_to_string(&out_path).context("reading perf output")
    }
}

/// Lines `  12.34%  dso  [.] symbol` of `perf report --sort dso,sym`.
fn parse_report(text: &str, n: usize) -> Vec<(f64, String, String)> {
    let mut top = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some((pct, rest)) = line.split_once('%') else {
            continue;
        };
        let Ok(pct) = pct.trim().parse::<f64>() else {
            continue;
        };
        let rest = rest.trim();
        let marker = [" [.] ", " [k] ", " [g] ", " [u] "]
            .iter()
            .filter_map(|m| rest.find(m))
            .min();
        let (dso, symbol) = match marker {
            Some(i) => (
                rest[..i].trim().to_string(),
                rest[i + 5..].trim().to_string(),
            ),
            None => (String::new(), rest.to_string()),
        };
        top.push((pct, dso, symbol));
        if top.len() == n {
            break;
        }
    }
    top
}

/// Which part of the bench process a sample belongs to: by thread name for
/// rumqttd's and librdkafka's own threads, else by the outermost frame (the
/// task) that names one of our crates or a known library.
fn component(comm: &str, frames_leaf_first: &[&str]) -> &'static str {
    const BROKER: &str = "broker (rumqttd + warmhouse-broker)";
    const KAFKA: &str = "librdkafka threads (the broker's producers, the writer's consumer)";
    if comm.starts_with("router") || comm == "v4" || comm == "v5" {
        return BROKER;
    }
    if comm.starts_with("rdk:") || comm.starts_with("producer poll") {
        return KAFKA;
    }
    const MARKERS: [(&str, &str); 10] = [
        ("warmhouse_simulator", "simulator (load generator)"),
        ("warmhouse_edge_bridge", "edge bridge (in the broker)"),
        ("warmhouse_ingest::writer", "ingest writer"),
        ("warmhouse_ingest::query", "query API"),
        ("warmhouse_bench", "bench probe and sampling"),
        ("warmhouse_broker", BROKER),
        ("rumqttd", BROKER),
        ("rdkafka", KAFKA),
        (
            "hyper",
            "HTTP (query API serving the probe, InfluxDB client)",
        ),
        (
            "axum",
            "HTTP (query API serving the probe, InfluxDB client)",
        ),
    ];
    for frame in frames_leaf_first.iter().rev() {
        if let Some((_, name)) = MARKERS.iter().find(|(marker, _)| frame.contains(marker)) {
            return name;
        }
    }
    "runtime, kernel and unattributed"
}

/// (samples, [(component, share)]) from `perf script -F comm,ip,sym`.
fn split_by_component(script: &str) -> (usize, Vec<(String, f64)>) {
    let mut counts: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut total = 0;
    for block in script.split("\n\n") {
        let mut lines = block.lines().filter(|l| !l.trim().is_empty());
        let Some(comm) = lines.next() else {
            continue;
        };
        let frames: Vec<&str> = lines
            .map(|l| l.trim().split_once(' ').map_or("", |(_, sym)| sym))
            .collect();
        *counts.entry(component(comm.trim(), &frames)).or_insert(0) += 1;
        total += 1;
    }
    let mut shares: Vec<(String, f64)> = counts
        .into_iter()
        .map(|(name, count)| (name.to_string(), count as f64 / total.max(1) as f64))
        .collect();
    shares.sort_by(|a, b| b.1.total_cmp(&a.1));
    (total, shares)
}

/// Runs a command to completion with a deadline; (success, stderr).
fn run_with_timeout(command: &mut Command, timeout: Duration) -> anyhow::Result<(bool, String)> {
    let dir = tempfile::tempdir().context("temp dir for command output")?;
    let err_path = dir.path().join("stderr");
    let err = std::fs::File::create(&err_path).context("creating stderr file")?;
    let mut child = command
        .stdin(Stdio::null())
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().context("waiting for command")? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{command:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    Ok((status.success(), stderr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_fold() {
        assert_eq!(fold_digits("rdk:broker12"), "rdk:broker#");
        assert_eq!(fold_digits("tokio-runtime-w"), "tokio-runtime-w");
        assert_eq!(fold_digits("v4-1"), "v4-#");
    }

    #[test]
    fn samples_are_split_by_component() {
        let script = "tokio-rt-worker \n\t 1 memcpy\n\t 2 warmhouse_contracts::decode\n\t 3 warmhouse_ingest::writer::start::{{closure}}\n\t 4 tokio::runtime::task::harness::Harness<T,S>::poll\n\nrouter-0 \n\t 5 rumqttd::router::Router::run\n\ntokio-rt-worker \n\t 6 [unknown]\n";
        let (samples, shares) = split_by_component(script);
        assert_eq!(samples, 3);
        let share = |name: &str| {
            shares
                .iter()
                .find(|(n, _)| n.starts_with(name))
                .map(|s| s.1)
        };
        assert_eq!(share("ingest writer"), Some(1.0 / 3.0));
        assert_eq!(share("broker"), Some(1.0 / 3.0));
        assert_eq!(share("runtime"), Some(1.0 / 3.0));
    }

    #[test]
    fn report_lines_parse() {
        let text = "# comment\n     7.60%  [kernel.kallsyms]  [k] finish_task_switch\n     5.10%  warmhouse-bench    [.] <[T] as core::fmt::Debug>::fmt\n";
        let top = parse_report(text, 10);
        assert_eq!(top.len(), 2);
        assert_eq!(top[0].1, "[kernel.kallsyms]");
        assert_eq!(
            top[1],
            (
                5.1,
                "warmhouse-bench".to_string(),
                "<[T] as core::fmt::Debug>::fmt".to_string()
            )
        );
    }

    #[test]
    fn own_process_is_readable() {
        assert!(process_ticks(std::process::id()).is_some());
        assert!(machine_ticks().is_some());
        assert!(!thread_ticks(std::process::id()).is_empty());
    }
}
