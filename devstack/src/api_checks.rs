//! Checks of a service's REST contract shared by the services' tests: the
//! committed OpenAPI document against the generated one, and a schemathesis
//! run against a running service (with proof that it got past the auth).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{bail, Context};

/// The repository's root (devstack lives one level below it).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Compares `docs/api/...` (`committed`, relative to the root) with what
/// the code generates (`--print-openapi` output, newline included); the
/// error names the first differing line and the fix.
pub fn compare_committed_document(committed: &str, generated: &str) -> Result<(), String> {
    let path = repo_root().join(committed);
    let text = std::fs::read_to_string(&path).map_err(|err| {
        format!("cannot read {committed} ({err}): run scripts/update-api-docs.sh")
    })?;
    if text == generated {
        return Ok(());
    }
    let line = text
        .lines()
        .zip(generated.lines())
        .position(|(a, b)| a != b)
        .unwrap_or_else(|| text.lines().count().min(generated.lines().count()));
    Err(format!(
        "{committed} is not what the code generates (first difference at line {}: \
         committed {:?}, generated {:?}): run scripts/update-api-docs.sh and commit the result",
        line + 1,
        text.lines().nth(line).unwrap_or("<end of file>"),
        generated.lines().nth(line).unwrap_or("<end of file>"),
    ))
}

/// A schemathesis run against a running service.
pub struct Schemathesis<'a> {
    /// The OpenAPI document, relative to the repository root.
    pub document: &'a str,
    pub base_url: &'a str,
    pub token: &'a str,
    pub checks: &'a str,
    pub max_examples: &'a str,
    pub seed: &'a str,
    /// Where its hypothesis database and reports go (a temp dir).
    pub workdir: &'a Path,
}

impl Schemathesis<'_> {
    /// Runs schemathesis (installed by scripts/install-deps.sh into
    /// `.tools/venv`; missing is an error, never a skip).
    pub async fn run(&self) -> anyhow::Result<Output> {
        let program = repo_root().join(".tools/venv/bin/schemathesis");
        if !program.is_file() {
            bail!(
                "schemathesis is not installed ({} is missing): run scripts/install-deps.sh",
                program.display()
            );
        }
        tokio::process::Command::new(&program)
            .current_dir(self.workdir)
            .arg("run")
            .arg(repo_root().join(self.document))
            .args(["--url", self.base_url])
            .args(["--header", &format!("Authorization: Bearer {}", self.token)])
            .args(["--checks", self.checks])
            .args(["--max-examples", self.max_examples, "--seed", self.seed])
            .args(["--generation-database", "none", "--request-timeout", "10"])
            .args(["--no-color", "--suppress-health-check", "all"])
            .kill_on_drop(true)
            .output()
            .await
            .context("running schemathesis")
    }

    /// Runs schemathesis against `service` (named in the error) and prints
    /// its report (shown on failure and with --no-capture). Fails when it
    /// found failures, or when the fuzzing hardly got past authentication
    /// and validation: fewer than 10 `/api/v1` answers were 200.
    pub async fn run_and_verify(&self, service: &str) -> anyhow::Result<()> {
        let output = self
            .run()
            .await
            .context("running schemathesis (installed by scripts/install-deps.sh)")?;
        eprintln!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if !output.status.success() {
            bail!(
                "schemathesis found failures against {service} ({}); its report is above",
                output.status
            );
        }
        let statuses = api_statuses(self.base_url)
            .await
            .context("reading the service's metrics")?;
        eprintln!("API answers by status: {statuses:?}");
        if statuses.get("200").is_none_or(|n| *n < 10) {
            bail!("the fuzzing hardly reached a successful answer: {statuses:?}");
        }
        Ok(())
    }
}

/// Answers of a service's `/api/v1` routes by status, from its own
/// `/metrics` (`*_requests_total{route,status}`): proof that a fuzzing run
/// reached past authentication and validation.
pub async fn api_statuses(base_url: &str) -> anyhow::Result<BTreeMap<String, u64>> {
    let text = reqwest::get(format!("{base_url}/metrics"))
        .await
        .context("GET /metrics")?
        .text()
        .await
        .context("reading /metrics")?;
    let mut statuses = BTreeMap::new();
    for line in text.lines().filter(|l| l.contains("_requests_total{")) {
        let label = |name: &str| {
            let start = line
                .find(&format!("{name}=\""))
                .map(|i| i + name.len() + 2)?;
            let end = line[start..].find('"')?;
            Some(&line[start..start + end])
        };
        let (Some(route), Some(status)) = (label("route"), label("status")) else {
            continue;
        };
        let count: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        if route.starts_with("/api/v1") {
            *statuses.entry(status.to_string()).or_default() += count as u64;
        }
    }
    Ok(statuses)
}
