#!/usr/bin/env bash
# Installs what is missing, builds, and runs the whole pipeline locally with
# simulated homes: tansu (Kafka), influxd, PostgreSQL, two MQTT broker replicas
# (each with its edge bridge), the ingest writer, the telemetry query API, the
# device registry and the gateway. Ctrl-C stops everything.
# Options go to `warmhouse-stack up` (see --help), e.g. --homes 10.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/install-deps.sh
cargo build --release --locked -p warmhouse-stack --bin warmhouse-stack
exec target/release/warmhouse-stack up "$@"
