#!/usr/bin/env bash
# The container smoke test: the whole system of docker-compose.yml, from the
# images of docker/Dockerfile, run for real on this machine with
# docker-compose.local.yml (host networking, everything on 127.0.0.1, tansu
# for Kafka, InfluxDB, PostgreSQL, nginx and Prometheus built from Debian's
# packages; Grafana left out). `.ci/run` runs it after the tests.
#
#   scripts/container-smoke.sh
#   scripts/container-smoke.sh --no-build   # the warmhouse/* and warmhouse-local/*
#                                           # images there are, as they are
#
# 1. A Docker engine: the one DOCKER_HOST (or the default socket) reaches,
#    else, as root, one started here without its bridge and firewall rules
#    (dockerd --bridge=none --iptables=false --ip-forward=false), its images
#    in .tools/docker, stopped again by its pid at the end. Debian's
#    docker.io, docker-compose, debootstrap and docker-registry are installed
#    at pinned versions when missing (never over another Docker
#    installation). No engine and no way to start one: SKIPPED, exit 0.
# 2. Every image built (scripts/images.sh --offline --local-infra: binaries
#    from this host's `cargo build --release`, the Debian base by
#    debootstrap), pushed to a local registry (Debian's docker-registry on
#    127.0.0.1:15000) under the names and tags the workflow pushes to ghcr.io
#    (<registry>/<owner>/<repo>/<service>:<commit>), deleted here, pulled
#    back and compared by image id.
# 3. The system started from the pulled images (project warmhouse-smoke, its
#    own secrets), every container healthy or, for the one-shots, exited 0;
#    every socket a container listens on bound to 127.0.0.1, and no
#    container connected anywhere else.
# 4. The compose smoke-test service (helm/warmhouse/files/smoke-test.sh): a
#    device onboarded through the gateway, the simulator in the tools image
#    publishing over MQTT through the load balancer, its readings queryable
#    through the gateway, a command to it acknowledged. Then the legacy
#    monolith's API: a heating system imported with registry-import-monolith
#    and read and switched through /api/heating on the
#    gateway. Prometheus scrapes every service.
# 5. `docker-compose down -v`, then nothing of the project may be left; the
#    registry and the engine started here are stopped by their pids, and the
#    machine's network settings must be what they were.
#
# Any failure: the containers' state and logs, then exit 1.
# WARMHOUSE_CONTAINER_SMOKE=0 skips it (SKIPPED is printed).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export PATH="$HOME/.cargo/bin:$PATH"

DOCKER_IO_VERSION=20.10.24+dfsg1-1+deb12u1+b6
DOCKER_COMPOSE_VERSION=1.29.2-3
DOCKER_REGISTRY_VERSION=2.8.2+ds1-1

PROJECT=warmhouse-smoke
STATE=$ROOT/.tools/container-smoke
RUN_DIR=$STATE/run
ENGINE_DATA=$ROOT/.tools/docker
ENGINE_EXEC=/run/warmhouse-smoke-docker
REGISTRY_ADDR=127.0.0.1:15000
# The workflow pushes ghcr.io/<owner>/<repo>/<service>:<commit sha>.
REPOSITORY=$(printf '%s' "${WARMHOUSE_REPOSITORY:-warmhouse/warmhouse}" | tr '[:upper:]' '[:lower:]')
# Every port docker-compose.local.yml uses, and the registry's.
PORTS=(18080 11880 11883 11884 18883 21883 21884 21885 21183 22883 22884 22885 22183
       18081 18082 19185 19091 19092 19093 19094 19095 18086 18088 15432 19090 15000)
ONE_SHOTS=(kafka-init identity-init service-tokens)
HEALTH_TIMEOUT_SECS=${WARMHOUSE_SMOKE_HEALTH_TIMEOUT_SECS:-300}

log() { printf '\033[1m[container-smoke]\033[0m %s\n' "$*" >&2; }
skipped=0
skip() {
  printf '\033[1;33m[container-smoke] SKIPPED:\033[0m %s\n' "$*" >&2
  skipped=1
  exit 0
}
failed=0
fail() {
  printf '\033[1;31m[container-smoke] FAIL:\033[0m %s\n' "$*" >&2
  failed=1
  exit 1
}

build=1
case "${1:-}" in
  --no-build) build=0 ;;
  "") ;;
  *) echo "usage: scripts/container-smoke.sh [--no-build]" >&2; exit 64 ;;
esac

if [ "${WARMHOUSE_CONTAINER_SMOKE:-1}" = 0 ]; then
  skip "WARMHOUSE_CONTAINER_SMOKE=0"
fi

is_root() { [ "$(id -u)" -eq 0 ]; }

# apt_pinned PACKAGE VERSION: installs exactly that version unless present.
apt_pinned() {
  local package=$1 wanted=$2
  if [ "$(dpkg-query -W -f='${Status} ${Version}' "$package" 2>/dev/null || true)" = "install ok installed $wanted" ]; then
    return 0
  fi
  is_root && command -v apt-get >/dev/null || return 1
  log "installing $package $wanted (apt)"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$package=$wanted"
}

# One run at a time on this machine: the ports and the engine are shared.
exec 9>"${TMPDIR:-/tmp}/warmhouse-container-smoke.lock"
if ! flock -n 9; then
  log "another container smoke test runs; waiting for it"
  flock 9
fi

# ---------------------------------------------------------------- engine

engine_pid=""
registry_pid=""
net_before=""
compose_up=0

network_snapshot() {
  {
    ip -o link show
    ip -o addr show
    ip route show table all
    ip -6 route show table all
    sysctl -n net.ipv4.ip_forward net.ipv6.conf.all.forwarding
    if command -v iptables-save >/dev/null; then
      # (grep finds nothing when there are no rules at all)
      iptables-save | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//' || true
      ip6tables-save | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//' || true
    fi
  } 2>&1 || true
}

if docker info >/dev/null 2>&1; then
  log "using the running engine ($(docker version -f '{{.Server.Version}}'), DOCKER_HOST=${DOCKER_HOST:-default})"
else
  is_root || skip "no Docker engine answers, and starting one needs root"
  if ! command -v dockerd >/dev/null; then
    apt_pinned docker.io "$DOCKER_IO_VERSION" || skip "no dockerd, and Debian's docker.io $DOCKER_IO_VERSION could not be installed"
  fi
  [ "$(stat -fc %T /sys/fs/cgroup 2>/dev/null)" != "" ] || skip "no cgroup file system: no engine can run here"
fi
if docker-compose version >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
else
  apt_pinned docker-compose "$DOCKER_COMPOSE_VERSION" || skip "no Docker Compose, and Debian's docker-compose $DOCKER_COMPOSE_VERSION could not be installed"
  COMPOSE=(docker-compose)
fi
apt_pinned docker-registry "$DOCKER_REGISTRY_VERSION" \
  || skip "Debian's docker-registry $DOCKER_REGISTRY_VERSION is missing and could not be installed"

rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR"
chmod 0700 "$STATE"

# docker-compose.yml with docker-compose.local.yml, as one file: the
# configuration Compose makes of the two (`config`), less the ports the
# gateway, the MQTT load balancer and Prometheus publish. On the host's
# network they are meaningless, and docker-compose 1.29 refuses them there
# ("host" network_mode is incompatible with port_bindings), while an
# override cannot remove a list.
render_compose() {
  "${COMPOSE[@]}" -p "$PROJECT" --env-file "$RUN_DIR/env" \
    -f "$ROOT/docker-compose.yml" -f "$ROOT/docker-compose.local.yml" config >"$RUN_DIR/compose.yml" \
    || fail "docker-compose config refuses docker-compose.yml with docker-compose.local.yml"
  python3 - "$RUN_DIR/compose.yml" <<'PY' || fail "could not drop the published ports"
import sys, yaml
path = sys.argv[1]
with open(path) as f:
    config = yaml.safe_load(f)
dropped = []
for name, service in config["services"].items():
    if service.get("network_mode") == "host" and service.pop("ports", None):
        dropped.append(name)
with open(path, "w") as f:
    yaml.safe_dump(config, f, sort_keys=False)
print("published ports dropped (the host's network): " + " ".join(sorted(dropped)), file=sys.stderr)
PY
}
compose() {
  "${COMPOSE[@]}" -p "$PROJECT" --project-directory "$ROOT" -f "$RUN_DIR/compose.yml" "$@"
}

diagnose() {
  [ "$compose_up" -eq 1 ] || return 0
  log "containers:"
  docker ps -a --filter "label=com.docker.compose.project=$PROJECT" \
    --format '  {{.Names}}\t{{.Status}}' >&2 || true
  for id in $(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null); do
    name=$(docker inspect -f '{{.Name}}' "$id" | tr -d /)
    log "last log lines of $name:"
    docker logs --tail 25 "$id" 2>&1 | sed 's/^/    /' >&2 || true
  done
}

stop_pid() {
  local pid=$1 what=$2
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; log "$what (pid $pid) stopped"; return 0; }
    sleep 0.5
  done
  log "$what (pid $pid) did not stop in 30 s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

cleanup() {
  local status=$?
  set +e
  [ "$failed" -eq 1 ] || [ "$status" -eq 0 ] || failed=1
  if [ "$failed" -eq 1 ]; then diagnose; fi
  if [ "$compose_up" -eq 1 ]; then
    log "docker-compose down -v"
    compose --profile test --profile grafana down -v --remove-orphans >"$RUN_DIR/down.log" 2>&1 \
      || compose down -v --remove-orphans >>"$RUN_DIR/down.log" 2>&1 \
      || { cat "$RUN_DIR/down.log" >&2; failed=1; }
    left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")
    left+=$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT")
    left+=$(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT")
    if [ -n "$left" ]; then
      printf '\033[1;31m[container-smoke] FAIL:\033[0m left behind by docker-compose down -v: %s\n' "$left" >&2
      failed=1
    else
      log "nothing of project $PROJECT is left (containers, volumes, networks)"
    fi
  fi
  if [ -n "$registry_pid" ]; then stop_pid "$registry_pid" "the registry"; fi
  if [ -n "$engine_pid" ]; then
    stop_pid "$engine_pid" "dockerd"
    # dockerd 20.10 leaves its bind mount of the host's network namespace
    # (exec root/netns/default) behind: unmount what is left under its
    # directories, deepest first.
    findmnt -rn -o TARGET | grep -E "^($ENGINE_EXEC|$ENGINE_DATA)(/|$)" | sort -r \
      | while read -r mount; do umount "$mount" || umount -l "$mount"; done
    if findmnt -rn -o TARGET | grep -qE "^($ENGINE_EXEC|$ENGINE_DATA)(/|$)"; then
      printf '\033[1;31m[container-smoke] FAIL:\033[0m mounts left behind by dockerd\n' >&2
      failed=1
    fi
    rm -rf "$ENGINE_EXEC" "$STATE/docker.sock"
    net_after=$(network_snapshot)
    if [ "$net_after" != "$net_before" ]; then
      printf '\033[1;31m[container-smoke] FAIL:\033[0m the network settings changed:\n' >&2
      diff <(printf '%s\n' "$net_before") <(printf '%s\n' "$net_after") >&2
      failed=1
    else
      log "network settings as they were before the engine started"
    fi
  fi
  rm -rf "$RUN_DIR"
  [ "$skipped" -eq 0 ] || exit 0
  if [ "$failed" -eq 1 ]; then
    printf '\033[1;31m[container-smoke] FAILED\033[0m (%d s)\n' "$SECONDS" >&2
    exit 1
  fi
  printf '\033[1;32m[container-smoke] passed\033[0m (%d s)\n' "$SECONDS" >&2
  exit 0
}
trap cleanup EXIT
trap 'fail "interrupted"' INT TERM

busy=()
for port in "${PORTS[@]}"; do
  if ss -ltnH "sport = :$port" | grep -q .; then busy+=("$port"); fi
done
[ ${#busy[@]} -eq 0 ] || fail "ports in use, needed by docker-compose.local.yml: ${busy[*]} ($(ss -ltnpH | grep -E ":($(IFS='|'; echo "${busy[*]}")) " | head -n 3))"

if ! docker info >/dev/null 2>&1; then
  net_before=$(network_snapshot)
  mkdir -p "$ENGINE_DATA"
  log "starting dockerd (no bridge, no iptables, no forwarding; data in ${ENGINE_DATA#"$ROOT"/})"
  dockerd --bridge=none --iptables=false --ip-forward=false --ip-masq=false \
    --data-root "$ENGINE_DATA" --exec-root "$ENGINE_EXEC" --pidfile "$STATE/dockerd.pid" \
    --host "unix://$STATE/docker.sock" >"$STATE/dockerd.log" 2>&1 &
  engine_pid=$!
  export DOCKER_HOST="unix://$STATE/docker.sock"
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$engine_pid" 2>/dev/null || { tail -n 20 "$STATE/dockerd.log" >&2; engine_pid=""; skip "dockerd exited at start (log: $STATE/dockerd.log)"; }
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { tail -n 20 "$STATE/dockerd.log" >&2; fail "dockerd (pid $engine_pid) does not answer after 60 s"; }
  log "dockerd $(docker version -f '{{.Server.Version}}') runs as pid $engine_pid"
fi

# ---------------------------------------------------------------- registry, images

cat >"$RUN_DIR/registry.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog: {disabled: true}
storage:
  filesystem: {rootdirectory: $RUN_DIR/registry}
  delete: {enabled: true}
http:
  addr: $REGISTRY_ADDR
EOF
docker-registry serve "$RUN_DIR/registry.yml" >"$STATE/registry.log" 2>&1 &
registry_pid=$!
for _ in $(seq 1 40); do
  [ "$(curl -s -o /dev/null -w '%{http_code}' "http://$REGISTRY_ADDR/v2/")" = 200 ] && break
  sleep 0.25
done
[ "$(curl -s -o /dev/null -w '%{http_code}' "http://$REGISTRY_ADDR/v2/")" = 200 ] \
  || { cat "$STATE/registry.log" >&2; fail "the registry does not answer on $REGISTRY_ADDR"; }
log "docker-registry $(docker-registry --version 2>/dev/null | awk '{print $3}') on $REGISTRY_ADDR (pid $registry_pid)"

commit=$(git rev-parse HEAD 2>/dev/null || echo local)
prefix="$REGISTRY_ADDR/$REPOSITORY"
started=$SECONDS
mapfile -t TARGETS < <(sed -n 's/^FROM runtime AS \([a-z-]*\).*/\1/p' docker/Dockerfile)
version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' helm/warmhouse/Chart.yaml)
if [ "$build" -eq 1 ]; then
  scripts/images.sh --offline --local-infra --push "$prefix" --push-tag "$commit" \
    || fail "scripts/images.sh failed"
  log "images built and pushed in $(( SECONDS - started )) s"
else
  for target in "${TARGETS[@]}"; do
    if ! docker tag "warmhouse/$target:$version" "$prefix/$target:$commit" \
        || ! docker push -q "$prefix/$target:$commit" >/dev/null; then
      fail "pushing warmhouse/$target:$version as $prefix/$target:$commit failed"
    fi
  done
  log "images pushed (not built: --no-build) in $(( SECONDS - started )) s"
fi

for target in "${TARGETS[@]}"; do
  remote="$prefix/$target:$commit"
  id=$(docker image inspect -f '{{.Id}}' "$remote")
  # Every name of the image goes, so the pull has to fetch it all.
  mapfile -t names < <(docker image inspect -f '{{range .RepoTags}}{{println .}}{{end}}' "$id" | sed '/^$/d')
  docker rmi "${names[@]}" >/dev/null
  ! docker image inspect "$id" >/dev/null 2>&1 || fail "$id ($target) is still here after removing ${names[*]}"
  docker pull -q "$remote" >/dev/null || fail "docker pull $remote failed"
  pulled=$(docker image inspect -f '{{.Id}}' "$remote")
  [ "$pulled" = "$id" ] || fail "$remote came back as $pulled, pushed as $id"
  docker tag "$remote" "warmhouse/$target:$version"
  log "pulled back $remote: same image ${id:7:12}"
done
tags=$(curl -fsS "http://$REGISTRY_ADDR/v2/_catalog")
log "registry catalog: $tags"

# ---------------------------------------------------------------- up

secrets=$RUN_DIR/secrets
install -d -m 0700 "$secrets"
for name in jwt-secret postgres-password broker-admin-token grafana-admin-password; do
  (umask 0222; od -An -N32 -tx1 /dev/urandom | tr -d ' \n' >"$secrets/$name")
done
cat >"$RUN_DIR/env" <<EOF
WARMHOUSE_SECRETS_DIR=$secrets
WARMHOUSE_IMAGE_REGISTRY=$prefix
WARMHOUSE_VERSION=$commit
BIND_ADDRESS=127.0.0.1
BROKER_TLS_NAMES=
RUST_LOG=info
EOF

render_compose
log "docker-compose up -d (docker-compose.yml + docker-compose.local.yml, images $prefix/*:${commit:0:12})"
compose_up=1
started=$SECONDS
compose up -d --no-build >"$RUN_DIR/up.log" 2>&1 || { cat "$RUN_DIR/up.log" >&2; fail "docker-compose up failed"; }
log "up in $(( SECONDS - started )) s"

is_one_shot() { local s; for s in "${ONE_SHOTS[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1; }
mapfile -t SERVICES < <(compose config --services | grep -vx -e grafana -e smoke-test)

# Waits until every service's container is healthy (running, where it has no
# health check) and every one-shot exited 0.
wait_healthy() {
  local deadline=$(( SECONDS + HEALTH_TIMEOUT_SECS )) pending service id state
  while :; do
    pending=()
    for service in "${SERVICES[@]}"; do
      id=$(compose ps -q "$service" 2>/dev/null | head -n 1)
      if [ -z "$id" ]; then pending+=("$service:missing"); continue; fi
      state=$(docker inspect -f '{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.State.ExitCode}}' "$id")
      if is_one_shot "$service"; then
        case "$state" in
          "exited "*" 0") ;;
          exited*) fail "one-shot $service exited with $(awk '{print $3}' <<<"$state")" ;;
          *) pending+=("$service:${state%% *}") ;;
        esac
      else
        case "$state" in
          "running healthy "*|"running none "*) ;;
          *) pending+=("$service:${state% *}") ;;
        esac
      fi
    done
    [ ${#pending[@]} -eq 0 ] && return 0
    [ "$SECONDS" -lt "$deadline" ] || fail "not healthy after ${HEALTH_TIMEOUT_SECS} s: ${pending[*]}"
    sleep 2
  done
}
wait_healthy
log "all ${#SERVICES[@]} services healthy (one-shots ${ONE_SHOTS[*]} exited 0) after $(( SECONDS - started )) s"

# Every socket a container process has: listening only on 127.0.0.1 (or
# ::1), connected only to 127.0.0.1.
check_sockets() {
  local pids=() id line pid address bad=()
  for id in $(docker ps -q --filter "label=com.docker.compose.project=$PROJECT"); do
    mapfile -t -O "${#pids[@]}" pids < <(docker top "$id" -eo pid | tail -n +2 | tr -d ' ')
  done
  [ ${#pids[@]} -gt 0 ] || fail "found no container processes"
  local pattern
  pattern="pid=($(IFS='|'; echo "${pids[*]}")),"
  while read -r line; do
    [[ $line =~ $pattern ]] || continue
    pid=${BASH_REMATCH[1]}
    # ss -tuanpH: NETID STATE RECV-Q SEND-Q LOCAL PEER PROCESS
    read -r _ state _ _ local peer _ <<<"$line"
    if [ "$state" = LISTEN ] || [ "$state" = UNCONN ]; then address=$local; else address=$peer; fi
    case "$address" in
      127.0.0.1:*|\[::1\]:*|\[::ffff:127.0.0.1\]:*) ;;
      *) bad+=("$state $local -> $peer (pid $pid)") ;;
    esac
  done < <(ss -tuanpH)
  [ ${#bad[@]} -eq 0 ] || fail "container sockets not on 127.0.0.1: ${bad[*]}"
  log "every socket of the ${#pids[@]} container processes is on 127.0.0.1 ($1)"
}
check_sockets "after start"

# ---------------------------------------------------------------- checks

log "smoke-test service: onboarding, simulator over MQTT, telemetry and a command through the gateway"
if ! compose run --rm smoke-test >"$RUN_DIR/smoke-test.log" 2>&1; then
  cat "$RUN_DIR/smoke-test.log" >&2
  fail "the smoke-test service failed"
fi
grep '^\[smoke\]' "$RUN_DIR/smoke-test.log" | sed 's/^/  /' >&2
grep -q '^\[smoke\] passed' "$RUN_DIR/smoke-test.log" || fail "the smoke-test service did not say passed"

# The legacy monolith's API (/api/heating, no token): a heating system
# imported from a monolith database by registry-import-monolith, read and
# switched through the gateway.
gateway=http://127.0.0.1:18080
compose exec -T postgres psql -q -v ON_ERROR_STOP=1 -U warmhouse -d warmhouse >/dev/null <<'SQL' || fail "could not create the monolith's database"
CREATE DATABASE monolith;
\connect monolith
CREATE TABLE heating_systems (id bigint PRIMARY KEY, is_on boolean NOT NULL, target_temperature double precision, current_temperature double precision);
CREATE TABLE temperature_sensors (id bigint PRIMARY KEY, current_temperature double precision, last_updated timestamp);
INSERT INTO heating_systems VALUES (7, false, 21.5, 19.25);
INSERT INTO temperature_sensors VALUES (7, 19.25, now());
SQL
# In the registry's container (a one-off `run` of a service that runs is
# linked to it, which the host's network refuses); the entry point reads the
# secret files as at start.
import=$(compose exec -T device-registry warmhouse-entrypoint registry-import-monolith \
  --from postgres://warmhouse@127.0.0.1:15432/monolith 2>"$RUN_DIR/import.log") \
  || { cat "$RUN_DIR/import.log" >&2; fail "registry-import-monolith failed"; }
log "registry-import-monolith: $(tr -d '\n ' <<<"$import" | head -c 300)"
body=$RUN_DIR/body
http() { curl -sS -o "$body" -w '%{http_code}' --max-time 10 "$@" || true; }
expect() {
  local want=$1 got
  shift
  got=$(http "$@")
  [ "$got" = "$want" ] || fail "$* answered $got, expected $want: $(head -c 300 "$body")"
  log "  $got <- $*: $(head -c 200 "$body")"
}
expect 200 "$gateway/api/heating/7"
if ! grep -q '"id":7' "$body" || ! grep -q '"targetTemperature":21.5' "$body"; then
  fail "GET /api/heating/7 is not the imported heating system: $(cat "$body")"
fi
expect 204 -X POST "$gateway/api/heating/7/turn-on"
expect 200 "$gateway/api/heating/7"
grep -q '"on":true' "$body" || fail "after turn-on, /api/heating/7 says $(cat "$body")"
expect 200 "$gateway/api/heating/7/current-temperature"
expect 404 "$gateway/api/heating/8"
expect 400 "$gateway/api/heating/abc"

# Prometheus scrapes every service.
deadline=$(( SECONDS + 60 ))
until [ "$(http "http://127.0.0.1:19090/api/v1/targets?state=active")" = 200 ] \
    && [ "$(grep -o '"health":"up"' "$body" | wc -l)" -eq 5 ]; do
  [ "$SECONDS" -lt "$deadline" ] || fail "Prometheus does not scrape all 5 targets: $(grep -o '"scrapeUrl":"[^"]*","globalUrl":"[^"]*","lastError":"[^"]*","lastScrape":"[^"]*","lastScrapeDuration":[0-9.e-]*,"health":"[a-z]*"' "$body" | head -c 600)"
  sleep 2
done
log "Prometheus scrapes all 5 targets (both brokers, writer, query API, registry)"

wait_healthy
check_sockets "after the checks"
restarts=$(for id in $(compose ps -q); do docker inspect -f '{{.Name}} {{.RestartCount}}' "$id"; done | awk '$2 > 0')
[ -z "$restarts" ] || fail "containers restarted: $restarts"
log "all containers still healthy, none restarted"
