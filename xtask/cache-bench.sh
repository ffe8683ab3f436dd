#!/usr/bin/env bash
# Issue 14's cache benchmark: redis-benchmark over TLS against a 3-node
# `clustron-dkv dev` cluster (namespace `default`: 1 backup, LRU) and, in the
# same run, against one Debian `redis-server` with TLS on the same machine
# (no replication there), in alternating rounds. Prints requests/s, p50/p99
# and the server CPU per 1,000 requests (all three nodes summed).
#
#   cargo build --release -p clustron-dkv
#   bash xtask/cache-bench.sh
#
# Environment: BIN (release binaries, default target/release), N (requests
# per test, default 200000), CLIENTS (default 50), ROUNDS (default 2),
# PIPELINES (default "1 16"). Needs redis-benchmark and redis-server
# (`apt-get install redis-tools redis-server`). Every wait has a deadline;
# every server is killed on exit.
set -euo pipefail

BIN=${BIN:-target/release}
N=${N:-200000}
CLIENTS=${CLIENTS:-50}
ROUNDS=${ROUNDS:-2}
PIPELINES=${PIPELINES:-"1 16"}
DIR=$(mktemp -d /tmp/cache-bench.XXXXXX)
PIDS=()

cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  pkill -f "clustron-dkv run .*--data-dir $DIR/data" 2>/dev/null || true
}
trap cleanup EXIT

cpu_ticks() { # utime + stime of the given pids, in clock ticks
  local total=0
  for p in "$@"; do
    local stat
    stat=$(cut -d' ' -f14,15 "/proc/$p/stat" 2>/dev/null || echo "0 0")
    total=$((total + ${stat% *} + ${stat#* }))
  done
  echo "$total"
}

wait_ping() { # port
  for _ in $(seq 1 300); do
    if redis-cli --tls --cacert "$DIR/ca.pem" --cert "$DIR/admin.pem" --key "$DIR/admin.key" \
        -p "$1" PING 2>/dev/null | grep -q PONG; then
      return 0
    fi
    sleep 0.1
  done
  echo "no PONG from port $1 within 30 s" >&2
  exit 1
}

"$BIN/clustron-dkv" dev --dir "$DIR" > "$DIR/dev.out" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 300); do
  grep -q "Ctrl-C stops" "$DIR/dev.out" 2>/dev/null && break
  sleep 0.1
done
mapfile -t RESP_PORTS < <(grep -o 'Redis protocol 127.0.0.1:[0-9]*' "$DIR/dev.out" | sed 's/.*://')
[ "${#RESP_PORTS[@]}" -eq 3 ] || { cat "$DIR/dev.out"; echo "no RESP ports" >&2; exit 1; }
for port in "${RESP_PORTS[@]}"; do wait_ping "$port"; done
# The partition table must have every owner before the load starts.
for _ in $(seq 1 300); do
  out=$(redis-cli --tls --cacert "$DIR/ca.pem" --cert "$DIR/admin.pem" --key "$DIR/admin.key" \
    -p "${RESP_PORTS[0]}" SET bench:probe 1 2>&1 || true)
  [ "$out" = "OK" ] && break
  sleep 0.1
done
NODE_PIDS=$(pgrep -f "clustron-dkv run .*--data-dir $DIR/data" | tr '\n' ' ')

REDIS_PORT=$((20000 + RANDOM % 20000))
redis-server --port 0 --tls-port "$REDIS_PORT" --tls-cert-file "$DIR/n1.pem" \
  --tls-key-file "$DIR/n1.key" --tls-ca-cert-file "$DIR/ca.pem" --save '' \
  --appendonly no --daemonize no > "$DIR/redis.out" 2>&1 &
REDIS_PID=$!
PIDS+=($REDIS_PID)
wait_ping "$REDIS_PORT"

run() { # label port pids pipeline
  local label=$1 port=$2 pids=$3 pipeline=$4
  local before after
  before=$(cpu_ticks $pids)
  local csv
  # shellcheck disable=SC2086
  csv=$(redis-benchmark --tls --cacert "$DIR/ca.pem" --cert "$DIR/admin.pem" \
    --key "$DIR/admin.key" -p "$port" -t set,get -n "$N" -c "$CLIENTS" -P "$pipeline" \
    -d 256 -r 100000 --csv 2>/dev/null)
  after=$(cpu_ticks $pids)
  local hz
  hz=$(getconf CLK_TCK)
  echo "$csv" | tail -n +2 | tr -d '"' | while IFS=, read -r test rps avg min p50 p95 p99 max; do
    local cpu
    cpu=$(echo "($after - $before) / $hz / ($N * 2) * 1000" | bc -l)
    printf "%-9s %-4s -P %-3s %10.0f req/s  p50 %6.3f ms  p99 %6.3f ms  server CPU %.4f s/1k req (both tests)\n" \
      "$label" "$test" "$pipeline" "$rps" "$p50" "$p99" "$cpu"
  done
}

echo "cache bench: $N requests, $CLIENTS clients, 256-byte values, keys over 100000, TLS; $ROUNDS alternating rounds"
for round in $(seq 1 "$ROUNDS"); do
  for pipeline in $PIPELINES; do
    run clustron "${RESP_PORTS[$(( (round - 1) % 3 ))]}" "$NODE_PIDS" "$pipeline"
    run redis "$REDIS_PORT" "$REDIS_PID" "$pipeline"
  done
done
