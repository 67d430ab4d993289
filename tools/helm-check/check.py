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
* docker/Dockerfile: a target per image the chart and compose use (and no
  other), and every binary it copies is a [[bin]] of the workspace.
* The ingress tier (broker replicas with the device ingress built in, no
  edge bridge any more): in the chart a StatefulSet of >= 2 replicas by
  default, with a spool volumeClaimTemplate that WARMHOUSE_BROKER_SPOOL_DIR
  points into, a PodDisruptionBudget and Services selecting every replica;
  in compose >= 2 broker services, each with its own spool volume and name,
  behind the `mqtt` TCP load balancer (docker/mqtt-lb/nginx.conf), all
  scraped by Prometheus; nothing deployed mentions edge-bridge.

Exits 1 with every problem listed, 0 when all hold. Run by
tools/repo-checks/tests/deploy_manifests.rs (so by scripts/test.sh and .ci/run):

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
MQTT_LB_CONF = ROOT / "docker" / "mqtt-lb" / "nginx.conf"
PROMETHEUS_CONF = ROOT / "docker" / "prometheus" / "prometheus.yml"
LOCAL_COMPOSE = ROOT / "docker-compose.local.yml"
LOCAL_DOCKERFILE = ROOT / "docker" / "local" / "Dockerfile"
LOCAL_PROMETHEUS_CONF = ROOT / "docker" / "local" / "prometheus.yml"
LOCAL_MQTT_LB_CONF = ROOT / "docker" / "local" / "mqtt-lb.conf"
# How docker-compose.yml names our images: the chart's image.registry and
# image.tag as variables, so compose can run the images CI pushed.
IMAGE_REGISTRY_VAR = "${WARMHOUSE_IMAGE_REGISTRY:-warmhouse}/"
SPOOL_DIR_VAR = "WARMHOUSE_BROKER_SPOOL_DIR"
# The devices' MQTT ports: 3.1.1, 5, over mTLS.
MQTT_PORTS = [1883, 1884, 8883]
# What the removed edge bridge was called anywhere (image, component,
# values key, variables); no deployment file may mention it.
# (Case matters: the ingress' metrics keep their warmhouse_bridge_* names.)
EDGE_BRIDGE_NAMES = re.compile(r"edge-bridge|edge_bridge|edgeBridge|WARMHOUSE_BRIDGE_")

# Oldest and newest Kubernetes the chart is checked against (kubeVersion in
# Chart.yaml says >= 1.27).
KUBE_VERSIONS = ["1.30.0", "1.34.0"]
RELEASE, NAMESPACE = "warmhouse", "warmhouse"

# Images of ours: component -> compose service using it as `build.target`.
OUR_IMAGES = ["broker", "ingest-writer", "ingest-query", "device-registry", "tools"]
# Chart container (name) -> compose services with the same configuration.
SERVICE_PAIRS = {
    "broker": ["broker-1", "broker-2"],
    "ingest-writer": ["ingest-writer"],
    "ingest-query": ["ingest-query"],
    "device-registry": ["device-registry"],
    "nginx": ["gateway"],
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
    ({"broker": {"replicas": -1}}, "replicas"),
    # The edge bridge is gone: its old values must not be taken silently.
    ({"edgeBridge": {"replicas": 1}}, "edgeBridge"),
    ({"secrets": {"brokerServicePassword": "x"}}, "brokerServicePassword"),
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


def check_broker_tier(docs: list[dict], label: str, minimum_replicas: int) -> None:
    """The broker replicas: a StatefulSet whose every replica has its own
    spool (a volumeClaimTemplate mounted where WARMHOUSE_BROKER_SPOOL_DIR
    points) and its own name, a PodDisruptionBudget and Services that select
    every replica, no guard against more than one replica."""
    name = f"{RELEASE}-broker"
    if any(d["kind"] == "Deployment" and d["metadata"]["name"] == name for d in docs):
        problem(f"{label}: the broker is a Deployment; it must be a StatefulSet (a spool volume per replica)")
    brokers = [d for d in docs_of(docs, "StatefulSet") if d["metadata"]["name"] == name]
    if len(brokers) != 1:
        problem(f"{label}: no StatefulSet {name}")
        return
    broker = brokers[0]
    spec = broker["spec"]
    if int(spec.get("replicas", 1)) < minimum_replicas:
        problem(f"{label}: the broker has {spec.get('replicas', 1)} replica(s), expected at least {minimum_replicas}")
    if (spec.get("updateStrategy") or {}).get("type", "RollingUpdate") != "RollingUpdate":
        problem(f"{label}: the broker's updateStrategy is {spec['updateStrategy']}, expected RollingUpdate")
    pod = spec["template"]["spec"]
    if int(pod.get("terminationGracePeriodSeconds", 30)) < 30:
        problem(f"{label}: the broker's terminationGracePeriodSeconds is below 30 s: too short to finish its publishes")
    claims = {c["metadata"]["name"]: c for c in spec.get("volumeClaimTemplates", [])}
    if "spool" not in claims:
        problem(f"{label}: the broker StatefulSet has no volumeClaimTemplate `spool` (got {sorted(claims)})")
    elif "ReadWriteOnce" not in claims["spool"]["spec"].get("accessModes", []):
        problem(f"{label}: the broker's spool claim is not ReadWriteOnce: replicas must never share a spool")
    if any(v["name"] in claims for v in pod.get("volumes", [])):
        problem(f"{label}: a pod volume of the broker shadows its volumeClaimTemplate")
    container = next((c for c in pod["containers"] if c["name"] == "broker"), None)
    if container is None:
        problem(f"{label}: the broker StatefulSet has no container `broker`")
        return
    env = {e["name"]: e for e in container.get("env", [])}
    spool_dir = (env.get(SPOOL_DIR_VAR) or {}).get("value")
    mounts = {m["mountPath"].rstrip("/"): m for m in container.get("volumeMounts", [])}
    spool_mount = next((m for path, m in mounts.items()
                        if spool_dir and (spool_dir.rstrip("/") == path or spool_dir.startswith(path + "/"))), None)
    if not spool_dir:
        problem(f"{label}: the broker does not set {SPOOL_DIR_VAR}")
    elif spool_mount is None or spool_mount["name"] not in claims or spool_mount.get("readOnly"):
        problem(f"{label}: the broker's {SPOOL_DIR_VAR}={spool_dir} is not on its writable spool volumeClaimTemplate")
    instance = (env.get("WARMHOUSE_BROKER_INSTANCE_ID") or {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    if instance != "metadata.name":
        problem(f"{label}: the broker's WARMHOUSE_BROKER_INSTANCE_ID is not its pod name")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        got = (container.get(probe) or {}).get("httpGet") or {}
        if got.get("path") != path or got.get("port") != "admin":
            problem(f"{label}: the broker's {probe} is {got}, expected {path} on the admin port")
    labels = pod_labels(broker)
    selects = lambda selector: bool(selector) and all(labels.get(k) == v for k, v in selector.items())
    pdbs = [d for d in docs_of(docs, "PodDisruptionBudget") if selects(d["spec"]["selector"].get("matchLabels"))]
    if not pdbs:
        problem(f"{label}: no PodDisruptionBudget selects the broker pods")
    elif any(str(d["spec"].get("maxUnavailable")) != "1" for d in pdbs):
        problem(f"{label}: the broker's PodDisruptionBudget does not say maxUnavailable: 1")
    services = [d for d in docs_of(docs, "Service") if selects(d["spec"].get("selector"))]
    device_ports = {p["port"] for s in services if s["spec"].get("clusterIP") != "None" for p in s["spec"]["ports"]}
    if not {1883, 1884} <= device_ports:
        problem(f"{label}: no Service balances MQTT (1883, 1884) over every broker replica (got ports {sorted(device_ports)})")
    headless = [s for s in services if s["spec"].get("clusterIP") == "None"]
    if spec.get("serviceName") not in {s["metadata"]["name"] for s in headless}:
        problem(f"{label}: the broker's serviceName {spec.get('serviceName')} is no headless Service of its pods")


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
    for component in ["broker", "ingest-writer", "ingest-query", "device-registry", "gateway", "kafka"]:
        if f"{RELEASE}-{component}" not in pdbs:
            problem(f"default values: no PodDisruptionBudget for {component}")
    deployments = {d["metadata"]["name"] for d in docs_of(default, "Deployment")}
    for component in ["ingest-writer", "ingest-query", "device-registry", "gateway"]:
        if f"{RELEASE}-{component}" not in deployments:
            problem(f"default values: no Deployment {component}")
    before = len(problems)
    for label, docs in rendered.items():
        check_broker_tier(docs, label, minimum_replicas=2 if label == "default values" else 1)
        for doc in docs:
            text = yaml.safe_dump({k: v for k, v in doc.items() if k != "__source"})
            found = EDGE_BRIDGE_NAMES.search(text)
            if found:
                problem(f"{label}: {doc['kind']}/{doc['metadata']['name']} mentions {found.group(0)!r}; "
                        "the edge bridge is gone (its work runs in every broker replica)")
    if len(problems) == before:
        replicas = next(d["spec"]["replicas"] for d in docs_of(default, "StatefulSet") if d["metadata"]["name"] == f"{RELEASE}-broker")
        info(f"ok   broker: a StatefulSet of {replicas} replicas by default, a spool volume each, a PDB and Services "
             f"over every replica, in all {len(rendered)} renders; no edge bridge")
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
    check_compose_v1_compatible(compose)
    # Our images are ${WARMHOUSE_IMAGE_REGISTRY:-warmhouse}/<name>:...; below
    # they are compared under the default registry, as the chart renders them.
    for name, service in services.items():
        image = service.get("image", "")
        if image.startswith("warmhouse/"):
            problem(f"compose: {name} runs {image}; our images are {IMAGE_REGISTRY_VAR}<name>:${{WARMHOUSE_VERSION:-...}}")
        if image.startswith(IMAGE_REGISTRY_VAR):
            service["image"] = "warmhouse/" + image[len(IMAGE_REGISTRY_VAR):]

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
    check_compose_services(compose)
    check_local_override(compose)

    like_compose = rendered.get("like compose")
    default = rendered.get("default values")
    if not like_compose or not default:
        problem("compose: the chart did not render, so compose cannot be compared with it")
        return
    # Per service: the same variable names (compose runs the mTLS listener
    # and mints service tokens: the chart's "like compose" values).
    pairs = [(c, s) for c, compose_services in SERVICE_PAIRS.items() for s in compose_services]
    for chart_container, compose_service in pairs:
        if compose_service not in services:
            problem(f"compose has no service {compose_service} (the chart's {chart_container})")
            continue
        chart_names = set(container_env(like_compose, chart_container))
        compose_names = set(compose_env(services[compose_service]))
        if chart_names != compose_names:
            problem(f"compose service {compose_service} and the chart's {chart_container} set different variables: "
                    f"only in compose {sorted(compose_names - chart_names)}, only in the chart {sorted(chart_names - compose_names)}")
        else:
            info(f"ok   {compose_service}: the same {len(chart_names)} variables as the chart")
    # Values that must agree wherever they are set.
    for chart_container, compose_service in pairs:
        if compose_service not in services:
            continue
        chart_env = container_env(default, chart_container)
        for key, value in compose_env(services[compose_service]).items():
            constant = key.startswith("WARMHOUSE_TOPIC_") or key.endswith(("_GROUP", "_ADDR", "_LISTEN", "_USERNAME", "_DATABASE", "_RETENTION", "_DEVICE_AUTH", "_EVENTS_TOPIC", "_SPOOL_DIR")) or key in ("GATEWAY_LISTEN", "WARMHOUSE_LOG_FORMAT")
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


def published_ports(service: dict) -> set[int]:
    ports: set[int] = set()
    for port in service.get("ports", []) or []:
        if isinstance(port, dict):
            ports.add(int(port.get("published", port["target"])))
            continue
        # [HOST:]PUBLISHED:TARGET[/PROTOCOL]; HOST may be ${VAR:-default}.
        parts = str(port).split("/")[0].rsplit(":", 2)
        ports.add(int(parts[-2] if len(parts) >= 2 else parts[-1]))
    return ports


def check_compose_services(compose: dict) -> None:
    """Restart policies, the broker replicas, the MQTT load balancer in
    front of them, Prometheus' broker job, and no trace of the edge bridge."""
    services = compose["services"]
    before = len(problems)
    # Long-running services come back by themselves; one-shots (something
    # waits for them to complete, or the test profile) keep their own policy.
    one_shots = {dep for s in services.values() if isinstance(s.get("depends_on"), dict)
                 for dep, cond in s["depends_on"].items()
                 if (cond or {}).get("condition") == "service_completed_successfully"}
    for name, service in services.items():
        if name in one_shots or "test" in (service.get("profiles") or []):
            continue
        if service.get("restart") != "unless-stopped":
            problem(f"compose: {name} has restart {service.get('restart')!r}, expected unless-stopped")
    brokers = {n: s for n, s in services.items() if (s.get("build") or {}).get("target") == "broker"}
    if len(brokers) < 2:
        problem(f"compose: {len(brokers)} broker service(s) ({sorted(brokers)}), expected at least 2 replicas")
    ids, spools = {}, {}
    for name, service in brokers.items():
        env = compose_env(service)
        ids[name] = env.get("WARMHOUSE_BROKER_INSTANCE_ID")
        spool_dir = env.get(SPOOL_DIR_VAR)
        volume = next((v.split(":")[0] for v in service.get("volumes", []) if isinstance(v, str)
                       and spool_dir and v.split(":")[1].rstrip("/") == spool_dir.rstrip("/")
                       and not v.endswith(":ro")), None)
        if not spool_dir or volume is None or volume.startswith(("./", "/")):
            problem(f"compose: {name} has no named volume of its own at {SPOOL_DIR_VAR}={spool_dir}")
        spools[name] = volume
        if published_ports(service) & set(MQTT_PORTS):
            problem(f"compose: {name} publishes MQTT ports itself; devices reach the brokers through the load balancer")
        if service.get("restart") != "unless-stopped":
            problem(f"compose: broker {name} is not restart: unless-stopped")
    for what, values in (("WARMHOUSE_BROKER_INSTANCE_ID", ids), ("spool volume", spools)):
        present = [v for v in values.values() if v]
        if len(present) != len(values) or len(set(present)) != len(present):
            problem(f"compose: the broker replicas do not each have a {what} of their own: {values}")
    # The load balancer: one service publishing every device port, its
    # nginx stream config balancing each over every broker.
    balancers = [n for n, s in services.items() if set(MQTT_PORTS) <= published_ports(s)]
    if len(balancers) != 1:
        problem(f"compose: {len(balancers)} services publish the MQTT ports {MQTT_PORTS} ({balancers}); expected the one load balancer")
    else:
        balancer = services[balancers[0]]
        if not any(isinstance(v, str) and v.split(":")[0] == f"./{MQTT_LB_CONF.relative_to(ROOT)}" for v in balancer.get("volumes", [])):
            problem(f"compose: the load balancer {balancers[0]} does not mount {MQTT_LB_CONF.relative_to(ROOT)}")
        for port in balancer.get("ports", []):
            if not str(port).startswith("${BIND_ADDRESS:-127.0.0.1}:"):
                problem(f"compose: the load balancer publishes {port}, not on ${{BIND_ADDRESS:-127.0.0.1}}")
        conf = MQTT_LB_CONF.read_text() if MQTT_LB_CONF.exists() else ""
        stream = re.search(r"^stream\s*\{(.*?)^\}", conf, re.S | re.M)
        if not stream:
            problem(f"{MQTT_LB_CONF.relative_to(ROOT)} has no stream {{}} block")
        else:
            body = re.sub(r"#[^\n]*", "", stream.group(1))
            upstreams = dict(re.findall(r"upstream\s+(\S+)\s*\{(.*?)\}", body, re.S))
            listens = dict(re.findall(r"listen\s+(\d+)\s*;\s*proxy_pass\s+(\S+?)\s*;", body))
            for port in MQTT_PORTS:
                upstream = listens.get(str(port))
                servers = set(re.findall(r"server\s+([\w.-]+):(\d+)", upstreams.get(upstream or "", "")))
                expected = {(b, str(port)) for b in brokers}
                if not upstream or servers != expected:
                    problem(f"{MQTT_LB_CONF.relative_to(ROOT)}: port {port} goes to {sorted(servers)}, expected {sorted(expected)}")
                if re.search(r"\bssl\b", upstreams.get(upstream or "", "")) or re.search(rf"listen\s+{port}\s+ssl", body):
                    problem(f"{MQTT_LB_CONF.relative_to(ROOT)}: port {port} terminates TLS; it must pass it through")
        for broker in brokers:
            if broker not in (balancer.get("depends_on") or {}):
                problem(f"compose: the load balancer does not wait for {broker}")
    # Prometheus scrapes every broker in one job.
    prometheus = yaml.safe_load(PROMETHEUS_CONF.read_text())
    jobs = {j["job_name"]: {t for c in j.get("static_configs", []) for t in c.get("targets", [])}
            for j in prometheus.get("scrape_configs", [])}
    expected = {f"{b}:9183" for b in brokers}
    if jobs.get("warmhouse-broker") != expected:
        problem(f"{PROMETHEUS_CONF.relative_to(ROOT)}: job warmhouse-broker scrapes {sorted(jobs.get('warmhouse-broker', []))}, expected {sorted(expected)}")
    chart_files = [f for f in sorted(CHART.rglob("*")) if f.is_file() and not f.is_symlink()]
    for path in [COMPOSE, *sorted((ROOT / "docker").rglob("*")), *chart_files]:
        if path.is_file():
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if EDGE_BRIDGE_NAMES.search(line):
                    problem(f"{path.relative_to(ROOT)}:{number} mentions the edge bridge, which is gone: {line.strip()}")
    if len(problems) == before:
        info(f"ok   compose: {len(brokers)} broker replicas, each with its own spool, behind the MQTT load balancer")


def check_compose_v1_compatible(compose: dict) -> None:
    """docker-compose 1.29 (Debian 12's Compose, which scripts/container-smoke.sh
    runs) refuses a top-level `name`, secrets from the environment and
    options of tmpfs mounts in the long volume syntax; Compose v2 accepts what
    1.29 does."""
    before = len(problems)
    allowed_top = {"version", "services", "volumes", "networks", "secrets", "configs"}
    for key in compose:
        if key not in allowed_top and not key.startswith("x-"):
            problem(f"compose: top-level `{key}` is refused by docker-compose 1.29 (COMPOSE_PROJECT_NAME in .env names the project)")
    for name, secret in (compose.get("secrets") or {}).items():
        if set(secret or {}) - {"file", "external", "name"}:
            problem(f"compose: secret {name} uses {sorted(set(secret) - {'file', 'external', 'name'})}; docker-compose 1.29 takes secrets from files only")
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []) or []:
            if isinstance(volume, dict) and volume.get("type") == "tmpfs" and volume.get("tmpfs"):
                problem(f"compose: {name} sets tmpfs options in the long volume syntax (docker-compose 1.29 refuses them): use `tmpfs: [PATH:OPTIONS]`")
    if len(problems) == before:
        info("ok   compose: nothing docker-compose 1.29 refuses (top-level keys, file secrets, tmpfs)")


def check_local_override(compose: dict) -> None:
    """docker-compose.local.yml (the container smoke test's override): every
    service of docker-compose.yml it runs shares the host's network and uses
    127.0.0.1 only, each port once; its third-party images are targets of
    docker/local/Dockerfile; its Prometheus scrapes the same jobs on the
    override's ports; its MQTT load balancer reaches every broker's ports."""
    before = len(problems)
    local = yaml.safe_load(LOCAL_COMPOSE.read_text())
    base_services = compose["services"]
    local_services = local.get("services", {})
    local_targets = {alias for _, alias in re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", LOCAL_DOCKERFILE.read_text(), re.M | re.I)}
    merged: dict[str, dict] = {}
    for name in set(base_services) | set(local_services):
        merged[name] = deep_merge(base_services.get(name, {}), local_services.get(name, {}))
    run = {n: s for n, s in merged.items() if not set(s.get("profiles") or []) - {"test"}}
    if "grafana" in run:
        problem("docker-compose.local.yml: grafana is not moved to a profile, but cannot be installed here")
    ports: dict[str, str] = {}
    address = re.compile(r"(?:(?:[a-z]+://)?(?:[\w.-]+@)?)([A-Za-z0-9_.-]+):(\d{2,5})\b")
    for name, service in sorted(run.items()):
        if service.get("network_mode") != "host":
            problem(f"docker-compose.local.yml: {name} does not set network_mode: host")
        if service.get("hostname"):
            problem(f"docker-compose.local.yml: {name} keeps hostname {service['hostname']!r}, which Docker refuses with the host's network")
        image = service.get("image", "")
        if image.startswith("warmhouse-local/"):
            target = image.split("/", 1)[1].split(":")[0]
            if target not in local_targets:
                problem(f"docker-compose.local.yml: {name} runs {image}, no target of {LOCAL_DOCKERFILE.relative_to(ROOT)}")
        elif not image.startswith("warmhouse/") and name in local_services:
            problem(f"docker-compose.local.yml: {name} runs {image}, which cannot be had here")
        elif not image.startswith("warmhouse/"):
            problem(f"docker-compose.local.yml: {name} keeps {image}, which cannot be pulled here")
        # Apache Kafka's settings, inherited from docker-compose.yml, mean
        # nothing to tansu.
        # Addresses: variables named like one, and URLs anywhere.
        address_key = re.compile(r"(URLS?|ADDR|ADDRESS|LISTEN|BOOTSTRAP|UPSTREAM|HOST)$")
        texts = [f"{k}={v}" for k, v in compose_env(service).items()
                 if not (k.startswith("KAFKA_") and image.startswith("warmhouse-local/tansu"))
                 and (address_key.search(k) or "://" in str(v))]
        command = service.get("command") or []
        texts += [c for c in (command if isinstance(command, list) else [command]) if "://" in str(c)]
        for text in texts:
            for host, port in address.findall(text):
                if host in ("127.0.0.1",):
                    continue
                if re.fullmatch(r"[A-Z_]+", host) or host in ("file", "sqlite", "memory"):
                    continue
                problem(f"docker-compose.local.yml: {name} names {host}:{port}; everything is on 127.0.0.1 there ({text})")
        for key, value in compose_env(service).items():
            if key.endswith(("_LISTEN", "_ADDR")) or key in ("LISTENER_URL", "GATEWAY_LISTEN", "INFLUXDB_HTTP_BIND_ADDRESS", "INFLUXDB_BIND_ADDRESS", "PGPORT"):
                port = str(value).rsplit(":", 1)[-1]
                if port in ports and ports[port] != name:
                    problem(f"docker-compose.local.yml: port {port} is {name}'s and {ports[port]}'s")
                ports[port] = name
                if key != "PGPORT" and not str(value).replace("tcp://", "").startswith("127.0.0.1:"):
                    problem(f"docker-compose.local.yml: {name} listens on {value} ({key}), not on 127.0.0.1")
        for mount in service.get("volumes", []) or []:
            if isinstance(mount, str) and mount.startswith("./") and not (ROOT / mount.split(":")[0]).exists():
                problem(f"docker-compose.local.yml: {name} mounts {mount.split(':')[0]}, which does not exist")
    prometheus = yaml.safe_load(LOCAL_PROMETHEUS_CONF.read_text())
    base_prometheus = yaml.safe_load(PROMETHEUS_CONF.read_text())
    jobs = {j["job_name"]: len([t for c in j.get("static_configs", []) for t in c.get("targets", [])]) for j in prometheus.get("scrape_configs", [])}
    base_jobs = {j["job_name"]: len([t for c in j.get("static_configs", []) for t in c.get("targets", [])]) for j in base_prometheus.get("scrape_configs", [])}
    if jobs != base_jobs:
        problem(f"{LOCAL_PROMETHEUS_CONF.relative_to(ROOT)} has jobs {jobs}, {PROMETHEUS_CONF.relative_to(ROOT)} {base_jobs}")
    brokers = {n: s for n, s in run.items() if (s.get("build") or {}).get("target") == "broker"}
    conf = re.sub(r"#[^\n]*", "", LOCAL_MQTT_LB_CONF.read_text())
    upstream_servers = set(re.findall(r"server\s+(127\.0\.0\.1:\d+)", conf))
    for name, service in brokers.items():
        env = compose_env(service)
        for key in ("WARMHOUSE_BROKER_MQTT_V4_ADDR", "WARMHOUSE_BROKER_MQTT_V5_ADDR", "WARMHOUSE_BROKER_MQTTS_ADDR"):
            if str(env.get(key)) not in upstream_servers:
                problem(f"{LOCAL_MQTT_LB_CONF.relative_to(ROOT)} does not balance to {name}'s {key}={env.get(key)}")
    if len(problems) == before:
        info(f"ok   docker-compose.local.yml: {len(run)} services on the host's network, 127.0.0.1 only, {len(ports)} ports each used once")


# ---------------------------------------------------------------- Dockerfile


def check_dockerfile(known_env: set[str]) -> None:
    print("docker/Dockerfile: targets, binaries, variables", flush=True)
    text = DOCKERFILE.read_text()
    stages = dict(re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, re.M | re.I)[::-1])
    stages = {alias: base for base, alias in re.findall(r"^FROM\s+(\S+)\s+AS\s+(\S+)", text, re.M | re.I)}
    bins = workspace_bins()
    extra = {alias for alias, base in stages.items() if base == "runtime"} - set(OUR_IMAGES)
    if extra:
        problem(f"Dockerfile: targets {sorted(extra)} are images no one uses (the chart and compose use {OUR_IMAGES})")
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
    # The legacy builder (DOCKER_BUILDKIT=0; Debian 12's docker.io has no
    # buildx) builds every stage before the target and knows no BuildKit
    # syntax (docs/adr/0022-images-without-pulls.md).
    for path, content in ((DOCKERFILE, text), (LOCAL_DOCKERFILE, LOCAL_DOCKERFILE.read_text())):
        for pattern, what in ((r"^\s*#\s*syntax\s*=", "a `# syntax=` line"), (r"^\s*RUN\s+--mount", "RUN --mount"),
                              (r"^\s*(COPY|ADD)\s+[^\n]*--(chmod|link|parents|exclude)", "COPY/ADD flags BuildKit alone knows"),
                              (r"<<\s*EOF", "a here-document")):
            if re.search(pattern, content, re.M | re.I):
                problem(f"{path.relative_to(ROOT)} has {what}, which the legacy builder cannot build")
    if not re.search(r"^ARG BINARIES=compile$", text, re.M) or "prebuilt)" not in text:
        problem("Dockerfile: no BINARIES=compile|prebuilt switch (scripts/images.sh builds with prebuilt binaries)")
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
