# syntax=docker/dockerfile:1
#
# Tollgate container image: a release build on Debian 12 (bookworm, like the
# development machines), run as an unprivileged user on debian:bookworm-slim.
#
#   docker build -t tollgate .
#   docker run --rm -p 8080:8080 -p 9180:9180 \
#       -v $PWD/my-tollgate.yaml:/etc/tollgate/tollgate.yaml:ro tollgate
#
# The development and CI machines of this project have no Docker engine, so
# this image is not built there; tests/ops_dockerfile.rs checks that the
# build steps below are the ones scripts/deps.sh and the benchmarks use.

# ---------------------------------------------------------------- build
# The toolchain of the development machines (1.95): scripts/pgo.sh needs an
# llvm-profdata that reads this rustc's profiles: Debian's llvm-22 is its LLVM.
FROM rust:1.95-bookworm AS build
# build-essential: cc and make (already in rust:bookworm); cmake: pingora's
# zlib-ng build; protobuf-compiler and libprotobuf-dev: etcd-client's build
# (protoc, and the google/protobuf/*.proto it imports); pkg-config: build
# scripts. The build packages of scripts/deps.sh, checked by
# tests/ops_dockerfile.rs. wrk, nghttp2-client (h2load), curl, openssl,
# python3: the training load of the profile-guided build.
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake protobuf-compiler libprotobuf-dev pkg-config \
        wrk nghttp2-client curl openssl python3
WORKDIR /src
COPY . .
# The release binary built with profile-guided optimization, as measured
# by bench/proxy.sh (tollgate-pgo): an instrumented build serves a training
# load, then the release build uses its profile (scripts/pgo.sh, which
# installs Debian's newest llvm-N for llvm-profdata).
RUN scripts/pgo.sh \
    && install -m 0755 target/pgo/release/tollgate /usr/local/bin/tollgate \
    && rm -rf /var/lib/apt/lists/*

# ---------------------------------------------------------------- runtime
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/tollgate \
        --shell /usr/sbin/nologin tollgate \
    && mkdir -p /etc/tollgate /var/lib/tollgate \
    && chown tollgate:tollgate /var/lib/tollgate
COPY --from=build /usr/local/bin/tollgate /usr/local/bin/tollgate
# The example configs: tollgate.yaml (standalone), tollgate-etcd.yaml. Mount
# your own over /etc/tollgate/tollgate.yaml. In a container the admin
# listener (/healthz /readyz /status /metrics) must listen beyond loopback
# to be scraped, hence the rewrite.
COPY conf/ /etc/tollgate/
RUN sed -i 's/127.0.0.1:9180/0.0.0.0:9180/' /etc/tollgate/*.yaml \
    && /usr/local/bin/tollgate check -c /etc/tollgate/tollgate.yaml \
    && /usr/local/bin/tollgate check -c /etc/tollgate/tollgate-etcd.yaml
VOLUME /var/lib/tollgate
USER tollgate
EXPOSE 8080 9180
STOPSIGNAL SIGTERM
# Ready = a config is applied and not draining. No curl in the image: bash
# speaks HTTP/1.1 to the admin listener (change the port if you move it).
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9180 && printf 'GET /readyz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/tollgate", "run", "-c", "/etc/tollgate/tollgate.yaml"]
