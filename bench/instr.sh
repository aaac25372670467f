#!/usr/bin/env bash
# Instructions per request of one or two keygate builds, counted by callgrind over the same fixed
# load: the deterministic yardstick for changes of a few percent, which bench/ab.sh cannot tell
# from the noise of a shared VM. Instructions are not time (a cache miss or a long memcpy costs
# more than its count), so a change should also read no worse in ab.sh.
#
#   bash bench/instr.sh BINARY [BINARY_B]
#
# keygate runs on CPU 0 (so with one runtime thread, as in bench/run.sh), the mock and the
# clients on CPU 1. Each build runs under valgrind with instrumentation off until a warm-up is
# done, then counts INSTR_REQUESTS chat requests (non-streaming, from INSTR_CLIENTS keep-alive
# clients) and prints the instructions per request of its request thread (the runtime: hyper,
# the relay), of its call-log writer, and of the whole process; with two builds, B's over A's.
#
# INSTR_FLOOR=1 also counts examples/floor_proxy.rs (the cheapest relay on keygate's stack, one
# thread) under the same load: what of keygate's count is the stack's. valgrind hides the CPU's
# SHA extensions, so keygate's count includes ~3.5k instructions of SHA-256 (the presented key's
# hash) in the software form that a native run does not execute.
#
# Environment: INSTR_REQUESTS (2000), INSTR_CLIENTS (4), INSTR_KEY=plain (a key without limits;
# default: bench/restricted_key.json), INSTR_MOCK_ARGS (more mock_upstream options, e.g.
# --openai-headers: answers with the headers a real OpenAI answer carries), INSTR_KEEP=1 (keep
# the callgrind files and logs, and say where). Needs valgrind (apt-get install valgrind) and
# the mock: cargo build --release --example mock_upstream.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# = 1 ] || [ $# = 2 ] || { echo "usage: bash bench/instr.sh BINARY [BINARY_B]" >&2; exit 2; }
BIN_A=$(realpath "$1")
BIN_B=$(realpath "${2:-$1}")
REQUESTS=${INSTR_REQUESTS:-2000}
CLIENTS=${INSTR_CLIENTS:-4}
ADMIN=instr-admin-token-0123456789
# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
need bench/instr.sh valgrind callgrind_control taskset curl python3
RUN=$(mktemp -d)
cleanup() {
  stop_started
  [ -n "${INSTR_KEEP:-}" ] && echo "kept $RUN" >&2 || rm -rf "$RUN"
}
trap cleanup EXIT

MOCK_PORT=$(free_port)
# shellcheck disable=SC2086 # INSTR_MOCK_ARGS is a list of options
taskset -c 1 "$MOCK" --listen "127.0.0.1:$MOCK_PORT" --chunks 20 --workers 1 ${INSTR_MOCK_ARGS:-} >"$RUN/mock.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$MOCK_PORT/" || exit 1

KEY_BODY=@"$ROOT/bench/restricted_key.json"
[ "${INSTR_KEY:-restricted}" = plain ] && KEY_BODY='{"name":"instr"}'

# send PORT KEY N: N chat requests over CLIENTS keep-alive connections, each answered 200
send() {
  taskset -c 1 python3 - "$1" "$2" "$3" "$CLIENTS" <<'PY'
import http.client, json, sys, threading
port, key, n, clients = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 16})
headers = {"Authorization": "Bearer " + key, "Content-Type": "application/json"}
def run(count):
    c = http.client.HTTPConnection("127.0.0.1", port)
    for _ in range(count):
        c.request("POST", "/v1/chat/completions", body, headers)
        r = c.getresponse()
        r.read()
        assert r.status == 200, r.status
threads = [threading.Thread(target=run, args=(n // clients + (i < n % clients),)) for i in range(clients)]
[t.start() for t in threads]
[t.join() for t in threads]
PY
}

# measure NAME BINARY: prints "request_thread writer process" instructions per request
measure() {
  local dir="$RUN/$1" port pid key
  mkdir -p "$dir"
  port=$(free_port)
  (cd "$dir" && exec taskset -c 0 env KEYGATE_LISTEN="127.0.0.1:$port" DATABASE_URL="sqlite://$dir/keygate.db" \
    KEYGATE_UPSTREAM_URL="http://127.0.0.1:$MOCK_PORT/v1" KEYGATE_UPSTREAM_API_KEY=sk-upstream-instr \
    KEYGATE_ADMIN_TOKEN=$ADMIN RUST_LOG=warn \
    valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes \
    --callgrind-out-file="$dir/cg.out" "$2" serve) >"$dir/keygate.log" 2>&1 &
  pid=$!
  PIDS+=($pid)
  wait_http "http://127.0.0.1:$port/healthz" -f || { tail -n 20 "$dir/keygate.log" >&2; exit 1; }
  key=$(curl -fsS -X POST -H "Authorization: Bearer $ADMIN" -H 'Content-Type: application/json' \
    -d "$KEY_BODY" "http://127.0.0.1:$port/api/api-keys" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
  send "$port" "$key" 200 # warm-up: pools, caches, the meter
  callgrind_control -i on "$pid" >/dev/null 2>&1
  send "$port" "$key" "$REQUESTS"
  sleep 1 # the writer's last batch
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  counts "$dir"
}

# counts DIR: "request_thread writer process" instructions per request, from the dump that
# callgrind_control -d wrote (one file per thread, --separate-threads=yes): the request thread
# runs serve_connection, the writer log_writer::run; the process is all of them.
counts() {
  python3 - "$1" "$REQUESTS" <<'PY'
import glob, sys
d, n = sys.argv[1], int(sys.argv[2])
request = writer = total = 0
for path in glob.glob(d + "/cg.out.1-*"):  # the requested dump (cg.out-* are at exit)
    text = open(path, errors="replace").read()
    count = 0
    for line in text.splitlines():
        if line.startswith(("summary:", "totals:")):
            count = int(line.split()[1])
            break
    total += count
    if "serve_connection" in text:
        request += count
    elif "log_writer::run" in text:
        writer += count
print(f"{request / n:.0f} {writer / n:.0f} {total / n:.0f}")
PY
}

# floor: prints the floor's instructions per request (its one thread: the whole process)
floor() {
  local dir="$RUN/floor" port pid bin="$ROOT/target/release/examples/floor_proxy"
  [ -x "$bin" ] || { echo "build the floor first: cargo build --release --example floor_proxy" >&2; exit 1; }
  mkdir -p "$dir"
  port=$(free_port)
  taskset -c 0 valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes \
    --callgrind-out-file="$dir/cg.out" \
    "$bin" --listen "127.0.0.1:$port" --upstream "127.0.0.1:$MOCK_PORT" >"$dir/floor.log" 2>&1 &
  pid=$!
  PIDS+=($pid)
  wait_http "http://127.0.0.1:$port/" || { tail -n 20 "$dir/floor.log" >&2; exit 1; }
  send "$port" none 200
  callgrind_control -i on "$pid" >/dev/null 2>&1
  send "$port" none "$REQUESTS"
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill -TERM "$pid"
  wait "$pid" 2>/dev/null || true
  counts "$dir" | cut -d' ' -f3
}

printf '%s requests, %s key, %s clients\n' "$REQUESTS" "${INSTR_KEY:-restricted}" "$CLIENTS"
if [ -n "${INSTR_FLOOR:-}" ]; then
  printf 'floor (examples/floor_proxy): %s instructions per request\n' "$(floor)"
fi
read -r ra wa ta < <(measure a "$BIN_A")
printf 'A %s: request thread %s, call-log writer %s, process %s instructions per request\n' "$1" "$ra" "$wa" "$ta"
if [ $# = 2 ]; then
  read -r rb wb tb < <(measure b "$BIN_B")
  printf 'B %s: request thread %s, call-log writer %s, process %s instructions per request\n' "$2" "$rb" "$wb" "$tb"
  python3 -c "import sys; a=list(map(float,sys.argv[1:4])); b=list(map(float,sys.argv[4:7])); print('B/A: request thread %.3f, call-log writer %.3f, process %.3f' % tuple(y/x if x else float('nan') for x,y in zip(a,b)))" "$ra" "$wa" "$ta" "$rb" "$wb" "$tb"
fi
