#!/usr/bin/env bash
# Rate-limiter overhead benchmark: wrk against two tollgate processes that
# differ only in one thing: the bench route of one has a rate limit so high
# it is never reached, the other's has none. Same echo backend
# (echo-backend --fixed-body), one interleaved run: rounds alternate the
# order (A B, B A, ...), median per target. Prints req/s, p50, p99 for both
# and the ratio limited / unlimited (target: >= 0.95), and writes the table
# to bench/results/.
#
# Both gateways run with threads: 1, so the numbers compare per-core cost.
# A 429 shows up as a wrk status error and fails the run: the limit must
# never be reached.
#
# Usage: bench/limit.sh [options]
#   --duration S         seconds per wrk run (default 10)
#   --conns C            wrk connections (default 32)
#   --threads T          wrk threads (default 2)
#   --rounds R           interleaved rounds; the median is reported (default 3)
#   --warmup S           unrecorded warm-up seconds per target (default 1)
#   --key K              the limit's key: route, client_ip or header:<name>
#                        (default route)
#   --min-ratio X        exit non-zero if limited/unlimited < X (default: report only)
#   --quick              smoke mode: 1 round of 2 s; writes
#                        bench/results/limit-quick.txt instead of -latest
#   --out FILE           where to write the table
#                        (default bench/results/limit-latest.txt)
#   --no-build           do not run cargo build (use the existing binaries)
#   -h, --help
#
# Environment: ECHO_BACKEND_BIN, TOLLGATE_BIN override the binaries (default
# target/release/*, or $CARGO_TARGET_DIR/release/*); KEEP_TMP=1 keeps the
# temp dir (configs, logs, raw wrk output).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

TARGETS=(unlimited limited)

key=route
wrk_options
min_ratio_option
value_opts+=([--key]=key)
parse_args "$@"
check_wrk_options
case "$key" in
route | client_ip | header:?*) ;;
*) die "--key must be route, client_ip or header:<name>" ;;
esac

# ------------------------------------------------------- tools, build, temp dir

gateway_bench_setup limit

# Ask the OS for free ports (bound together so they are distinct).
read -r port_backend port_unlimited admin_unlimited port_limited admin_limited < <(free_ports 5)

BENCH_PATH=/bench/echo
# The highest rate a limit may have, and a burst to match: never reached.
LIMIT="{ rate: 1000000, burst: 1000000, key: \"$key\" }"
declare -A url=(
    [unlimited]="http://127.0.0.1:$port_unlimited$BENCH_PATH"
    [limited]="http://127.0.0.1:$port_limited$BENCH_PATH"
)

# ---------------------------------------------------------------- the servers

start_echo echo-backend backend "$port_backend" "$BENCH_PATH"
start_bench_gateway unlimited "$port_unlimited" "$admin_unlimited" ""
start_bench_gateway limited "$port_limited" "$admin_limited" "rate_limit: $LIMIT"

# The limited gateway really limits: its answers carry the limit headers.
# (grep reads to the end: -q would stop early and could close the pipe under curl)
if ! curl -fsS -D - -o /dev/null "${url[limited]}" | grep -i '^x-ratelimit-limit: 1000000' >/dev/null; then
    die "the limited gateway's answer carries no X-RateLimit-Limit: 1000000"
fi

# ---------------------------------------------------------------- measuring

lua_done_hook >"$tmp/report.lua"
wrk_name_width=10 status_hint=" (429: the limit was reached?)"
log "unlimited vs limited (key $key); wrk -t$wrk_threads -c$conns -d${duration}s x $rounds round(s)"
run_rounds run_wrk alternate "${TARGETS[@]}"

# ---------------------------------------------------------------- the table

summarize "${TARGETS[@]}"
ratio=$(rps_ratio limited unlimited)
verdict=$(awk -v r="$ratio" 'BEGIN { print (r >= 0.95 ? "met" : "NOT met") }')

report=$tmp/report.txt
{
    report_header "$rounds interleaved round(s) (order alternating), median shown; warm-up ${warmup}s"
    echo "# tollgate: threads 1, one route $BENCH_PATH -> echo-backend --fixed-body;" \
        "limited: rate_limit $LIMIT (never reached)"
    median_table "${TARGETS[@]}"
    echo "ratio limited/unlimited: $ratio (target >= 0.95: $verdict)"
} >"$report"

conclude "$report" "${TARGETS[@]}"
