# syntax=docker/dockerfile:1.7
#
# tflock server image: `docker build -t tflock .` from the repository root.
#
#   docker run -d -p 4141:4141 \
#     -e ATLANTIS_ENHANCED_LOCKING_SERVER_API_TOKEN=... \
#     -e ATLANTIS_ENHANCED_LOCKING_SERVER_ADMIN_TOKEN=... \
#     -e ATLANTIS_ENHANCED_LOCKING_BACKEND=redis \
#     -e ATLANTIS_ENHANCED_LOCKING_REDIS_ADDRESSES=redis:6379 \
#     tflock
#
# The server listens on 0.0.0.0:4141 (ATLANTIS_ENHANCED_LOCKING_SERVER_LISTEN below).
# tflock refuses a non-loopback address unless an API token is set, so this image
# exits with that message (exit 2) until the tokens come from the environment: it
# never serves unauthenticated mutating calls. Every other setting is an
# ATLANTIS_ENHANCED_LOCKING_* variable (docs/configuration.md) or a file given with
# TFLOCK_CONFIG. Deployment files: deploy/ and docs/operations.md.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---- build: the release binary, with cargo, from the locked dependency set --------
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
# Only what the build reads (.dockerignore allows nothing else): the workspace
# manifest and lock file, the binary's main.rs, and the crates.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY crates ./crates
# Symbols stay (panics name their functions); line tables go, which halves the binary.
ENV CARGO_PROFILE_RELEASE_DEBUG=none \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin tflock \
    && install -D -m 0755 target/release/tflock /out/tflock \
    && /out/tflock --version

# ---- runtime: a slim Debian, the binary, a non-root user ---------------------------
FROM debian:${DEBIAN_RELEASE}-slim AS runtime
# curl is the health check's probe; ca-certificates for Redis over TLS with a public CA.
# Unpinned on purpose: pinning Debian point versions breaks the build at each point
# release; the base tag (bookworm-slim) fixes the distribution.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 tflock \
    && useradd --system --uid 10001 --gid tflock --home-dir /var/lib/tflock \
        --shell /usr/sbin/nologin tflock \
    && install -d -o tflock -g tflock -m 0750 /var/lib/tflock
COPY --from=build /out/tflock /usr/local/bin/tflock

# The embedded store (backend: embedded, the default) lives in the volume; with Redis
# nothing is written there.
ENV ATLANTIS_ENHANCED_LOCKING_SERVER_LISTEN=0.0.0.0:4141 \
    ATLANTIS_ENHANCED_LOCKING_EMBEDDED_PATH=/var/lib/tflock/locks.redb
VOLUME ["/var/lib/tflock"]
WORKDIR /var/lib/tflock
USER 10001:10001
EXPOSE 4141

# Liveness: the process serves HTTP. Readiness (the backend answers) is /readyz, which
# orchestrators probe separately (deploy/kubernetes/tflock.yaml).
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["curl", "--fail", "--silent", "--show-error", "--max-time", "2", "--output", "/dev/null", "http://127.0.0.1:4141/healthz"]

# SIGTERM (docker stop) shuts down gracefully: waiters are answered, the store is
# closed. Give it up to 30 s (docker stop --time 35, compose stop_grace_period).
STOPSIGNAL SIGTERM
ENTRYPOINT ["tflock"]
CMD ["server"]
