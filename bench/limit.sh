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

duration=10 conns=32 wrk_threads=2 rounds=3 warmup=1 key=route min_ratio=""
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
    --duration | --conns | --threads | --rounds | --warmup | --key | --min-ratio | --out)
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
        --key) key=$val ;;
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
    [[ -n "${out}" ]] || out=bench/results/limit-quick.txt
fi
[[ -n "$out" ]] || out=bench/results/limit-latest.txt

require_positive "duration:$duration" "conns:$conns" "threads:$wrk_threads" "rounds:$rounds"
is_uint "$warmup" || die "--warmup must be a non-negative integer"
((conns >= wrk_threads)) || die "--conns ($conns) must be >= --threads ($wrk_threads)"
case "$key" in
route | client_ip | header:?*) ;;
*) die "--key must be route, client_ip or header:<name>" ;;
esac
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

make_tmp tollgate-limit-bench

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

start echo-backend "$ECHO_BACKEND" --name backend --listen "127.0.0.1:$port_backend" --fixed-body
wait_http echo-backend "$started_pid" "http://127.0.0.1:$port_backend$BENCH_PATH"

# gateway NAME PORT ADMIN LIMIT_LINE: writes the config and starts it.
gateway() {
    local name=$1 port=$2 admin=$3 limit_line=$4 conf=$tmp/$1.yaml
    {
        echo "# generated by bench/limit.sh"
        echo "listen: [\"127.0.0.1:$port\"]"
        echo "admin: { listen: \"127.0.0.1:$admin\" }"
        echo "threads: 1"
        echo "state_dir: \"$tmp/state-$name\""
        echo "routes:"
        echo "  - id: bench"
        echo "    paths: [\"/bench/*rest\"]"
        echo "    upstream: backend"
        [[ -n "$limit_line" ]] && echo "    rate_limit: $limit_line"
        echo "upstreams:"
        echo "  backend: { nodes: [\"http://127.0.0.1:$port_backend\"] }"
    } >"$conf"
    "$TOLLGATE" check -c "$conf" >/dev/null || die "$name: generated config rejected ($conf)"
    start "$name" "$TOLLGATE" run -c "$conf"
    wait_http "$name" "$started_pid" "${url[$name]}"
}
gateway unlimited "$port_unlimited" "$admin_unlimited" ""
gateway limited "$port_limited" "$admin_limited" "$LIMIT"

# The limited gateway really limits: its answers carry the limit headers.
if ! curl -fsS -D - -o /dev/null "${url[limited]}" | grep -qi '^x-ratelimit-limit: 1000000'; then
    die "the limited gateway's answer carries no X-RateLimit-Limit: 1000000"
fi

# ---------------------------------------------------------------- measuring

lua_done_hook >"$tmp/report.lua"

wrk_name_width=10 status_hint=" (429: the limit was reached?)"
bad_status=0
: >"$tmp/results.tsv"
log "unlimited vs limited (key $key); wrk -t$wrk_threads -c$conns -d${duration}s x $rounds round(s)"
if ((warmup > 0)); then
    log "warm-up (${warmup}s each)"
    for t in "${TARGETS[@]}"; do run_wrk "$t" "$warmup" warmup; done
fi
for ((r = 1; r <= rounds; r++)); do
    log "round $r/$rounds"
    # Alternate the order, so neither target always runs first.
    if ((r % 2)); then order=(unlimited limited); else order=(limited unlimited); fi
    for t in "${order[@]}"; do run_wrk "$t" "$duration" "round$r"; done
done

# ---------------------------------------------------------------- the table


summarize "${TARGETS[@]}"
ratio=$(awk -v a="${m_rps[limited]}" -v b="${m_rps[unlimited]}" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print 0 }')
verdict=$(awk -v r="$ratio" 'BEGIN { print (r >= 0.95 ? "met" : "NOT met") }')

report=$tmp/report.txt
{
    report_header "$rounds interleaved round(s) (order alternating), median shown; warm-up ${warmup}s"
    echo "# tollgate: threads 1, one route $BENCH_PATH -> echo-backend --fixed-body;" \
        "limited: rate_limit $LIMIT (never reached)"
    printf '%-10s %12s %10s %10s %8s\n' target req/s p50 p99 errors
    for t in "${TARGETS[@]}"; do
        printf '%-10s %12.0f %8.3fms %8.3fms %8s\n' "$t" "${m_rps[$t]}" \
            "$(awk -v v="${m_p50[$t]}" 'BEGIN { print v / 1000 }')" \
            "$(awk -v v="${m_p99[$t]}" 'BEGIN { print v / 1000 }')" "${errs[$t]}"
    done
    echo "ratio limited/unlimited: $ratio (target >= 0.95: $verdict)"
} >"$report"

publish_report "$report" "$out"

status=0
check_runs "${TARGETS[@]}"
if [[ -n "$min_ratio" ]] && awk -v r="$ratio" -v m="$min_ratio" 'BEGIN { exit !(r < m) }'; then
    log "FAIL: ratio $ratio below --min-ratio $min_ratio"
    status=1
fi
exit "$status"
