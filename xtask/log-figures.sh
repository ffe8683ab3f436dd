#!/usr/bin/env bash
# The replicated log's figures (issue 11, "What it must show") on a real
# 3-node release cluster on 127.0.0.1, driven by `clustron-bench kv-fill`.
#
#   cargo build --release -p clustron-dkv -p xtask
#   bash xtask/log-figures.sh main         # 10k puts, restart; 1M puts, restart, disk, RSS, learner, wiped voter
#   bash xtask/log-figures.sh throughput   # put rate at 64 in flight, snapshots on vs off
#   bash xtask/log-figures.sh learner      # 10k puts, then a late learner's catch-up time (quick)
#
# Environment: BIN (release binaries, default target/release), DIR (work
# folder, default a new one under /tmp), PUTS (default 1000000), KEYS (keys
# the puts go to, default 10000; 100 measures a loaded node's fixed base), NODE_ARGS
# (more `clustron-dkv run` flags for every node), SECS (throughput phase
# length, default 30). Every wait has a deadline; every node is killed on exit.
set -euo pipefail

BIN=${BIN:-target/release}
DIR=${DIR:-$(mktemp -d /tmp/log-figures.XXXXXX)}
PUTS=${PUTS:-1000000}
KEYS=${KEYS:-10000}
SECS=${SECS:-30}
NODE_ARGS=${NODE_ARGS:-}
BASE=${BASE:-27400}
mkdir -p "$DIR"
# shellcheck source=xtask/nodes.sh
source "$(dirname "$0")/nodes.sh"

endpoints() { echo "$(listen n1),$(listen n2),$(listen n3)"; }
load() { uptime | sed 's/.*load average: /load /'; }

# start NAME PRIORITY: a node with NODE_ARGS.
start() {
  # shellcheck disable=SC2086
  run_node "$1" "$2" $NODE_ARGS
}

metric() { # metric NODE NAME: the value of an unlabelled metric, or -1
  curl -s --max-time 1 "http://$(admin "$1")/metrics" | awk -v m="$2" '$1==m {print $2; f=1} END {if (!f) print -1}'
}

ready() { [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://$(admin "$1")/readyz")" = 200 ]; }

caught_up() { # caught_up NODE INDEX
  local a; a=$(metric "$1" clustron_kv_applied_index); [ "${a%.*}" -ge "$2" ]
}

leader_applied() { metric n1 clustron_kv_applied_index | cut -d. -f1; }

kv_load() { # kv_load COUNT IN_FLIGHT MAX_SECS
  "$BIN/clustron-bench" kv-fill "$DIR" "$(endpoints)" "$1" "$2" "$3" "$KEYS"
}

sizes() {
  echo "-- $(load)"
  for n in n1 n2 n3; do
    local rss wal snap
    rss=$(awk '/VmRSS/ {print $2}' "/proc/${PID[$n]}/status")
    echo "$n: data dir $(du -sk "$DIR/data/$n" | cut -f1) KiB, RSS $rss KiB," \
      "store_bytes $(metric "$n" clustron_kv_store_bytes), live_bytes $(metric "$n" clustron_kv_live_bytes), wal_segments $(metric "$n" clustron_kv_wal_segments)," \
      "log_entries $(metric "$n" clustron_kv_log_entries), snapshot_index $(metric "$n" clustron_kv_snapshot_index)," \
      "applied $(metric "$n" clustron_kv_applied_index)"
  done
  echo "files of n3:"; find "$DIR/data/n3" -type f -printf '  %s %p\n' | sort -k2
}

restart() { # restart NODE: kill -9, start again, time until ready and caught up
  local n=$1 target t0
  kill -9 "${PID[$n]}"; wait "${PID[$n]}" 2>/dev/null || true
  target=$(leader_applied)
  t0=$(now)
  start "$n" 100
  wait_for 60 ready "$n"
  echo "restart $n (kill -9): /readyz 200 after $(since "$t0") s; $(load)"
  wait_for 60 caught_up "$n" "$target"
  echo "restart $n: applied index >= $target after $(since "$t0") s"
}

three() {
  certs
  start n1 300; start n2 200; start n3 100
  for n in n1 n2 n3; do wait_for 60 ready "$n"; done
}

main_figures() {
  three
  echo "== 10,000 puts, 64 in flight; $(load)"
  kv_load 10000 64 300 | tail -1
  sizes
  restart n3
  echo "== $PUTS more puts, 64 in flight; $(load)"
  kv_load "$PUTS" 64 900 | tee "$DIR/load-main.txt" | tail -1
  sizes
  restart n3
  sizes
  learn_late
  local target t0
  echo "== n3 data dir wiped, restarted; $(load)"
  kill -9 "${PID[n3]}"; wait "${PID[n3]}" 2>/dev/null || true
  rm -rf "$DIR/data/n3"
  target=$(leader_applied); t0=$(now)
  start n3 100
  wait_for 60 ready n3
  echo "wiped n3: /readyz 200 after $(since "$t0") s"
  wait_for 120 caught_up n3 "$target"
  echo "wiped n3: applied index >= $target after $(since "$t0") s"
}

throughput() {
  three
  kv_load 10000 64 300 | tail -1
  echo "== $SECS s of puts at 64 in flight, NODE_ARGS='$NODE_ARGS'; $(load)"
  local s0; s0=$(metric n1 clustron_kv_snapshot_index)
  kv_load 100000000 64 "$SECS" | tee "$DIR/load-throughput.txt" | tail -1
  echo "leader snapshot index $s0 -> $(metric n1 clustron_kv_snapshot_index); $(load)"
}

# A learner started late on an idle cluster: the catch-up alone (use
# NODE_ARGS="--snapshot-entries 1000" so it has to pull a snapshot).
learner() {
  three
  kv_load 10000 64 300 | tail -1
  learn_late
}

learn_late() {
  echo "== n4 started late, empty data dir (learner); $(load)"
  local target t0
  target=$(leader_applied); t0=$(now)
  start n4 0
  wait_for 120 caught_up n4 "$target"
  echo "n4 applied index >= $target after $(since "$t0") s; RSS $(awk '/VmRSS/ {print $2}' "/proc/${PID[n4]}/status") KiB"
}

case "${1:-main}" in
  main) main_figures ;;
  throughput) throughput ;;
  learner) learner ;;
  *) echo "usage: $0 main|throughput|learner" >&2; exit 2 ;;
esac
echo "work folder: $DIR"
