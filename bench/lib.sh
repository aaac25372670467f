# Shared by bench/ab.sh and bench/instr.sh (sourced, after they set ROOT): the tools they need,
# the mock upstream, a free loopback port, waiting for a server to answer, and stopping the
# processes a script started (those it appended to PIDS).

PIDS=()
MOCK="$ROOT/target/release/examples/mock_upstream"

# need SCRIPT TOOL...: exits naming the first TOOL not installed
need() {
  local script=$1 tool
  shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "$script needs $tool" >&2; exit 1; }
  done
  [ -x "$MOCK" ] || { echo "build the mock first: cargo build --release --example mock_upstream" >&2; exit 1; }
}

# free_port: a TCP port on 127.0.0.1 that nothing listens on now
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_http URL [-f]: until URL answers (with -f: a 2xx), while the process started last runs
wait_http() {
  for _ in $(seq 1 600); do
    curl -sS ${2:-} -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    kill -0 "${PIDS[-1]}" 2>/dev/null || break
    sleep 0.1
  done
  echo "no answer from $1" >&2
  return 1
}

# stop_started: TERM to every process in PIDS, then wait for them
stop_started() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
