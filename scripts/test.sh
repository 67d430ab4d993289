#!/usr/bin/env bash
# Runs every check and test of Warmhouse, installing what is missing first.
# Integration and system tests start real tansu, influxd and MQTT clients.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

scripts/install-deps.sh

echo "[test] formatting"
cargo fmt --all --check
echo "[test] clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "[test] function length: at most 80 lines of code outside tests (clippy.toml, ADR 0023)"
cargo clippy --workspace --lib --bins --locked -- -D clippy::too_many_lines
echo "[test] tests"
cargo nextest run --workspace --locked --no-fail-fast --profile "${NEXTEST_PROFILE:-default}"
