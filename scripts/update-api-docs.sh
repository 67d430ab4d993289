#!/usr/bin/env bash
# Regenerates the committed OpenAPI documents in docs/api/ from the code
# (utoipa), with the services' own `--print-openapi`. The tests
# device-registry/tests/openapi_doc.rs and ingest/tests/openapi_doc.rs fail
# until this has been run after a change to a REST API.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

generate() { # PACKAGE BINARY OUTPUT
  local tmp
  tmp=$(mktemp)
  cargo run --locked --quiet -p "$1" --bin "$2" -- --print-openapi >"$tmp"
  chmod 0644 "$tmp"
  mv "$tmp" "$3"
  echo "[api-docs] $3"
}

generate warmhouse-device-registry warmhouse-device-registry docs/api/device-registry.openapi.json
generate warmhouse-ingest ingest-query docs/api/ingest-query.openapi.json
