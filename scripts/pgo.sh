#!/usr/bin/env bash
# The release binary built with profile-guided optimization (#20). A
# request's code is larger than the CPU's instruction cache holds beside
# the kernel's; with a profile, LLVM puts the hot paths together and the
# rare ones out of their way, inlines by the counts and lays branches out
# as they go. The steps:
#   1. an instrumented release build (-Cprofile-generate, in its own target
#      directory: target/pgo-instrumented);
#   2. a training run of it: the bench's full-feature gateway (1,000
#      routes, a client-IP limit, request metrics, the JSON access log) on
#      a plain and a TLS listener, each load for --seconds: wrk with wrk's
#      own request and with a browser's header fields, wrk keep-alive over
#      TLS, wrk with a new TLS connection a request, h2load (HTTP/2); then
#      SIGTERM, and the profile is written at exit;
#   3. llvm-profdata merge, and the release build with -Cprofile-use in
#      target/pgo (its own directory, so `cargo build --release` neither
#      rebuilds it nor is rebuilt by it);
#   4. a check that the binary it built serves a request.
# The fallback engine (`proxy.engine: pingora`) is not trained: it is
# built, and works, the same; LLVM only treats its code as rare.
#
# llvm-profdata must read the raw profiles of rustc's own LLVM. Tried in
# turn: rustup's llvm-tools, then Debian's llvm-profdata-N, newest first;
# with none on the machine, Debian's newest llvm-N is installed. Each is
# checked on a small program (instrument, run, merge, build with the
# profile) before it is used: a capability, not a command's presence.
#
# Usage: scripts/pgo.sh [options]
#   --seconds S   seconds per training load (default 5)
#   --quick       1 s per load (the CI smoke)
#   -h, --help
#
# Prints the binary's path last: target/pgo/release/tollgate (under
# $PGO_TARGET_DIR instead of target/ when set). bench/proxy.sh measures it
# with TOLLGATE_BIN=target/pgo/release/tollgate.
set -euo pipefail
# shellcheck source=../bench/lib.sh
source "$(dirname "$0")/../bench/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

seconds=5
value_opts+=([--seconds]=seconds)
parse_args "$@"
quick_defaults --seconds=1
require_positive seconds:"$seconds"
((build)) || die "--no-build: this script is a build"

base=${PGO_TARGET_DIR:-$ROOT/target}
gen_dir=$base/pgo-instrumented
use_dir=$base/pgo

need_tools wrk h2load curl openssl python3
make_tmp tollgate-pgo

# ------------------------------------------------------------ llvm-profdata

# profdata_works TOOL: TOOL merges what this rustc's instrumented code
# writes, into a profile this rustc reads.
profdata_works() {
    local t=$tmp/probe
    [[ -x "$1" ]] || return 1
    mkdir -p "$t"
    printf 'fn main() { let n: u64 = std::env::args().count() as u64; println!("{}", (0..1000 * n).filter(|i| i %% 3 == 0).sum::<u64>()); }\n' >"$t/p.rs"
    rustc -O -Cprofile-generate="$t/raw" "$t/p.rs" -o "$t/p" 2>/dev/null &&
        "$t/p" >/dev/null &&
        "$1" merge -o "$t/p.profdata" "$t"/raw/*.profraw 2>/dev/null &&
        rustc -O -Cprofile-use="$t/p.profdata" "$t/p.rs" -o "$t/p2" 2>/dev/null
}

# debian_llvm_versions: the llvm-N versions Debian offers, newest first.
debian_llvm_versions() {
    apt-cache pkgnames llvm- 2>/dev/null | sed -n 's/^llvm-\([0-9][0-9]*\)$/\1/p' | sort -rn
}

find_profdata() {
    local sysroot host candidate v
    sysroot=$(rustc --print sysroot)
    host=$(rustc -vV | sed -n 's/^host: //p')
    for candidate in "$sysroot/lib/rustlib/$host/bin/llvm-profdata" \
        $(compgen -G '/usr/bin/llvm-profdata-*' | sort -t- -k3 -rn) /usr/bin/llvm-profdata; do
        if profdata_works "$candidate"; then
            echo "$candidate"
            return 0
        fi
    done
    command -v apt-get >/dev/null 2>&1 || return 1
    v=$(debian_llvm_versions | head -n 1)
    if [[ -z "$v" ]]; then # no package lists yet
        apt-get update -q >"$tmp/apt.log" 2>&1 || { tail -n 5 "$tmp/apt.log" >&2; return 1; }
        v=$(debian_llvm_versions | head -n 1)
    fi
    [[ -n "$v" ]] || return 1
    log "no llvm-profdata reads rustc's profiles; installing Debian's llvm-$v (for llvm-profdata-$v)"
    # Lists older than the archive's packages fail the install: refresh, retry.
    { DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "llvm-$v" ||
        { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
            --no-install-recommends "llvm-$v"; }; } >"$tmp/apt.log" 2>&1 ||
        { tail -n 5 "$tmp/apt.log" >&2; return 1; }
    profdata_works "/usr/bin/llvm-profdata-$v" || return 1
    echo "/usr/bin/llvm-profdata-$v"
}

PROFDATA=$(find_profdata) ||
    die "no llvm-profdata merges the profiles of $(rustc -vV | grep LLVM) (tried rustup's llvm-tools and Debian's llvm-N)"
log "llvm-profdata: $PROFDATA"

# ------------------------------------------------------ 1. instrumented build

raw=$tmp/raw
log "1/4 instrumented build (CARGO_TARGET_DIR=$gen_dir)"
# The flags stay the same from run to run, so cargo keeps this build; where
# the profiles go is LLVM_PROFILE_FILE's, at run time.
RUSTFLAGS="-Cprofile-generate=$gen_dir/profiles" CARGO_TARGET_DIR=$gen_dir \
    cargo build --release --locked --quiet -p tollgate --bin tollgate
# The backend is not trained: the plain release build of it.
cargo build --release --locked --quiet -p testkit --bin echo-backend
ECHO_BACKEND=$(release_bin echo-backend)
TOLLGATE=$gen_dir/release/tollgate
load_prefix=()

# ------------------------------------------------------------- 2. training

log "2/4 training: ${seconds}s per load"
read -r port_backend port_toll port_admin port_tls < <(free_ports 4)
start_echo echo-backend backend "$port_backend" /bench/echo
tollgate_proxy_conf "$tmp/tollgate.yaml" "$port_toll" "$port_admin" core 999 full
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost \
    -keyout "$tmp/server.key" -out "$tmp/server.crt" 2>/dev/null
sed -i "s|^listen: .*|listen: [\"127.0.0.1:$port_toll\", {addr: \"127.0.0.1:$port_tls\", tls: true}]|" \
    "$tmp/tollgate.yaml"
echo "tls: { default_cert: { cert_file: \"$tmp/server.crt\", key_file: \"$tmp/server.key\" } }" \
    >>"$tmp/tollgate.yaml"
# Every process of the instrumented binary writes its own profile.
export LLVM_PROFILE_FILE=$raw/tollgate-%p-%m.profraw
"$TOLLGATE" check -c "$tmp/tollgate.yaml" >/dev/null || die "training config rejected ($tmp/tollgate.yaml)"
start tollgate env -u TOLLGATE_PROXY_ENGINE "$TOLLGATE" run -c "$tmp/tollgate.yaml"
toll_pid=$started_pid
plain=http://127.0.0.1:$port_toll/bench/echo
tls=https://localhost:$port_tls/bench/echo
wait_http tollgate "$toll_pid" "$plain"
curl -ksf -o /dev/null --resolve "localhost:$port_tls:127.0.0.1" "$tls" ||
    die "tollgate does not answer over TLS"

# train NAME CMD...: one load; it must complete requests without errors.
train() {
    local name=$1
    shift
    "$@" >"$tmp/$name.out" 2>&1 || { cat "$tmp/$name.out" >&2; die "training load $name failed"; }
    if grep -q 'Non-2xx' "$tmp/$name.out"; then
        cat "$tmp/$name.out" >&2
        die "training load $name: answers other than 2xx (a profile of failures would mislead)"
    fi
    log "  $name: $(grep -E '^Requests/sec|^finished in' "$tmp/$name.out" | head -n 1)"
}
browser=(-H 'Connection: keep-alive' -H 'User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/131.0.0.0'
    -H 'Accept: application/json, text/plain, */*' -H 'Accept-Encoding: gzip, deflate, br'
    -H 'Accept-Language: en-US,en;q=0.9' -H 'Cookie: session=4f2a9c1e7b3d; theme=dark')
train plain wrk -t1 -c32 -d"${seconds}s" "$plain"
train browser wrk -t1 -c32 -d"${seconds}s" "${browser[@]}" "$plain"
# wrk and h2load connect to 127.0.0.1; the certificate is for localhost
# and neither checks it.
tls_ip=https://127.0.0.1:$port_tls/bench/echo
train tls-keepalive wrk -t1 -c32 -d"${seconds}s" "$tls_ip"
train tls-handshakes wrk -t1 -c16 -d"${seconds}s" -H 'Connection: close' "$tls_ip"
train h2 h2load -t 1 -c 16 -m 10 -D "$seconds" "$tls_ip"
grep -q ' 0 failed' "$tmp/h2.out" || { cat "$tmp/h2.out" >&2; die "h2load: failed requests"; }

kill -TERM "$toll_pid"
deadline=$((SECONDS + 30))
while alive "$toll_pid" && ((SECONDS < deadline)); do sleep 0.05; done
alive "$toll_pid" && die "tollgate did not exit on SIGTERM (its profile is written at exit)"
compgen -G "$raw/tollgate-$toll_pid-*.profraw" >/dev/null || die "the training run wrote no profile in $raw"

# ------------------------------------------------------- 3. optimized build

"$PROFDATA" merge -o "$tmp/tollgate.profdata" "$raw"/*.profraw
# Named by its content: cargo rebuilds when its flags change, not when the
# file a flag names does, and every training run counts differently.
mkdir -p "$use_dir"
profile=$use_dir/tollgate-$(sha256sum "$tmp/tollgate.profdata" | cut -c1-16).profdata
mv "$tmp/tollgate.profdata" "$profile"
find "$use_dir" -maxdepth 1 -name 'tollgate-*.profdata' ! -path "$profile" -delete
log "3/4 release build with the profile (CARGO_TARGET_DIR=$use_dir)"
RUSTFLAGS="-Cprofile-use=$profile" CARGO_TARGET_DIR=$use_dir \
    cargo build --release --locked --quiet -p tollgate --bin tollgate
TOLLGATE=$use_dir/release/tollgate

# ------------------------------------------------------------------ 4. check

log "4/4 the optimized binary serves"
unset LLVM_PROFILE_FILE
read -r port_toll port_admin port_tls < <(free_ports 3)
tollgate_proxy_conf "$tmp/check.yaml" "$port_toll" "$port_admin" core 0
start tollgate-pgo "$TOLLGATE" run -c "$tmp/check.yaml"
wait_http tollgate-pgo "$started_pid" "http://127.0.0.1:$port_toll/bench/echo"
echo "$TOLLGATE"
