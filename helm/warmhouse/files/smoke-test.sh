#!/bin/sh
# Warmhouse smoke test: readiness of every service, then one reading through
# the whole pipeline (device registry -> MQTT broker, through the load
# balancer in front of its replicas -> Kafka -> ingest writer -> InfluxDB ->
# query API), then a command back to the device until it acknowledges it
# (registry -> outbox -> Kafka -> the broker replica holding the device ->
# MQTT -> device -> ack -> Kafka -> registry). Runs in the tools image: `helm test`
# (templates/tests/smoke-test.yaml) and `docker compose --profile test run
# --rm smoke-test`.
#
# SMOKE_READY_URLS   space-separated /readyz URLs that must answer 200
# SMOKE_REGISTRY_URL base URL of the device registry API (or the gateway)
# SMOKE_QUERY_URL    base URL of the telemetry query API (or the gateway)
# SMOKE_MQTT_HOST, SMOKE_MQTT_PORT   the broker's device listener
# WARMHOUSE_JWT_SECRET               signs the test's admin token
# SMOKE_TIMEOUT_SECS                 how long services may take to be ready (180)
set -eu

: "${SMOKE_READY_URLS:?}" "${SMOKE_REGISTRY_URL:?}" "${SMOKE_QUERY_URL:?}"
: "${SMOKE_MQTT_HOST:?}" "${SMOKE_MQTT_PORT:=1883}" "${SMOKE_TIMEOUT_SECS:=180}"

log() { echo "[smoke] $*"; }
fail() { echo "[smoke] FAIL: $*" >&2; exit 1; }

# HTTP status of a request; the body goes to /tmp/smoke-body.
# (curl prints 000 when it gets no answer at all.)
status() { curl -sS -o /tmp/smoke-body -w '%{http_code}' --max-time 10 "$@" 2>/dev/null || true; }

deadline=$(( $(date +%s) + SMOKE_TIMEOUT_SECS ))
for url in $SMOKE_READY_URLS; do
  until [ "$(status "$url")" = 200 ]; do
    [ "$(date +%s)" -lt "$deadline" ] || fail "$url is not ready: $(cat /tmp/smoke-body 2>/dev/null)"
    sleep 2
  done
  log "ready: $url"
done

token=$(warmhouse-token --admin --sub warmhouse-smoke-test --ttl-secs 600)
auth="Authorization: Bearer $token"

code=$(status "$SMOKE_REGISTRY_URL/api/v1/homes")
[ "$code" = 401 ] || fail "registry answered $code without a token, expected 401"
code=$(status "$SMOKE_QUERY_URL/api/v1/homes/smoke/telemetry/latest")
[ "$code" = 401 ] || fail "query API answered $code without a token, expected 401"
log "both APIs refuse requests without a token"

run="t$(date +%s)"
home="smoke-$run-0001"
device="$home-dev-01"
cleanup() {
  status -X DELETE -H "$auth" "$SMOKE_REGISTRY_URL/api/v1/devices/$device" >/dev/null
  status -X DELETE -H "$auth" "$SMOKE_REGISTRY_URL/api/v1/homes/$home" >/dev/null
}
trap cleanup EXIT

code=$(status -X POST -H "$auth" -H 'Content-Type: application/json' \
  -d "{\"id\":\"$home\",\"name\":\"Smoke test\"}" "$SMOKE_REGISTRY_URL/api/v1/homes")
[ "$code" = 201 ] || fail "creating home $home answered $code: $(cat /tmp/smoke-body)"
code=$(status -X POST -H "$auth" -H 'Content-Type: application/json' \
  -d "{\"device\":{\"id\":\"$device\",\"home_id\":\"$home\",\"kind\":\"thermostat\",\"name\":\"Smoke test\"},\"credentials\":\"password\"}" \
  "$SMOKE_REGISTRY_URL/api/v1/onboarding")
[ "$code" = 201 ] || fail "onboarding $device answered $code: $(cat /tmp/smoke-body)"
password=$(sed -n 's/.*"password":"\([^"]*\)".*/\1/p' /tmp/smoke-body)
[ -n "$password" ] || fail "no password in the onboarding answer"
log "onboarded $device in $home"

warmhouse-sim --host "$SMOKE_MQTT_HOST" --port "$SMOKE_MQTT_PORT" \
  --home-prefix smoke --run-id "$run" --homes 1 --devices-per-home 1 \
  --messages-per-device 3 --interval-ms 200 \
  --username "$device" --password "$password" \
  || fail "the simulated device could not publish its readings"
log "published 3 messages over MQTT"

deadline=$(( $(date +%s) + 60 ))
until [ "$(status -H "$auth" "$SMOKE_QUERY_URL/api/v1/devices/$device/telemetry/latest")" = 200 ]; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "no telemetry of $device became queryable: $(cat /tmp/smoke-body)"
  sleep 1
done
grep -q "\"device_id\":\"$device\"" /tmp/smoke-body || fail "unexpected answer: $(cat /tmp/smoke-body)"
log "telemetry is queryable: $(cat /tmp/smoke-body)"

# The device online again, for a command: the simulated thermostat executes
# set_target_temperature and acknowledges it over MQTT. A command sent
# before it connects waits queued and is delivered when it does.
warmhouse-sim --host "$SMOKE_MQTT_HOST" --port "$SMOKE_MQTT_PORT" \
  --home-prefix smoke --run-id "$run" --homes 1 --devices-per-home 1 \
  --interval-ms 1000 --duration-secs 120 \
  --username "$device" --password "$password" >/tmp/smoke-sim.log 2>&1 &
sim=$!
stop_sim() { kill -TERM "$sim" 2>/dev/null || true; wait "$sim" 2>/dev/null || true; }
trap 'stop_sim; cleanup' EXIT

code=$(status -X POST -H "$auth" -H 'Content-Type: application/json' \
  -d '{"name":"set_target_temperature","params":{"temperature":22.5}}' \
  "$SMOKE_REGISTRY_URL/api/v1/devices/$device/commands")
[ "$code" = 202 ] || fail "sending a command to $device answered $code: $(cat /tmp/smoke-body)"
command_id=$(sed -n 's/.*"command_id":"\([^"]*\)".*/\1/p' /tmp/smoke-body)
[ -n "$command_id" ] || fail "no command_id in the answer: $(cat /tmp/smoke-body)"
log "command $command_id queued"

deadline=$(( $(date +%s) + 60 ))
command_status=""
until [ "$command_status" = acked ]; do
  [ "$(date +%s)" -lt "$deadline" ] || fail "command $command_id is $command_status, not acked, after 60 s: $(cat /tmp/smoke-body); simulator: $(tail -n 20 /tmp/smoke-sim.log)"
  sleep 1
  code=$(status -H "$auth" "$SMOKE_REGISTRY_URL/api/v1/devices/$device/commands/$command_id")
  [ "$code" = 200 ] || continue
  command_status=$(sed -n 's/.*"status":"\([^"]*\)".*/\1/p' /tmp/smoke-body)
  case "$command_status" in
    failed|expired) fail "command $command_id ended $command_status: $(cat /tmp/smoke-body)" ;;
  esac
done
log "command acked by the device: $(cat /tmp/smoke-body)"
log "passed"
