//! The deployment files checked with real tools, offline:
//! `tools/helm-check/check.py` lints and renders `helm/warmhouse` with Helm's
//! own code (helm-python-sdk) under its default values, a production-like
//! values file and every optional component switched off, validates every
//! rendered manifest against the Kubernetes schemas (kubernetes-validate,
//! strict), checks `docker-compose.yml` against the compose-spec schema and
//! against the chart (the same WARMHOUSE_* names, Kafka settings, topics,
//! images), and `docker/Dockerfile`'s targets and binaries. It also checks
//! the ingress tier's shape: the broker is a StatefulSet of at least 2
//! replicas by default with a PodDisruptionBudget, a spool
//! volumeClaimTemplate that `WARMHOUSE_BROKER_SPOOL_DIR` points into and
//! Services selecting every replica; compose runs at least 2 brokers, each
//! with its own spool volume, behind the `mqtt` TCP load balancer; nothing
//! deployed mentions the removed edge bridge. Its canaries make
//! each tool refuse broken input first, so a checker that checks nothing
//! cannot pass. Two more tests: ShellCheck on the scripts the images and the
//! Helm test run, and the entrypoint's `*_FILE` handling. The tools are
//! pinned in `tools/helm-check/requirements.txt` (ShellCheck in
//! `tools/actionlint/requirements.txt`) and installed into `.tools/venv` by
//! `scripts/install-deps.sh`; a missing tool fails these tests.

use std::process::Command;

use warmhouse_devstack::api_checks::repo_root;

#[test]
fn chart_compose_file_and_dockerfile_pass_helm_kubernetes_and_compose_checks() {
    let root = repo_root();
    let python = root.join(".tools/venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/install-deps.sh (it installs \
         tools/helm-check/requirements.txt into .tools/venv)",
        python.display()
    );
    let imports = Command::new(&python)
        .args([
            "-c",
            "import helm_python, kubernetes_validate, check_jsonschema",
        ])
        .output()
        .expect("running the venv's python");
    assert!(
        imports.status.success(),
        "helm-python-sdk, kubernetes-validate or check-jsonschema is not installed in \
         .tools/venv: run scripts/install-deps.sh\n{}",
        String::from_utf8_lossy(&imports.stderr)
    );

    let output = Command::new(&python)
        .arg(root.join("tools/helm-check/check.py"))
        .current_dir(&root)
        .output()
        .expect("running tools/helm-check/check.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tools/helm-check/check.py found problems (exit {:?}):\n{stdout}\n{stderr}",
        output.status.code()
    );
    for expected in [
        "ok   kubernetes-validate, check-jsonschema, helm lint and the name check each refused broken input",
        "ok   default values:",
        "ok   ci/production-values.yaml:",
        "ok   broker: a StatefulSet of 2 replicas by default, a spool volume each, a PDB and Services over every replica",
        "ok   compose-spec schema",
        "ok   compose: 2 broker replicas, each with its own spool, behind the MQTT load balancer",
        "ok   refused {\"edgeBridge\": {\"replicas\": 1}}",
        "helm-check: chart, compose file and Dockerfile are consistent and valid",
    ] {
        assert!(
            stdout.contains(expected),
            "check.py passed without reporting {expected:?}:\n{stdout}\n{stderr}"
        );
    }
}

/// ShellCheck (installed into `.tools/venv` with actionlint) on the shell
/// scripts the images and the Helm test run.
#[test]
fn container_shell_scripts_pass_shellcheck() {
    let root = repo_root();
    let shellcheck = root.join(".tools/venv/bin/shellcheck");
    assert!(
        shellcheck.is_file(),
        "{} is missing: run scripts/install-deps.sh",
        shellcheck.display()
    );
    let output = Command::new(&shellcheck)
        .args([
            "--shell=sh",
            "docker/entrypoint.sh",
            "helm/warmhouse/files/smoke-test.sh",
        ])
        .current_dir(&root)
        .output()
        .expect("running shellcheck");
    assert!(
        output.status.success(),
        "shellcheck found problems:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `docker/entrypoint.sh` sets `WARMHOUSE_<NAME>` (and `PGPASSWORD`) from
/// `<NAME>_FILE`, and refuses to start with both set or an unreadable file.
#[test]
fn entrypoint_reads_secrets_from_files_and_refuses_ambiguity() {
    let root = repo_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "s3cret value\n\n").expect("writing the secret");
    let entrypoint = root.join("docker/entrypoint.sh");
    let run = |env: &[(&str, &std::ffi::OsStr)]| {
        let mut command = Command::new("sh");
        command
            .arg(&entrypoint)
            .args([
                "sh",
                "-c",
                r#"printf '%s|%s|%s' "$WARMHOUSE_JWT_SECRET" "$PGPASSWORD" "${WARMHOUSE_JWT_SECRET_FILE-unset}""#,
            ])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default());
        for (name, value) in env {
            command.env(name, value);
        }
        command.output().expect("running docker/entrypoint.sh")
    };

    let output = run(&[
        ("WARMHOUSE_JWT_SECRET_FILE", secret.as_os_str()),
        ("PGPASSWORD_FILE", secret.as_os_str()),
    ]);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "s3cret value|s3cret value|unset"
    );

    let both = run(&[
        ("WARMHOUSE_JWT_SECRET_FILE", secret.as_os_str()),
        ("WARMHOUSE_JWT_SECRET", "inline".as_ref()),
    ]);
    assert_eq!(both.status.code(), Some(64), "{both:?}");
    assert!(String::from_utf8_lossy(&both.stderr).contains("both WARMHOUSE_JWT_SECRET"));

    let missing = run(&[(
        "WARMHOUSE_JWT_SECRET_FILE",
        dir.path().join("nowhere").as_os_str(),
    )]);
    assert_eq!(missing.status.code(), Some(66), "{missing:?}");
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot be read"));
}
