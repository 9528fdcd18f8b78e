#!/usr/bin/env bash
# Where a proxied request's CPU goes (#20), counted instead of timed, so the
# figures hold on a shared, noisy machine: each server under test runs under
# valgrind's callgrind while h2load sends it --requests keep-alive requests
# (16 connections, after a warm-up the counters are zeroed for), and the
# report gives the instructions it executed per request (all its threads,
# user space), tollgate's split into the stages of a request; then the same
# load under `strace -c`: system calls per request. Targets: nginx (one
# worker, no master), haproxy (nbthread 1), tollgate (core engine, the
# bench route among 300 decoys) and tollgate-full (1,000 routes, a client-IP
# limit, request metrics, the JSON access log), with the configurations of
# bench/proxy.sh. Instructions are not time (a cache miss or a syscall costs
# more than its count), but they move with the code and not with the
# neighbours.
#
# A stage is the inclusive count of the functions that do it (callgrind's
# calls tree); "event loop and the rest" is the total less the stages (the
# tokio scheduler and reactor, select!, futures glue, inlined code).
#
# Usage: bench/profile.sh [options]
#   --requests N     measured requests per target (default 20000)
#   --targets LIST   comma-separated subset of nginx,haproxy,tollgate,tollgate-full
#   --quick          2,000 requests (smoke); writes profile-quick.txt
#   --out FILE       where to write the table (default bench/results/profile-latest.txt)
#   --header H       one more request header, e.g. 'Connection: keep-alive'
#                    (what browsers send on every HTTP/1.1 request)
#   --browser        the ten header fields a browser's page request carries
#                    (Connection: keep-alive, User-Agent, Accept*, Sec-Fetch-*,
#                    a cookie): the per-field costs at a real request's size
#   --cache-sim      also simulate the caches and branch predictors (callgrind
#                    --cache-sim --branch-sim, several times slower): misses
#                    and mispredictions per request and the cycles they
#                    suggest, for what instruction counts leave out
#   --stages         profile tollgate as built by the `stages` cargo profile
#                    (release with thin LTO in four codegen units): the
#                    shipped build's fat LTO inlines a request's steps into
#                    each other, so only this build's functions map onto the
#                    stages; its totals are not the shipped binary's
#   --no-build       do not run cargo build
#   -h, --help
#
# Environment: TOLLGATE_BIN, ECHO_BACKEND_BIN override the binaries;
# KEEP_TMP=1 keeps the temp dir (callgrind outputs, configs, logs).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

ALL_TARGETS=(nginx haproxy tollgate tollgate-full)
requests=20000 targets_arg="" out="" header="" browser=0 cache_sim=0 stages=0
value_opts+=([--requests]=requests [--targets]=targets_arg [--out]=out [--header]=header)
switch_opts+=([--browser]=browser [--cache-sim]=cache_sim [--stages]=stages)
parse_args "$@"
((quick)) && ! ((${explicit[--requests]:-0})) && requests=2000
require_positive requests:"$requests"
[[ -n "$out" ]] || out=$ROOT/bench/results/profile-$( ((quick)) && echo quick || echo latest).txt
targets=()
IFS=, read -r -a wanted <<<"${targets_arg:-$(
    IFS=,
    echo "${ALL_TARGETS[*]}"
)}"
for w in "${wanted[@]}"; do
    [[ " ${ALL_TARGETS[*]} " == *" $w "* ]] || die "unknown target: $w"
    targets+=("$w")
done
want() { [[ " ${targets[*]} " == *" $1 "* ]]; }

# valgrind and strace are this script's alone (not in scripts/deps.sh, which
# every set-up runs): installed here when missing.
for tool in valgrind strace; do
    command -v "$tool" >/dev/null 2>&1 && continue
    log "$tool missing; installing it (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q "$tool" >/dev/null 2>&1 ||
        { apt-get update -q >/dev/null && apt-get install -y -q "$tool" >/dev/null; } ||
        die "could not install $tool"
done
need_tools h2load curl python3
want nginx && need_tools nginx
want haproxy && need_tools haproxy
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
build_profile=release
if ((stages)); then
    # The release tollgate is not profiled: only the backend is built so.
    build_release -p testkit --bins
    build_profile=stages
    if ((build)); then
        log "building the stages profile (cargo build --profile stages -p tollgate)"
        cargo build --profile stages -p tollgate --bin tollgate
    fi
    TOLLGATE=${TOLLGATE_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/stages/tollgate}
else
    build_release -p tollgate -p testkit --bins
    TOLLGATE=${TOLLGATE_BIN:-$(release_bin tollgate)}
fi
ECHO_BACKEND=${ECHO_BACKEND_BIN:-$(release_bin echo-backend)}
require_bin echo-backend "$ECHO_BACKEND"
require_bin tollgate "$TOLLGATE"
make_tmp tollgate-profile
pin_cpus auto

read -r port_backend port_server port_admin < <(free_ports 3)
BENCH_PATH=/bench/echo
url="http://127.0.0.1:$port_server$BENCH_PATH"
start_echo echo-backend backend "$port_backend" "$BENCH_PATH"

# server_cmd TARGET: the command line of TARGET (its config written to $tmp).
server_cmd() {
    case $1 in
    nginx)
        # No master: the worker is the process profiled.
        nginx_proxy_conf "$tmp/nginx" "$port_server" "$port_backend"
        sed -i 's/^daemon off;/daemon off;\nmaster_process off;/' "$tmp/nginx/nginx.conf"
        echo "$NGINX -p $tmp/nginx -c $tmp/nginx/nginx.conf -e $tmp/nginx/error.log"
        ;;
    haproxy)
        haproxy_proxy_conf "$tmp/haproxy.cfg" "$port_server" "$port_backend"
        echo "$HAPROXY -db -f $tmp/haproxy.cfg"
        ;;
    tollgate)
        tollgate_proxy_conf "$tmp/tollgate.yaml" "$port_server" "$port_admin" core 300
        echo "$TOLLGATE run -c $tmp/tollgate.yaml"
        ;;
    tollgate-full)
        tollgate_proxy_conf "$tmp/tollgate-full.yaml" "$port_server" "$port_admin" core 999 full
        echo "$TOLLGATE run -c $tmp/tollgate-full.yaml"
        ;;
    esac
}

# A browser's page request (Chrome 131 on Linux), Host aside.
BROWSER_HEADERS=(
    'Connection: keep-alive'
    'User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36'
    'Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8'
    'Accept-Encoding: gzip, deflate, br, zstd'
    'Accept-Language: en-US,en;q=0.9'
    'Upgrade-Insecure-Requests: 1'
    'Sec-Fetch-Dest: document'
    'Sec-Fetch-Mode: navigate'
    'Sec-Fetch-Site: none'
    'Cookie: session=3f9a1c0e7b2d4a6f8e1c3b5a7d9f0e2c'
)

# load N: N keep-alive GETs from 16 connections; fails unless all are 2xx.
load() {
    local n=$1 summary extra=()
    [[ -z "$header" ]] || extra=(-H "$header")
    if ((browser)); then
        local h
        for h in "${BROWSER_HEADERS[@]}"; do extra+=(-H "$h"); done
    fi
    summary=$("${load_prefix[@]}" h2load --h1 -n "$n" -c 16 "${extra[@]}" "$url" 2>&1) || die "h2load failed: $summary"
    grep -q "status codes: $n 2xx" <<<"$summary" || die "not every answer was 2xx: $(grep 'status codes' <<<"$summary")"
}

# stop PID: TERM, then wait (callgrind writes its output on exit).
stop() {
    kill -TERM "$1" 2>/dev/null || true
    local deadline=$((SECONDS + 30))
    while alive "$1" && ((SECONDS < deadline)); do sleep 0.1; done
    alive "$1" && kill -KILL "$1" 2>/dev/null
    wait "$1" 2>/dev/null || true
}

: >"$tmp/ir.tsv"
: >"$tmp/syscalls.tsv"
: >"$tmp/cache.tsv"
sim=()
((cache_sim)) && sim=(--cache-sim=yes --branch-sim=yes)
for t in "${targets[@]}"; do
    read -r -a cmd <<<"$(server_cmd "$t")"
    # Instructions: callgrind, counters zeroed after the warm-up, dumped after
    # the measured requests.
    log "$t: $requests requests under callgrind"
    start "$t-callgrind" "${server_prefix[@]}" valgrind --tool=callgrind --dump-instr=no "${sim[@]}" \
        --callgrind-out-file="$tmp/callgrind.$t.%p" "${cmd[@]}"
    pid=$started_pid
    wait_http "$t" "$pid" "$url"
    load 2000
    callgrind_control -z "$pid" >/dev/null
    load "$requests"
    callgrind_control -d "$pid" >/dev/null
    stop "$pid"
    dump=$(find "$tmp" -name "callgrind.$t.*.1" | head -1)
    [[ -n "$dump" ]] || die "$t: no callgrind dump"
    # (It warns about objects without line tables, such as haproxy's.)
    callgrind_annotate --inclusive=yes --threshold=100 --show=Ir "$dump" >"$tmp/annotate.$t.txt" 2>/dev/null
    python3 bench/profile_stages.py "$t" "$requests" "$tmp/annotate.$t.txt" >>"$tmp/ir.tsv"
    ((cache_sim)) && python3 bench/profile_stages.py --events "$t" "$requests" "$dump" >>"$tmp/cache.tsv"
    # System calls: the same load under strace -c.
    log "$t: $requests requests under strace"
    start "$t-strace" "${server_prefix[@]}" "${cmd[@]}"
    pid=$started_pid
    wait_http "$t" "$pid" "$url"
    load 2000
    strace -f -c -p "$pid" -o "$tmp/strace.$t.txt" 2>/dev/null &
    spid=$!
    # Attached once the process has a tracer.
    for ((i = 0; i < 100; i++)); do
        grep -q 'TracerPid:[[:space:]]*[1-9]' "/proc/$pid/status" && break
        sleep 0.05
    done
    load "$requests"
    kill -INT "$spid"
    wait "$spid" 2>/dev/null || true
    stop "$pid"
    awk -v t="$t" -v n="$requests" '
        $1 ~ /^[0-9.]+$/ && NF >= 5 { calls = $4; name = $NF
            if (name != "total") printf "%s\t%s\t%.3f\n", t, name, calls / n }' \
        "$tmp/strace.$t.txt" >>"$tmp/syscalls.tsv"
done

report=$tmp/report.txt
{
    echo "# bench/profile.sh — $(date -u '+%Y-%m-%d %H:%M:%S UTC'), rev $(git rev-parse --short HEAD)$(git diff --quiet HEAD || echo +dirty)"
    echo "# $requests keep-alive GETs (h2load --h1 -c 16${header:+, header '$header'}$( ((browser)) && echo ", a browser's ${#BROWSER_HEADERS[@]} header fields")) per target after 2,000 of warm-up; $(valgrind --version)"
    echo "# instructions per request (user space, all threads, callgrind); tollgate's split by stage"
    echo "# (tollgate: ${TOLLGATE_BIN:+TOLLGATE_BIN=$TOLLGATE, }the $build_profile cargo profile$( ((stages)) || echo '; its fat LTO inlines across the stages, so the split is only meaningful with --stages'))"
    python3 bench/profile_stages.py --table "$tmp/ir.tsv"
    echo
    if ((cache_sim)); then
        echo "# simulated per request (callgrind --cache-sim --branch-sim: first-level and last-level"
        echo "# cache misses, instruction and data; mispredicted branches; cycles estimated as"
        echo "# Ir + 10 x L1 misses + 100 x LL misses + 15 x mispredictions, valgrind's own rule of thumb)"
        python3 bench/profile_stages.py --events-table "$tmp/cache.tsv"
        echo
    fi
    echo "# system calls per request (strace -c, >= 0.01 shown)"
    awk -F'\t' '$3 >= 0.01 { printf "%-14s %-14s %7.3f\n", $1, $2, $3 }' "$tmp/syscalls.tsv"
} >"$report"
publish_report "$report" "$out"
