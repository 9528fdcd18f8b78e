#!/usr/bin/env bash
# Proxy overhead benchmark: wrk against the same echo backend
#   (a) directly, (b) through nginx, (c) through a bare Pingora passthrough,
#   (d) through tollgate (real routing: one bench route + decoy routes),
# in one interleaved run: rounds of a -> b -> c -> d, repeated, median per
# target. Prints a table (req/s, p50, p99, req/s ratios vs passthrough and vs
# nginx) and writes it to bench/results/.
#
# Every server is single-threaded (nginx: 1 worker; passthrough and tollgate:
# threads 1) so the numbers compare per-core cost, not scheduling luck.
#
# Usage: bench/proxy.sh [options]
#   --duration S         seconds per wrk run (default 10)
#   --conns C            wrk connections (default 32)
#   --threads T          wrk threads (default 2)
#   --rounds R           interleaved rounds; the median is reported (default 3)
#   --warmup S           unrecorded warm-up seconds per target (default 1)
#   --work-stealing B    true|false, passed to passthrough and tollgate
#                        (default: each binary's own default)
#   --decoys N           decoy routes in tollgate's table (default 300)
#   --targets LIST       comma-separated subset of direct,nginx,passthrough,tollgate
#   --quick              smoke mode: 1 round of 2 s (used by scripts/test.sh);
#                        writes bench/results/proxy-quick.txt instead of -latest
#   --out FILE           where to write the table
#                        (default bench/results/proxy-latest.txt)
#   --no-build           do not run cargo build (use the existing binaries)
#   -h, --help
#
# Environment: ECHO_BACKEND_BIN, PASSTHROUGH_BIN, TOLLGATE_BIN override the
# binaries (default target/release/*, or $CARGO_TARGET_DIR/release/*);
# KEEP_TMP=1 keeps the temp dir (configs, logs, raw wrk output).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

ALL_TARGETS=(direct nginx passthrough tollgate)

duration=10 conns=32 wrk_threads=2 rounds=3 warmup=1 decoys=300
work_stealing="" quick=0 build=1 out="" targets_arg=""
declare -A explicit=()

die() {
    printf 'proxy.sh: %s\n' "$*" >&2
    exit 2
}
log() { printf '%s\n' "$*" >&2; }
usage() { sed -n '/^# Usage:/,/^# KEEP_TMP/{s/^# \{0,1\}//;p}' "$0"; }

while (($# > 0)); do
    arg=$1
    shift
    # --flag=value -> --flag value
    if [[ "$arg" == --*=* ]]; then
        set -- "${arg#*=}" "$@"
        arg=${arg%%=*}
    fi
    case "$arg" in
    --duration | --conns | --threads | --rounds | --warmup | --decoys | \
        --work-stealing | --targets | --out)
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
        --decoys) decoys=$val ;;
        --work-stealing) work_stealing=$val ;;
        --targets) targets_arg=$val ;;
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
    [[ -n "${out}" ]] || out=bench/results/proxy-quick.txt
fi
[[ -n "$out" ]] || out=bench/results/proxy-latest.txt

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
for pair in "duration:$duration" "conns:$conns" "threads:$wrk_threads" "rounds:$rounds"; do
    if ! is_uint "${pair#*:}" || ((${pair#*:} == 0)); then
        die "--${pair%%:*} must be a positive integer"
    fi
done
is_uint "$warmup" || die "--warmup must be a non-negative integer"
is_uint "$decoys" || die "--decoys must be a non-negative integer"
((conns >= wrk_threads)) || die "--conns ($conns) must be >= --threads ($wrk_threads)"
case "$work_stealing" in
"" | true | false) ;;
*) die "--work-stealing must be true or false" ;;
esac

targets=()
if [[ -n "$targets_arg" ]]; then
    IFS=, read -r -a wanted <<<"$targets_arg"
    for t in "${ALL_TARGETS[@]}"; do # keep the canonical a->b->c->d order
        for w in "${wanted[@]}"; do [[ "$w" == "$t" ]] && targets+=("$t"); done
    done
    for w in "${wanted[@]}"; do
        [[ " ${ALL_TARGETS[*]} " == *" $w "* ]] || die "unknown target: $w"
    done
else
    targets=("${ALL_TARGETS[@]}")
fi
((${#targets[@]} > 0)) || die "no targets selected"

want() { [[ " ${targets[*]} " == *" $1 "* ]]; }

# ---------------------------------------------------------------- tools, build

need=(wrk curl python3)
want nginx && need+=(nginx)
for tool in "${need[@]}"; do
    if ! command -v "$tool" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/$tool" ]]; then
        log "$tool missing; running scripts/deps.sh"
        scripts/deps.sh
        break
    fi
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

if ((build)); then
    log "building release binaries (cargo build --release -p tollgate -p passthrough -p testkit --bins)"
    cargo build --release -p tollgate -p passthrough -p testkit --bins
fi

bin_dir=${CARGO_TARGET_DIR:-$ROOT/target}/release
ECHO_BACKEND=${ECHO_BACKEND_BIN:-$bin_dir/echo-backend}
PASSTHROUGH=${PASSTHROUGH_BIN:-$bin_dir/passthrough}
TOLLGATE=${TOLLGATE_BIN:-$bin_dir/tollgate}

[[ -x "$ECHO_BACKEND" ]] || die "echo-backend not built: $ECHO_BACKEND"
if want passthrough && [[ ! -x "$PASSTHROUGH" ]]; then
    die "passthrough not built: $PASSTHROUGH"
fi
if want tollgate && [[ ! -x "$TOLLGATE" ]]; then
    log "tollgate: not built ($TOLLGATE); skipping target (d)"
    kept=()
    for t in "${targets[@]}"; do [[ "$t" == tollgate ]] || kept+=("$t"); done
    targets=("${kept[@]}")
    ((${#targets[@]} > 0)) || die "no targets left to measure"
fi

# ----------------------------------------------------------- processes, cleanup

tmp=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-bench.XXXXXX")
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
read -r port_backend port_nginx port_pass port_toll port_admin < <(
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
declare -A url=(
    [direct]="http://127.0.0.1:$port_backend$BENCH_PATH"
    [nginx]="http://127.0.0.1:$port_nginx$BENCH_PATH"
    [passthrough]="http://127.0.0.1:$port_pass$BENCH_PATH"
    [tollgate]="http://127.0.0.1:$port_toll$BENCH_PATH"
)

# ---------------------------------------------------------------- the servers

start echo-backend "$ECHO_BACKEND" --name backend --listen "127.0.0.1:$port_backend" --fixed-body
wait_http echo-backend "$started_pid" "${url[direct]}"

if want nginx; then
    ngx=$tmp/nginx
    mkdir -p "$ngx/temp"
    nginx_v=$("$NGINX" -V 2>&1)
    temp_paths="client_body_temp_path $ngx/temp/body;"
    for m in proxy fastcgi uwsgi scgi; do
        [[ "$nginx_v" == *"--without-http_${m}_module"* ]] || temp_paths+=" ${m}_temp_path $ngx/temp/$m;"
    done
    user_line=""
    ((EUID == 0)) && user_line="user root;"
    cat >"$ngx/nginx.conf" <<EOF
# generated by bench/proxy.sh
$user_line
daemon off;
worker_processes 1;
pid $ngx/nginx.pid;
error_log $ngx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    $temp_paths
    upstream backend {
        server 127.0.0.1:$port_backend;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$port_nginx;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
    start nginx "$NGINX" -p "$ngx" -c "$ngx/nginx.conf" -e "$ngx/error.log"
    wait_http nginx "$started_pid" "${url[nginx]}"
fi

ws_args=()
[[ -n "$work_stealing" ]] && ws_args=(--work-stealing "$work_stealing")

if want passthrough; then
    start passthrough "$PASSTHROUGH" --listen "127.0.0.1:$port_pass" \
        --upstream "127.0.0.1:$port_backend" --threads 1 "${ws_args[@]}"
    wait_http passthrough "$started_pid" "${url[passthrough]}"
fi

if want tollgate; then
    conf=$tmp/tollgate.yaml
    {
        echo "# generated by bench/proxy.sh"
        echo "listen: [\"127.0.0.1:$port_toll\"]"
        echo "admin: { listen: \"127.0.0.1:$port_admin\" }"
        echo "threads: 1"
        [[ -n "$work_stealing" ]] && echo "work_stealing: $work_stealing"
        echo "state_dir: \"$tmp/state\""
        # Like the nginx above (access_log off); request metrics stay on.
        # bench/observability.sh measures the access log's cost.
        echo "access_log: { enabled: false }"
        echo "routes:"
        echo "  - id: bench"
        echo "    paths: [\"/bench/*rest\"]"
        echo "    upstream: backend"
        # Decoys, so the router has real work: exact, parameter and catch-all
        # paths, some sharing the /bench prefix, some host-bound on the very
        # same pattern (the request's Host matches none of them).
        for ((i = 0; i < decoys; i++)); do
            echo "  - id: decoy-$i"
            case $((i % 5)) in
            0) echo "    paths: [\"/api/v1/svc$i/items/:id\", \"/api/v1/svc$i/items\"]" ;;
            1) echo "    paths: [\"/svc$i/*rest\"]" ;;
            2) echo "    paths: [\"/bench/decoy$i/:id\"]" ;;
            3)
                echo "    hosts: [\"svc$i.example.com\"]"
                echo "    paths: [\"/bench/*rest\"]"
                ;;
            4)
                echo "    paths: [\"/static$i/index.html\"]"
                echo "    methods: [\"GET\", \"HEAD\"]"
                ;;
            esac
            echo "    upstream: backend"
        done
        echo "upstreams:"
        echo "  backend: { nodes: [\"http://127.0.0.1:$port_backend\"] }"
    } >"$conf"
    start tollgate "$TOLLGATE" run -c "$conf"
    wait_http tollgate "$started_pid" "${url[tollgate]}"
fi

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
    log "$(printf '  %-8s %-12s %10.0f req/s   p50 %7.3f ms   p99 %7.3f ms   errors %s' \
        "$tag" "$target" "$rps" "$(awk -v v="$p50" 'BEGIN{print v/1000}')" \
        "$(awk -v v="$p99" 'BEGIN{print v/1000}')" "$((status_errors + socket_errors))")"
    if ((status_errors > 0)); then
        log "  $target answered $status_errors non-2xx/3xx responses"
        bad_status=1
    fi
}

bad_status=0
: >"$tmp/results.tsv"
log "targets: ${targets[*]}; wrk -t$wrk_threads -c$conns -d${duration}s x $rounds round(s)"
if ((warmup > 0)); then
    log "warm-up (${warmup}s each)"
    for t in "${targets[@]}"; do run_wrk "$t" "$warmup" warmup; done
fi
for ((r = 1; r <= rounds; r++)); do
    log "round $r/$rounds"
    for t in "${targets[@]}"; do run_wrk "$t" "$duration" "round$r"; done
done

# ---------------------------------------------------------------- the table

# median COLUMN TARGET: median of a results.tsv column over the rounds.
median() {
    awk -F'\t' -v c="$1" -v t="$2" '$1 == t { print $c }' "$tmp/results.tsv" | sort -g |
        awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
sum_col() { awk -F'\t' -v c="$1" -v t="$2" '$1 == t { s += $c } END { print s + 0 }' "$tmp/results.tsv"; }

declare -A m_rps=() m_p50=() m_p99=() errs=() reqs=()
for t in "${targets[@]}"; do
    m_rps[$t]=$(median 3 "$t")
    m_p50[$t]=$(median 4 "$t")
    m_p99[$t]=$(median 5 "$t")
    reqs[$t]=$(sum_col 6 "$t")
    errs[$t]=$(sum_col 7 "$t")
done

ratio() { # ratio TARGET BASELINE
    if [[ -n "${m_rps[$2]:-}" ]]; then
        awk -v a="${m_rps[$1]}" -v b="${m_rps[$2]}" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'
    else
        echo "-"
    fi
}

cpu=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo 2>/dev/null || true)
rev=$(git rev-parse --short HEAD 2>/dev/null || echo "no commit")
git diff --quiet HEAD 2>/dev/null || rev+="+dirty"
report=$tmp/report.txt
{
    echo "# bench/proxy.sh — $(date -u '+%Y-%m-%d %H:%M:%S UTC'), rev $rev"
    echo "# host: $(nproc) cpu(s), ${cpu:-unknown cpu}, linux $(uname -r)"
    echo "# wrk $(wrk -v 2>&1 | awk 'NR == 1 { print $2 }'): -t$wrk_threads -c$conns -d${duration}s --latency;" \
        "$rounds interleaved round(s), median shown; warm-up ${warmup}s"
    echo "# servers: 1 thread/worker each; work_stealing=${work_stealing:-default};" \
        "tollgate: 1 bench route + $decoys decoys; path $BENCH_PATH"
    [[ " ${targets[*]} " == *" tollgate "* ]] || echo "# tollgate: not measured"
    printf '%-12s %12s %10s %10s %14s %9s %8s\n' target req/s p50 p99 vs-passthrough vs-nginx errors
    for t in "${targets[@]}"; do
        printf '%-12s %12.0f %8.3fms %8.3fms %14s %9s %8s\n' "$t" "${m_rps[$t]}" \
            "$(awk -v v="${m_p50[$t]}" 'BEGIN { print v / 1000 }')" \
            "$(awk -v v="${m_p99[$t]}" 'BEGIN { print v / 1000 }')" \
            "$(ratio "$t" passthrough)" "$(ratio "$t" nginx)" "${errs[$t]}"
    done
    echo "# ratios: median req/s relative to the baseline (higher is better); errors: all rounds"
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
for t in "${targets[@]}"; do
    n_req=${reqs[$t]} n_err=${errs[$t]}
    if ((n_req == 0)); then
        log "FAIL: $t completed no requests"
        status=1
    elif ((n_err * 100 > n_req)); then
        log "FAIL: $t: ${errs[$t]} errors in ${reqs[$t]} requests (> 1%)"
        status=1
    fi
done
exit "$status"
