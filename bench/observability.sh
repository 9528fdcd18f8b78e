#!/usr/bin/env bash
# Observability overhead benchmark: wrk against two tollgate processes that
# differ only in what they record per request: "observed" has
# request_metrics: true and writes the JSON access log to a file in the
# temp dir; "plain" has request_metrics: false and access_log disabled.
# Same echo backend (echo-backend --fixed-body), one interleaved run:
# rounds alternate the order (A B, B A, ...), median per target. Prints
# req/s, p50, p99 for both and the ratio observed / plain (target: >= 0.9),
# and writes the table to bench/results/.
#
# Both gateways run with threads: 1, so the numbers compare per-core cost.
# After the run, the observed gateway's access log must hold lines and its
# /metrics must count the requests; the plain one's must not.
#
# Usage: bench/observability.sh [options]
#   --duration S         seconds per wrk run (default 10)
#   --conns C            wrk connections (default 32)
#   --threads T          wrk threads (default 2)
#   --rounds R           interleaved rounds; the median is reported (default 3)
#   --warmup S           unrecorded warm-up seconds per target (default 1)
#   --min-ratio X        exit non-zero if observed/plain < X (default: report only)
#   --quick              smoke mode: 1 round of 2 s; writes
#                        bench/results/observability-quick.txt instead of -latest
#   --out FILE           where to write the table
#                        (default bench/results/observability-latest.txt)
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

TARGETS=(plain observed)

wrk_options
min_ratio_option
parse_args "$@"
check_wrk_options

# ------------------------------------------------------- tools, build, temp dir

gateway_bench_setup observability

# Ask the OS for free ports (bound together so they are distinct).
read -r port_backend port_plain admin_plain port_observed admin_observed < <(free_ports 5)

BENCH_PATH=/bench/echo
ACCESS_LOG=$tmp/access.log
# The two gateways' settings (top-level lines of their configs).
OBSERVED=("request_metrics: true" "access_log: { enabled: true, path: \"$ACCESS_LOG\", sample: 1.0 }")
PLAIN=("request_metrics: false" "access_log: { enabled: false }")
declare -A url=(
    [plain]="http://127.0.0.1:$port_plain$BENCH_PATH"
    [observed]="http://127.0.0.1:$port_observed$BENCH_PATH"
)
declare -A admin_url=(
    [plain]="http://127.0.0.1:$admin_plain"
    [observed]="http://127.0.0.1:$admin_observed"
)

# ---------------------------------------------------------------- the servers

start_echo echo-backend backend "$port_backend" "$BENCH_PATH"
start_bench_gateway plain "$port_plain" "$admin_plain" "" "${PLAIN[@]}"
start_bench_gateway observed "$port_observed" "$admin_observed" "" "${OBSERVED[@]}"

# requests_total{route="bench"} on TARGET's /metrics (0 when absent).
route_requests() {
    curl -fsS --max-time 5 "${admin_url[$1]}/metrics" |
        awk '/^tollgate_requests_total\{/ && /route="bench"/ { s += $NF } END { print s + 0 }'
}

# The observed gateway really observes: the start-up probe above is
# counted and logged (the log is written by its own thread: poll).
deadline=$((SECONDS + 10))
until [[ -s "$ACCESS_LOG" ]] && grep -q '"route":"bench"' "$ACCESS_LOG"; do
    ((SECONDS < deadline)) || die "the observed gateway wrote no access log line to $ACCESS_LOG"
    sleep 0.05
done
(($(route_requests observed) > 0)) || die "the observed gateway's /metrics counts no bench request"
(($(route_requests plain) == 0)) || die "the plain gateway counts requests: request_metrics: false ignored?"

# ---------------------------------------------------------------- measuring

lua_done_hook >"$tmp/report.lua"
wrk_name_width=10
log "plain vs observed; wrk -t$wrk_threads -c$conns -d${duration}s x $rounds round(s)"
run_rounds run_wrk alternate "${TARGETS[@]}"

# ---------------------------------------------------------------- the table

summarize "${TARGETS[@]}"
ratio=$(rps_ratio observed plain)
verdict=$(awk -v r="$ratio" 'BEGIN { print (r >= 0.9 ? "met" : "NOT met") }')
log_lines=$(wc -l <"$ACCESS_LOG")
# awk reads to the end: exiting at the match would close the pipe under
# curl (exit 23, and pipefail fails the run).
dropped=$(curl -fsS --max-time 5 "${admin_url[observed]}/metrics" |
    awk '/^tollgate_access_log_dropped_total / { v = $NF } END { print v }')

report=$tmp/report.txt
{
    report_header "$rounds interleaved round(s) (order alternating), median shown; warm-up ${warmup}s"
    echo "# tollgate: threads 1, one route $BENCH_PATH -> echo-backend --fixed-body;" \
        "observed: ${OBSERVED[0]}, ${OBSERVED[1]}; plain: ${PLAIN[0]}, ${PLAIN[1]}"
    median_table "${TARGETS[@]}"
    echo "observed: $log_lines access log lines written, ${dropped:-?} dropped (writer behind)"
    echo "ratio observed/plain: $ratio (target >= 0.9: $verdict)"
} >"$report"

conclude "$report" "${TARGETS[@]}"
