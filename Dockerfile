# syntax=docker/dockerfile:1
#
# One image, three programs: ferry-registry, ferry-gateway and ferry-agent.
#
#   docker build -t ferry .
#   docker run --rm ferry ferry-registry serve      # or: ferry-registry migrate | admin ... | gc
#   docker run --rm ferry ferry-gateway serve
#   docker run --rm ferry ferry-agent publish ...
#
# Why one image with several entry points rather than one image per
# service: the three binaries are built from the same workspace, the same
# Cargo.lock and mostly the same crates, so one build compiles the shared
# dependencies once; one image is one thing to version, sign, scan and
# promote (a CVE in a base package or a crate is found and fixed once, and
# the registry and the gateway of a release can never come from different
# builds); and what runs is chosen by the command, exactly as on a
# developer's machine. The cost, a few megabytes of the binaries a given
# container does not run, is small next to the shared base.
#
# Dependency caching: cargo-chef. `cargo chef prepare` reduces the workspace
# to its manifests and Cargo.lock (a recipe.json that changes only when
# dependencies do), and `cargo chef cook` builds every dependency from that
# recipe in a layer of its own; the sources are copied only afterwards, so
# editing a .rs file rebuilds only Ferry's own crates. The hand-made
# alternative (copy each Cargo.toml, write stub lib.rs/main.rs files, build,
# delete the stubs) has to mirror every workspace member and target by hand
# (services/*, crates/*, tools/*, tests/ with custom target paths, the
# build script of ferry-proto) and breaks silently when one is added;
# cargo-chef derives all of that from `cargo metadata`.

ARG RUST_IMAGE=rust:1.95-bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

FROM ${RUST_IMAGE} AS chef
# Pinned: the recipe format is cargo-chef's own.
RUN cargo install cargo-chef --locked --version 0.1.77
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: this layer is reused until Cargo.lock or a manifest changes.
RUN cargo chef cook --release --locked --recipe-path recipe.json \
        -p ferry-registry -p ferry-gateway -p ferry-agent
COPY . .
RUN cargo build --release --locked -p ferry-registry -p ferry-gateway -p ferry-agent \
 && install -D -m 0755 -t /out target/release/ferry-registry target/release/ferry-gateway target/release/ferry-agent

FROM ${RUNTIME_IMAGE} AS runtime
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="ferry" \
      org.opencontainers.image.description="Ferry: ferry-registry, ferry-gateway and ferry-agent (choose one with the command)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/debian:bookworm-slim"
# ca-certificates: S3, OTLP, SMTP and webhooks over TLS trust the system's
# roots. Nothing else is installed: health checks use bash's /dev/tcp
# (docker-compose.yml), Kubernetes probes need nothing in the image.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 ferry \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ferry \
 && install -d -o 65532 -g 65532 -m 0750 /var/lib/ferry
COPY --from=builder /out/ /usr/local/bin/
# Fails the build if a binary does not run on this base (e.g. a glibc mismatch).
RUN ferry-registry --version && ferry-gateway --version && ferry-agent --version
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
# The one writable place in the image, for one-shot jobs' output (compose's
# bootstrap writes the demo keys there); services write nothing to disk.
WORKDIR /var/lib/ferry
# Documentation only: registry gRPC, registry ops (/healthz, /readyz,
# /metrics), dashboard, gateway HTTP, gateway gRPC.
EXPOSE 50051 9091 9090 8080 50052
# No ENTRYPOINT: the command names the program (`ferry-gateway serve`).
# The services handle SIGTERM themselves (drain, then a bounded shutdown),
# so they can run as PID 1 without an init.
CMD ["ferry-registry", "--help"]
