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

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

TARGETS=(plain observed)

duration=10 conns=32 wrk_threads=2 rounds=3 warmup=1 min_ratio=""
quick=0 build=1 out=""
declare -A explicit=()

die() {
    printf 'observability.sh: %s\n' "$*" >&2
    exit 2
}
log() { printf '%s\n' "$*" >&2; }
usage() { sed -n '/^# Usage:/,/^# temp dir/{s/^# \{0,1\}//;p}' "$0"; }

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

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
for pair in "duration:$duration" "conns:$conns" "threads:$wrk_threads" "rounds:$rounds"; do
    if ! is_uint "${pair#*:}" || ((${pair#*:} == 0)); then
        die "--${pair%%:*} must be a positive integer"
    fi
done
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

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-observability-bench.XXXXXX")
pids=()
wrk_pid=""
declare -A pid_name=() pid_log=()

# True while PID runs (a zombie child, exited but not yet reaped, is not alive).
alive() {
    local stat
    [[ -r "/proc/$1/stat" ]] || return 1
    read -r stat <"/proc/$1/stat" 2>/dev/null || return 1
    stat=${stat##*) }
    [[ "${stat%% *}" != Z ]]
}

# shellcheck disable=SC2317  # invoked from the EXIT trap
cleanup() {
    local rc=$? pid deadline
    trap - EXIT INT TERM
    if [[ -n "$wrk_pid" ]]; then
        kill -TERM "$wrk_pid" 2>/dev/null || true
        wait "$wrk_pid" 2>/dev/null || true
    fi
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$((SECONDS + 5))
    for pid in "${pids[@]}"; do
        while alive "$pid" && ((SECONDS < deadline)); do sleep 0.05; done
        if alive "$pid"; then
            log "${pid_name[$pid]} (pid $pid) ignored SIGTERM; killing"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    if ((rc != 0 && rc != 130 && rc != 143)); then
        for pid in "${pids[@]}"; do
            log "---- last lines of ${pid_name[$pid]} log (${pid_log[$pid]})"
            tail -n 15 "${pid_log[$pid]}" >&2 2>/dev/null || true
        done
    fi
    if [[ "${KEEP_TMP:-0}" == 1 ]]; then
        log "kept temp dir: $tmp"
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# start NAME CMD...: run CMD in the background, output to $tmp/NAME.log.
start() {
    local name=$1
    shift
    "$@" >"$tmp/$name.log" 2>&1 &
    local pid=$!
    pids+=("$pid")
    pid_name[$pid]=$name
    pid_log[$pid]=$tmp/$name.log
    started_pid=$pid
}

# wait_http NAME PID URL: poll until URL answers 2xx; fail if PID dies or 30 s pass.
wait_http() {
    local name=$1 pid=$2 url=$3 deadline=$((SECONDS + 30))
    until curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null; do
        if ! alive "$pid"; then
            log "$name exited during start-up"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "$name did not answer $url within 30 s"
            curl -sS -o /dev/null -w "last attempt: HTTP %{http_code}\n" --max-time 2 "$url" >&2 || true
            return 1
        fi
        sleep 0.05
    done
}

# Ask the OS for free ports (bound together so they are distinct).
read -r port_backend port_plain admin_plain port_observed admin_observed < <(
    python3 -c '
import socket
socks = [socket.socket() for _ in range(5)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
'
)

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

cat >"$tmp/report.lua" <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%.0f duration_us=%.0f p50_us=%.0f p99_us=%.0f status_errors=%.0f socket_errors=%.0f\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
EOF

# run_wrk TARGET SECONDS TAG: one wrk run; appends a row to $tmp/results.tsv
# unless TAG is "warmup".
run_wrk() {
    local target=$1 secs=$2 tag=$3 raw line kv
    local requests=0 duration_us=0 p50=0 p99=0 status_errors=0 socket_errors=0
    raw=$tmp/wrk-$target-$tag.txt
    # In the background + wait, so INT/TERM interrupt the run at once
    # (bash runs traps only between foreground commands); cleanup kills wrk.
    wrk -t "$wrk_threads" -c "$conns" -d "${secs}s" --latency \
        -s "$tmp/report.lua" "${url[$target]}" >"$raw" 2>&1 &
    wrk_pid=$!
    if ! wait "$wrk_pid"; then
        wrk_pid=""
        cat "$raw" >&2
        log "wrk failed against $target"
        return 1
    fi
    wrk_pid=""
    [[ "$tag" == warmup ]] && return 0
    line=$(grep '^BENCH_RESULT ' "$raw") || {
        cat "$raw" >&2
        log "no BENCH_RESULT line in wrk output for $target"
        return 1
    }
    for kv in ${line#BENCH_RESULT }; do
        case $kv in
        requests=*) requests=${kv#*=} ;;
        duration_us=*) duration_us=${kv#*=} ;;
        p50_us=*) p50=${kv#*=} ;;
        p99_us=*) p99=${kv#*=} ;;
        status_errors=*) status_errors=${kv#*=} ;;
        socket_errors=*) socket_errors=${kv#*=} ;;
        esac
    done
    local rps
    rps=$(awk -v r="$requests" -v d="$duration_us" 'BEGIN { printf "%.1f", (d > 0 ? r / (d / 1e6) : 0) }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$tag" "$rps" "$p50" "$p99" \
        "$requests" "$((status_errors + socket_errors))" >>"$tmp/results.tsv"
    log "$(printf '  %-8s %-10s %10.0f req/s   p50 %7.3f ms   p99 %7.3f ms   errors %s' \
        "$tag" "$target" "$rps" "$(awk -v v="$p50" 'BEGIN{print v/1000}')" \
        "$(awk -v v="$p99" 'BEGIN{print v/1000}')" "$((status_errors + socket_errors))")"
    if ((status_errors > 0)); then
        log "  $target answered $status_errors non-2xx/3xx responses"
        bad_status=1
    fi
}

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

# median COLUMN TARGET: median of a results.tsv column over the rounds.
median() {
    awk -F'\t' -v c="$1" -v t="$2" '$1 == t { print $c }' "$tmp/results.tsv" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
sum_col() { awk -F'\t' -v c="$1" -v t="$2" '$1 == t { s += $c } END { print s + 0 }' "$tmp/results.tsv"; }

declare -A m_rps=() m_p50=() m_p99=() errs=() reqs=()
for t in "${TARGETS[@]}"; do
    m_rps[$t]=$(median 3 "$t")
    m_p50[$t]=$(median 4 "$t")
    m_p99[$t]=$(median 5 "$t")
    reqs[$t]=$(sum_col 6 "$t")
    errs[$t]=$(sum_col 7 "$t")
done
ratio=$(awk -v a="${m_rps[observed]}" -v b="${m_rps[plain]}" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print 0 }')
verdict=$(awk -v r="$ratio" 'BEGIN { print (r >= 0.9 ? "met" : "NOT met") }')
log_lines=$(wc -l <"$ACCESS_LOG")
dropped=$(curl -fsS --max-time 5 "${admin_url[observed]}/metrics" |
    awk '/^tollgate_access_log_dropped_total / { print $NF; exit }')

cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
rev=$(git rev-parse --short HEAD 2>/dev/null || echo "no commit")
git diff --quiet HEAD 2>/dev/null || rev+="+dirty"
report=$tmp/report.txt
{
    echo "# bench/observability.sh — $(date -u '+%Y-%m-%d %H:%M:%S UTC'), rev $rev"
    echo "# host: $(nproc) cpu(s), ${cpu:-unknown cpu}, linux $(uname -r)"
    echo "# wrk $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }'): -t$wrk_threads -c$conns -d${duration}s --latency;" \
        "$rounds interleaved round(s) (order alternating), median shown; warm-up ${warmup}s"
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

echo
cat "$report"
mkdir -p "$(dirname "$out")"
cp "$report" "$out"
log "written to $out"

status=0
if ((bad_status)); then
    log "FAIL: some target answered non-2xx/3xx responses"
    status=1
fi
for t in "${TARGETS[@]}"; do
    n_req=${reqs[$t]} n_err=${errs[$t]}
    if ((n_req == 0)); then
        log "FAIL: $t completed no requests"
        status=1
    elif ((n_err * 100 > n_req)); then
        log "FAIL: $t: ${errs[$t]} errors in ${reqs[$t]} requests (> 1%)"
        status=1
    fi
done
if [[ -n "$min_ratio" ]] && awk -v r="$ratio" -v m="$min_ratio" 'BEGIN { exit !(r < m) }'; then
    log "FAIL: ratio $ratio below --min-ratio $min_ratio"
    status=1
fi
exit "$status"
