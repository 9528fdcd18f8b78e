#!/usr/bin/env bash
# Load-balancing benchmark: wrk through tollgate to 3 echo backends with each
# lb policy, and what clients see when one instance dies under load.
#
#   (1) req/s, p50, p99 through one tollgate with three routes over the same
#       3 backends, one per policy: round_robin, least_request, and
#       consistent_hash on a header (x-user, cycling over --keys values; the
#       same wrk script sends the header to every policy). One interleaved
#       run: rounds of rr -> lr -> ch, median per policy, ratios vs
#       round_robin (target >= 0.95).
#   (2) a round-robin route with retry {attempts: 2, on: [connect_failure,
#       reset]}: one --kill-duration run without incident, then one where
#       the third backend is SIGKILLed halfway through; client errors
#       (non-2xx and socket) and p99 of both.
#
# Every server process is the same as in bench/proxy.sh: tollgate with
# threads 1, echo-backend --fixed-body.
#
# Usage: bench/lb.sh [options]
#   --duration S         seconds per wrk run of (1) (default 10)
#   --kill-duration S    seconds of each run of (2) (default 10)
#   --conns C            wrk connections (default 32)
#   --threads T          wrk threads (default 2)
#   --rounds R           interleaved rounds of (1); the median is reported (default 3)
#   --warmup S           unrecorded warm-up seconds per policy (default 1)
#   --keys N             distinct x-user values (default 1000)
#   --quick              smoke mode: 1 round of 2 s, kill runs of 4 s;
#                        writes bench/results/lb-quick.txt instead of -latest
#   --out FILE           where to write the table
#                        (default bench/results/lb-latest.txt)
#   --no-build           do not run cargo build (use the existing binaries)
#   -h, --help
#
# Environment: ECHO_BACKEND_BIN, TOLLGATE_BIN override the binaries (default
# target/release/*, or $CARGO_TARGET_DIR/release/*); KEEP_TMP=1 keeps the
# temp dir (config, logs, raw wrk output).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

POLICIES=(round_robin least_request consistent_hash)

kill_duration=10 keys=1000
wrk_options
value_opts+=([--kill-duration]=kill_duration [--keys]=keys)
parse_args "$@"
quick_defaults --kill-duration=4
check_wrk_options
require_positive "kill-duration:$kill_duration" "keys:$keys"
((kill_duration >= 2)) || die "--kill-duration must be at least 2"

# ------------------------------------------------------- tools, build, temp dir

gateway_bench_setup lb

# Ask the OS for free ports (bound together so they are distinct).
read -r port_b1 port_b2 port_b3 port_toll port_admin < <(free_ports 5)
backend_ports=("$port_b1" "$port_b2" "$port_b3")
# Each policy's route, and the route of the runs with a kill.
declare -A url=(
    [round_robin]="http://127.0.0.1:$port_toll/rr/echo"
    [least_request]="http://127.0.0.1:$port_toll/lr/echo"
    [consistent_hash]="http://127.0.0.1:$port_toll/ch/echo"
    [steady]="http://127.0.0.1:$port_toll/kill/echo"
    [killed]="http://127.0.0.1:$port_toll/kill/echo"
)

# ---------------------------------------------------------------- the servers

backend_pids=()
for i in 0 1 2; do
    start_echo "echo-backend-$((i + 1))" "b$((i + 1))" "${backend_ports[$i]}" /
    backend_pids+=("$started_pid")
done
nodes=$(printf '"http://127.0.0.1:%s", ' "${backend_ports[@]}")
nodes="[${nodes%, }]"

conf=$tmp/tollgate.yaml
{
    gateway_header "$port_toll" "$port_admin" "$tmp/state"
    cat <<EOF
routes:
  - { id: rr, paths: ["/rr/*rest"], upstream: rr }
  - { id: lr, paths: ["/lr/*rest"], upstream: lr }
  - { id: ch, paths: ["/ch/*rest"], upstream: ch }
  - { id: kill, paths: ["/kill/*rest"], upstream: kill }
upstreams:
  rr: { nodes: $nodes, lb: { type: round_robin } }
  lr: { nodes: $nodes, lb: { type: least_request } }
  ch: { nodes: $nodes, lb: { type: consistent_hash, key: "header:x-user" } }
  kill: { nodes: $nodes, lb: { type: round_robin }, retry: { attempts: 2, on: [connect_failure, reset] } }
EOF
} >"$conf"
start tollgate "$TOLLGATE" run -c "$conf"
for r in rr lr ch kill; do
    wait_http tollgate "$started_pid" "http://127.0.0.1:$port_toll/$r/echo"
done

# ---------------------------------------------------------------- measuring

# Every request carries x-user, cycling over $keys values prepared per wrk
# thread (so the script costs the same for every policy).
cat >"$tmp/lb.lua" <<EOF
local reqs, n, i = {}, $keys, 0
init = function(args)
  for k = 1, n do
    reqs[k] = wrk.format("GET", nil, { ["x-user"] = "user-" .. k })
  end
end
request = function()
  i = i % n + 1
  return reqs[i]
end
EOF
lua_done_hook >>"$tmp/lb.lua"

# run_lb NAME SECONDS TAG [KILL_AT]: one wrk run against ${url[NAME]};
# appends "name tag rps p50 p99 requests status_errors socket_errors" to
# $tmp/results.tsv unless TAG is "warmup". With KILL_AT, the third backend
# is SIGKILLed that many seconds into the run.
run_lb() {
    local name=$1 secs=$2 tag=$3 kill_at=${4:-} raw res rps p50 p99 requests status_errors socket_errors
    raw=$tmp/wrk-$name-$tag.txt
    wrk_start "$raw" "$tmp/lb.lua" "${url[$name]}" "$secs"
    if [[ -n "$kill_at" ]]; then
        sleep "$kill_at"
        log "  killing echo-backend-3 (pid ${backend_pids[2]}) with SIGKILL"
        kill -KILL "${backend_pids[2]}"
        wait "${backend_pids[2]}" 2>/dev/null || true
    fi
    wrk_wait "$raw" "$name" || return 1
    [[ "$tag" == warmup ]] && return 0
    res=$(wrk_result "$raw" "$name") || return 1
    read -r rps p50 p99 requests status_errors socket_errors <<<"$res"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$tag" "$rps" "$p50" "$p99" \
        "$requests" "$status_errors" "$socket_errors" >>"$tmp/results.tsv"
    log "$(printf '  %-8s %-16s %10.0f req/s   p50 %7.3f ms   p99 %7.3f ms   errors %s+%s' \
        "$tag" "$name" "$rps" "$(us_to_ms "$p50")" "$(us_to_ms "$p99")" "$status_errors" "$socket_errors")"
}

log "policies: ${POLICIES[*]}; wrk -t$wrk_threads -c$conns -d${duration}s x $rounds round(s); $keys keys"
run_rounds run_lb fixed "${POLICIES[@]}"

log "one instance killed under load (${kill_duration}s runs; kill at $((kill_duration / 2))s)"
run_lb steady "$kill_duration" steady
run_lb killed "$kill_duration" killed "$((kill_duration / 2))"

# ---------------------------------------------------------------- the table

ms() { awk -v v="$1" 'BEGIN { printf "%.3fms", v / 1000 }'; }

summarize "${POLICIES[@]}" steady killed
for n in "${POLICIES[@]}" steady killed; do # errors: status + socket
    errs[$n]=$(($(sum_col 7 "$n") + $(sum_col 8 "$n")))
done
below=()
ratio_of() { awk -v a="${m_rps[$1]}" -v b="${m_rps[round_robin]}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print 0 }'; }
for p in "${POLICIES[@]}"; do
    if awk -v x="$(ratio_of "$p")" 'BEGIN { exit !(x < 0.95) }'; then below+=("$p"); fi
done

report=$tmp/report.txt
{
    report_header "$rounds interleaved round(s), median shown; warm-up ${warmup}s"
    echo "# tollgate threads 1 -> 3 echo-backends (--fixed-body); every request has x-user (one of $keys)"
    printf '%-16s %12s %10s %10s %15s %8s\n' policy req/s p50 p99 vs-round_robin errors
    for p in "${POLICIES[@]}"; do
        printf '%-16s %12.0f %10s %10s %14sx %8s\n' "$p" "${m_rps[$p]}" "$(ms "${m_p50[$p]}")" \
            "$(ms "${m_p99[$p]}")" "$(ratio_of "$p")" "${errs[$p]}"
    done
    echo "# target: every policy >= 0.95x round_robin; below: ${below[*]:-none}"
    echo "#"
    echo "# one of 3 instances SIGKILLed at $((kill_duration / 2))s of a ${kill_duration}s run; round_robin," \
        "retry {attempts: 2, on: [connect_failure, reset]}, no health check"
    printf '%-16s %12s %10s %10s %14s %14s\n' run req/s p50 p99 status-errors socket-errors
    for n in steady killed; do
        printf '%-16s %12.0f %10s %10s %14s %14s\n' "$n" "${m_rps[$n]}" "$(ms "${m_p50[$n]}")" \
            "$(ms "${m_p99[$n]}")" "$(sum_col 7 "$n")" "$(sum_col 8 "$n")"
    done
    echo "# errors: all rounds; status errors are non-2xx answers, socket errors connect/read/write/timeout"
} >"$report"

publish_report "$report" "$out"

status=0
for n in "${POLICIES[@]}" steady killed; do
    if ((reqs[$n] == 0)); then
        log "FAIL: $n completed no requests"
        status=1
    fi
done
for p in "${POLICIES[@]}" steady; do
    if ((errs[$p] * 100 > reqs[$p])); then
        log "FAIL: $p: ${errs[$p]} errors in ${reqs[$p]} requests (> 1%)"
        status=1
    fi
done
if ((errs[killed] > 0)); then
    log "note: ${errs[killed]} client errors while an instance was killed"
fi
exit "$status"
