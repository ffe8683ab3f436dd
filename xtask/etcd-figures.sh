#!/usr/bin/env bash
# Issue 11's log figures for etcd, to set beside `xtask/log-figures.sh main`:
# a 3-member etcd (Debian `etcd-server`, defaults: --snapshot-count 100000,
# no auto-compaction) on 127.0.0.1 without TLS; 10,000 then PUTS puts of
# 256 B over 10,000 keys through its v3 JSON gateway (xtask/etcd_load.py,
# 16 keep-alive connections: the Python loader limits the rate, so compare
# memory, disk and restart, not throughput); RSS and data dir after each,
# after 12 s idle, and after a `kill -9` and restart of one member (time to
# /health true).
#
#   apt-get install etcd-server
#   bash xtask/etcd-figures.sh
#
# Environment: PUTS (default 1000000). Every member is killed on exit and
# the data removed.
set -euo pipefail

PUTS=${PUTS:-1000000}
HERE=$(cd "$(dirname "$0")" && pwd)
D=$(mktemp -d /tmp/etcd-figures.XXXXXX)
CLUSTER="e1=http://127.0.0.1:23801,e2=http://127.0.0.1:23802,e3=http://127.0.0.1:23803"
declare -A PID

cleanup() {
  kill "${PID[@]}" 2>/dev/null || true
  rm -rf "$D"
}
trap cleanup EXIT

start() { # start NAME [new|existing]
  local n=$1 i=${1#e}
  etcd --name "$n" --data-dir "$D/$n" \
    --listen-peer-urls "http://127.0.0.1:2380$i" --initial-advertise-peer-urls "http://127.0.0.1:2380$i" \
    --listen-client-urls "http://127.0.0.1:2379$i" --advertise-client-urls "http://127.0.0.1:2379$i" \
    --initial-cluster "$CLUSTER" --initial-cluster-state "${2:-new}" --log-level error >>"$D/$n.log" 2>&1 &
  PID[$n]=$!
}

healthy() { curl -s --max-time 1 "http://127.0.0.1:2379$1/health" | grep -q true; }

wait_healthy() { # wait_healthy I: at most 60 s
  local deadline=$(($(date +%s) + 60))
  until healthy "$1"; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "member $1 not healthy within 60 s" >&2; exit 1; }
    sleep 0.01
  done
}

report() {
  for n in e1 e2 e3; do
    echo "$n: data dir $(du -sk "$D/$n" | cut -f1) KiB, RSS $(awk '/VmRSS/ {print $2}' "/proc/${PID[$n]}/status") KiB"
  done
}

for n in e1 e2 e3; do start "$n"; done
wait_healthy 1
echo "== idle"; report
echo "== 10,000 puts"; python3 "$HERE/etcd_load.py" 10000; report
echo "== $PUTS more puts"; python3 "$HERE/etcd_load.py" "$PUTS"; report
sleep 12
echo "== after 12 s idle"; report
kill -9 "${PID[e3]}"
wait "${PID[e3]}" 2>/dev/null || true
t0=$(date +%s.%N)
start e3 existing
wait_healthy 3
echo "restart e3 (kill -9): /health true after $(echo "$(date +%s.%N) - $t0" | bc -l | xargs printf '%.3f') s"
report
ls -la "$D/e3/member/snap" "$D/e3/member/wal"
