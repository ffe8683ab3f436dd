#!/usr/bin/env bash
# Issue 14's capacity and rebalance figures on real release processes
# (127.0.0.1, TLS, Debian's redis-benchmark and redis-cli):
#
#   cargo build --release -p clustron-dkv -p clustron-client
#   bash xtask/cache-capacity.sh capacity    # 3 nodes, backups 0 and 1
#   bash xtask/cache-capacity.sh rebalance   # 1,000,000 entries, then a 4th node joins
#
# capacity: a namespace with --max-memory MEM per node is filled through
# RESP with far more than it can hold (random keys, 256-byte values); the
# entries and bytes each node holds are read from /metrics, and the sum of
# distinct entries (DBSIZE) is compared with one node's bound.
# rebalance: ENTRIES entries (default 1,000,000) in a namespace with 1
# backup on 3 nodes; then n4 starts while a load of GET and SET runs in
# slices of SLICE requests; prints each slice's rate and n4's partitions
# until n4 holds its share and the copies stop.
#
# Environment: BIN (release binaries, default target/release), DIR (work
# folder, default a new one under /tmp), MEM (default 16MiB), ENTRIES,
# SLICE (default 5000), BASE (first port, default 28400). Every wait has
# a deadline; every node is killed on exit.
set -euo pipefail

BIN=${BIN:-target/release}
DIR=${DIR:-$(mktemp -d /tmp/cache-capacity.XXXXXX)}
MEM=${MEM:-16MiB}
ENTRIES=${ENTRIES:-1000000}
SLICE=${SLICE:-5000}
BASE=${BASE:-28400}
mkdir -p "$DIR"
# shellcheck source=xtask/nodes.sh
source "$(dirname "$0")/nodes.sh"
resp() { echo "$((BASE + 200 + ${1#n}))"; }

TLS=(--tls --cacert "$DIR/ca.pem" --cert "$DIR/admin.pem" --key "$DIR/admin.key")
rcli() { redis-cli "${TLS[@]}" -p "$(resp n1)" "$@"; }
cli() {
  "$BIN/clustron" --endpoints "$(listen n1),$(listen n2),$(listen n3)" --ca-file "$DIR/ca.pem" \
    --cert-file "$DIR/admin.pem" --key-file "$DIR/admin.key" "$@"
}

# start NAME NAMESPACE: a node serving NAMESPACE over RESP.
start() {
  run_node "$1" "$((500 - ${1#n}))" --resp-listen "127.0.0.1:$(resp "$1")" --resp-namespace "$2"
}

metric() { # metric NODE NAME NAMESPACE: a cache gauge of that namespace, or 0
  curl -s --max-time 2 "http://$(admin "$1")/metrics" |
    awk -v m="$2" -v ns="namespace=\"$3\"" 'index($1, m "{") == 1 && index($1, ns) {print $2; f=1} END {if (!f) print 0}'
}

copies() { # partition copies sent by n1..n4 (a node-wide counter)
  local total=0
  for n in n1 n2 n3 n4; do
    local c
    c=$(curl -s --max-time 2 "http://$(admin "$n")/metrics" |
      awk '$1=="clustron_cache_partition_copies_total" {print $2; f=1} END {if (!f) print 0}')
    total=$((total + ${c%.*}))
  done
  echo "$total"
}

writable() { [ "$(rcli SET probe:x 1 2>/dev/null)" = "OK" ]; }

cluster() { # cluster NAMESPACE BACKUPS [--max-memory M]: 3 nodes and the namespace
  local ns=$1 backups=$2; shift 2
  for n in n1 n2 n3; do start "$n" "$ns"; done
  wait_for 60 cli cache list >/dev/null
  wait_for 60 cli cache create "$ns" --backups "$backups" "$@"
  wait_for 60 writable
}

stop_all() {
  for n in "${!PID[@]}"; do kill -9 "${PID[$n]}" 2>/dev/null || true; unset "PID[$n]"; done
  sleep 0.5 # ports free again (nothing waits on this)
  rm -rf "$DIR/data"
}

capacity() {
  for backups in 0 1; do
    local ns="cap$backups"
    cluster "$ns" "$backups" --max-memory "$MEM"
    # 1,000,000 random keys of 256 bytes: far beyond 3 x MEM.
    redis-benchmark "${TLS[@]}" -p "$(resp n1)" -t set -n 1000000 -r 100000000 -d 256 \
      -c 50 -P 16 -q >/dev/null 2>&1 || true
    local entries=0 bytes=0
    for n in n1 n2 n3; do
      local e b
      e=$(metric "$n" clustron_cache_entries "$ns"); b=$(metric "$n" clustron_cache_bytes "$ns")
      echo "backups $backups: $n holds $e entries, $b bytes (bound $MEM)"
      entries=$((entries + ${e%.*})); bytes=$((bytes + ${b%.*}))
    done
    local size; size=$(rcli DBSIZE)
    echo "backups $backups: DBSIZE $size distinct entries; copies held $entries entries, $bytes bytes over 3 nodes"
    stop_all
  done
  echo "one node's bound: $MEM; the ratio of distinct bytes to it is DBSIZE x (bytes per copy) / MEM"
}

rebalance() {
  cluster reb 1 --max-memory 1GiB --max-entries 2000000
  local t0; t0=$(now)
  # ENTRIES distinct keys, named as redis-benchmark's -r names them, so
  # the load below reads and overwrites them.
  awk -v n="$ENTRIES" 'BEGIN {
    v = sprintf("%0256d", 0)
    for (i = 0; i < n; i++) {
      k = sprintf("key:%012d", i)
      printf "*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$256\r\n%s\r\n", length(k), k, v
    }
  }' | redis-cli "${TLS[@]}" -p "$(resp n1)" --pipe | tail -1
  echo "filled in $(since "$t0") s; DBSIZE $(rcli DBSIZE)"
  for n in n1 n2 n3; do
    echo "$n: $(metric "$n" clustron_cache_owned_partitions reb) partitions owned, $(metric "$n" clustron_cache_entries reb) entries"
  done
  # The load: GET and SET over the same keys, in slices, against n2 (n1 is the
  # table's leader; n2 is an ordinary member).
  slice() {
    redis-benchmark "${TLS[@]}" -p "$(resp n2)" -t set,get -n "$SLICE" -r "$ENTRIES" -d 256 \
      -c 50 -P 1 --csv 2>/dev/null | tail -n +2 | tr -d '"' | cut -d, -f1,2 | tr '\n' ' '
  }
  for i in 1 2 3; do echo "before: $(slice)"; done
  local j; j=$(now)
  start n4 reb
  local copies0; copies0=$(copies)
  local last="" stable=0
  for i in $(seq 1 60); do
    local line; line=$(slice)
    local owned; owned=$(metric n4 clustron_cache_owned_partitions reb)
    local held; held=$(metric n4 clustron_cache_entries reb)
    local sent; sent=$(($(copies) - copies0))
    echo "t+$(since "$j") s: $line | n4 owns $owned partitions, holds $held entries; partition copies sent $sent"
    # Done once n4 owns partitions and no copy was sent for three slices
    # (new keys keep arriving from the load's SETs, so n4's count grows).
    if [ "${owned%.*}" -gt 0 ] && [ "$sent" = "$last" ]; then
      stable=$((stable + 1))
      [ "$stable" -ge 3 ] && break
    else
      stable=0
    fi
    last=$sent
  done
  for n in n1 n2 n3 n4; do
    echo "$n: $(metric "$n" clustron_cache_owned_partitions reb) partitions owned, $(metric "$n" clustron_cache_entries reb) entries"
  done
  echo "DBSIZE $(rcli DBSIZE)"
}

certs
case "${1:-}" in
  capacity) capacity ;;
  rebalance) rebalance ;;
  *) echo "usage: $0 capacity|rebalance" >&2; exit 2 ;;
esac
