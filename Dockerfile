# keygate in a container: built with a pinned Rust toolchain, run on slim Debian as a non-root
# user, its SQLite database (and fernet.key) in the /data volume. See README.md, "Docker".
#
#   docker build -t keygate .
#   docker run -d --name keygate -p 127.0.0.1:8000:8000 -v keygate-data:/data \
#     -e KEYGATE_UPSTREAM_API_KEY=sk-... -e KEYGATE_ADMIN_TOKEN=... --stop-timeout 40 keygate

# The toolchain this repository is built and tested with; the build and run images share
# Debian's release (same glibc).
ARG RUST_VERSION=1.95.0
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
# Only what the binary is built from (.dockerignore keeps target/, data/, .env out).
COPY Cargo.toml Cargo.lock ./
COPY migrations migrations
COPY static static
COPY src src
# The registry and target caches survive rebuilds (BuildKit); the binary is copied out of them.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin keygate \
    && cp target/release/keygate /keygate

FROM debian:${DEBIAN_RELEASE}-slim
# A system user of its own; /data is its home and the volume. TLS roots are built into the
# binary (webpki-roots): no ca-certificates package is needed.
RUN groupadd --system --gid 10001 keygate \
    && useradd --system --uid 10001 --gid keygate --home-dir /data --shell /usr/sbin/nologin keygate \
    && mkdir -p /data && chown keygate:keygate /data && chmod 0700 /data
COPY --from=build /keygate /usr/local/bin/keygate
ENV KEYGATE_LISTEN=0.0.0.0:8000 \
    DATABASE_URL=sqlite:///data/keygate.db \
    KEYGATE_LOG_FORMAT=json \
    RUST_LOG=info
VOLUME ["/data"]
WORKDIR /data
USER 10001:10001
EXPOSE 8000
# `keygate healthcheck` asks /healthz at KEYGATE_LISTEN (on loopback): 503 while the call log
# cannot be written (a full volume), so the container shows unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/keygate", "healthcheck"]
# SIGTERM drains connections for KEYGATE_SHUTDOWN_GRACE (30 s) and flushes the call log: give
# `docker stop` more than that (--stop-timeout 40, or compose's stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/keygate"]
CMD ["serve"]
