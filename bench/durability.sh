#!/usr/bin/env bash
# Durability under load (README → Guarantees): call-log rows lost to `kill -9` at saturation,
# and a 1M-row `keygate data import` into the serving database while traffic and admin writes run.
# Usage: bash bench/durability.sh     (release build; about 2 minutes; tools as bench/run.sh)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"
RUN="$BENCH/out/durability"
KILL_ROUNDS=${DURABILITY_KILL_ROUNDS:-3}
IMPORT_ROWS=${DURABILITY_IMPORT_ROWS:-1000000}
CONNS=${BENCH_CONNECTIONS:-64}
ADMIN_TOKEN=bench-admin-token

log() { printf '\033[1m[durability]\033[0m %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  PIDS=()
}
trap cleanup EXIT

for tool in wrk sqlite3 curl python3 taskset; do
  command -v "$tool" >/dev/null || die "$tool is missing (bash bench/run.sh installs wrk, sqlite3, curl)"
done

cd "$ROOT"
log "cargo build --release (keygate + mock_upstream)"
cargo build --release --bins --example mock_upstream >&2
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
KEYGATE="$TARGET/release/keygate"
MOCK="$TARGET/release/examples/mock_upstream"
rm -rf "$RUN"
mkdir -p "$RUN"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}
wait_http() {
  for _ in $(seq 1 300); do
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

MOCK_PORT=$(free_port)
taskset -c 0 "$MOCK" --listen "127.0.0.1:$MOCK_PORT" --workers 1 >"$RUN/mock.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$MOCK_PORT/v1/models" || die "mock upstream did not start"

# start_keygate DB → sets KG_PID, KG_PORT, KG_KEY (servers share CPU 0, as bench/run.sh pins them)
start_keygate() {
  KG_PORT=$(free_port)
  taskset -c 0 env KEYGATE_LISTEN="127.0.0.1:$KG_PORT" DATABASE_URL="sqlite://$1" \
    KEYGATE_UPSTREAM_URL="http://127.0.0.1:$MOCK_PORT/v1" KEYGATE_UPSTREAM_API_KEY=sk-upstream-bench \
    KEYGATE_ADMIN_TOKEN="$ADMIN_TOKEN" RUST_LOG=warn "$KEYGATE" serve >>"$RUN/keygate.log" 2>&1 &
  KG_PID=$!
  PIDS+=($KG_PID)
  wait_http "http://127.0.0.1:$KG_PORT/healthz" || die "keygate did not start"
  KG_KEY=$(curl -fsS -X POST -H "Authorization: Bearer $ADMIN_TOKEN" -H 'Content-Type: application/json' \
    -d '{"name":"durability"}' "http://127.0.0.1:$KG_PORT/api/api-keys" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
}
rows() { sqlite3 "$1" 'SELECT count(*) FROM api_call_logs'; }
wrk_requests() { grep '^BENCH_JSON ' "$1" | sed 's/.*"requests":\([0-9]*\).*/\1/'; }
# load SECONDS OUT: saturating chat load on CPU 1, in the background; sets WRK_PID
load() {
  BENCH_AUTH="$KG_KEY" BENCH_CONNS=$CONNS taskset -c 1 wrk -t1 -c"$CONNS" -d"$1" --timeout 10s \
    -s "$BENCH/wrk/chat.lua" "http://127.0.0.1:$KG_PORT/v1/chat/completions" >"$2" 2>&1 &
  WRK_PID=$!
}

# ---------------------------------------------------------------- kill -9 at saturation
REPORT="$RUN/report.md"
{
  echo "### Rows lost to kill -9 at saturation"
  echo
  echo "| round | answered before the kill | rows after restart | answered without a row | throughput | traffic lost |"
  echo "|---|---|---|---|---|---|"
} >"$REPORT"
for round in $(seq 1 "$KILL_ROUNDS"); do
  db="$RUN/kill$round.db"
  start_keygate "$db"
  load 8s "$RUN/wrk_kill$round.txt"
  sleep 4
  kill -KILL "$KG_PID"
  killed_at=$(date +%s.%N)
  wait "$WRK_PID" || true
  answered=$(wrk_requests "$RUN/wrk_kill$round.txt")
  stored=$(rows "$db")
  # the key creation and the kill fall inside the 4 s; the rate is answered / 4 s
  missing=$(( answered > stored ? answered - stored : 0 ))
  rate=$(( answered / 4 ))
  lost_ms=$(python3 -c "print(round($missing / max($rate, 1) * 1000, 1))")
  log "kill round $round: answered $answered, rows $stored, missing $missing (~$lost_ms ms at $rate req/s)"
  echo "| $round | $answered | $stored | $missing | $rate req/s | $lost_ms ms |" >>"$REPORT"
done
echo >>"$REPORT"

# ---------------------------------------------------------------- 1M-row import under traffic
log "making a ${IMPORT_ROWS}-row export"
scratch="$RUN/scratch.db"
start_keygate "$scratch"
kill -TERM "$KG_PID"; wait "$KG_PID" 2>/dev/null || true
# Ids far from the serving database's own, so the import has no conflicts.
sqlite3 "$scratch" "UPDATE api_keys SET id = 100000 + id;
  WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $IMPORT_ROWS)
  INSERT INTO api_call_logs (id, api_key_id, timestamp, model, status, http_status, response_time,
    ip_address, endpoint, request_size, response_size, prompt_tokens, completion_tokens, total_tokens, stream)
  SELECT 10000000 + i, 100001, 1700000000000 + i * 1000, 'gpt-4o-mini', 'success', 200, 120,
    '127.0.0.1', '/v1/chat/completions', 90, 300, 5, 7, 12, 0 FROM n;"
DATABASE_URL="sqlite://$scratch" "$KEYGATE" data export --output "$RUN/big.json" >&2
ls -l "$RUN/big.json" >&2

served="$RUN/served.db"
start_keygate "$served"
load 40s "$RUN/wrk_import.txt"
# Admin writes all along: every one must succeed.
(
  ok=0; failed=0; slowest=0
  while [ ! -e "$RUN/stop_admin" ]; do
    t0=$(date +%s%N)
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X POST -H "Authorization: Bearer $ADMIN_TOKEN" \
      -H 'Content-Type: application/json' -d '{"name":"during import"}' "http://127.0.0.1:$KG_PORT/api/api-keys")
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    [ "$ms" -gt "$slowest" ] && slowest=$ms
    if [ "$code" = 201 ]; then ok=$((ok + 1)); else failed=$((failed + 1)); echo "admin write: HTTP $code" >&2; fi
    sleep 0.1
  done
  echo "$ok $failed $slowest" >"$RUN/admin_result"
) &
ADMIN_LOOP=$!
sleep 3
rss_before=$(awk '$1 == "VmRSS:" { print $2 }' "/proc/$KG_PID/status")
t0=$(date +%s.%N)
DATABASE_URL="sqlite://$served" "$KEYGATE" data import --input "$RUN/big.json" >"$RUN/import.log" 2>&1 \
  || { cat "$RUN/import.log" >&2; die "import failed"; }
import_s=$(python3 -c "print(round($(date +%s.%N) - $t0, 1))")
log "import done in $import_s s: $(tail -n 1 "$RUN/import.log")"
wait "$WRK_PID" || true
touch "$RUN/stop_admin"; wait "$ADMIN_LOOP"
read -r admin_ok admin_failed admin_slowest <"$RUN/admin_result"
hwm=$(awk '$1 == "VmHWM:" { print $2 }' "/proc/$KG_PID/status")
kill -TERM "$KG_PID"; wait "$KG_PID" 2>/dev/null || true
answered=$(wrk_requests "$RUN/wrk_import.txt")
non2xx=$(sed -n 's/.*Non-2xx or 3xx responses: *\([0-9]*\).*/\1/p' "$RUN/wrk_import.txt")
imported=$(sqlite3 "$served" 'SELECT count(*) FROM api_call_logs WHERE api_key_id = 100001')
relayed=$(sqlite3 "$served" 'SELECT count(*) FROM api_call_logs WHERE api_key_id <> 100001')
{
  echo "### ${IMPORT_ROWS}-row import into the serving database under load"
  echo
  echo "| what | result |"
  echo "|---|---|"
  echo "| import time | $import_s s |"
  echo "| imported rows found | $imported of $IMPORT_ROWS |"
  echo "| relayed requests answered / rows | $answered / $relayed (non-2xx: ${non2xx:-0}) |"
  echo "| admin writes during the run | $admin_ok ok, $admin_failed failed, slowest $admin_slowest ms |"
  echo "| keygate RSS before / peak | $((rss_before / 1024)) MiB / $((hwm / 1024)) MiB |"
} >>"$REPORT"
cat "$REPORT"
[ "$imported" = "$IMPORT_ROWS" ] && [ "$admin_failed" = 0 ] && [ "$relayed" -ge "$answered" ] || die "durability check failed"
