# The jwt-issuer container image.
#
#   docker build -t jwt-issuer .
#   docker run --read-only -p 8080:8080 -v jwt-issuer-keys:/var/lib/jwt-issuer/keys \
#     -e JWT_ISSUER_ISSUER=https://auth.example.com jwt-issuer
#
# JWT_ISSUER_ISSUER (or --issuer) MUST be set: the image listens on 0.0.0.0:8080, and
# `serve` refuses a wildcard bind without the public URL that goes into every token's `iss`
# and into discovery (no client reaches the service by the name 0.0.0.0).
#
# The only state is the keys dir, /var/lib/jwt-issuer/keys (keys, keys.json, clients.json),
# a volume: the root filesystem can be read-only. It is owned by uid 65532 with mode 0700,
# so a named volume starts out usable by the server, which generates keys there on its first
# start. A bind-mounted host directory must be owned by the container's user (or root) and
# not writable by group or others (`--user "$(id -u)"` runs as its owner); a read-only
# mount (a Kubernetes Secret) serves without writing. No HEALTHCHECK: orchestrators probe
# GET /healthz (liveness) and GET /readyz (readiness) themselves (deploy/kubernetes/).

# The toolchain the project is tested with; at least `rust-version` in Cargo.toml.
ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS builder
WORKDIR /src
# What the binary is built from, and the other targets Cargo.toml names (cargo reads
# every target's file to load the manifest); .dockerignore keeps the rest out.
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
COPY tests ./tests
# The registry and target dirs are build caches, not layers: a source change rebuilds
# the crate only.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin jwt-issuer \
    && install -D -m 0755 target/release/jwt-issuer /out/usr/local/bin/jwt-issuer \
    && install -d -m 0700 /out/var/lib/jwt-issuer/keys

# glibc, libgcc and CA certificates, no shell or package manager; built on Debian 12 like
# the builder, so the binary finds the glibc it was linked against. `nonroot` is uid 65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/usr/local/bin/jwt-issuer /usr/local/bin/jwt-issuer
COPY --from=builder --chown=65532:65532 /out/var/lib/jwt-issuer /var/lib/jwt-issuer
USER 65532:65532
ENV JWT_ISSUER_KEYS_DIR=/var/lib/jwt-issuer/keys \
    JWT_ISSUER_BIND=0.0.0.0:8080
VOLUME ["/var/lib/jwt-issuer/keys"]
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/jwt-issuer"]
CMD ["serve"]
