#!/bin/sh
# Entry point of every Warmhouse image.
#
# Secrets may be handed over as files (Docker/Compose secrets, Kubernetes
# Secret volumes, tokens minted by an init container): for every
# WARMHOUSE_<NAME>_FILE=<path> in the environment, WARMHOUSE_<NAME> is set to
# the file's content (trailing newlines dropped) before the program starts;
# likewise PGPASSWORD_FILE sets PGPASSWORD, which the registry's PostgreSQL
# driver reads when WARMHOUSE_REGISTRY_DATABASE_URL carries no password.
# Setting both is an error, and so is a file that cannot be read: a service
# never starts with a secret silently missing.
set -eu

for name in $(env | sed -n -e 's/^\(WARMHOUSE_[A-Z0-9_]*\)_FILE=.*$/\1/p' -e 's/^\(PGPASSWORD\)_FILE=.*$/\1/p'); do
  file=$(printenv "${name}_FILE")
  if printenv "$name" >/dev/null 2>&1; then
    echo "warmhouse-entrypoint: both $name and ${name}_FILE are set; set one" >&2
    exit 64
  fi
  if [ ! -r "$file" ]; then
    echo "warmhouse-entrypoint: ${name}_FILE=$file cannot be read" >&2
    exit 66
  fi
  value=$(cat "$file")
  export "$name=$value"
  unset "${name}_FILE"
done

exec "$@"
