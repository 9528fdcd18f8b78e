# shellcheck shell=bash disable=SC2034,SC2154  # globals shared with the sourcing script
# Shared helpers for the wrk benchmarks (proxy.sh, limit.sh, lb.sh,
# observability.sh). Sourced, never run; the caller sets `set -euo pipefail`
# and provides the globals named below (wrk_threads, conns, url, tmp, ...).

# Messages go to stderr, prefixed with the script's name for fatal ones.
die() {
    printf '%s: %s\n' "${0##*/}" "$*" >&2
    exit 2
}
log() { printf '%s\n' "$*" >&2; }
# The header comment from "# Usage:" to the last comment line, unprefixed.
usage() { sed -n '/^# Usage:/,/^[^#]/{/^#/{s/^# \{0,1\}//;p}}' "$0"; }

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
# require_positive FLAG:VALUE...: die unless every VALUE is an integer > 0.
require_positive() {
    local pair
    for pair in "$@"; do
        if ! is_uint "${pair#*:}" || ((${pair#*:} == 0)); then
            die "--${pair%%:*} must be a positive integer"
        fi
    done
}

# free_ports N: N free loopback ports on one line (bound together, so distinct).
free_ports() {
    python3 -c '
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks:
    s.close()
' "$1"
}

# ------------------------------------------------- processes, cleanup

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

# EXIT trap: stop wrk and every started process (TERM, KILL after 5 s), show
# their logs' tails on failure, remove $tmp unless KEEP_TMP=1.
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

# make_tmp NAME: create the temp dir $tmp (prefix NAME) and install the traps.
make_tmp() {
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

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

# ------------------------------------------------------------- wrk

# The wrk Lua done() hook: one BENCH_RESULT line with the run's totals.
lua_done_hook() {
    cat <<'EOF'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT requests=%.0f duration_us=%.0f p50_us=%.0f p99_us=%.0f status_errors=%.0f socket_errors=%.0f\n",
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    e.status, e.connect + e.read + e.write + e.timeout))
end
EOF
}

# wrk_start RAW SCRIPT URL SECONDS: start wrk (-t $wrk_threads -c $conns) in
# the background, output to RAW; sets wrk_pid. In the background + wait, so
# INT/TERM interrupt the run at once (bash runs traps only between foreground
# commands); cleanup kills wrk.
wrk_start() {
    wrk -t "$wrk_threads" -c "$conns" -d "${4}s" --latency -s "$2" "$3" >"$1" 2>&1 &
    wrk_pid=$!
}

# wrk_wait RAW NAME: wait for wrk; on failure show its output and return 1.
wrk_wait() {
    if ! wait "$wrk_pid"; then
        wrk_pid=""
        cat "$1" >&2
        log "wrk failed against $2"
        return 1
    fi
    wrk_pid=""
}

# wrk_result RAW NAME: prints "rps p50_us p99_us requests status_errors
# socket_errors" from RAW's BENCH_RESULT line; returns 1 if there is none.
wrk_result() {
    local raw=$1 name=$2 line kv
    local requests=0 duration_us=0 p50=0 p99=0 status_errors=0 socket_errors=0
    line=$(grep '^BENCH_RESULT ' "$raw") || {
        cat "$raw" >&2
        log "no BENCH_RESULT line in wrk output for $name"
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
    printf '%s %s %s %s %s %s\n' \
        "$(awk -v r="$requests" -v d="$duration_us" 'BEGIN { printf "%.1f", (d > 0 ? r / (d / 1e6) : 0) }')" \
        "$p50" "$p99" "$requests" "$status_errors" "$socket_errors"
}

# run_wrk TARGET SECONDS TAG: one wrk run against ${url[TARGET]} with
# $tmp/report.lua; appends "target tag rps p50 p99 requests errors" to
# $tmp/results.tsv unless TAG is "warmup". Uses $wrk_name_width (log column)
# and $status_hint (appended to the non-2xx/3xx message); sets bad_status=1
# on non-2xx/3xx answers.
run_wrk() {
    local target=$1 secs=$2 tag=$3 raw res rps p50 p99 requests status_errors socket_errors
    raw=$tmp/wrk-$target-$tag.txt
    wrk_start "$raw" "$tmp/report.lua" "${url[$target]}" "$secs"
    wrk_wait "$raw" "$target" || return 1
    [[ "$tag" == warmup ]] && return 0
    res=$(wrk_result "$raw" "$target") || return 1
    read -r rps p50 p99 requests status_errors socket_errors <<<"$res"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$tag" "$rps" "$p50" "$p99" \
        "$requests" "$((status_errors + socket_errors))" >>"$tmp/results.tsv"
    log "$(printf '  %-8s %-*s %10.0f req/s   p50 %7.3f ms   p99 %7.3f ms   errors %s' \
        "$tag" "$wrk_name_width" "$target" "$rps" "$(awk -v v="$p50" 'BEGIN{print v/1000}')" \
        "$(awk -v v="$p99" 'BEGIN{print v/1000}')" "$((status_errors + socket_errors))")"
    if ((status_errors > 0)); then
        log "  $target answered $status_errors non-2xx/3xx responses$status_hint"
        bad_status=1
    fi
}

# ------------------------------------------------------------ results

# median COLUMN NAME: median of a results.tsv column over the rounds.
median() {
    awk -F'\t' -v c="$1" -v t="$2" '$1 == t { print $c }' "$tmp/results.tsv" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
sum_col() { awk -F'\t' -v c="$1" -v t="$2" '$1 == t { s += $c } END { print s + 0 }' "$tmp/results.tsv"; }

# summarize NAME...: m_rps, m_p50, m_p99 (medians), reqs, errs (sums) per NAME.
summarize() {
    local t
    declare -gA m_rps=() m_p50=() m_p99=() errs=() reqs=()
    for t in "$@"; do
        m_rps[$t]=$(median 3 "$t")
        m_p50[$t]=$(median 4 "$t")
        m_p99[$t]=$(median 5 "$t")
        reqs[$t]=$(sum_col 6 "$t")
        errs[$t]=$(sum_col 7 "$t")
    done
}

# report_header WRK_DETAILS: the report's first three lines (script, date,
# revision; host; wrk version and flags, then WRK_DETAILS).
report_header() {
    local cpu rev
    cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
    rev=$(git rev-parse --short HEAD 2>/dev/null || echo "no commit")
    git diff --quiet HEAD 2>/dev/null || rev+="+dirty"
    echo "# bench/${0##*/} — $(date -u '+%Y-%m-%d %H:%M:%S UTC'), rev $rev"
    echo "# host: $(nproc) cpu(s), ${cpu:-unknown cpu}, linux $(uname -r)"
    echo "# wrk $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }'): -t$wrk_threads -c$conns -d${duration}s --latency;" "$1"
}

# publish_report REPORT OUT: print REPORT to stdout and copy it to OUT.
publish_report() {
    echo
    cat "$1"
    mkdir -p "$(dirname "$2")"
    cp "$1" "$2"
    log "written to $2"
}

# check_runs NAME...: status=1 (with a FAIL line) if $bad_status is set, or a
# NAME completed no requests or had errors in more than 1% of them.
check_runs() {
    local t n_req n_err
    if ((bad_status)); then
        log "FAIL: some target answered non-2xx/3xx responses"
        status=1
    fi
    for t in "$@"; do
        n_req=${reqs[$t]} n_err=${errs[$t]}
        if ((n_req == 0)); then
            log "FAIL: $t completed no requests"
            status=1
        elif ((n_err * 100 > n_req)); then
            log "FAIL: $t: ${errs[$t]} errors in ${reqs[$t]} requests (> 1%)"
            status=1
        fi
    done
}
