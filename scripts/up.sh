#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole pipeline locally with
# simulated homes: tansu (Kafka), influxd, the MQTT broker, the edge bridge,
# the ingest writer and the telemetry query API. Ctrl-C stops everything.
# Options go to `warmhouse-stack up` (see --help), e.g. --homes 10.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/install-deps.sh
cargo build --release --locked -p warmhouse-stack --bin warmhouse-stack
exec target/release/warmhouse-stack up "$@"
