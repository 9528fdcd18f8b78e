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

duration=10 conns=32 wrk_threads=2 rounds=3 warmup=1 min_ratio=""
quick=0 build=1 out=""
declare -A explicit=()

while (($# > 0)); do
    arg=$1
    shift
    # --flag=value -> --flag value
    if [[ "$arg" == --*=* ]]; then
        set -- "${arg#*=}" "$@"
        arg=${arg%%=*}
    fi
    case "$arg" in
    --duration | --conns | --threads | --rounds | --warmup | --min-ratio | --out)
        (($# > 0)) || die "$arg: missing value"
        val=$1
        shift
        explicit[$arg]=1
        case "$arg" in
        --duration) duration=$val ;;
        --conns) conns=$val ;;
        --threads) wrk_threads=$val ;;
        --rounds) rounds=$val ;;
        --warmup) warmup=$val ;;
        --min-ratio) min_ratio=$val ;;
        --out) out=$val ;;
        esac
        ;;
    --quick) quick=1 ;;
    --no-build) build=0 ;;
    -h | --help)
        usage
        exit 0
        ;;
    *) die "unknown argument: $arg (try --help)" ;;
    esac
done

if ((quick)); then
    [[ -n "${explicit[--rounds]:-}" ]] || rounds=1
    [[ -n "${explicit[--duration]:-}" ]] || duration=2
    [[ -n "${out}" ]] || out=bench/results/observability-quick.txt
fi
[[ -n "$out" ]] || out=bench/results/observability-latest.txt

require_positive "duration:$duration" "conns:$conns" "threads:$wrk_threads" "rounds:$rounds"
is_uint "$warmup" || die "--warmup must be a non-negative integer"
((conns >= wrk_threads)) || die "--conns ($conns) must be >= --threads ($wrk_threads)"
if [[ -n "$min_ratio" && ! "$min_ratio" =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
    die "--min-ratio must be a number"
fi

# ---------------------------------------------------------------- tools, build

for tool in wrk curl python3; do
    if ! command -v "$tool" >/dev/null 2>&1; then
        log "$tool missing; running scripts/deps.sh"
        scripts/deps.sh
        break
    fi
done

if ((build)); then
    log "building release binaries (cargo build --release -p tollgate -p testkit --bins)"
    cargo build --release -p tollgate -p testkit --bins
fi

bin_dir=${CARGO_TARGET_DIR:-$ROOT/target}/release
ECHO_BACKEND=${ECHO_BACKEND_BIN:-$bin_dir/echo-backend}
TOLLGATE=${TOLLGATE_BIN:-$bin_dir/tollgate}
[[ -x "$ECHO_BACKEND" ]] || die "echo-backend not built: $ECHO_BACKEND"
[[ -x "$TOLLGATE" ]] || die "tollgate not built: $TOLLGATE"

# ----------------------------------------------------------- processes, cleanup

make_tmp tollgate-observability-bench

# Ask the OS for free ports (bound together so they are distinct).
read -r port_backend port_plain admin_plain port_observed admin_observed < <(free_ports 5)

BENCH_PATH=/bench/echo
ACCESS_LOG=$tmp/access.log
OBSERVED="request_metrics: true, access_log: { enabled: true, path: \"$ACCESS_LOG\", sample: 1.0 }"
PLAIN="request_metrics: false, access_log: { enabled: false }"
declare -A url=(
    [plain]="http://127.0.0.1:$port_plain$BENCH_PATH"
    [observed]="http://127.0.0.1:$port_observed$BENCH_PATH"
)
declare -A admin_url=(
    [plain]="http://127.0.0.1:$admin_plain"
    [observed]="http://127.0.0.1:$admin_observed"
)

# ---------------------------------------------------------------- the servers

start echo-backend "$ECHO_BACKEND" --name backend --listen "127.0.0.1:$port_backend" --fixed-body
wait_http echo-backend "$started_pid" "http://127.0.0.1:$port_backend$BENCH_PATH"

# gateway NAME PORT ADMIN: writes the config and starts it.
gateway() {
    local name=$1 port=$2 admin=$3 conf=$tmp/$1.yaml
    {
        echo "# generated by bench/observability.sh"
        echo "listen: [\"127.0.0.1:$port\"]"
        echo "admin: { listen: \"127.0.0.1:$admin\" }"
        echo "threads: 1"
        if [[ $name == observed ]]; then
            echo "request_metrics: true"
            echo "access_log: { enabled: true, path: \"$ACCESS_LOG\", sample: 1.0 }"
        else
            echo "request_metrics: false"
            echo "access_log: { enabled: false }"
        fi
        echo "state_dir: \"$tmp/state-$name\""
        echo "routes:"
        echo "  - id: bench"
        echo "    paths: [\"/bench/*rest\"]"
        echo "    upstream: backend"
        echo "upstreams:"
        echo "  backend: { nodes: [\"http://127.0.0.1:$port_backend\"] }"
    } >"$conf"
    "$TOLLGATE" check -c "$conf" >/dev/null || die "$name: generated config rejected ($conf)"
    start "$name" "$TOLLGATE" run -c "$conf"
    wait_http "$name" "$started_pid" "${url[$name]}"
}
gateway plain "$port_plain" "$admin_plain"
gateway observed "$port_observed" "$admin_observed"

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

wrk_name_width=10 status_hint=""
bad_status=0
: >"$tmp/results.tsv"
log "plain vs observed; wrk -t$wrk_threads -c$conns -d${duration}s x $rounds round(s)"
if ((warmup > 0)); then
    log "warm-up (${warmup}s each)"
    for t in "${TARGETS[@]}"; do run_wrk "$t" "$warmup" warmup; done
fi
for ((r = 1; r <= rounds; r++)); do
    log "round $r/$rounds"
    # Alternate the order, so neither target always runs first.
    if ((r % 2)); then order=(plain observed); else order=(observed plain); fi
    for t in "${order[@]}"; do run_wrk "$t" "$duration" "round$r"; done
done

# ---------------------------------------------------------------- the table


summarize "${TARGETS[@]}"
ratio=$(awk -v a="${m_rps[observed]}" -v b="${m_rps[plain]}" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print 0 }')
verdict=$(awk -v r="$ratio" 'BEGIN { print (r >= 0.9 ? "met" : "NOT met") }')
log_lines=$(wc -l <"$ACCESS_LOG")
dropped=$(curl -fsS --max-time 5 "${admin_url[observed]}/metrics" |
    awk '/^tollgate_access_log_dropped_total / { print $NF; exit }')

report=$tmp/report.txt
{
    report_header "$rounds interleaved round(s) (order alternating), median shown; warm-up ${warmup}s"
    echo "# tollgate: threads 1, one route $BENCH_PATH -> echo-backend --fixed-body;" \
        "observed: $OBSERVED; plain: $PLAIN"
    printf '%-10s %12s %10s %10s %8s\n' target req/s p50 p99 errors
    for t in "${TARGETS[@]}"; do
        printf '%-10s %12.0f %8.3fms %8.3fms %8s\n' "$t" "${m_rps[$t]}" \
            "$(awk -v v="${m_p50[$t]}" 'BEGIN { print v / 1000 }')" \
            "$(awk -v v="${m_p99[$t]}" 'BEGIN { print v / 1000 }')" "${errs[$t]}"
    done
    echo "observed: $log_lines access log lines written, ${dropped:-?} dropped (writer behind)"
    echo "ratio observed/plain: $ratio (target >= 0.9: $verdict)"
} >"$report"

publish_report "$report" "$out"

status=0
check_runs "${TARGETS[@]}"
if [[ -n "$min_ratio" ]] && awk -v r="$ratio" -v m="$min_ratio" 'BEGIN { exit !(r < m) }'; then
    log "FAIL: ratio $ratio below --min-ratio $min_ratio"
    status=1
fi
exit "$status"
