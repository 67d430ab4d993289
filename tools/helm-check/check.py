#!/usr/bin/env python3
"""Checks the Helm chart (helm/warmhouse), docker-compose.yml and
docker/Dockerfile with real tools, offline.

* Helm's own code (helm-python-sdk): `lint` (strict) and `render` of the chart
  with its default values, with ci/production-values.yaml and with every
  optional component switched off or replaced by an external one; values that
  must be refused (schema, `required`, `fail`) are refused.
* kubernetes-validate: every rendered manifest against the Kubernetes OpenAPI
  schemas of each version in KUBE_VERSIONS, strict (unknown fields fail), and
  an unknown kind fails too.
* Cross-references inside a render: Secret keys, ConfigMaps, Services behind
  Ingresses and probes' named ports exist; selectors match their pods.
* Configuration names: every WARMHOUSE_* variable the chart, compose and the
  Dockerfile set is one the code reads (taken from the Rust sources), or its
  `_FILE` form (docker/entrypoint.sh).
* docker-compose.yml against the compose-spec schema (check-jsonschema's
  vendored copy), and consistent with the chart: the same variable names per
  service, the same Kafka settings, topics and partitions, gateway variables,
  third-party images.
* docker/Dockerfile: a target per image the chart and compose use, and every
  binary it copies is a [[bin]] of the workspace.

Exits 1 with every problem listed, 0 when all hold. Run by
stack/tests/deploy_manifests.rs (so by scripts/test.sh and .ci/run):

    .tools/venv/bin/python tools/helm-check/check.py
"""

from __future__ import annotations

import contextlib
import copy
import functools
import os
import tempfile
import json
import pathlib
import re
import subprocess
import sys
import time
from typing import Any, Callable

import helm_python as helm
import jsonschema
import kubernetes_validate.utils as kv
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "warmhouse"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
GATEWAY_TEMPLATE = ROOT / "gateway" / "gateway.conf.template"
PRODUCTION_VALUES = CHART / "ci" / "production-values.yaml"

# Oldest and newest Kubernetes the chart is checked against (kubeVersion in
# Chart.yaml says >= 1.27).
KUBE_VERSIONS = ["1.30.0", "1.34.0"]
RELEASE, NAMESPACE = "warmhouse", "warmhouse"

# Images of ours: component -> compose service using it as `build.target`.
OUR_IMAGES = ["broker", "edge-bridge", "ingest-writer", "ingest-query", "device-registry", "tools"]
# Chart container (name) -> compose service with the same configuration.
SERVICE_PAIRS = {
    "broker": "broker",
    "edge-bridge": "edge-bridge",
    "ingest-writer": "ingest-writer",
    "ingest-query": "ingest-query",
    "device-registry": "device-registry",
    "nginx": "gateway",
}
# Variables other than WARMHOUSE_* our containers may set.
OTHER_ALLOWED_ENV = {"RUST_LOG", "PGPASSWORD_FILE"}

problems: list[str] = []


def problem(message: str) -> None:
    problems.append(message)
    print(f"  FAIL {message}", flush=True)


def info(message: str) -> None:
    print(f"  {message}", flush=True)


# ---------------------------------------------------------------- helpers


@contextlib.contextmanager
def go_stderr_filtered():
    """Helm's Go code logs to file descriptor 2 directly (not through Python).
    Its note that files/ holds symbolic links (to gateway/ and dashboards/, on
    purpose) is dropped; every other line is passed on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            for line in captured.read().decode(errors="replace").splitlines():
                if "found symbolic link in path" not in line:
                    print(line, file=sys.stderr)


@functools.lru_cache(maxsize=None)
def _schema_contents(filename: str, desired_version: str) -> Any:
    return _uncached_schema_contents(filename, desired_version)


# kubernetes-validate parses its (large) definitions file on every call;
# the files never change, so parse each once.
_uncached_schema_contents = kv.schema_contents
kv.schema_contents = _schema_contents


def known_env_names() -> set[str]:
    """Every WARMHOUSE_* name a string literal of a workspace crate's src/ holds
    (clap `env = "..."`, the auth constants, WARMHOUSE_LOG_FORMAT)."""
    names: set[str] = set()
    members = tomllib_members()
    for member in members:
        for source in (ROOT / member / "src").rglob("*.rs"):
            names.update(re.findall(r'"(WARMHOUSE_[A-Z0-9_]+)"', source.read_text()))
    if len(names) < 50:
        problem(f"only {len(names)} WARMHOUSE_* names found in the Rust sources: the scan is broken")
    return names


def tomllib_members() -> list[str]:
    import tomllib

    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())
    return list(workspace["workspace"]["members"])


def workspace_bins() -> set[str]:
    import tomllib

    bins: set[str] = set()
    for member in tomllib_members():
        manifest = tomllib.loads((ROOT / member / "Cargo.toml").read_text())
        for target in manifest.get("bin", []):
            bins.add(target["name"])
        if (ROOT / member / "src" / "main.rs").exists():
            bins.add(manifest["package"]["name"])
        bins.update(p.stem for p in (ROOT / member / "src" / "bin").glob("*.rs"))
    return bins


def env_allowed(name: str, known: set[str]) -> bool:
    if name in OTHER_ALLOWED_ENV:
        return True
    if name.endswith("_FILE") and name[: -len("_FILE")] in known:
        return True
    return name in known


def deep_merge(base: dict, override: dict) -> dict:
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def pod_spec(doc: dict) -> dict | None:
    kind = doc.get("kind")
    if kind == "Pod":
        return doc.get("spec")
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        return doc["spec"]["template"]["spec"]
    return None


def pod_labels(doc: dict) -> dict:
    if doc.get("kind") == "Pod":
        return doc["metadata"].get("labels", {})
    return doc["spec"]["template"]["metadata"].get("labels", {})


def containers(spec: dict) -> list[dict]:
    return list(spec.get("initContainers", [])) + list(spec.get("containers", []))


# ---------------------------------------------------------------- chart


def load_chart() -> helm.Chart:
    info(f"Helm SDK {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__}), "
         f"kubernetes-validate schemas up to {kv.latest_version()}")
    return helm.Chart.load(CHART)


def lint(values: dict, label: str) -> None:
    for kube in KUBE_VERSIONS:
        report = helm.lint(CHART, values, strict=True, kube_version=f"v{kube}")
        for message in report.get("messages", []):
            if message.get("severity", 0) >= 2:
                problem(f"helm lint ({label}, Kubernetes {kube}): {message.get('path')}: {message.get('error')}")
        for error in report.get("errors", []):
            problem(f"helm lint ({label}, Kubernetes {kube}): {error}")


def render(chart: helm.Chart, values: dict, label: str) -> list[dict] | None:
    try:
        manifests = chart.render(values=values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    except helm.HelmError as error:
        problem(f"render ({label}) failed: {error}")
        return None
    docs: list[dict] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            if not text.strip():
                problem(f"render ({label}): NOTES.txt is empty")
            continue
        try:
            loaded = [d for d in yaml.safe_load_all(text) if d]
        except yaml.YAMLError as error:
            problem(f"render ({label}): {path} is not YAML: {error}")
            continue
        for doc in loaded:
            doc.setdefault("__source", path)
            docs.append(doc)
    return docs


def validate_manifests(docs: list[dict], label: str) -> None:
    seen: set[tuple[str, str]] = set()
    for doc in docs:
        source = doc.pop("__source", "?")
        kind, name = doc.get("kind"), doc.get("metadata", {}).get("name")
        if not kind or not name or not doc.get("apiVersion"):
            problem(f"{label}: {source}: a document without apiVersion, kind or metadata.name")
            continue
        if (kind, name) in seen:
            problem(f"{label}: two {kind} objects named {name}")
        seen.add((kind, name))
        if len(name) > 63 and kind in ("Service", "StatefulSet", "Deployment", "Job"):
            problem(f"{label}: {kind} {name} is longer than 63 characters")
        for kube in KUBE_VERSIONS:
            try:
                kv.validate(doc, kube, strict=True)
            except kv.ValidationError as error:
                path = ".".join(str(p) for p in error.path)
                problem(f"{label}: {kind}/{name} against Kubernetes {kube}: {path}: {error.message}")
            except kv.SchemaNotFoundError as error:
                problem(f"{label}: {kind}/{name}: {error.message}")
        doc["__source"] = source


def check_references(docs: list[dict], values: dict, label: str, known_env: set[str]) -> None:
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    secrets = by_kind.get("Secret", {})
    configmaps = by_kind.get("ConfigMap", {})
    services = by_kind.get("Service", {})
    external_secrets = {values["secrets"]["existingSecret"], values["identity"]["existingSecret"]} - {""}

    workloads = [d for d in docs if pod_spec(d) is not None]
    for doc in workloads:
        kind, name = doc["kind"], doc["metadata"]["name"]
        spec = pod_spec(doc)
        labels = pod_labels(doc)
        if kind != "Pod" and kind != "Job":
            selector = doc["spec"]["selector"]["matchLabels"]
            if any(labels.get(k) != v for k, v in selector.items()):
                problem(f"{label}: {kind}/{name}: selector {selector} does not match its pod labels")
        for volume in spec.get("volumes", []):
            if "secret" in volume:
                secret_name = volume["secret"]["secretName"]
                if secret_name in external_secrets:
                    continue
                secret = secrets.get(secret_name)
                if secret is None:
                    problem(f"{label}: {kind}/{name} mounts Secret {secret_name}, which is not rendered")
                    continue
                for item in volume["secret"].get("items", []):
                    if item["key"] not in secret.get("data", {}):
                        problem(f"{label}: {kind}/{name} mounts key {item['key']} of Secret {secret_name}, which lacks it")
            for source in (volume.get("projected", {}) or {}).get("sources", []) or []:
                if "configMap" in source and source["configMap"]["name"] not in configmaps:
                    problem(f"{label}: {kind}/{name} projects ConfigMap {source['configMap']['name']}, which is not rendered")
            if "configMap" in volume and volume["configMap"]["name"] not in configmaps:
                problem(f"{label}: {kind}/{name} mounts ConfigMap {volume['configMap']['name']}, which is not rendered")
        volume_names = {v["name"] for v in spec.get("volumes", [])}
        claim_names = {t["metadata"]["name"] for t in doc.get("spec", {}).get("volumeClaimTemplates", [])}
        for container in containers(spec):
            ports = {p.get("name") for p in container.get("ports", [])}
            for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
                probe = container.get(probe_name) or {}
                port = (probe.get("httpGet") or probe.get("tcpSocket") or {}).get("port")
                if isinstance(port, str) and port not in ports:
                    problem(f"{label}: {kind}/{name}/{container['name']}: {probe_name} names port {port}, which it lacks")
            for mount in container.get("volumeMounts", []):
                if mount["name"] not in volume_names | claim_names:
                    problem(f"{label}: {kind}/{name}/{container['name']} mounts volume {mount['name']}, which is not defined")
            image = container.get("image", "")
            if "/warmhouse/" in f"/{image}" or image.startswith("warmhouse/") or "/warmhouse/" in image:
                if "securityContext" not in container:
                    problem(f"{label}: {kind}/{name}/{container['name']} has no securityContext")
                if "resources" not in container:
                    problem(f"{label}: {kind}/{name}/{container['name']} has no resources")
                for env in container.get("env", []):
                    if (env["name"].startswith("WARMHOUSE_") or env["name"] in OTHER_ALLOWED_ENV) and not env_allowed(env["name"], known_env):
                        problem(f"{label}: {kind}/{name}/{container['name']} sets {env['name']}, which no Warmhouse program reads")
                    if env["name"].endswith("_FILE"):
                        path = env.get("value", "")
                        mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
                        if not any(path.startswith(m.rstrip("/") + "/") for m in mounts):
                            problem(f"{label}: {kind}/{name}/{container['name']}: {env['name']}={path} is on no mounted volume")
            if kind in ("Deployment", "StatefulSet") and container in spec.get("containers", []):
                if not container.get("livenessProbe") or not container.get("readinessProbe"):
                    problem(f"{label}: {kind}/{name}/{container['name']} lacks a liveness or readiness probe")
                if not (container.get("resources") or {}).get("requests"):
                    problem(f"{label}: {kind}/{name}/{container['name']} has no resource requests")

    for name, service in services.items():
        selector = service["spec"].get("selector") or {}
        targets = [d for d in workloads if all(pod_labels(d).get(k) == v for k, v in selector.items())]
        if not targets:
            problem(f"{label}: Service {name} selects no pod")
            continue
        ports = {p.get("name") for d in targets for c in pod_spec(d).get("containers", []) for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            if isinstance(port.get("targetPort"), str) and port["targetPort"] not in ports:
                problem(f"{label}: Service {name} targets port {port['targetPort']}, which its pods lack")
    for name, ingress in by_kind.get("Ingress", {}).items():
        for rule in ingress["spec"].get("rules", []):
            for path in rule["http"]["paths"]:
                backend = path["backend"]["service"]
                service = services.get(backend["name"])
                if service is None:
                    problem(f"{label}: Ingress {name} routes {path['path']} to Service {backend['name']}, which is not rendered")
                elif backend["port"].get("name") not in {p.get("name") for p in service["spec"]["ports"]}:
                    problem(f"{label}: Ingress {name} routes to port {backend['port']} Service {backend['name']} lacks")
    for name, pdb in by_kind.get("PodDisruptionBudget", {}).items():
        selector = pdb["spec"]["selector"]["matchLabels"]
        if not any(all(pod_labels(d).get(k) == v for k, v in selector.items()) for d in workloads):
            problem(f"{label}: PodDisruptionBudget {name} covers no pod")


def scenarios(defaults: dict) -> list[tuple[str, dict]]:
    production = yaml.safe_load(PRODUCTION_VALUES.read_text())
    return [
        ("default values", {}),
        ("ci/production-values.yaml", production),
        ("external Kafka", {"kafka": {"enabled": False, "bootstrap": "kafka-0.kafka:9092,kafka-1.kafka:9092"}}),
        ("external Kafka, no topics job", {"kafka": {"enabled": False, "bootstrap": "kafka:9092", "topicsJob": {"enabled": False}}}),
        ("external InfluxDB", {"influxdb": {"enabled": False, "url": "http://influxdb.example:8086"}}),
        ("external PostgreSQL", {"postgresql": {"enabled": False, "host": "db.example"}}),
        ("no ingress", {"ingress": {"enabled": False}}),
        ("legacy ingress", {"ingress": {"legacy": {"enabled": True}}}),
        ("no Grafana objects", {"grafana": {"dashboards": {"enabled": False}, "datasources": {"enabled": False}}}),
        ("bundled Grafana", {"grafana": {"bundled": {"enabled": True}}}),
        ("no tests", {"tests": {"enabled": False}}),
        ("tokens given", {"serviceTokens": {"mint": False}, "secrets": {"brokerRegistryToken": "t1", "registryTelemetryToken": "t2"}}),
        # What docker-compose.yml runs: device identity (mTLS), minted tokens.
        ("like compose", {"identity": {"existingSecret": "warmhouse-identity"}}),
        ("open broker, device identity", {"broker": {"deviceAuth": "open"}, "identity": {"existingSecret": "warmhouse-identity"}}),
        ("everything external", {
            "kafka": {"enabled": False, "bootstrap": "kafka:9092"},
            "influxdb": {"enabled": False, "url": "http://influxdb:8086"},
            "postgresql": {"enabled": False, "host": "postgres"},
            "ingress": {"enabled": False},
            "grafana": {"dashboards": {"enabled": False}, "datasources": {"enabled": False}},
            "tests": {"enabled": False},
        }),
    ]


# Values that must be refused, and the text the refusal must contain.
REFUSED = [
    ({"broker": {"replicas": 2}}, "replicas"),
    ({"edgeBridge": {"replicas": 3}}, "replicas"),
    ({"broker": {"deviceAuth": "anyone"}}, "deviceAuth"),
    ({"brokr": {}}, "brokr"),
    ({"kafka": {"enabled": False}}, "bootstrap"),
    ({"influxdb": {"enabled": False}}, "url"),
    ({"postgresql": {"enabled": False}}, "host"),
    ({"serviceTokens": {"mint": False}}, "brokerRegistryToken"),
    ({"auth": {"jwtSecret": "too-short"}}, "jwtSecret"),
    ({"kafka": {"clusterId": "not a cluster id"}}, "clusterId"),
    ({"gateway": {"rateLimit": "fast"}}, "rateLimit"),
    ({"ingestQuery": {"env": {"lower-case": "x"}}}, "lower-case"),
]


def check_chart(known_env: set[str]) -> dict[str, list[dict]]:
    print("chart: lint, render, validate", flush=True)
    chart = load_chart()
    defaults = chart.values
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    rendered: dict[str, list[dict]] = {}
    for label, overrides in scenarios(defaults):
        started = time.monotonic()
        merged = deep_merge(defaults, overrides)
        for error in jsonschema.Draft7Validator(schema).iter_errors(merged):
            problem(f"{label}: values do not match values.schema.json at {'/'.join(map(str, error.path))}: {error.message}")
        try:
            chart.validate_schema(overrides)
        except helm.HelmError as error:
            problem(f"{label}: Helm refuses the values: {error}")
        lint(overrides, label)
        docs = render(chart, overrides, label)
        if docs is None:
            continue
        validate_manifests(docs, label)
        check_references(docs, merged, label, known_env)
        rendered[label] = docs
        kinds: dict[str, int] = {}
        for doc in docs:
            kinds[doc["kind"]] = kinds.get(doc["kind"], 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
        info(f"ok   {label}: {len(docs)} manifests ({summary}) in {time.monotonic() - started:.1f}s")
    for overrides, expected in REFUSED:
        try:
            chart.render(values=overrides, name=RELEASE, namespace=NAMESPACE)
        except helm.HelmError as error:
            if expected not in str(error):
                problem(f"values {overrides} were refused, but the message does not name {expected!r}: {error}")
            else:
                info(f"ok   refused {json.dumps(overrides)}")
            continue
        problem(f"values {overrides} were accepted; they must be refused ({expected})")
    check_chart_specifics(rendered)
    return rendered


def docs_of(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def container_env(docs: list[dict], container_name: str) -> dict[str, Any]:
    for doc in docs:
        spec = pod_spec(doc)
        if spec is None:
            continue
        for container in spec.get("containers", []):
            if container["name"] == container_name:
                return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}
    return {}


def check_chart_specifics(rendered: dict[str, list[dict]]) -> None:
    default = rendered.get("default values", [])
    if not default:
        return
    kafka = [d for d in docs_of(default, "StatefulSet") if d["metadata"]["name"].endswith("-kafka")]
    if len(kafka) != 1 or kafka[0]["spec"]["replicas"] != 3:
        problem("default values: no Kafka StatefulSet of 3 brokers")
    else:
        env = container_env(kafka, "kafka")
        for key, expected in {"KAFKA_PROCESS_ROLES": "broker,controller", "KAFKA_DEFAULT_REPLICATION_FACTOR": "3",
                              "KAFKA_MIN_INSYNC_REPLICAS": "2", "KAFKA_AUTO_CREATE_TOPICS_ENABLE": "false"}.items():
            if env.get(key) != expected:
                problem(f"default values: Kafka {key} is {env.get(key)!r}, expected {expected!r}")
        if len(env.get("KAFKA_CONTROLLER_QUORUM_VOTERS", "").split(",")) != 3:
            problem("default values: the KRaft quorum does not have 3 voters")
    pdbs = {d["metadata"]["name"] for d in docs_of(default, "PodDisruptionBudget")}
    for component in ["broker", "edge-bridge", "ingest-writer", "ingest-query", "device-registry", "gateway", "kafka"]:
        if f"{RELEASE}-{component}" not in pdbs:
            problem(f"default values: no PodDisruptionBudget for {component}")
    deployments = {d["metadata"]["name"] for d in docs_of(default, "Deployment")}
    for component in ["broker", "ingest-writer", "ingest-query", "device-registry", "gateway"]:
        if f"{RELEASE}-{component}" not in deployments:
            problem(f"default values: no Deployment {component}")
    tests = [d for d in default if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test" and d["kind"] == "Pod"]
    if not tests:
        problem("default values: no `helm test` Pod")
    dashboards = [d for d in docs_of(default, "ConfigMap") if d["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    expected = sorted(p.name for p in (ROOT / "dashboards").glob("*.json"))
    got = sorted(k for d in dashboards for k in d["data"])
    if got != expected:
        problem(f"default values: dashboard ConfigMaps hold {got}, dashboards/ has {expected}: "
                "helm/warmhouse/files/dashboards/ has a link per dashboard, e.g. "
                "`ln -s ../../../../dashboards/NAME.json helm/warmhouse/files/dashboards/`")
    for link in (CHART / "files").rglob("*"):
        if link.is_symlink() and not link.exists():
            problem(f"{link.relative_to(ROOT)} is a broken link")
    used_uids = set()
    for path in (ROOT / "dashboards").glob("*.json"):
        used_uids.update(re.findall(r'"uid":\s*"(warmhouse-[a-z]+)"', path.read_text()))
    used_uids = {u for u in used_uids if u in ("warmhouse-influxdb", "warmhouse-prometheus")}
    datasources = [d for d in docs_of(default, "ConfigMap") if d["metadata"].get("labels", {}).get("grafana_datasource") == "1"]
    provided = set()
    for d in datasources:
        for text in d["data"].values():
            loaded = yaml.safe_load(text)
            for source in loaded.get("datasources", []):
                provided.add(source.get("uid"))
                if "${" in str(source.get("url")):
                    problem(f"default values: datasource {source.get('uid')} keeps an unexpanded URL {source.get('url')}")
                if source.get("isDefault"):
                    problem(f"default values: datasource {source.get('uid')} claims to be the default of a shared Grafana")
    if not used_uids <= provided:
        problem(f"default values: dashboards use datasources {sorted(used_uids - provided)} no ConfigMap provides")
    for doc in docs_of(default, "ConfigMap"):
        if "gateway.conf.template" in doc.get("data", {}):
            if doc["data"]["gateway.conf.template"].strip() != GATEWAY_TEMPLATE.read_text().strip():
                problem("default values: the gateway ConfigMap differs from gateway/gateway.conf.template")


# ---------------------------------------------------------------- compose


def compose_env(service: dict) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return env


def check_compose(rendered: dict[str, list[dict]], known_env: set[str]) -> None:
    print("docker-compose.yml: compose-spec schema, consistency with the chart", flush=True)
    result = subprocess.run(
        [str(pathlib.Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(COMPOSE)],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        problem(f"docker-compose.yml does not match the compose-spec schema:\n{result.stdout}{result.stderr}")
    else:
        info("ok   compose-spec schema")
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]

    # Every secret a service names is defined; every volume too.
    for name, service in services.items():
        for secret in service.get("secrets", []):
            source = secret["source"] if isinstance(secret, dict) else secret
            if source not in compose.get("secrets", {}):
                problem(f"compose: {name} uses secret {source}, which is not defined")
        for volume in service.get("volumes", []):
            if isinstance(volume, str) and not volume.startswith(("./", "/")):
                if volume.split(":")[0] not in compose.get("volumes", {}):
                    problem(f"compose: {name} mounts volume {volume.split(':')[0]}, which is not defined")
            if isinstance(volume, str) and volume.startswith("./"):
                if not (ROOT / volume.split(":")[0]).exists():
                    problem(f"compose: {name} mounts {volume.split(':')[0]}, which does not exist")
        for dependency in (service.get("depends_on") or []):
            if dependency not in services:
                problem(f"compose: {name} depends on {dependency}, which is not a service")
        build = service.get("build")
        if build:
            target = build.get("target")
            image = service.get("image", "")
            if target not in OUR_IMAGES or not image.startswith(f"warmhouse/{target}:"):
                problem(f"compose: {name} builds target {target} into {image}; expected warmhouse/<target>:<version>")
        if service.get("image", "").startswith("warmhouse/"):
            for key in compose_env(service):
                if (key.startswith("WARMHOUSE_") or key in OTHER_ALLOWED_ENV) and not env_allowed(key, known_env):
                    problem(f"compose: {name} sets {key}, which no Warmhouse program reads")
                if key.endswith("_FILE"):
                    path = compose_env(service)[key]
                    mounted = [s["target"] for s in service.get("secrets", []) if isinstance(s, dict)]
                    mounted += [v.split(":")[1] for v in service.get("volumes", []) if isinstance(v, str)]
                    if not any(path == m or path.startswith(m.rstrip("/") + "/") for m in mounted):
                        problem(f"compose: {name}: {key}={path} is on no mounted secret or volume")
    for component in OUR_IMAGES:
        if not any((s.get("build") or {}).get("target") == component for s in services.values()):
            problem(f"compose: no service builds the {component} image")

    like_compose = rendered.get("like compose")
    default = rendered.get("default values")
    if not like_compose or not default:
        problem("compose: the chart did not render, so compose cannot be compared with it")
        return
    # Per service: the same variable names (compose runs the mTLS listener
    # and mints service tokens: the chart's "like compose" values).
    for chart_container, compose_service in SERVICE_PAIRS.items():
        chart_names = set(container_env(like_compose, chart_container))
        compose_names = set(compose_env(services[compose_service]))
        if chart_names != compose_names:
            problem(f"compose service {compose_service} and the chart's {chart_container} set different variables: "
                    f"only in compose {sorted(compose_names - chart_names)}, only in the chart {sorted(chart_names - compose_names)}")
        else:
            info(f"ok   {compose_service}: the same {len(chart_names)} variables as the chart")
    # Values that must agree wherever they are set.
    for chart_container, compose_service in SERVICE_PAIRS.items():
        chart_env = container_env(default, chart_container)
        for key, value in compose_env(services[compose_service]).items():
            constant = key.startswith("WARMHOUSE_TOPIC_") or key.endswith(("_GROUP", "_ADDR", "_LISTEN", "_USERNAME", "_DATABASE", "_RETENTION", "_DEVICE_AUTH", "_EVENTS_TOPIC")) or key in ("GATEWAY_LISTEN", "WARMHOUSE_LOG_FORMAT")
            if constant and key in chart_env and str(chart_env[key]) != str(value):
                problem(f"{key}: compose {compose_service} says {value!r}, the chart's {chart_container} {chart_env[key]!r}")
    # Kafka: the same broker settings (node id and listeners aside).
    chart_kafka = container_env(default, "kafka")
    compose_kafka = compose_env(services["kafka-1"])
    per_broker = {"KAFKA_NODE_ID", "KAFKA_ADVERTISED_LISTENERS", "KAFKA_CONTROLLER_QUORUM_VOTERS", "POD_NAME"}
    for key in (set(chart_kafka) | set(compose_kafka)) - per_broker:
        if str(chart_kafka.get(key)) != str(compose_kafka.get(key)):
            problem(f"Kafka {key}: compose {compose_kafka.get(key)!r}, chart {chart_kafka.get(key)!r}")
    for a, b in (("kafka-1", "kafka-2"), ("kafka-1", "kafka-3")):
        if services[a]["image"] != services[b]["image"]:
            problem(f"compose: {a} and {b} run different images")
    compose_topics = compose_env(services["kafka-init"])
    chart_topics = container_env(default, "kafka-topics")
    for key in ("TOPICS", "REPLICATION_FACTOR", "MIN_INSYNC_REPLICAS"):
        if str(compose_topics.get(key)) != str(chart_topics.get(key)):
            problem(f"topics {key}: compose {compose_topics.get(key)!r}, chart {chart_topics.get(key)!r}")
    # Gateway: every ${GATEWAY_*} of the template is set, in both.
    needed = set(re.findall(r"\$\{(GATEWAY_[A-Z_]+)\}", GATEWAY_TEMPLATE.read_text()))
    for where, names in (("compose", set(compose_env(services["gateway"]))), ("chart", set(container_env(default, "nginx")))):
        if not needed <= names:
            problem(f"{where}: the gateway lacks {sorted(needed - names)} (gateway/gateway.conf.template)")
    # Our images: compose's names are what the chart renders with its default prefix.
    ours = {c["image"] for d in default if pod_spec(d) for c in containers(pod_spec(d)) if c["image"].startswith("warmhouse/")}
    compose_ours = {s["image"].replace("${WARMHOUSE_VERSION:-0.1.0}", "0.1.0") for s in services.values() if s.get("image", "").startswith("warmhouse/")}
    if ours != compose_ours:
        problem(f"our images: the chart runs {sorted(ours)}, compose builds {sorted(compose_ours)}")
    # Third-party images: the same in both.
    chart_images = {c["image"] for d in default if pod_spec(d) for c in containers(pod_spec(d))}
    bundled = rendered.get("bundled Grafana", [])
    chart_images |= {c["image"] for d in bundled if pod_spec(d) for c in containers(pod_spec(d))}
    for name, service in services.items():
        image = service.get("image", "")
        if image.startswith("warmhouse/") or name == "prometheus":
            continue
        if image not in chart_images:
            problem(f"compose: {name} runs {image}, which the chart does not use (chart: {sorted(chart_images)})")


# ---------------------------------------------------------------- Dockerfile


def check_dockerfile(known_env: set[str]) -> None:
    print("docker/Dockerfile: targets, binaries, variables", flush=True)
    text = DOCKERFILE.read_text()
    stages = dict(re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, re.M | re.I)[::-1])
    stages = {alias: base for base, alias in re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, re.M | re.I)}
    bins = workspace_bins()
    for component in OUR_IMAGES:
        if component not in stages:
            problem(f"Dockerfile: no target {component}")
            continue
        if stages[component] != "runtime":
            problem(f"Dockerfile: target {component} is not built on the runtime stage")
        body = re.search(rf"^FROM\s+\S+\s+AS\s+{re.escape(component)}\s*$(.*?)(?=^FROM\s|\Z)", text, re.M | re.S | re.I).group(1)
        if component != "tools" and "HEALTHCHECK" not in body:
            problem(f"Dockerfile: target {component} has no HEALTHCHECK")
        for copied in re.findall(r"/out/([A-Za-z0-9_-]+)", body):
            if copied not in bins:
                problem(f"Dockerfile: target {component} copies {copied}, which is no [[bin]] of the workspace")
    runtime = re.search(r"^FROM\s+\S+\s+AS\s+runtime\s*$(.*?)(?=^FROM\s|\Z)", text, re.M | re.S | re.I)
    if not runtime or not re.search(r"^USER\s+10001", runtime.group(1), re.M):
        problem("Dockerfile: the runtime stage does not switch to the non-root user 10001")
    for name in re.findall(r"\b(WARMHOUSE_[A-Z0-9_]+)=", text):
        if not env_allowed(name, known_env):
            problem(f"Dockerfile sets {name}, which no Warmhouse program reads")
    for binary in re.findall(r"for bin in ([^;]+);", text, re.S):
        for name in binary.replace("\\", " ").split():
            if name not in bins:
                problem(f"Dockerfile builds {name}, which is no [[bin]] of the workspace")
    info(f"ok   {len(OUR_IMAGES)} targets checked")


def check_the_checkers(known_env: set[str]) -> None:
    """Canaries: each tool must refuse something broken, so a checker that
    silently checks nothing cannot pass."""
    print("canaries: the checkers refuse broken input", flush=True)
    bad_field = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                 "spec": {"replicas": 1, "selector": {"matchLabels": {"a": "b"}},
                          "template": {"metadata": {"labels": {"a": "b"}},
                                       "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicy": "Sometimes", "bogus": 1}]}}}}
    for kube in KUBE_VERSIONS:
        try:
            kv.validate(bad_field, kube, strict=True)
            problem(f"kubernetes-validate accepted an unknown container field against {kube}")
        except kv.ValidationError:
            pass
        try:
            kv.validate({"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "x"}}, kube, strict=True)
            problem(f"kubernetes-validate found a schema for a made-up kind against {kube}")
        except kv.SchemaNotFoundError:
            pass
    if env_allowed("WARMHOUSE_NOT_A_SETTING", known_env) or not env_allowed("WARMHOUSE_KAFKA_BOOTSTRAP", known_env):
        problem("the WARMHOUSE_* name check does not tell known names from unknown ones")
    with tempfile.NamedTemporaryFile("w", suffix=".yml") as broken:
        broken.write("services:\n  x:\n    image: 1\n    restart: sometimes\n    depends_on: {y: {condition: eventually}}\n")
        broken.flush()
        result = subprocess.run(
            [str(pathlib.Path(sys.executable).parent / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec", broken.name],
            capture_output=True, text=True,
        )
        if result.returncode == 0:
            problem("check-jsonschema accepted a broken compose file")
    report = helm.lint(CHART, {"broker": {"deviceAuth": "anyone"}}, strict=True)
    if not report.get("errors") and not any(m.get("severity", 0) >= 3 for m in report.get("messages", [])):
        problem(f"helm lint accepted values its schema refuses: {report}")
    info("ok   kubernetes-validate, check-jsonschema, helm lint and the name check each refused broken input")


def main() -> int:
    started = time.monotonic()
    known_env = known_env_names()
    with go_stderr_filtered():
        check_the_checkers(known_env)
    with go_stderr_filtered():
        rendered = check_chart(known_env)
    check_compose(rendered, known_env)
    check_dockerfile(known_env)
    elapsed = time.monotonic() - started
    if problems:
        print(f"\nhelm-check: {len(problems)} problem(s) in {elapsed:.0f}s:", file=sys.stderr)
        for message in problems:
            print(f"  - {message}", file=sys.stderr)
        return 1
    print(f"\nhelm-check: chart, compose file and Dockerfile are consistent and valid ({elapsed:.0f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
