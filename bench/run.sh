#!/usr/bin/env bash
# keygate benchmark: bare mock upstream ("direct") vs nginx vs keygate, same mock behind both.
# Usage: bash bench/run.sh        (see bench/README.md; knobs below via environment)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"
OUT="$BENCH/out"
RUN="$OUT/run"                                   # per-run scratch: configs, db, logs, raw results
TARGETS=${BENCH_TARGETS:-"direct nginx floor keygate keygate_policy messages keygate_routed"}
DURATION=${BENCH_DURATION:-10s}                  # each wrk load
WARMUP=${BENCH_WARMUP:-2s}                       # wrk warm-up per target (not reported)
CONNS=${BENCH_CONNECTIONS:-64}
ROUNDS=${BENCH_ROUNDS:-9}                        # interleaved rounds (0: none), see below
ROUND_DURATION=${BENCH_ROUND_DURATION:-3s}       # each load of a round
PAIRED_CYCLES=${BENCH_PAIRED_CYCLES:-4000}       # c=1 requests interleaved: turns per target (0: none)
PAIRED_BLOCK=${BENCH_PAIRED_BLOCK:-5}            # ...and requests in a row per turn
TTFB_COUNT=${BENCH_TTFB_COUNT:-500}
PACED_COUNT=${BENCH_PACED_COUNT:-10}
PACED_DELAY_MS=${BENCH_PACED_DELAY_MS:-2}
MOCK_CHUNKS=${BENCH_MOCK_CHUNKS:-20}
PIN=${BENCH_PIN:-1}                              # 1: pin servers and load generators apart
SERVER_CPUS=${BENCH_SERVER_CPUS:-0}              # mock, nginx, keygate (all share these CPUs)
CLIENT_CPUS=${BENCH_CLIENT_CPUS:-1}              # wrk, ttfb.py
ADMIN_TOKEN=bench-admin-token

log() { printf '\033[1m[bench]\033[0m %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# ---------------------------------------------------------------- processes + cleanup
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for _ in 1 2 3 4 5 6 7 8 9 10; do
    local alive=0
    for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------- tools
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v sqlite3 >/dev/null || need+=(sqlite3)
command -v curl >/dev/null || need+=(curl)
command -v python3 >/dev/null || need+=(python3)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]} via apt"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

want() { [[ " $TARGETS " == *" $1 "* ]]; }

# ---------------------------------------------------------------- build
cd "$ROOT"
if want keygate; then
  log "cargo build --release (keygate + mock_upstream example)"
  cargo build --release --bins --example mock_upstream --example floor_proxy --example paired_c1 \
    || die "build failed (run with BENCH_TARGETS='direct nginx' to bench without keygate)"
  [ -x target/release/keygate ] || die "target/release/keygate missing after build"
else
  log "cargo build --release --example mock_upstream"
  cargo build --release --example mock_upstream || die "mock_upstream build failed"
fi
MOCK_BIN="$ROOT/target/release/examples/mock_upstream"
FLOOR_BIN="$ROOT/target/release/examples/floor_proxy"
PAIRED_BIN="$ROOT/target/release/examples/paired_c1"
KEYGATE_BIN="$ROOT/target/release/keygate"

rm -rf "$RUN"
mkdir -p "$RUN/res" "$RUN/logs" "$RUN/nginx/tmp"
T_START=$(date +%s)

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
jget() { python3 -c 'import json,sys; v=json.load(open(sys.argv[1])).get(sys.argv[2]); print(0 if v is None else v)' "$1" "$2"; }

# wait_http URL [curl args...]: until it answers 2xx (max ~30 s) or the last started process dies
wait_http() {
  local url=$1; shift
  local pid=${PIDS[-1]}
  for _ in $(seq 1 300); do
    if curl -fsS -o /dev/null --max-time 1 "$@" "$url" 2>/dev/null; then return 0; fi
    kill -0 "$pid" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}

CLIENT=()
SERVER=()
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ] && command -v taskset >/dev/null; then
  CLIENT=(taskset -c "$CLIENT_CPUS")
  SERVER=(taskset -c "$SERVER_CPUS")
  PIN_NOTE="servers pinned to CPU $SERVER_CPUS, load generators to CPU $CLIENT_CPUS"
else
  PIN_NOTE="no CPU pinning"
fi

# ---------------------------------------------------------------- mock upstream
MOCK_PORT=$(free_port)
"${SERVER[@]}" "$MOCK_BIN" --listen "127.0.0.1:$MOCK_PORT" --chunks "$MOCK_CHUNKS" --workers 1 >"$RUN/logs/mock.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$MOCK_PORT/v1/models" || { cat "$RUN/logs/mock.log" >&2; die "mock upstream did not start"; }
log "mock upstream on 127.0.0.1:$MOCK_PORT (pid ${PIDS[-1]})"

declare -A PORT AUTH
declare -A PROC_PID=([mock]=${PIDS[-1]})   # the server processes whose CPU time is counted
PORT[direct]=$MOCK_PORT
AUTH[direct]=""

# ---------------------------------------------------------------- nginx
if want nginx; then
  NGINX_PORT=$(free_port)
  NG="$RUN/nginx"
  user_line=""
  [ "$(id -u)" = 0 ] && user_line="user root;"
  cat >"$NG/nginx.conf" <<EOF
# generated by bench/run.sh
$user_line
worker_processes 1;
pid $NG/nginx.pid;
error_log $NG/error.log warn;
worker_rlimit_nofile 65536;
events { worker_connections 4096; multi_accept on; }
http {
  access_log off;
  client_body_temp_path $NG/tmp/body;
  proxy_temp_path $NG/tmp/proxy;
  fastcgi_temp_path $NG/tmp/fastcgi;
  uwsgi_temp_path $NG/tmp/uwsgi;
  scgi_temp_path $NG/tmp/scgi;
  keepalive_timeout 65s;
  keepalive_requests 1000000;
  client_max_body_size 10m;
  upstream mock {
    server 127.0.0.1:$MOCK_PORT;
    keepalive 64;
    keepalive_requests 1000000;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://mock;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      # SSE must be relayed as it arrives (also harmless for small JSON answers)
      proxy_buffering off;
      proxy_read_timeout 300s;
    }
  }
}
EOF
  "${SERVER[@]}" "$NGINX" -e "$NG/error.log" -p "$NG" -c "$NG/nginx.conf" -g 'daemon off;' >"$RUN/logs/nginx.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$NGINX_PORT/v1/models" || { cat "$RUN/logs/nginx.log" "$NG/error.log" >&2 || true; die "nginx did not start"; }
  log "nginx on 127.0.0.1:$NGINX_PORT (pid ${PIDS[-1]}, 1 worker)"
  # its worker, which does the proxying: the master's one child
  PROC_PID[nginx]=$(awk '{print $1}' "/proc/${PIDS[-1]}/task/${PIDS[-1]}/children" 2>/dev/null || true)
  PORT[nginx]=$NGINX_PORT
  AUTH[nginx]=""
fi

# ---------------------------------------------------------------- floor
# The cheapest relay on keygate's stack (examples/floor_proxy.rs: hyper's server on the same
# runtime, no keys, limits, usage or call log): its CPU per request is what the stack costs,
# and keygate's beyond it is keygate's own work. Chat c=64 only (it answers Content-Length
# bodies, not streams).
if want floor && want keygate; then
  FLOOR_PORT=$(free_port)
  "${SERVER[@]}" "$FLOOR_BIN" --listen "127.0.0.1:$FLOOR_PORT" --upstream "127.0.0.1:$MOCK_PORT" >"$RUN/logs/floor.log" 2>&1 &
  PIDS+=($!)
  PROC_PID[floor]=${PIDS[-1]}
  PORT[floor]=$FLOOR_PORT
  AUTH[floor]=""
  wait_http "http://127.0.0.1:$FLOOR_PORT/v1/models" || { cat "$RUN/logs/floor.log" >&2; die "floor_proxy did not start"; }
  log "floor_proxy on 127.0.0.1:$FLOOR_PORT (pid ${PIDS[-1]})"
fi

# ---------------------------------------------------------------- keygate
KG_PID=""
KG_REQUESTS=0    # /v1 requests keygate completed for us (each must be logged)
KG_SLACK=0       # requests that may have been in flight when a wrk run stopped
rss_kb() { awk -v k="$2:" '$1 == k { print $2 }' "/proc/$1/status"; }
if want keygate; then
  KG_PORT=$(free_port)
  (
    cd "$RUN"
    exec "${SERVER[@]}" env KEYGATE_LISTEN="127.0.0.1:$KG_PORT" \
      DATABASE_URL="sqlite://$RUN/keygate.db" \
      KEYGATE_UPSTREAM_URL="http://127.0.0.1:$MOCK_PORT/v1" \
      KEYGATE_UPSTREAM_API_KEY=sk-upstream-bench \
      KEYGATE_ADMIN_TOKEN="$ADMIN_TOKEN" \
      RUST_LOG=warn \
      "$KEYGATE_BIN" serve
  ) >"$RUN/logs/keygate.log" 2>&1 &
  KG_PID=$!
  PIDS+=($KG_PID)
  PROC_PID[keygate]=$KG_PID
  wait_http "http://127.0.0.1:$KG_PORT/healthz" || { tail -n 30 "$RUN/logs/keygate.log" >&2; die "keygate did not become healthy on /healthz"; }
  log "keygate on 127.0.0.1:$KG_PORT (pid $KG_PID)"
  curl -fsS -X POST -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
    -d '{"name":"bench"}' "http://127.0.0.1:$KG_PORT/api/api-keys" >"$RUN/key.json" \
    || die "creating a client key via POST /api/api-keys failed"
  KG_KEY=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["key"])' "$RUN/key.json") \
    || die "no 'key' field in the create-key answer: $(cat "$RUN/key.json")"
  PORT[keygate]=$KG_PORT
  AUTH[keygate]=$KG_KEY
  if want keygate_policy; then
    # The same server, with a key whose restrictions and every limit are checked (and
    # counted) on every request; the limits are set far above what a run reaches.
    curl -fsS -X POST -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
      -d @"$ROOT/bench/restricted_key.json" \
      "http://127.0.0.1:$KG_PORT/api/api-keys" >"$RUN/key_policy.json" \
      || die "creating the restricted key failed"
    PORT[keygate_policy]=$KG_PORT
    AUTH[keygate_policy]=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["key"])' "$RUN/key_policy.json")
  fi
  sleep 0.5
  IDLE_RSS=$(rss_kb "$KG_PID" VmRSS)
fi

# ---------------------------------------------------------------- loads
BODY='{"model":"bench","messages":[{"role":"user","content":"Say hello."}]}'
SBODY='{"model":"bench","messages":[{"role":"user","content":"Say hello."}],"stream":true}'

count_kg() { # target requests [slack]
  if [[ "$1" == keygate* ]]; then
    KG_REQUESTS=$((KG_REQUESTS + $2))
    KG_SLACK=$((KG_SLACK + ${3:-0}))
  fi
}

sanity() { # target: one JSON and one SSE request, checked
  local t=$1 url="http://127.0.0.1:${PORT[$1]}/v1/chat/completions" h=()
  [ -n "${AUTH[$t]}" ] && h=(-H "Authorization: Bearer ${AUTH[$t]}")
  local r
  r=$(curl -sS --max-time 10 -w '\n%{http_code}' "${h[@]}" -H 'Content-Type: application/json' -d "$BODY" "$url") || true
  count_kg "$t" 1
  [[ "$r" == *'"usage"'* && "${r##*$'\n'}" == 200 ]] || die "$t: non-streaming sanity request failed: $r"
  r=$(curl -sS -N --max-time 10 -w '\n%{http_code}' "${h[@]}" -H 'Content-Type: application/json' -d "$SBODY" "$url") || true
  count_kg "$t" 1
  [[ "$r" == *'data: [DONE]'* && "$r" == *'"usage"'* && "${r##*$'\n'}" == 200 ]] || die "$t: streaming sanity request failed: ${r:0:500}"
}

cpu_snap() { # target: the CPU time so far of the mock's threads and the target's (bench/cputicks.py)
  local procs=("mock=${PROC_PID[mock]}") proxy=${1%%_*}
  [ -n "${PROC_PID[$proxy]:-}" ] && procs+=("$proxy=${PROC_PID[$proxy]}")
  python3 "$BENCH/cputicks.py" snap "${procs[@]}"
}

run_wrk() { # target name conns duration stream(0|1) [api]
  local t=$1 name=$2 c=$3 d=$4 s=$5 api=${6:-openai}
  local txt="$RUN/logs/wrk_${t}__${name}.txt"
  log "$t: wrk $name (-t1 -c$c -d$d)"
  cpu_snap "$t" >"$RUN/cpu_before.json"
  BENCH_STREAM=$s BENCH_API=$api BENCH_AUTH="${AUTH[$t]}" BENCH_CONNS=$c \
    "${CLIENT[@]}" wrk -t1 -c"$c" -d"$d" --timeout 10s --latency -s "$BENCH/wrk/chat.lua" \
    "http://127.0.0.1:${PORT[$t]}/v1/chat/completions" >"$txt" 2>&1 || { cat "$txt" >&2; die "wrk failed"; }
  local json="$RUN/res/${t}__${name}.json"
  grep '^BENCH_JSON ' "$txt" | sed 's/^BENCH_JSON //' >"$json"
  [ -s "$json" ] || { cat "$txt" >&2; die "no BENCH_JSON line from wrk"; }
  cpu_snap "$t" >"$RUN/cpu_after.json"
  python3 "$BENCH/cputicks.py" add "$json" "$RUN/cpu_before.json" "$RUN/cpu_after.json"
  count_kg "$t" "$(jget "$json" requests)" "$c"
}

run_ttfb() { # target name count warmup [extra-json]
  local t=$1 name=$2 n=$3 w=$4 extra=${5:-}
  local json="$RUN/res/${t}__${name}.json" rc=0
  log "$t: ttfb.py $name ($n sequential streaming requests)"
  "${CLIENT[@]}" python3 "$BENCH/ttfb.py" --port "${PORT[$t]}" --auth "${AUTH[$t]}" \
    --count "$n" --warmup "$w" --extra-json "$extra" >"$json" || rc=$?
  count_kg "$t" "$(jget "$json" sent)"
  [ "$rc" = 0 ] || log "WARNING: $t $name had errors: $(jget "$json" first_error)"
}

warm_up() { # target [stream(0|1)] [api]: c=$CONNS for $WARMUP, not reported (counted for
  # keygate's call-log check)
  local t=$1 s=${2:-0} api=${3:-openai} path=/v1/chat/completions
  [ "$api" = anthropic ] && path=/v1/messages
  local txt="$RUN/logs/wrk_${t}__warmup.txt"
  BENCH_STREAM=$s BENCH_API=$api BENCH_AUTH="${AUTH[$t]}" BENCH_CONNS=$CONNS "${CLIENT[@]}" wrk -t1 -c"$CONNS" -d"$WARMUP" \
    -s "$BENCH/wrk/chat.lua" "http://127.0.0.1:${PORT[$t]}$path" >"$txt" 2>&1 || die "warm-up wrk failed"
  count_kg "$t" "$(grep '^BENCH_JSON ' "$txt" | sed 's/.*"requests":\([0-9]*\).*/\1/')" "$CONNS"
}

if [ -n "${PORT[floor]:-}" ]; then
  warm_up floor
  run_wrk floor chat_c64 "$CONNS" "$DURATION" 0
fi
for t in direct nginx keygate keygate_policy; do
  want "$t" || continue
  sanity "$t"
  warm_up "$t"
  run_wrk "$t" chat_c64 "$CONNS" "$DURATION" 0
  run_wrk "$t" chat_c1 1 "$DURATION" 0
  run_wrk "$t" stream_c64 "$CONNS" "$DURATION" 1
  run_ttfb "$t" ttfb_c1 "$TTFB_COUNT" 20
  run_ttfb "$t" paced_c1 "$PACED_COUNT" 0 "\"mock_chunk_delay_ms\":$PACED_DELAY_MS"
done

# ---------------------------------------------------------------- interleaved rounds
# The loads above run one target after the other, so a drift of the machine between the
# nginx and the keygate runs (seen: nginx 39k rps in one run, 32.6k an hour later) moves their
# ratio. Here the targets take turns, round after round, with the same short loads: each
# round's ratio compares runs seconds apart, and the report gives their median.
if [ "$ROUNDS" -gt 0 ] && want nginx && want keygate; then
  for r in $(seq 1 "$ROUNDS"); do
    for t in direct nginx keygate keygate_policy; do
      want "$t" || continue
      run_wrk "$t" "round${r}_chat_c64" "$CONNS" "$ROUND_DURATION" 0
      run_wrk "$t" "round${r}_chat_c1" 1 "$ROUND_DURATION" 0
    done
  done
fi

# ---------------------------------------------------------------- c=1, requests interleaved
# At c=1 the host's hiccups (a neighbour's burst on the core) move a 3 s run's p99 by up to a
# millisecond, ten times keygate's budget. Here one client takes turns between the targets,
# a few requests at a time (examples/paired_c1.rs), so whatever the host does it does to all of
# them: their added latencies over direct compare within one run.
if [ "$PAIRED_CYCLES" -gt 0 ] && want keygate; then
  pairs=()
  for t in direct nginx floor keygate keygate_policy; do
    if [ -n "${PORT[$t]:-}" ]; then pairs+=("$t=${PORT[$t]}=${AUTH[$t]:-}"); fi
  done
  log "paired_c1: ${pairs[*]%%=*} taking turns, $PAIRED_CYCLES turns of $PAIRED_BLOCK requests each"
  json="$RUN/res/paired__chat_c1.json"
  "${CLIENT[@]}" "$PAIRED_BIN" --cycles "$PAIRED_CYCLES" --block "$PAIRED_BLOCK" "${pairs[@]}" >"$json" \
    || die "paired_c1 failed"
  for t in keygate keygate_policy; do
    [ -n "${PORT[$t]:-}" ] || continue
    count_kg "$t" "$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]]["sent"])' "$json" "$t")"
  done
fi

# ---------------------------------------------------------------- several upstreams
add_upstream() { # JSON
  curl -fsS -X POST -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
    -d "$1" "http://127.0.0.1:$KG_PORT/api/upstreams" >/dev/null || die "adding an upstream failed: $1"
}
if want messages && want keygate; then
  # Anthropic's Messages API, streamed: keygate with an anthropic upstream (the mock) beside
  # nginx passing /v1/messages to the same mock.
  add_upstream "{\"name\":\"bench-anthropic\",\"kind\":\"anthropic\",\"base_url\":\"http://127.0.0.1:$MOCK_PORT\",\"api_key\":\"sk-ant-bench-upstream\"}"
  PORT[keygate_messages]=$KG_PORT
  AUTH[keygate_messages]=$KG_KEY
  PORT[nginx_messages]=${PORT[nginx]:-}
  AUTH[nginx_messages]=""
  for t in nginx_messages keygate_messages; do
    [ -n "${PORT[$t]}" ] || continue
    warm_up "$t" 1 anthropic
    run_wrk "$t" messages_stream_c64 "$CONNS" "$DURATION" 1 anthropic
  done
fi
if want keygate_routed && want keygate; then
  # 20 configured upstreams (the one above, 16 for other models, 3 serving `bench` at one
  # priority in weighted random order): routing must not show.
  [ -n "${PORT[keygate_messages]:-}" ] || add_upstream "{\"name\":\"bench-anthropic\",\"kind\":\"anthropic\",\"base_url\":\"http://127.0.0.1:$MOCK_PORT\"}"
  for i in $(seq 1 16); do
    add_upstream "{\"name\":\"other-$i\",\"kind\":\"openai\",\"base_url\":\"http://127.0.0.1:$MOCK_PORT/v1\",\"models\":[\"other-$i-*\",\"model-$i\"],\"priority\":$((i % 3))}"
  done
  for w in 1 2 3; do
    add_upstream "{\"name\":\"bench-$w\",\"kind\":\"openai\",\"base_url\":\"http://127.0.0.1:$MOCK_PORT/v1\",\"api_key\":\"sk-bench-upstream-$w\",\"models\":[\"bench\",\"gpt-4o-mini\"],\"weight\":$w}"
  done
  PORT[keygate_routed]=$KG_PORT
  AUTH[keygate_routed]=$KG_KEY
  t=keygate_routed
  sanity "$t"
  warm_up "$t"
  run_wrk "$t" chat_c64 "$CONNS" "$DURATION" 0
  run_wrk "$t" chat_c1 1 "$DURATION" 0
  run_wrk "$t" stream_c64 "$CONNS" "$DURATION" 1
fi

# ---------------------------------------------------------------- keygate: RSS + call-log rows
RSS_JSON="{}"
LOG_JSON="null"
CHECK=PASS
if want keygate; then
  RSS=$(rss_kb "$KG_PID" VmRSS)
  HWM=$(rss_kb "$KG_PID" VmHWM)
  RSS_JSON="{\"idle_rss_kb\": ${IDLE_RSS:-0}, \"rss_kb\": ${RSS:-0}, \"hwm_kb\": ${HWM:-0}}"
  count_rows() {
    local n
    n=$(curl -fsS --max-time 5 -H "Authorization: Bearer $ADMIN_TOKEN" \
      "http://127.0.0.1:$KG_PORT/api/api-logs?page=1&page_size=1" 2>/dev/null \
      | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["total"]))' 2>/dev/null) \
      && { echo "$n api"; return; }
    n=$(sqlite3 "$RUN/keygate.db" 'SELECT count(*) FROM api_call_logs' 2>/dev/null) && { echo "$n sqlite3"; return; }
    echo "-1 none"
  }
  # the batching writer flushes within ~0.5 s: poll until two reads 0.5 s apart agree (max ~5 s)
  prev=-2
  for _ in $(seq 1 10); do
    sleep 0.5
    read -r ROWS SRC < <(count_rows)
    [ "$ROWS" = "$prev" ] && [ "$ROWS" -ge "$KG_REQUESTS" ] && break
    prev=$ROWS
  done
  if [ "$ROWS" -ge "$KG_REQUESTS" ] && [ "$ROWS" -le $((KG_REQUESTS + KG_SLACK)) ]; then CHECK=PASS; else CHECK=FAIL; fi
  log "call-log rows: $ROWS (via $SRC); requests sent: $KG_REQUESTS (+ up to $KG_SLACK in flight) -> $CHECK"
  LOG_JSON="{\"rows\": $ROWS, \"source\": \"$SRC\", \"requests\": $KG_REQUESTS, \"slack\": $KG_SLACK, \"result\": \"$CHECK\"}"
fi

# How an idle CPU waits for work: on a VM whose idle vCPU halts at once (cpuidle haltpoll with
# guest_halt_poll_ns=0, the development VM's kernel command line), each wake-up of a halted core
# costs tens of µs, which is most of what the c=1 rows measure (bench/README.md).
IDLE_NOTE="cpuidle $(cat /sys/devices/system/cpu/cpuidle/current_driver 2>/dev/null || echo unknown)"
if [ -r /sys/module/haltpoll/parameters/guest_halt_poll_ns ]; then
  IDLE_NOTE="$IDLE_NOTE, guest_halt_poll_ns=$(cat /sys/module/haltpoll/parameters/guest_halt_poll_ns)"
fi
ENV_LINE="$(date -u '+%Y-%m-%d %H:%M UTC'); $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')); \
${IDLE_NOTE}; ${PIN_NOTE}; wrk -t1, ${DURATION} per load after a ${WARMUP} warm-up; mock upstream: 1 thread, ${MOCK_CHUNKS} SSE chunks; \
nginx $("$NGINX" -v 2>&1 | sed 's/.*nginx\///') with 1 worker; total bench time $(( $(date +%s) - T_START )) s."
cat >"$RUN/meta.json" <<EOF
{"connections": $CONNS, "rounds": $ROUNDS, "paired_cycles": $PAIRED_CYCLES, "paired_block": $PAIRED_BLOCK, "round_duration": "$ROUND_DURATION", "ttfb_count": $TTFB_COUNT, "paced_delay_ms": $PACED_DELAY_MS,
 "env": $(python3 -c 'import json,sys; print(json.dumps(sys.argv[1]))' "$ENV_LINE"),
 "rss": $RSS_JSON, "logcheck": $LOG_JSON}
EOF

cleanup
echo
python3 "$BENCH/report.py" "$RUN/res" "$OUT/results.md" --meta "$RUN/meta.json"
echo
log "written $OUT/results.md (raw results and logs in $RUN)"
if want keygate; then
  echo "call-log check: $CHECK (rows=$ROWS, requests=$KG_REQUESTS, allowed up to $((KG_REQUESTS + KG_SLACK)))"
  [ "$CHECK" = PASS ] || exit 1
fi
