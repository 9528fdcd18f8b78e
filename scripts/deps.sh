#!/usr/bin/env bash
# Install what Tollgate's build, tests and benchmarks need, if it is missing.
#
# Each Debian package is paired with a check that proves the capability the
# project uses, not just that a command exists: protoc must compile a proto
# importing google/protobuf/descriptor.proto (that takes libprotobuf-dev as
# well as protobuf-compiler), etcd, nginx and prometheus must run. A package
# is installed only when its check fails, and deps.sh says which and why.
#
# Idempotent and quiet on success: a machine that already has everything sees
# no output and no network traffic. `apt-get update` runs at most once, and only
# when a package has to be installed. After installing, every check runs again:
# a capability still missing is an error naming it.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
# nginx, etcd and systemd-analyze live in /usr/sbin or /sbin on Debian.
export PATH="$PATH:/usr/sbin:/sbin"

# Debian package : the check (a function below) that proves what we use of it.
# The comment says who needs it; tests/ops_dockerfile.rs reads "build" there.
PACKAGES=(
    "build-essential:check_cc"                # build: cc, ld and make (linking, jemalloc, zlib-ng)
    "cmake:check_cmake"                       # pingora's zlib-ng build
    "protobuf-compiler:check_protoc"          # etcd-client's build (protoc)
    "libprotobuf-dev:check_protoc_imports"    # etcd-client's build (google/protobuf/*.proto)
    "pkg-config:check_pkg_config"             # build scripts
    "etcd-server:check_etcd"                  # integration tests, demo
    "etcd-client:check_etcdctl"               # demo, tests/ops_* (etcdctl)
    "wrk:check_wrk"                           # bench/proxy.sh load generator
    "nginx-light:check_nginx"                 # bench/proxy.sh baseline
    "curl:check_curl"                         # scripts: readiness polling; tests: HTTP/2, TLS
    "openssl:check_openssl"                   # tests/tls_*.rs: s_client (SNI, ALPN, versions)
    "nghttp2-client:check_h2load"             # tests/http2.rs, bench/tls.sh (h2load)
    "haproxy:check_haproxy"                   # bench/proxy.sh and tls.sh baseline
    "python3-grpcio:check_grpcio"             # tests/upstream_protocols.rs: a real gRPC server and client
    "python3-websockets:check_websockets"     # tests/upstream_protocols.rs: WebSocket over TLS
    "python3:check_python3"                   # scripts: free ports
    "systemd:check_systemd_analyze"           # tests/ops_systemd.rs: verify the units
    "prometheus:check_prometheus"             # tests/ops_prometheus.rs (and promtool)
    "pebble:check_pebble"                     # tests/acme_order.rs, cluster_acme*.rs: a real ACME CA
)

log() { printf 'deps.sh: %s\n' "$*" >&2; }

# Each check_X is silent and fails when the capability is missing; why_X is
# what deps.sh says when it installs the package for it.
check_cc() {
    local dir rc
    dir=$(mktemp -d)
    printf 'int main(void) { return 0; }\n' >"$dir/probe.c"
    cc -o "$dir/probe" "$dir/probe.c" >/dev/null 2>&1 && "$dir/probe" && make --version >/dev/null 2>&1
    rc=$?
    rm -rf "$dir"
    return "$rc"
}
why_cc="cc cannot build and link a C program, or make is missing (rustc links with cc; jemalloc and zlib-ng build with make)"

check_cmake() { cmake --version >/dev/null 2>&1; }
why_cmake="cmake --version failed (pingora's zlib-ng build needs it)"

check_protoc() { protoc --version >/dev/null 2>&1; }
why_protoc="protoc --version failed (etcd-client's build compiles etcd's .proto files)"

# etcd's protos import google/protobuf/descriptor.proto; Debian ships those
# well-known types in libprotobuf-dev, not with the protoc binary.
check_protoc_imports() {
    command -v protoc >/dev/null 2>&1 || return 1
    local dir rc
    dir=$(mktemp -d)
    cat >"$dir/probe.proto" <<'PROTO'
syntax = "proto3";
import "google/protobuf/descriptor.proto";
extend google.protobuf.FieldOptions { string probe = 50000; }
message Probe { string name = 1 [(probe) = "x"]; }
PROTO
    protoc -I "$dir" --descriptor_set_out="$dir/out.pb" "$dir/probe.proto" >/dev/null 2>&1
    rc=$?
    rm -rf "$dir"
    return "$rc"
}
why_protoc_imports="protoc cannot import google/protobuf/descriptor.proto (etcd-client's build; Debian ships it in libprotobuf-dev)"

check_pkg_config() { pkg-config --version >/dev/null 2>&1; }
why_pkg_config="pkg-config --version failed (build scripts)"

check_etcd() { etcd --version >/dev/null 2>&1; }
why_etcd="etcd --version failed (integration tests and the demo start a real etcd)"

check_etcdctl() { ETCDCTL_API=3 etcdctl version >/dev/null 2>&1; }
why_etcdctl="etcdctl version failed (the demo writes routes with it)"

# wrk -v prints its version and exits 1.
check_wrk() { [[ "$(wrk -v 2>&1)" == "wrk "* ]]; }
why_wrk="wrk -v printed no version (bench/proxy.sh's load generator)"

check_nginx() { nginx -v >/dev/null 2>&1; }
why_nginx="nginx -v failed (bench/proxy.sh's baseline)"

check_curl() { curl --version 2>/dev/null | grep -q 'HTTP2'; }
why_curl="curl cannot run or lacks HTTP/2 (scripts poll readiness with it; tests speak HTTP/2 with it)"

check_openssl() { openssl version >/dev/null 2>&1; }
why_openssl="openssl version failed (TLS tests use s_client for SNI, ALPN and version checks)"

check_h2load() { h2load --version >/dev/null 2>&1; }
why_h2load="h2load --version failed (HTTP/2 tests and bench/tls.sh)"

check_haproxy() { haproxy -v >/dev/null 2>&1; }

# Debian's python3 (not a pyenv one earlier on PATH) with grpcio.
check_grpcio() { /usr/bin/python3 -c 'import grpc' >/dev/null 2>&1; }
check_websockets() { /usr/bin/python3 -c 'import websockets' >/dev/null 2>&1; }
why_websockets="/usr/bin/python3 cannot import websockets (the WebSocket-over-TLS test runs a real client and server)"
why_grpcio="/usr/bin/python3 cannot import grpc (the gRPC pass-through tests run a real gRPC server and client)"
why_haproxy="haproxy -v failed (bench/proxy.sh's and bench/tls.sh's baseline)"

check_python3() { python3 -c 'import socket' >/dev/null 2>&1; }
why_python3="python3 cannot run (scripts pick free ports with it)"

check_systemd_analyze() { systemd-analyze --version >/dev/null 2>&1; }
why_systemd_analyze="systemd-analyze --version failed (tests/ops_systemd.rs verifies the units)"

check_prometheus() { prometheus --version >/dev/null 2>&1 && promtool --version >/dev/null 2>&1; }
why_prometheus="prometheus/promtool --version failed (tests/ops_prometheus.rs scrapes the gateway)"

# Both binaries at the paths testkit::Pebble runs, taking the flags it passes.
check_pebble() {
    grep -q -- '-dnsserver' <<<"$(/usr/bin/pebble -h 2>&1)" &&
        grep -q -- '-dns01' <<<"$(/usr/bin/pebble-challtestsrv -h 2>&1)"
}
why_pebble="/usr/bin/pebble or /usr/bin/pebble-challtestsrv cannot run (tests/acme_order.rs and tests/cluster_acme*.rs order certificates from a real ACME test CA)"

# failing: the entries whose check fails now.
failing() {
    local entry pkg check
    for entry in "${PACKAGES[@]}"; do
        pkg=${entry%%:*}
        check=${entry#*:}
        "$check" || printf '%s:%s\n' "$pkg" "$check"
    done
}

mapfile -t missing < <(failing)

if ((${#missing[@]} > 0)); then
    if ! command -v apt-get >/dev/null 2>&1; then
        log "cannot install ${missing[*]%%:*}: apt-get is not available; install them by hand"
        exit 1
    fi
    SUDO=()
    if ((EUID != 0)); then
        if command -v sudo >/dev/null 2>&1; then
            SUDO=(sudo -n)
        else
            log "missing ${missing[*]%%:*}; run as root or install sudo"
            exit 1
        fi
    fi
    pkgs=()
    for entry in "${missing[@]}"; do
        why_var="why_${entry#*:check_}"
        log "installing ${entry%%:*}: ${!why_var}"
        pkgs+=("${entry%%:*}")
    done
    apt_log=$(mktemp)
    trap 'rm -f "$apt_log"' EXIT
    if ! { "${SUDO[@]}" apt-get update -q &&
        "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${pkgs[@]}"; } \
        >"$apt_log" 2>&1; then
        cat "$apt_log" >&2
        log "apt-get failed"
        exit 1
    fi
    mapfile -t still < <(failing)
    if ((${#still[@]} > 0)); then
        for entry in "${still[@]}"; do
            why_var="why_${entry#*:check_}"
            log "after installing ${entry%%:*}: ${!why_var}"
        done
        exit 1
    fi
fi

# Rust toolchain: we check for it, we do not install it (rustup is the
# operator's choice). ~/.cargo/bin may not be on PATH in non-login shells.
if ! cargo --version >/dev/null 2>&1; then
    if [[ -x "${CARGO_HOME:-$HOME/.cargo}/bin/cargo" ]]; then
        log "cargo is in ${CARGO_HOME:-$HOME/.cargo}/bin but not on PATH; add it to PATH"
    else
        log "cargo not found; install Rust (https://rustup.rs) first"
    fi
    exit 1
fi

# cargo-nextest: normally present. scripts/test.sh falls back to `cargo test`
# when it is missing, so a failed install is a warning, not an error.
if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest: cargo nextest --version failed (scripts/test.sh's runner)"
    nextest_log=$(mktemp)
    if ! cargo install --locked cargo-nextest >"$nextest_log" 2>&1; then
        tail -n 20 "$nextest_log" >&2
        log "warning: cargo-nextest install failed; tests will use cargo test"
    fi
    rm -f "$nextest_log"
fi
