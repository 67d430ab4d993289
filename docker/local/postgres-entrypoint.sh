#!/bin/sh
# Entry point of warmhouse-local/postgres, doing what the official postgres
# image's does with the variables docker-compose.yml sets: on an empty PGDATA
# it creates the cluster with the superuser POSTGRES_USER (default postgres),
# whose password is POSTGRES_PASSWORD or the content of POSTGRES_PASSWORD_FILE,
# and the database POSTGRES_DB (default: the user's name). Connections over
# TCP need the password (scram-sha-256); the local socket trusts its users.
# Then the command runs (by default postgres in the foreground; PGPORT sets
# the port).
set -eu
: "${PGDATA:?PGDATA must be set}"

if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  user=${POSTGRES_USER:-postgres}
  database=${POSTGRES_DB:-$user}
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    password=$(cat "$POSTGRES_PASSWORD_FILE")
  else
    password=${POSTGRES_PASSWORD:-}
  fi
  if [ -z "$password" ]; then
    echo "postgres-entrypoint: set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE" >&2
    exit 64
  fi
  mkdir -p "$PGDATA"
  chmod 0700 "$PGDATA"
  pwfile=$(mktemp)
  printf '%s\n' "$password" >"$pwfile"
  initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
    --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  if [ "$database" != postgres ]; then
    echo "CREATE DATABASE \"$database\" OWNER \"$user\"" \
      | postgres --single -D "$PGDATA" -c listen_addresses='' postgres >/dev/null
  fi
  echo "postgres-entrypoint: cluster created in $PGDATA (user $user, database $database)" >&2
fi
exec "$@"
