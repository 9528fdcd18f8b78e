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
declare -A route_of=([round_robin]=rr [least_request]=lr [consistent_hash]=ch)

duration=10 kill_duration=10 conns=32 wrk_threads=2 rounds=3 warmup=1 keys=1000
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
    --duration | --kill-duration | --conns | --threads | --rounds | --warmup | --keys | --out)
        (($# > 0)) || die "$arg: missing value"
        val=$1
        shift
        explicit[$arg]=1
        case "$arg" in
        --duration) duration=$val ;;
        --kill-duration) kill_duration=$val ;;
        --conns) conns=$val ;;
        --threads) wrk_threads=$val ;;
        --rounds) rounds=$val ;;
        --warmup) warmup=$val ;;
        --keys) keys=$val ;;
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
    [[ -n "${explicit[--kill-duration]:-}" ]] || kill_duration=4
    [[ -n "${out}" ]] || out=bench/results/lb-quick.txt
fi
[[ -n "$out" ]] || out=bench/results/lb-latest.txt

require_positive "duration:$duration" "kill-duration:$kill_duration" "conns:$conns" \
    "threads:$wrk_threads" "rounds:$rounds" "keys:$keys"
is_uint "$warmup" || die "--warmup must be a non-negative integer"
((conns >= wrk_threads)) || die "--conns ($conns) must be >= --threads ($wrk_threads)"
((kill_duration >= 2)) || die "--kill-duration must be at least 2"

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

make_tmp tollgate-lb-bench

# Ask the OS for free ports (bound together so they are distinct).
read -r port_b1 port_b2 port_b3 port_toll port_admin < <(free_ports 5)
backend_ports=("$port_b1" "$port_b2" "$port_b3")

# ---------------------------------------------------------------- the servers

backend_pids=()
for i in 0 1 2; do
    start "echo-backend-$((i + 1))" "$ECHO_BACKEND" --name "b$((i + 1))" \
        --listen "127.0.0.1:${backend_ports[$i]}" --fixed-body
    backend_pids+=("$started_pid")
    wait_http "echo-backend-$((i + 1))" "$started_pid" "http://127.0.0.1:${backend_ports[$i]}/"
done
nodes=$(printf '"http://127.0.0.1:%s", ' "${backend_ports[@]}")
nodes="[${nodes%, }]"

conf=$tmp/tollgate.yaml
cat >"$conf" <<EOF
# generated by bench/lb.sh
listen: ["127.0.0.1:$port_toll"]
admin: { listen: "127.0.0.1:$port_admin" }
threads: 1
state_dir: "$tmp/state"
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

# run_wrk NAME PATH SECONDS TAG [KILL_AT]: one wrk run; appends a row to
# $tmp/results.tsv unless TAG is "warmup". With KILL_AT, the third backend
# is SIGKILLed that many seconds into the run.
run_wrk() {
    local name=$1 path=$2 secs=$3 tag=$4 kill_at=${5:-} raw res rps p50 p99 requests status_errors socket_errors
    raw=$tmp/wrk-$name-$tag.txt
    wrk_start "$raw" "$tmp/lb.lua" "http://127.0.0.1:$port_toll$path" "$secs"
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
        "$tag" "$name" "$rps" "$(awk -v v="$p50" 'BEGIN{print v/1000}')" \
        "$(awk -v v="$p99" 'BEGIN{print v/1000}')" "$status_errors" "$socket_errors")"
}

: >"$tmp/results.tsv"
log "policies: ${POLICIES[*]}; wrk -t$wrk_threads -c$conns -d${duration}s x $rounds round(s); $keys keys"
if ((warmup > 0)); then
    log "warm-up (${warmup}s each)"
    for p in "${POLICIES[@]}"; do run_wrk "$p" "/${route_of[$p]}/echo" "$warmup" warmup; done
fi
for ((r = 1; r <= rounds; r++)); do
    log "round $r/$rounds"
    for p in "${POLICIES[@]}"; do run_wrk "$p" "/${route_of[$p]}/echo" "$duration" "round$r"; done
done

log "one instance killed under load (${kill_duration}s runs; kill at $((kill_duration / 2))s)"
run_wrk steady /kill/echo "$kill_duration" steady
run_wrk killed /kill/echo "$kill_duration" killed "$((kill_duration / 2))"

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
