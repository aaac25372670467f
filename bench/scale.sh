#!/usr/bin/env bash
# keygate at scale: builds an N-row call-log history through `keygate data import`, then times
# the admin reads of issue 12 against a running keygate (warm, median of 5). Prints a markdown
# table and writes it to bench/out/scale-<N>.md.
#
#   bash bench/scale.sh [ROWS]          # default 20000000
#
# Environment:
#   KEYGATE_BIN   the keygate binary (default: $CARGO_TARGET_DIR or target, release/keygate;
#                 built with `cargo build --release` if missing)
#   SCALE_DIR     scratch folder (default /tmp/keygate-scale): the gzipped history (kept and
#                 reused for the same ROWS), the database (removed at the end unless KEEP=1)
#   KEYS          keys in the history (default 10: each has 10% of the traffic)
#   DAYS          days the history spans, ending now (default 120)
#
# Disk: the gzipped history is ~45 MB per million rows; the database ~180 MB per million rows,
# the import's staging file about as much again while it runs, and the move-in's WAL up to the
# size of the rows written until the import ends. 20M rows need ~15 GB free at the peak.
set -euo pipefail

ROWS=${1:-20000000}
KEYS=${KEYS:-10}
DAYS=${DAYS:-120}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SCALE_DIR=${SCALE_DIR:-/tmp/keygate-scale}
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
KEYGATE_BIN=${KEYGATE_BIN:-$TARGET/release/keygate}
ADMIN_TOKEN=scale-bench-admin-token-0123456789
OUT_MD="$ROOT/bench/out/scale-$ROWS.md"

log() { printf '[scale %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in python3 gzip zcat curl; do  # (sqlite3, if present, measures the database's size)
  command -v "$tool" >/dev/null || die "$tool is needed"
done
[ -x /usr/bin/time ] || die "/usr/bin/time is needed (apt-get install time)"
if [ ! -x "$KEYGATE_BIN" ]; then
  log "building $KEYGATE_BIN (cargo build --release)"
  (cd "$ROOT" && cargo build --release --bin keygate)
fi

mkdir -p "$SCALE_DIR" "$ROOT/bench/out"
HISTORY="$SCALE_DIR/history-$ROWS-$KEYS-$DAYS.json.gz"
DB="$SCALE_DIR/keygate.db"
FIFO="$SCALE_DIR/history.fifo"
SERVER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  rm -f "$FIFO"
  if [ "${KEEP:-0}" != 1 ]; then rm -f "$DB" "$DB-wal" "$DB-shm" "$SCALE_DIR/fernet.key"; fi
}
trap cleanup EXIT INT TERM

# ------------------------------------------------------------------ 1. the history file
if [ ! -s "$HISTORY" ]; then
  log "generating $ROWS rows ($KEYS keys, $DAYS days) into $HISTORY"
  T0=$(date +%s.%N)
  python3 "$ROOT/bench/gen_history.py" "$ROWS" "$KEYS" "$DAYS" | gzip -1 > "$HISTORY.tmp"
  mv "$HISTORY.tmp" "$HISTORY"
  log "generated in $(python3 -c "print(round($(date +%s.%N) - $T0))") s ($(du -h "$HISTORY" | cut -f1))"
fi

# ------------------------------------------------------------------ 2. the import
rm -f "$DB" "$DB-wal" "$DB-shm" "$FIFO"
export DATABASE_URL="sqlite://$DB" KEYGATE_ADMIN_TOKEN="$ADMIN_TOKEN" RUST_LOG=warn
# A fresh, migrated database (the import needs one), then the file streamed in through a FIFO
# (zcat on the other core; the import reads the stream once, never the whole file).
"$KEYGATE_BIN" keys list >/dev/null
mkfifo "$FIFO"
zcat "$HISTORY" > "$FIFO" &
ZCAT_PID=$!
log "importing $ROWS rows"
TIMES="$SCALE_DIR/import.time"
/usr/bin/time -f '%e %M %U %S' -o "$TIMES" "$KEYGATE_BIN" data import --input "$FIFO" < /dev/null \
  | tail -n 1 >&2
wait "$ZCAT_PID"
read -r IMPORT_S IMPORT_RSS_KB IMPORT_USER IMPORT_SYS < "$TIMES"
IMPORT_RATE=$(python3 -c "print(f'{$ROWS / $IMPORT_S:,.0f}')")
# The database's own size (its pages, wherever they are: the move-in's WAL is checkpointed
# into the file later), not the file's length at this moment.
if command -v sqlite3 >/dev/null; then
  DB_BYTES=$(sqlite3 "$DB" 'SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()')
else
  DB_BYTES=$(( $(stat -c %s "$DB") + $(stat -c %s "$DB-wal" 2>/dev/null || echo 0) ))
fi
PER_M=$(python3 -c "print(round($DB_BYTES / 1e6 / ($ROWS / 1e6)))")
log "imported in ${IMPORT_S} s ($IMPORT_RATE rows/s, ${IMPORT_USER} s user, ${IMPORT_SYS} s system), peak RSS $((IMPORT_RSS_KB / 1024)) MiB; database $((DB_BYTES / 1000000)) MB ($PER_M MB per million rows)"

# ------------------------------------------------------------------ 3. the reads
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
BASE="http://127.0.0.1:$PORT"
KEYGATE_LISTEN="127.0.0.1:$PORT" KEYGATE_UPSTREAM_URL="http://127.0.0.1:9/v1" \
  "$KEYGATE_BIN" serve > "$SCALE_DIR/serve.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 1 600); do
  curl -fs "$BASE/healthz" >/dev/null 2>&1 && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$SCALE_DIR/serve.log" >&2; die "keygate exited"; }
  sleep 0.1
done
get() { curl -fsS -H "Authorization: Bearer $ADMIN_TOKEN" "$BASE$1"; }
json() { python3 -c "import json,sys; print(json.dumps(json.load(sys.stdin)$1))"; }

TOTAL=$(get "/api/api-logs?page_size=1" | json '["total"]')
LAST_PAGE=$(( (TOTAL + 49) / 50 ))
MID_PAGE=$(( (LAST_PAGE + 1) / 2 ))
NEXT=$(get "/api/api-logs?page_size=50" | json '["next_before"]')

# median of 5 warm runs (one unmeasured run first), in ms
median_ms() {
  local path=$1 times=() t
  curl -fsS -o /dev/null -H "Authorization: Bearer $ADMIN_TOKEN" "$BASE$path" || die "GET $path failed"
  for _ in 1 2 3 4 5; do
    t=$(curl -fsS -o /dev/null -w '%{time_total}' -H "Authorization: Bearer $ADMIN_TOKEN" "$BASE$path")
    times+=("$t")
  done
  printf '%s\n' "${times[@]}" | sort -n | sed -n 3p | python3 -c 'import sys; print(f"{float(sys.stdin.read()) * 1000:,.1f}")'
}

READS=(
  "stats of a key with 10% of traffic, days=30|/api/api-keys/1/stats?days=30"
  "same, days=90|/api/api-keys/1/stats?days=90"
  "\`/api/api-logs\` page 1|/api/api-logs?page=1&page_size=50"
  "key_id + status=error, page 1|/api/api-logs?key_id=1&status=error&page=1&page_size=50"
  "key_id + status=success, page 1|/api/api-logs?key_id=1&status=success&page=1&page_size=50"
  "model, page 1|/api/api-logs?model=gpt-4o&page=1&page_size=50"
  "next page by cursor (\`before\`)|/api/api-logs?before=$NEXT&page_size=50"
  "last page by cursor (\`after=0\`)|/api/api-logs?after=0&page_size=50"
  "middle page by number (page $MID_PAGE)|/api/api-logs?page=$MID_PAGE&page_size=50"
  "last page by number (page $LAST_PAGE)|/api/api-logs?page=$LAST_PAGE&page_size=50"
  "key_id, middle page by number|/api/api-logs?key_id=1&page=$(( (MID_PAGE + 9) / 10 ))&page_size=50"
)
ROWS_H=$(python3 -c "print(f'{$ROWS:,}')")
{
  echo "| read | $ROWS_H rows |"
  echo "|---|---:|"
  for entry in "${READS[@]}"; do
    label=${entry%%|*}
    path=${entry#*|}
    log "timing $label"
    echo "| $label | $(median_ms "$path") ms |"
  done
  echo
  echo "| import | $ROWS_H rows |"
  echo "|---|---:|"
  echo "| \`keygate data import\` | ${IMPORT_S} s ($IMPORT_RATE rows/s; ${IMPORT_USER} s user, ${IMPORT_SYS} s system) |"
  echo "| import peak RSS | $((IMPORT_RSS_KB / 1024)) MiB |"
  echo "| database after import | $((DB_BYTES / 1000000)) MB ($PER_M MB per million rows) |"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, keygate $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?'); totals: $TOTAL (estimate: $(get "/api/api-logs?page_size=1" | json '["total_is_estimate"]'))."
} | tee "$OUT_MD"
