#!/usr/bin/env bash
# deploy/try.sh: tries the README's "Docker" and "systemd" sections for real, and prints PASS or
# FAIL per check. Written for (and run on) a Debian bookworm machine as root with no Docker Hub
# and no systemd as PID 1; what it found there is in deploy/TRIED.md. Not part of CI: it installs
# packages, starts a Docker daemon and builds images (minutes of CPU).
#
#   deploy/try.sh [all|engine|bases|docker|compose|systemd|clean]...   (default: all)
#
#   engine   docker.io (dockerd 20.10, containerd, runc) from Debian, plus trixie's
#            docker-buildx and docker-compose (v2) plugins; starts dockerd if none answers
#   bases    LOCAL STAND-INS for the official base images, under the same names, made from
#            Debian packages (debootstrap) because Docker Hub may be unreachable:
#            debian:trixie-slim and rust:<RUST_VERSION>-slim-trixie (skipped when present)
#   docker   docker build / docker run as the README says, then its checks
#   compose  docker compose -f deploy/compose.yaml up -d, then its checks
#   systemd  the README's systemd steps inside a container running systemd as PID 1
#   clean    removes what the trial made (containers, volumes, images it built, scratch files)
#            and stops the dockerd it started
#
# Settings (environment):
#   KEYGATE_BIN   release binary the systemd trial installs (default: target/release/keygate;
#                 the README builds it with `cargo build --release`, which this skips)
#   TRY_DIR       scratch directory (default: /var/tmp/keygate-try)
#   TRY_WAIT_FOR  a lock file: heavy steps wait while it exists (a quiet-machine protocol)
#   MOCK_PORT     port of the mock upstream on the host (default: 18080)
set -uo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
TRY_DIR=${TRY_DIR:-/var/tmp/keygate-try}
KEYGATE_BIN=${KEYGATE_BIN:-$REPO/target/release/keygate}
TRY_WAIT_FOR=${TRY_WAIT_FOR:-}
MOCK_PORT=${MOCK_PORT:-18080}
RUST_VERSION=$(sed -n 's/^ARG RUST_VERSION=//p' "$REPO/Dockerfile")
DEBIAN_RELEASE=$(sed -n 's/^ARG DEBIAN_RELEASE=//p' "$REPO/Dockerfile")
TOKEN=try-admin-token-0123456789abcdef
SYSTEMD_IMAGE=keygate-try-systemd:bookworm
mkdir -p "$TRY_DIR"

passed=0 failed=0
pass() { passed=$((passed + 1)); printf 'PASS  %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL  %s\n' "$*"; }
# check "what" command...: PASS when the command succeeds.
check() { local what=$1; shift; if "$@" >/dev/null 2>&1; then pass "$what"; else fail "$what"; return 1; fi; }
note() { printf '      %s\n' "$*"; }
say() { printf '\n== %s\n' "$*"; }
heavy() { [ -z "$TRY_WAIT_FOR" ] && return; while [ -e "$TRY_WAIT_FOR" ]; do sleep 20; done; }
# wait_for SECONDS command...: until the command succeeds; false when it never did.
wait_for() {
  local until=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do [ $SECONDS -ge $until ] && return 1; sleep 1; done
}

# ---------------------------------------------------------------------------------------------
engine() {
  say "engine"
  export DEBIAN_FRONTEND=noninteractive
  local need=()
  command -v dockerd >/dev/null || need+=(docker.io)
  command -v iptables >/dev/null || need+=(iptables)
  command -v debootstrap >/dev/null || need+=(debootstrap)
  command -v python3 >/dev/null || need+=(python3)
  command -v curl >/dev/null || need+=(curl)
  if [ ${#need[@]} -gt 0 ]; then
    heavy
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  # BuildKit (RUN --mount=type=cache) needs buildx with a current docker CLI, and the README
  # uses `docker compose` (v2): bookworm has neither; trixie's packages need only libc6 >= 2.34.
  if ! docker buildx version >/dev/null 2>&1 || ! docker compose version >/dev/null 2>&1; then
    local apt=$TRY_DIR/apt-trixie
    mkdir -p "$apt/lists/partial" "$apt/cache/archives/partial"
    echo "deb http://deb.debian.org/debian trixie main" >"$apt/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$apt/sources.list" -o Dir::Etc::SourceParts=/nonexistent
      -o "Dir::State::Lists=$apt/lists" -o "Dir::Cache=$apt/cache")
    apt-get "${opts[@]}" update -qq
    (cd "$apt" && apt-get "${opts[@]}" download docker-buildx docker-compose 2>/dev/null)
    dpkg -i "$apt"/docker-buildx_*.deb "$apt"/docker-compose_*.deb >/dev/null
  fi
  if ! docker info >/dev/null 2>&1; then
    nohup dockerd >"$TRY_DIR/dockerd.log" 2>&1 &
    echo $! >"$TRY_DIR/dockerd.pid"
    wait_for 30 docker info || { fail "dockerd starts (see $TRY_DIR/dockerd.log)"; exit 1; }
  fi
  pass "docker engine: $(docker version -f 'server {{.Server.Version}}, client {{.Client.Version}}')," \
    "$(docker buildx version | cut -d' ' -f1,2), $(docker compose version)"
  note "storage driver $(docker info -f '{{.Driver}}'), cgroup v$(docker info -f '{{.CgroupVersion}}')"
  if timeout 10 curl -sS -o /dev/null https://registry-1.docker.io/v2/ 2>/dev/null; then
    note "Docker Hub answers: the official base images could be pulled instead of the stand-ins"
  else
    note "Docker Hub does not answer here: the base images are local stand-ins (bases)"
  fi
}

# ---------------------------------------------------------------------------------------------
# A minbase Debian root filesystem, trimmed like the official -slim images.
debootstrap_slim() { # release dir [extra packages]
  local release=$1 dir=$2 include=${3:-}
  rm -rf "$dir"
  heavy
  debootstrap --variant=minbase ${include:+--include=$include} "$release" "$dir" \
    http://deb.debian.org/debian >"$dir.log" 2>&1 || { echo "debootstrap failed: $dir.log"; return 1; }
  cat >"$dir/etc/dpkg/dpkg.cfg.d/docker-slim" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
  find "$dir/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  rm -rf "$dir"/usr/share/{man,info,locale}/* "$dir"/var/lib/apt/lists/* "$dir"/var/cache/apt/*.bin \
    "$dir"/var/cache/apt/archives/*.deb "$dir"/var/log/*.log
}

bases() {
  say "bases: local stand-ins for debian:$DEBIAN_RELEASE-slim and rust:$RUST_VERSION-slim-$DEBIAN_RELEASE"
  local stand_in='org.opencontainers.image.description="local stand-in made by deploy/try.sh from Debian packages"'
  if ! docker image inspect "debian:$DEBIAN_RELEASE-slim" >/dev/null 2>&1; then
    debootstrap_slim "$DEBIAN_RELEASE" "$TRY_DIR/rootfs-$DEBIAN_RELEASE" || { fail "debootstrap $DEBIAN_RELEASE"; return 1; }
    tar --numeric-owner -C "$TRY_DIR/rootfs-$DEBIAN_RELEASE" -c . |
      docker import --change "LABEL $stand_in" --change 'CMD ["bash"]' - "debian:$DEBIAN_RELEASE-slim" >/dev/null
    rm -rf "$TRY_DIR/rootfs-$DEBIAN_RELEASE"
  fi
  check "debian:$DEBIAN_RELEASE-slim exists ($(docker image inspect -f '{{.Size}}' "debian:$DEBIAN_RELEASE-slim" 2>/dev/null) bytes)" \
    docker image inspect "debian:$DEBIAN_RELEASE-slim" || return 1

  if ! docker image inspect "rust:$RUST_VERSION-slim-$DEBIAN_RELEASE" >/dev/null 2>&1; then
    # As the official image: gcc, libc6-dev, ca-certificates, a rustup toolchain in
    # /usr/local/rustup with its proxies in /usr/local/cargo/bin. The toolchain is the host's.
    local sysroot ctx=$TRY_DIR/rust-ctx
    sysroot=$(rustc "+$RUST_VERSION" --print sysroot) || { fail "a $RUST_VERSION toolchain on the host (rustup)"; return 1; }
    rm -rf "$ctx" && mkdir -p "$ctx/rustup/toolchains" "$ctx/cargo/bin" "$ctx/extra-ca"
    cp -a "$sysroot/." "$ctx/rustup/toolchains/$RUST_VERSION-x86_64-unknown-linux-gnu"
    rm -rf "$ctx/rustup/toolchains/$RUST_VERSION-x86_64-unknown-linux-gnu/share/doc"
    printf 'version = "12"\ndefault_toolchain = "%s-x86_64-unknown-linux-gnu"\nprofile = "minimal"\n' \
      "$RUST_VERSION" >"$ctx/rustup/settings.toml"
    cp "$(command -v rustup)" "$ctx/cargo/bin/rustup"
    for proxy in cargo rustc rustdoc; do ln -s rustup "$ctx/cargo/bin/$proxy"; done
    # A network that intercepts TLS (as the one this was written on) has its own CA; the host
    # trusts it, so must cargo in the build stage. Nothing of it reaches keygate's image.
    cp /usr/local/share/ca-certificates/*.crt "$ctx/extra-ca/" 2>/dev/null
    cat >"$ctx/Dockerfile" <<EOF
FROM debian:$DEBIAN_RELEASE-slim
LABEL $stand_in
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo RUST_VERSION=$RUST_VERSION \\
    PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates gcc libc6-dev \\
    && rm -rf /var/lib/apt/lists/*
COPY extra-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates
COPY rustup /usr/local/rustup
COPY cargo /usr/local/cargo
RUN rustc --version && cargo --version
EOF
    heavy
    docker build -q -t "rust:$RUST_VERSION-slim-$DEBIAN_RELEASE" "$ctx" >/dev/null
    rm -rf "$ctx"
  fi
  check "rust:$RUST_VERSION-slim-$DEBIAN_RELEASE exists and has rustc $RUST_VERSION" \
    sh -c "docker run --rm rust:$RUST_VERSION-slim-$DEBIAN_RELEASE rustc --version | grep -q ' $RUST_VERSION '"
}

# ---------------------------------------------------------------------------------------------
# An OpenAI-like upstream on the host: POST .../chat/completions answers a completion with usage
# (model "slow": after 3 s); it logs each request's Authorization header.
mock_start() {
  [ -s "$TRY_DIR/mock.pid" ] && kill -0 "$(cat "$TRY_DIR/mock.pid")" 2>/dev/null && return
  cat >"$TRY_DIR/mock_upstream.py" <<'EOF'
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Upstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.rstrip("/").endswith("/chat/completions"):
            model = json.loads(body or b"{}").get("model", "gpt-4o-mini")
            if model == "slow":
                time.sleep(3)
            out = json.dumps({"id": "chatcmpl-mock", "object": "chat.completion", "created": 0,
                "model": model, "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": "hello from the mock"}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
        else:
            out = b'{"error": {"message": "not here"}}'
            self.send_response(404)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def log_message(self, *args):
        print("mock: %s %s auth=%s" % (self.command, self.path, self.headers.get("Authorization")),
              file=sys.stderr, flush=True)

ThreadingHTTPServer(("0.0.0.0", int(sys.argv[1])), Upstream).serve_forever()
EOF
  nohup python3 "$TRY_DIR/mock_upstream.py" "$MOCK_PORT" >"$TRY_DIR/mock.log" 2>&1 &
  echo $! >"$TRY_DIR/mock.pid"
  wait_for 10 curl -sf -X POST "http://127.0.0.1:$MOCK_PORT/v1/chat/completions" -d '{}'
}
# The host as containers on the default bridge reach it.
# (dockerd 20.10 leaves the default bridge's Gateway empty: then docker0's address.)
bridge_gateway() {
  local gw; gw=$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}')
  [ -n "$gw" ] || gw=$(ip -4 -o addr show docker0 | awk '{print $4}' | cut -d/ -f1)
  echo "$gw"
}

# key_create BASE TOKEN: prints the new key's secret.
key_create() {
  curl -s -X POST "$1/api/api-keys" -H "Authorization: Bearer $2" -H 'Content-Type: application/json' \
    -d '{"name": "try", "expires_days": 90}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'
}
# chat BASE KEY [MODEL]: prints the HTTP status of a chat completion through keygate.
chat() {
  curl -s -o /dev/null -w '%{http_code}' "$1/v1/chat/completions" -H "Authorization: Bearer $2" \
    -H 'Content-Type: application/json' -d "{\"model\": \"${3:-gpt-4o-mini}\", \"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}"
}
health_is() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$1")" = "$2" ]; }

# ---------------------------------------------------------------------------------------------
docker_trial() {
  say "docker: README \"Docker\""
  mock_start
  local upstream="http://$(bridge_gateway):$MOCK_PORT/v1" base=http://127.0.0.1:8000 t0 key
  docker rm -f keygate >/dev/null 2>&1; docker volume rm keygate-data >/dev/null 2>&1
  heavy
  t0=$SECONDS
  if (cd "$REPO" && docker build -t keygate . >"$TRY_DIR/build.log" 2>&1); then
    pass "docker build -t keygate . ($((SECONDS - t0)) s; log: $TRY_DIR/build.log)"
  else
    fail "docker build -t keygate . (see $TRY_DIR/build.log)"; return 1
  fi
  note "image size: $(docker image inspect -f '{{.Size}}' keygate) bytes" \
    "($(docker images keygate --format '{{.Size}}')); binary $(docker run --rm --entrypoint stat keygate -c %s /usr/local/bin/keygate) bytes"

  # As the README, plus where the upstream is (the mock).
  docker run -d --name keygate -p 127.0.0.1:8000:8000 -v keygate-data:/data \
    -e KEYGATE_UPSTREAM_API_KEY=sk-mock -e KEYGATE_ADMIN_TOKEN=$TOKEN \
    -e KEYGATE_UPSTREAM_URL="$upstream" --stop-timeout 40 keygate >/dev/null
  check "/healthz answers 200 within 15 s" wait_for 15 curl -sf $base/healthz
  check "runs as uid 10001 (docker top)" sh -c "docker top keygate -o pid,uid,args | grep -qE '^[0-9]+ +10001 +/usr/local/bin/keygate serve'"
  check "docker exec: id is keygate 10001" sh -c "docker exec keygate id | grep -q 'uid=10001(keygate) gid=10001(keygate)'"
  check "/data on a fresh named volume: 0700 keygate, keygate.db and fernet.key in it" \
    sh -c "docker exec keygate stat -c '%a %U' /data | grep -qx '700 keygate' && docker exec keygate test -s /data/keygate.db -a -s /data/fernet.key"
  check "keygate healthcheck in the container exits 0" docker exec keygate keygate healthcheck
  key=$(key_create $base $TOKEN)
  check "admin API creates a key" test -n "$key"
  check "the key is relayed to the mock upstream: 200" test "$(chat $base "$key")" = 200
  check "the upstream saw the upstream key, not the client's" grep -q 'auth=Bearer sk-mock' "$TRY_DIR/mock.log"
  check "a wrong key: 401" test "$(chat $base wrong-key)" = 401
  check "the CLI in the container (docker exec keygate keygate keys list) shows it" \
    sh -c "docker exec keygate keygate keys list | grep -q try"
  t0=$SECONDS
  check "docker inspect health turns healthy (first check after the 30 s interval)" wait_for 60 health_is keygate healthy
  note "healthy after $((SECONDS - t0)) s of waiting"

  # docker stop while a request is in flight: it finishes, then the call log is flushed.
  chat $base "$key" slow >"$TRY_DIR/inflight.code" &
  local inflight=$!
  sleep 1
  t0=$(date +%s%N)
  docker stop keygate >/dev/null
  local took=$(( ($(date +%s%N) - t0) / 1000000 ))
  wait $inflight
  check "docker stop with a request in flight: the request still gets 200" test "$(cat "$TRY_DIR/inflight.code")" = 200
  check "docker stop took ${took} ms (< the 40 s stop timeout), exit code 0" \
    sh -c "[ \"\$(docker inspect -f '{{.State.ExitCode}}' keygate)\" = 0 ] && [ $took -lt 40000 ]"
  check "the logs show the drain and the call-log flush" \
    sh -c "docker logs keygate 2>&1 | grep -q 'shutting down: draining' && docker logs keygate 2>&1 | grep -q 'call-log writer flushed and stopped'"

  # The data outlives the container.
  docker rm keygate >/dev/null
  docker run -d --name keygate -p 127.0.0.1:8000:8000 -v keygate-data:/data \
    -e KEYGATE_UPSTREAM_API_KEY=sk-mock -e KEYGATE_ADMIN_TOKEN=$TOKEN \
    -e KEYGATE_UPSTREAM_URL="$upstream" --stop-timeout 40 keygate >/dev/null
  wait_for 15 curl -sf $base/healthz
  check "after docker rm and a new container on the volume, the key still works" test "$(chat $base "$key")" = 200
  check "... and its call log is there (3 calls counted)" \
    sh -c "docker exec keygate keygate keys list | grep -E ' try .* 3  [0-9]{4}-'"
  check "... with the same fernet.key (no new one generated)" \
    sh -c "! docker logs keygate 2>&1 | grep -q 'generated a Fernet key'"
  docker rm -f keygate >/dev/null; docker volume rm keygate-data >/dev/null
}

# ---------------------------------------------------------------------------------------------
compose_trial() {
  say "compose: deploy/compose.yaml"
  mock_start
  local env=$REPO/deploy/keygate.env base=http://127.0.0.1:8000 admin key
  local c=(docker compose -f "$REPO/deploy/compose.yaml")
  docker image inspect keygate >/dev/null 2>&1 || heavy
  [ -e "$env" ] && mv "$env" "$env.try-saved"
  # The example as it is, filled in with the upstream only: the admin token is generated.
  sed -e "s|^KEYGATE_UPSTREAM_URL=.*|KEYGATE_UPSTREAM_URL=http://$(bridge_gateway):$MOCK_PORT/v1|" \
    -e 's|^KEYGATE_UPSTREAM_API_KEY=.*|KEYGATE_UPSTREAM_API_KEY=sk-mock|' \
    "$REPO/deploy/keygate.env.example" >"$env"
  chmod 0600 "$env"
  "${c[@]}" down -v >/dev/null 2>&1
  check "docker compose -f deploy/compose.yaml up -d" sh -c "cd '$REPO' && ${c[*]} up -d" ||
    { rm -f "$env"; [ -e "$env.try-saved" ] && mv "$env.try-saved" "$env"; return 1; }
  local id; id=$("${c[@]}" ps -q keygate)
  check "/healthz answers 200 within 15 s" wait_for 15 curl -sf $base/healthz
  admin=$(docker logs "$id" 2>&1 | grep -o 'kgadm-[0-9a-f]*' | head -1)
  check "an admin token was generated and printed once to the log" test -n "$admin"
  key=$(key_create $base "$admin")
  check "the key is relayed to the mock upstream: 200" test "$(chat $base "$key")" = 200
  check "compose exec keygate keygate keys list shows it" sh -c "${c[*]} exec -T keygate keygate keys list | grep -q try"
  check "read_only: the root filesystem is read-only" \
    sh -c "${c[*]} exec -T keygate touch /etc/probe 2>&1 | grep -q 'Read-only file system'"
  check "tmpfs /tmp and the /data volume are writable" \
    sh -c "${c[*]} exec -T keygate sh -c 'touch /tmp/probe && touch /data/probe && rm /data/probe'"
  check "cap_drop ALL and no-new-privileges hold (CapEff 0, NoNewPrivs 1)" \
    sh -c "${c[*]} exec -T keygate grep -E '^(CapEff:\s+0+|NoNewPrivs:\s+1)$' /proc/1/status | wc -l | grep -qx 2"
  check "health turns healthy" wait_for 60 health_is "$id" healthy
  local t0=$SECONDS
  "${c[@]}" stop >/dev/null 2>&1
  check "compose stop: exit 0 within stop_grace_period ($((SECONDS - t0)) s)" \
    sh -c "[ \"\$(docker inspect -f '{{.State.ExitCode}}' $id)\" = 0 ] && docker logs $id 2>&1 | grep -q 'call-log writer flushed'"
  "${c[@]}" down -v >/dev/null 2>&1
  rm -f "$env"; [ -e "$env.try-saved" ] && mv "$env.try-saved" "$env"
}

# ---------------------------------------------------------------------------------------------
# systemd as PID 1 in a container (nearly all capabilities): Debian bookworm (systemd 252, which still runs on
# this host's cgroup v1 hierarchy; trixie's 257 refuses cgroup v1).
systemd_image() {
  docker image inspect $SYSTEMD_IMAGE >/dev/null 2>&1 && return
  local dir=$TRY_DIR/rootfs-bookworm-systemd
  debootstrap_slim bookworm "$dir" systemd,systemd-sysv,dbus,sudo,curl,procps,util-linux || return 1
  tar --numeric-owner -C "$dir" -c . | docker import --change 'CMD ["/sbin/init"]' - $SYSTEMD_IMAGE >/dev/null
  rm -rf "$dir"
}

systemd_trial() {
  say "systemd: README \"systemd\" (systemd as PID 1 in a container)"
  mock_start
  [ -x "$KEYGATE_BIN" ] || { fail "a release binary at KEYGATE_BIN=$KEYGATE_BIN"; return; }
  systemd_image || { fail "the systemd test image"; return; }
  docker rm -f keygate-systemd >/dev/null 2>&1
  # --privileged would be simplest, but it asks for every capability and this host lacks
  # CAP_SYS_RESOURCE ("unable to apply caps"): all capabilities but that one, unconfined.
  docker run -d --name keygate-systemd --cap-add ALL --cap-drop SYS_RESOURCE \
    --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
    --security-opt systempaths=unconfined --cgroupns=host -e container=docker \
    -v /sys/fs/cgroup:/sys/fs/cgroup:rw --tmpfs /run --tmpfs /run/lock \
    -v "$REPO:/src:ro" -v "$KEYGATE_BIN:/keygate-release:ro" $SYSTEMD_IMAGE >/dev/null
  local in=(docker exec keygate-systemd)
  if wait_for 60 sh -c "docker exec keygate-systemd systemctl is-system-running | grep -qE 'running|degraded'"; then
    pass "systemd boots as PID 1"
  else
    fail "systemd boots as PID 1 (docker logs keygate-systemd)"; return
  fi
  note "systemd $("${in[@]}" systemctl --version | head -1 | cut -d' ' -f2), system state $("${in[@]}" systemctl is-system-running)"

  # The README's steps, from the repository's root, as root (sudo is root's no-op here);
  # `cargo build --release` is replaced by the binary given.
  local upstream="http://$(bridge_gateway):$MOCK_PORT/v1"
  "${in[@]}" bash -euxc "
    cd /src
    install -m 0755 /keygate-release /usr/local/bin/keygate
    sudo useradd --system --user-group --home-dir /var/lib/keygate --shell /usr/sbin/nologin keygate
    sudo install -d -m 0700 /etc/keygate
    sudo install -m 0600 deploy/keygate.env.example /etc/keygate/keygate.env   # fill it in
    sed -i -e 's|^KEYGATE_UPSTREAM_URL=.*|KEYGATE_UPSTREAM_URL=$upstream|' \
      -e 's|^KEYGATE_UPSTREAM_API_KEY=.*|KEYGATE_UPSTREAM_API_KEY=sk-mock|' \
      -e 's|^KEYGATE_ADMIN_TOKEN=.*|KEYGATE_ADMIN_TOKEN=$TOKEN|' /etc/keygate/keygate.env
    sudo install -m 0644 deploy/keygate.service /etc/systemd/system/
    sudo systemctl daemon-reload && sudo systemctl enable --now keygate
  " >"$TRY_DIR/systemd-install.log" 2>&1
  check "install steps and systemctl enable --now (log: $TRY_DIR/systemd-install.log)" test $? = 0
  check "keygate.service is active (running)" wait_for 15 "${in[@]}" systemctl is-active keygate
  check "/healthz answers 200" wait_for 15 "${in[@]}" curl -sf http://127.0.0.1:8000/healthz
  check "its process runs as user keygate" \
    sh -c "docker exec keygate-systemd ps -o user= -p \$(docker exec keygate-systemd systemctl show -p MainPID --value keygate) | grep -qx keygate"
  check "/var/lib/keygate is 0700 keygate:keygate with keygate.db and fernet.key (0600)" \
    "${in[@]}" sh -c "stat -c '%a %U:%G' /var/lib/keygate | grep -qx '700 keygate:keygate' &&
      stat -c %a /var/lib/keygate/keygate.db /var/lib/keygate/fernet.key | sort -u | grep -qx 600"
  local key; key=$("${in[@]}" sh -c "curl -s -X POST http://127.0.0.1:8000/api/api-keys -H 'Authorization: Bearer $TOKEN' \
    -H 'Content-Type: application/json' -d '{\"name\": \"try\", \"expires_days\": 90}'" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')
  local chat_in="curl -s -o /dev/null -w %{http_code} http://127.0.0.1:8000/v1/chat/completions -H 'Authorization: Bearer $key' -H 'Content-Type: application/json'"
  check "a key created via the admin API is relayed to the mock upstream: 200" \
    test "$("${in[@]}" sh -c "$chat_in -d '{\"model\": \"gpt-4o-mini\", \"messages\": []}'")" = 200
  check "the README's CLI line (sudo -u keygate env DATABASE_URL=... keygate keys list) shows it" \
    "${in[@]}" sh -c "cd /tmp && sudo -u keygate env DATABASE_URL=sqlite:///var/lib/keygate/keygate.db keygate keys list | grep -q try"
  check "... and left no root-owned file in /var/lib/keygate" \
    "${in[@]}" sh -c "! find /var/lib/keygate ! -user keygate | grep -q ."

  # The sandbox, seen from inside the service's own mount namespace.
  local pid; pid=$("${in[@]}" systemctl show -p MainPID --value keygate)
  check "ProtectSystem=strict: /etc and /usr are read-only to the service (even to root there)" \
    "${in[@]}" sh -c "nsenter -t $pid -m touch /etc/probe 2>&1 | grep -q 'Read-only file system' &&
      nsenter -t $pid -m touch /usr/probe 2>&1 | grep -q 'Read-only file system' && touch /etc/probe && rm /etc/probe"
  check "ProtectHome=yes: /root and /home are empty and unwritable to it" \
    "${in[@]}" sh -c "touch /root/secret; ! nsenter -t $pid -m ls /root/secret 2>/dev/null && ! nsenter -t $pid -m touch /home/probe 2>/dev/null"
  check "ReadWritePaths: /var/lib/keygate is writable to it" \
    "${in[@]}" sh -c "nsenter -t $pid -m -S \$(id -u keygate) -G \$(id -g keygate) sh -c 'touch /var/lib/keygate/probe && rm /var/lib/keygate/probe'"
  check "PrivateTmp and PrivateDevices: its /tmp is its own, and a device node outside is not in its /dev" \
    "${in[@]}" sh -c "touch /tmp/host-probe && mknod /dev/try-probe c 1 3 && ! nsenter -t $pid -m ls /tmp/host-probe 2>/dev/null && ! nsenter -t $pid -m ls /dev/try-probe 2>/dev/null"
  check "no capabilities and NoNewPrivs (/proc/PID/status)" \
    "${in[@]}" sh -c "grep -E '^(CapEff:\s+0+|CapBnd:\s+0+|NoNewPrivs:\s+1)$' /proc/$pid/status | wc -l | grep -qx 3"
  check "seccomp filter in force (Seccomp: 2)" "${in[@]}" grep -qE '^Seccomp:\s+2' /proc/$pid/status
  note "systemctl show: $("${in[@]}" systemctl show keygate -p ProtectSystem -p ProtectHome -p PrivateTmp -p NoNewPrivileges -p User | tr '\n' ' ')"
  local score; score=$("${in[@]}" systemd-analyze security keygate --no-pager 2>/dev/null | grep -o 'Overall exposure level for keygate.service: .*')
  check "systemd-analyze security: $score" sh -c "echo '$score' | grep -qE ': [0-9.]+ (OK|SAFE)'"

  # systemctl stop with a request in flight: it finishes; the stop is clean and timely.
  "${in[@]}" sh -c "$chat_in -d '{\"model\": \"slow\", \"messages\": []}'" >"$TRY_DIR/inflight.code" &
  local inflight=$!
  sleep 1
  local t0; t0=$(date +%s%N)
  "${in[@]}" systemctl stop keygate
  local took=$(( ($(date +%s%N) - t0) / 1000000 ))
  wait $inflight
  check "systemctl stop with a request in flight: the request gets 200" test "$(cat "$TRY_DIR/inflight.code")" = 200
  check "systemctl stop took ${took} ms (< TimeoutStopSec 45 s), Result=success, exit 0" \
    sh -c "[ $took -lt 45000 ] && docker exec keygate-systemd systemctl show keygate -p Result -p ExecMainStatus | tr '\n' ' ' | grep -q 'Result=success ExecMainStatus=0'"
  check "journalctl -u keygate shows the drain and the flush" \
    sh -c "docker exec keygate-systemd journalctl -u keygate --no-pager | grep -q 'shutting down: draining' &&
      docker exec keygate-systemd journalctl -u keygate --no-pager | grep -q 'call-log writer flushed'"
  "${in[@]}" systemctl start keygate
  wait_for 15 "${in[@]}" curl -sf http://127.0.0.1:8000/healthz
  "${in[@]}" systemctl restart keygate
  wait_for 15 "${in[@]}" curl -sf http://127.0.0.1:8000/healthz
  check "after stop, start and restart the key still works" \
    test "$("${in[@]}" sh -c "$chat_in -d '{\"model\": \"gpt-4o-mini\", \"messages\": []}'")" = 200
  check "... with the same data (3 calls counted for it)" \
    "${in[@]}" sh -c "cd /tmp && sudo -u keygate env DATABASE_URL=sqlite:///var/lib/keygate/keygate.db keygate keys list | grep -E ' try .* 3  [0-9]{4}-'"
  check "Restart=on-failure: a SIGKILL brings it back" \
    sh -c "docker exec keygate-systemd systemctl kill -s KILL keygate && sleep 4 && docker exec keygate-systemd systemctl is-active keygate"
  "${in[@]}" journalctl -u keygate --no-pager >"$TRY_DIR/journal.txt" 2>&1
  note "journal: $TRY_DIR/journal.txt ($(wc -l <"$TRY_DIR/journal.txt") lines)"
  docker rm -f keygate-systemd >/dev/null
}

# ---------------------------------------------------------------------------------------------
clean() {
  say "clean"
  docker rm -f keygate keygate-systemd >/dev/null 2>&1
  docker compose -f "$REPO/deploy/compose.yaml" down -v >/dev/null 2>&1
  docker volume rm keygate-data >/dev/null 2>&1
  docker rmi keygate $SYSTEMD_IMAGE >/dev/null 2>&1
  docker builder prune -af >/dev/null 2>&1
  [ -s "$TRY_DIR/mock.pid" ] && kill "$(cat "$TRY_DIR/mock.pid")" 2>/dev/null
  if [ -s "$TRY_DIR/dockerd.pid" ]; then
    kill "$(cat "$TRY_DIR/dockerd.pid")" 2>/dev/null && note "stopped the dockerd this script started"
  fi
  rm -rf "$TRY_DIR"
  note "kept: the stand-in base images (docker rmi debian:$DEBIAN_RELEASE-slim rust:$RUST_VERSION-slim-$DEBIAN_RELEASE) and the installed packages"
}

[ $# -eq 0 ] && set -- all
for step in "$@"; do
  case $step in
    all) engine && bases && docker_trial && compose_trial; systemd_trial ;;
    engine) engine ;;
    bases) bases ;;
    docker) docker_trial ;;
    compose) compose_trial ;;
    systemd) systemd_trial ;;
    clean) clean ;;
    *) echo "unknown step: $step (all|engine|bases|docker|compose|systemd|clean)" >&2; exit 2 ;;
  esac
done
[ -s "$TRY_DIR/mock.pid" ] && kill "$(cat "$TRY_DIR/mock.pid")" 2>/dev/null && rm -f "$TRY_DIR/mock.pid"
printf '\n%d passed, %d failed\n' "$passed" "$failed"
[ "$failed" = 0 ]
