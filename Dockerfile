# syntax=docker/dockerfile:1
# ant-quic node image: a Rust builder stage, then debian:bookworm-slim running the node as the
# unprivileged user ant-quic, UDP 9000, health checked on the admin port (/health).
#
# NOT BUILT HERE: the development machine has no Docker daemon, so this image has never been
# built or run by the test suite. What is checked is the file itself: `hadolint` passes
# (scripts/check-dockerfile.sh, run by tests/ops_scripts.rs). Nothing more is claimed.
#
#   docker build -t ant-quic .
#   docker run -d --name ant-quic -p 9000:9000/udp -p 9001:9001/udp -v ant-quic-data:/var/lib/ant-quic ant-quic
#
# Notes for whoever runs it: Docker's default seccomp profile refuses io_uring, and the node then
# falls back to the portable backend with one log line (`--backend io-uring` would be an error).
# The admin HTTP listener (/health, /ready, /metrics) binds 127.0.0.1 inside the container, so the
# HEALTHCHECK reaches it and the host does not; scrape it from inside or set [metrics] bind.

ARG RUST_VERSION=1.88

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
COPY . .
# The registry and target directory are cache mounts, so the binary and the default
# configuration are copied out of them in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin ant-quic \
    && mkdir -p /out \
    && cp target/release/ant-quic /out/ant-quic \
    && /out/ant-quic config default > /out/ant-quic.toml \
    && /out/ant-quic config check /out/ant-quic.toml > /dev/null

FROM debian:bookworm-slim
# Versions are not pinned: bookworm's security updates replace the pinned version in the archive,
# after which a pinned install fails; the base image tag is what fixes the release.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system ant-quic \
    && useradd --system --gid ant-quic --home-dir /var/lib/ant-quic --shell /usr/sbin/nologin ant-quic \
    && mkdir -p /etc/ant-quic /var/lib/ant-quic \
    && chown ant-quic:ant-quic /var/lib/ant-quic \
    && chmod 0700 /var/lib/ant-quic
COPY --from=builder /out/ant-quic /usr/local/bin/ant-quic
COPY --from=builder /out/ant-quic.toml /etc/ant-quic/ant-quic.toml

USER ant-quic
WORKDIR /var/lib/ant-quic
# The identity key (the peer ID) lives here: keep it across upgrades.
VOLUME ["/var/lib/ant-quic"]
# 9001: the alternate port that answers peers' mapping discovery ([nat] alternate_port).
EXPOSE 9000/udp 9001/udp
HEALTHCHECK --interval=30s --timeout=5s --start-period=15s --retries=3 \
    CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9000/health"]
# SIGTERM closes every connection with CONNECTION_CLOSE and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/ant-quic", "--config", "/etc/ant-quic/ant-quic.toml", "--data-dir", "/var/lib/ant-quic"]
