# syntax=docker/dockerfile:1
# One image with silo-control-plane, silo-router and siloctl, running as non-root.
#   docker build -t registry.example.com/silo/silo:0.1.0 .
# Needs BuildKit (the cache mounts keep the cargo registry and target dir between builds).

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
# The workspace as a whole: build scripts read proto/ and migrations/ next to the crates.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/usr/local/cargo/git,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --locked \
        -p silo-control-plane -p silo-router -p silo \
        --bin silo-control-plane --bin silo-router --bin siloctl \
 && mkdir -p /out \
 && cp target/release/silo-control-plane target/release/silo-router target/release/siloctl /out/

# glibc, libgcc, CA certificates and tzdata; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/silo-control-plane /out/silo-router /out/siloctl /usr/local/bin/
# distroless "nonroot": uid / gid 65532, as the Helm chart's securityContext expects.
USER 65532:65532
ENV SILO_LOG_FORMAT=json
# Both services listen on loopback unless told otherwise: give SILO_LISTEN and
# SILO_METRICS_LISTEN (0.0.0.0:PORT) when running the image; the Helm chart does.
# router: 50051 gRPC, 9151 metrics; control plane: 50052 gRPC, 9152 metrics.
EXPOSE 50051 50052 9151 9152
ENTRYPOINT ["/usr/local/bin/silo-control-plane"]
