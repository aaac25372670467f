#!/usr/bin/env bash
# Compares two keygate builds on a machine whose speed drifts: both serve the same mock upstream
# and are loaded AT THE SAME TIME on the same core (mock and both keygates on CPU 0, two wrk on
# CPU 1), so whatever the host does in a round it does to both. Per round: each one's requests/s
# and CPU time per request (user + system, all its threads, from /proc), and B's over A's.
#
#   bash bench/ab.sh OLD_BINARY NEW_BINARY
#
# Environment: AB_ROUNDS (8), AB_SECS (4 s per round), AB_CONNS (64 per keygate), AB_STREAM=1
# (streamed answers), AB_KEY=plain (a key with no limits; default: every limit and restriction
# set, bench/restricted_key.json). Build the mock first: cargo build --release --example
# mock_upstream. An A/A run (the same binary twice) shows the method's own spread.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# = 2 ] || { echo "usage: bash bench/ab.sh OLD_BINARY NEW_BINARY" >&2; exit 2; }
BIN_A=$(realpath "$1")
BIN_B=$(realpath "$2")
ROUNDS=${AB_ROUNDS:-8}
SECS=${AB_SECS:-4}
CONNS=${AB_CONNS:-64}
ADMIN=ab-admin-token-0123456789
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
need bench/ab.sh wrk taskset curl python3
RUN=$(mktemp -d)
cleanup() {
  stop_started
  rm -rf "$RUN"
}
trap cleanup EXIT

MOCK_PORT=$(free_port)
taskset -c 0 "$MOCK" --listen "127.0.0.1:$MOCK_PORT" --chunks 20 --workers 1 >"$RUN/mock.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$MOCK_PORT/"

# The key each keygate gets: bench/run.sh's restricted key, or with AB_KEY=plain one without any.
KEY_BODY=@"$ROOT/bench/restricted_key.json"
[ "${AB_KEY:-restricted}" = plain ] && KEY_BODY='{"name":"ab"}'

# start NAME BINARY: a keygate with its own database, port and key
start() {
  local dir="$RUN/$1" port
  port=$(free_port)
  mkdir -p "$dir"
  (cd "$dir" && exec taskset -c 0 env KEYGATE_LISTEN="127.0.0.1:$port" \
    DATABASE_URL="sqlite://$dir/keygate.db" KEYGATE_UPSTREAM_URL="http://127.0.0.1:$MOCK_PORT/v1" \
    KEYGATE_UPSTREAM_API_KEY=sk-upstream-ab KEYGATE_ADMIN_TOKEN=$ADMIN RUST_LOG=warn "$2" serve) \
    >"$dir/keygate.log" 2>&1 &
  PIDS+=($!)
  echo $! >"$dir/pid"
  echo "$port" >"$dir/port"
  wait_http "http://127.0.0.1:$port/healthz" -f
  curl -fsS -X POST -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d "$KEY_BODY" "http://127.0.0.1:$port/api/api-keys" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])' >"$dir/key"
}

# load NAME SECS: wrk on CPU 1 against it; prints "rps p99_us"
load() {
  local dir="$RUN/$1"
  BENCH_STREAM=${AB_STREAM:-0} BENCH_AUTH="$(cat "$dir/key")" BENCH_CONNS=$CONNS \
    taskset -c 1 wrk -t1 -c"$CONNS" -d"$2"s --timeout 10s --latency -s "$ROOT/bench/wrk/chat.lua" \
    "http://127.0.0.1:$(cat "$dir/port")/v1/chat/completions" |
    sed -n 's/^BENCH_JSON //p' | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.0f %d" % (d["rps"], d["p99_us"]))'
}

# the process's user + system CPU time in clock ticks, all threads
ticks() { awk '{print $14 + $15}' "/proc/$(cat "$RUN/$1/pid")/stat"; }

start a "$BIN_A"
start b "$BIN_B"
load a 2 >/dev/null & warm=$!
load b 2 >/dev/null
wait $warm

echo "A: $BIN_A"
echo "B: $BIN_B"
echo "$ROUNDS rounds of ${SECS} s, c=$CONNS each, ${AB_KEY:-restricted} key, stream=${AB_STREAM:-0}"
HZ=$(getconf CLK_TCK)
for r in $(seq 1 "$ROUNDS"); do
  a0=$(ticks a); b0=$(ticks b)
  load a "$SECS" >"$RUN/ra" & la=$!
  load b "$SECS" >"$RUN/rb"
  wait $la
  a1=$(ticks a); b1=$(ticks b)
  read -r ra pa <"$RUN/ra"
  read -r rb pb <"$RUN/rb"
  python3 - "$r" "$ra" "$pa" "$rb" "$pb" "$((a1 - a0))" "$((b1 - b0))" "$SECS" "$HZ" <<'PY'
import sys
r, ra, pa, rb, pb, ta, tb, secs, hz = sys.argv[1:]
ra, rb, secs, hz = float(ra), float(rb), float(secs), float(hz)
ca = int(ta) / hz * 1e6 / (ra * secs)
cb = int(tb) / hz * 1e6 / (rb * secs)
print(f"round {r}: A {ra:,.0f} rps, {ca:.1f} µs CPU/req, p99 {int(pa)/1000:.1f} ms | "
      f"B {rb:,.0f} rps, {cb:.1f} µs CPU/req, p99 {int(pb)/1000:.1f} ms | "
      f"B/A rps {rb/ra:.3f}, CPU/req {cb/ca:.3f}")
PY
done
