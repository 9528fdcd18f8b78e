#!/usr/bin/env bash
# Install what Tollgate's build, tests and benchmarks need, if it is missing.
#
# Idempotent and quiet on success: a machine that already has everything sees
# no output and no network traffic. `apt-get update` runs at most once, and only
# when a package has to be installed.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

# Debian package -> a command that proves it is installed (even if it came from
# somewhere other than that package).
PACKAGES=(
    "cmake:cmake"                        # pingora's zlib-ng build
    "protobuf-compiler:protoc"           # etcd-client's build
    "pkg-config:pkg-config"
    "etcd-server:etcd"                   # integration tests, demo
    "etcd-client:etcdctl"
    "wrk:wrk"                            # bench/proxy.sh
    "nginx-light:nginx"                  # bench/proxy.sh baseline
    "curl:curl"                          # scripts: readiness polling
    "python3:python3"                    # scripts: free ports
    "systemd:systemd-analyze"            # tests/ops_systemd.rs: verify the units
    "prometheus:prometheus"              # tests/ops_prometheus.rs (and promtool)
)

log() { printf 'deps.sh: %s\n' "$*" >&2; }

have_cmd() {
    # nginx and etcd live in /usr/sbin, /usr/bin; check sbin too for non-root PATHs.
    command -v "$1" >/dev/null 2>&1 || [[ -x "/usr/sbin/$1" || -x "/sbin/$1" ]]
}

have_pkg() {
    [[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" == "install ok installed" ]]
}

missing=()
for entry in "${PACKAGES[@]}"; do
    pkg=${entry%%:*}
    cmd=${entry#*:}
    if ! have_cmd "$cmd" && ! have_pkg "$pkg"; then
        missing+=("$pkg")
    fi
done

if ((${#missing[@]} > 0)); then
    if ! command -v apt-get >/dev/null 2>&1; then
        log "missing ${missing[*]} and apt-get is not available; install them by hand"
        exit 1
    fi
    SUDO=()
    if ((EUID != 0)); then
        if command -v sudo >/dev/null 2>&1; then
            SUDO=(sudo -n)
        else
            log "missing ${missing[*]}; run as root or install sudo"
            exit 1
        fi
    fi
    apt_log=$(mktemp)
    trap 'rm -f "$apt_log"' EXIT
    log "installing ${missing[*]}"
    if ! { "${SUDO[@]}" apt-get update -q &&
        "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
        >"$apt_log" 2>&1; then
        cat "$apt_log" >&2
        log "apt-get failed"
        exit 1
    fi
fi

# Rust toolchain: we check for it, we do not install it (rustup is the
# operator's choice). ~/.cargo/bin may not be on PATH in non-login shells.
if ! command -v cargo >/dev/null 2>&1; then
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
    log "installing cargo-nextest"
    nextest_log=$(mktemp)
    if ! cargo install --locked cargo-nextest >"$nextest_log" 2>&1; then
        tail -n 20 "$nextest_log" >&2
        log "warning: cargo-nextest install failed; tests will use cargo test"
    fi
    rm -f "$nextest_log"
fi
