#!/usr/bin/env bash
# Usage: cargo build --release -p clustron-dkv && scripts/measure-dkv.sh (needs curl and bc).
# Measures, with real binaries: dev → ready cluster, kill -9 of the leader →
# dead in every view and a new leader, and the RSS of an idle node.
set -u
BIN=${BIN:-target/release/clustron-dkv}
DIR=$(mktemp -d)
now() { date +%s.%N; }
t0=$(now)
$BIN dev --nodes 3 --dir $DIR > $DIR/out 2>/dev/null &
DEV=$!
while [ $(grep -c "admin http" $DIR/out 2>/dev/null) -lt 3 ]; do sleep 0.01; done
ADMINS=$(grep -o "http://[0-9.:]*" $DIR/out)
ready() { for a in $ADMINS; do curl -sf $a/readyz >/dev/null || return 1; done; }
until ready; do sleep 0.01; done
t1=$(now)
echo "dev -> every node ready (leader known): $(echo "$t1 - $t0" | bc) s"
sleep 3
A2=$(echo "$ADMINS" | sed -n 2p); A3=$(echo "$ADMINS" | sed -n 3p)
N1=$(pgrep -f "clustron-dkv run --name n1 ")
N2=$(pgrep -f "clustron-dkv run --name n2 ")
echo "idle node RSS: $(grep VmRSS /proc/$N2/status)"
t2=$(now)
kill -9 $N1
dead_done=""; leader_done=""
while [ -z "$dead_done" ] || [ -z "$leader_done" ]; do
  if [ -z "$dead_done" ]; then
    d2=$(curl -s $A2/metrics | grep 'state="dead"' | awk '{print $2}'); d3=$(curl -s $A3/metrics | grep 'state="dead"' | awk '{print $2}')
    if [ "$d2" = "1" ] && [ "$d3" = "1" ]; then dead_done=$(now); fi
  fi
  if [ -z "$leader_done" ]; then
    r=$(curl -s $A2/readyz)
    case "$r" in *"leader n2"*) leader_done=$(now);; esac
  fi
  sleep 0.005
done
echo "kill -9 leader -> dead in every live view: $(echo "$dead_done - $t2" | bc) s"
echo "kill -9 leader -> new leader known: $(echo "$leader_done - $t2" | bc) s"
kill -INT $DEV; wait $DEV 2>/dev/null
rm -rf $DIR
