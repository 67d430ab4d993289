#!/usr/bin/env bash
# Installs what Warmhouse needs on a Debian machine that has the Rust toolchain:
# Debian packages (InfluxDB, Mosquitto clients, build tools), tansu (a
# Kafka-protocol broker, pinned) and cargo-nextest (pinned). Each step is
# skipped when exactly what it would install is already there.
set -euo pipefail

TANSU_VERSION=0.6.0
NEXTEST_VERSION=0.9.143
APT_PACKAGES=(
  influxdb influxdb-client   # time-series store (v1 HTTP API) and its CLI
  mosquitto mosquitto-clients # reference MQTT broker for the benchmark; real MQTT clients for tests
  coreutils                   # stdbuf, used by the broker tests
  postgresql                  # device registry store
  pkg-config zlib1g-dev make  # building librdkafka (rdkafka-sys)
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
