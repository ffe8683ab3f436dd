# Shared by the figure scripts (log-figures.sh, cache-capacity.sh): a
# cluster of release `clustron-dkv run` processes on 127.0.0.1, n1..n3
# voting, n4 a late joiner. Source it after setting BIN, DIR and BASE
# (first port: listen BASE+i, admin BASE+100+i for node ni).
declare -A PID

listen() { echo "127.0.0.1:$((BASE + ${1#n}))"; }
admin() { echo "127.0.0.1:$((BASE + 100 + ${1#n}))"; }
now() { date +%s.%N; }
since() { echo "$(now) - $1" | bc -l | xargs printf '%.3f'; }

cleanup() {
  for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

# certs: a CA, an admin client and nodes n1..n4 in DIR (once).
certs() {
  [ -f "$DIR/ca.pem" ] && return
  "$BIN/clustron-dkv" certs init --out "$DIR" >/dev/null
  "$BIN/clustron-dkv" certs client admin --role admin --ca "$DIR" --out "$DIR" >/dev/null
  for n in n1 n2 n3 n4; do
    "$BIN/clustron-dkv" certs node "$n" --ip 127.0.0.1 --ca "$DIR" --out "$DIR" >/dev/null
  done
}

# run_node NAME PRIORITY [FLAGS...]: `clustron-dkv run` in the background,
# seeded with the other voters, logging to DIR/NAME.log; its pid in PID.
run_node() {
  local n=$1 priority=$2 seeds=()
  shift 2
  for m in n1 n2 n3; do [ "$m" != "$n" ] && seeds+=("$(listen "$m")"); done
  "$BIN/clustron-dkv" run --name "$n" --listen "$(listen "$n")" --admin-listen "$(admin "$n")" \
    --voters n1,n2,n3 --priority "$priority" --data-dir "$DIR/data/$n" \
    --ca-file "$DIR/ca.pem" --cert-file "$DIR/$n.pem" --key-file "$DIR/$n.key" \
    --seeds "$(IFS=,; echo "${seeds[*]}")" "$@" >>"$DIR/$n.log" 2>&1 &
  PID[$n]=$!
  disown "$!"
}

wait_for() { # wait_for SECONDS COMMAND...: poll every 10 ms
  local deadline=$(($(date +%s) + $1)); shift
  until "$@"; do
    [ "$(date +%s)" -lt "$deadline" ] || { echo "timed out: $*" >&2; return 1; }
    sleep 0.01
  done
}
