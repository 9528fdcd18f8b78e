# shellcheck shell=bash disable=SC2034,SC2154  # globals shared with the sourcing script
# Shared helpers for the benchmark scripts (proxy.sh, limit.sh, lb.sh,
# observability.sh; propagation.sh uses the option parsing and set-up only).
# Sourced, never run; the caller sets `set -euo pipefail`, sets ROOT (the
# repository) and provides the globals named below (url, ...).

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

# ------------------------------------------------------------- options

# What every script takes: --quick (quick=1), --no-build (build=0), -h/--help.
# The script names its own options before parse_args: value_opts maps each
# --flag that takes a value to the variable that receives it, switch_opts
# each --flag without one to the variable set to 1. explicit[--flag] is 1
# for every value option given.
quick=0 build=1
declare -A value_opts=() switch_opts=() explicit=()

# parse_args ARGS...: parse the command line; --flag=value is --flag value.
parse_args() {
    local arg
    while (($# > 0)); do
        arg=$1
        shift
        # --flag=value -> --flag value
        if [[ "$arg" == --*=* ]]; then
            set -- "${arg#*=}" "$@"
            arg=${arg%%=*}
        fi
        if [[ -n "$arg" && -n "${value_opts[$arg]:-}" ]]; then
            (($# > 0)) || die "$arg: missing value"
            printf -v "${value_opts[$arg]}" '%s' "$1"
            explicit[$arg]=1
            shift
            continue
        fi
        if [[ -n "$arg" && -n "${switch_opts[$arg]:-}" ]]; then
            printf -v "${switch_opts[$arg]}" '%s' 1
            continue
        fi
        case "$arg" in
        --quick) quick=1 ;;
        --no-build) build=0 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown argument: $arg (try --help)" ;;
        esac
    done
}

# quick_defaults --flag=VALUE...: with --quick, each of these value options
# that was not given takes VALUE.
quick_defaults() {
    local kv
    ((quick)) || return 0
    for kv in "$@"; do
        [[ -n "${explicit[${kv%%=*}]:-}" ]] || printf -v "${value_opts[${kv%%=*}]}" '%s' "${kv#*=}"
    done
}

# wrk_options: the options of every wrk benchmark and their defaults:
# --duration 10, --conns 32, --threads 2, --rounds 3, --warmup 1, --out
# (bench/results/NAME-latest.txt, see check_wrk_options).
wrk_options() {
    duration=10 conns=32 wrk_threads=2 rounds=3 warmup=1 out=""
    value_opts+=([--duration]=duration [--conns]=conns [--threads]=wrk_threads
        [--rounds]=rounds [--warmup]=warmup [--out]=out)
}

# check_wrk_options: after parse_args, --quick's defaults (1 round of 2 s,
# bench/results/NAME-quick.txt, NAME the script's) and the checks of the
# wrk_options (and of --min-ratio, if the script has it).
check_wrk_options() {
    local name=${0##*/} kind=latest
    quick_defaults --rounds=1 --duration=2
    ((quick == 0)) || kind=quick
    [[ -n "$out" ]] || out=bench/results/${name%.sh}-$kind.txt
    require_positive "duration:$duration" "conns:$conns" "threads:$wrk_threads" "rounds:$rounds"
    is_uint "$warmup" || die "--warmup must be a non-negative integer"
    ((conns >= wrk_threads)) || die "--conns ($conns) must be >= --threads ($wrk_threads)"
    if [[ -n "${min_ratio:-}" && ! "$min_ratio" =~ ^[0-9]+(\.[0-9]+)?$ ]]; then
        die "--min-ratio must be a number"
    fi
}

# min_ratio_option: --min-ratio X (default none), for a script that compares
# two targets; check_wrk_options checks it, conclude applies it to $ratio.
min_ratio_option() {
    min_ratio=""
    value_opts+=([--min-ratio]=min_ratio)
}

# pin_cpus MODE: with MODE auto and two or more CPUs allowed (and taskset
# present), the server under test gets the first allowed CPU to itself and
# the load (wrk, the backend) the rest: server_prefix and load_prefix are
# the taskset commands to start them with, and pin_layout describes the
# split for the report. With MODE off, or one CPU, both prefixes are empty.
server_prefix=() load_prefix=() pin_layout="unpinned"
pin_cpus() {
    local mode=$1 list part cpus=() parts=() a b i rest
    case "$mode" in
    auto | off) ;;
    *) die "--pin must be auto or off" ;;
    esac
    [[ "$mode" == auto ]] || {
        pin_layout="unpinned (--pin off)"
        return 0
    }
    command -v taskset >/dev/null 2>&1 || {
        pin_layout="unpinned (no taskset)"
        return 0
    }
    list=$(awk '/^Cpus_allowed_list/ { print $2 }' /proc/self/status)
    IFS=, read -r -a parts <<<"$list"
    for part in "${parts[@]}"; do
        a=${part%-*} b=${part#*-}
        for ((i = a; i <= b; i++)); do cpus+=("$i"); done
    done
    if ((${#cpus[@]} < 2)); then
        pin_layout="unpinned (one CPU allowed)"
        return 0
    fi
    rest=$(
        IFS=,
        echo "${cpus[*]:1}"
    )
    server_prefix=(taskset -c "${cpus[0]}")
    load_prefix=(taskset -c "$rest")
    pin_layout="server under test on CPU ${cpus[0]}; wrk and the backend on CPU(s) $rest"
}

# ----------------------------------------------------------- tools, build

# need_tools TOOL...: run scripts/deps.sh if a TOOL is neither on PATH nor in
# /usr/sbin.
need_tools() {
    local tool
    for tool in "$@"; do
        if ! command -v "$tool" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/$tool" ]]; then
            log "$tool missing; running scripts/deps.sh"
            scripts/deps.sh
            break
        fi
    done
}

# build_release CARGO_ARGS...: cargo build --release CARGO_ARGS, unless --no-build.
build_release() {
    ((build)) || return 0
    log "building release binaries (cargo build --release $*)"
    cargo build --release "$@"
}

# release_bin NAME: the path of the release binary NAME (in target/, or
# $CARGO_TARGET_DIR).
release_bin() { echo "${CARGO_TARGET_DIR:-$ROOT/target}/release/$1"; }

# require_bin NAME PATH: die unless PATH (the binary NAME) is executable.
require_bin() { [[ -x "$2" ]] || die "$1 not built: $2"; }

# gateway_bench_setup NAME: what limit.sh, observability.sh and lb.sh need
# before starting servers: wrk, curl, python3; the release binaries
# $ECHO_BACKEND and $TOLLGATE (ECHO_BACKEND_BIN, TOLLGATE_BIN override
# them); the temp dir (make_tmp tollgate-NAME-bench).
gateway_bench_setup() {
    need_tools wrk curl python3
    build_release -p tollgate -p testkit --bins
    ECHO_BACKEND=${ECHO_BACKEND_BIN:-$(release_bin echo-backend)}
    TOLLGATE=${TOLLGATE_BIN:-$(release_bin tollgate)}
    require_bin echo-backend "$ECHO_BACKEND"
    require_bin tollgate "$TOLLGATE"
    make_tmp "tollgate-$1-bench"
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

# start_etcd NAME CLIENT_PORT PEER_PORT: a one-member etcd as process NAME,
# data in $tmp/NAME, on loopback; sets etcd_pid and waits until it is healthy.
# Called again with the same NAME, it restarts on the same data.
start_etcd() {
    local url="http://127.0.0.1:$2" peer="http://127.0.0.1:$3"
    start "$1" etcd --name "$1" --data-dir "$tmp/$1" \
        --listen-client-urls "$url" --advertise-client-urls "$url" \
        --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
        --initial-cluster "$1=$peer"
    etcd_pid=$started_pid
    wait_http "$1" "$etcd_pid" "$url/health"
}

# start_echo NAME ID PORT PATH: start echo-backend --name ID --fixed-body on
# 127.0.0.1:PORT as process NAME and wait until PATH answers.
start_echo() {
    start "$1" "${load_prefix[@]}" "$ECHO_BACKEND" --name "$2" --listen "127.0.0.1:$3" --fixed-body
    wait_http "$1" "$started_pid" "http://127.0.0.1:$3$4"
}

# gateway_header PORT ADMIN STATE_DIR: the first lines of every generated
# tollgate config: who wrote it, listen PORT, admin ADMIN, one thread.
gateway_header() {
    echo "# generated by bench/${0##*/}"
    echo "listen: [\"127.0.0.1:$1\"]"
    echo "admin: { listen: \"127.0.0.1:$2\" }"
    echo "threads: 1"
    echo "state_dir: \"$3\""
}

# start_bench_gateway NAME PORT ADMIN ROUTE_SETTING [SETTING...]: write
# $tmp/NAME.yaml (listen PORT, admin ADMIN, threads 1, the SETTINGs as
# top-level lines, one route "bench" for /bench/*rest with ROUTE_SETTING
# unless it is empty, to the echo backend on $port_backend), have `tollgate
# check` accept it, start it as process NAME and wait until ${url[NAME]}
# answers.
start_bench_gateway() {
    local name=$1 port=$2 admin=$3 route_setting=$4 conf=$tmp/$1.yaml
    shift 4
    {
        gateway_header "$port" "$admin" "$tmp/state-$name"
        (($# == 0)) || printf '%s\n' "$@"
        echo "routes:"
        echo "  - id: bench"
        echo "    paths: [\"/bench/*rest\"]"
        echo "    upstream: backend"
        [[ -z "$route_setting" ]] || echo "    $route_setting"
        echo "upstreams:"
        echo "  backend: { nodes: [\"http://127.0.0.1:$port_backend\"] }"
    } >"$conf"
    "$TOLLGATE" check -c "$conf" >/dev/null || die "$name: generated config rejected ($conf)"
    start "$name" "$TOLLGATE" run -c "$conf"
    wait_http "$name" "$started_pid" "${url[$name]}"
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
    "${load_prefix[@]}" wrk -t "$wrk_threads" -c "$conns" -d "${4}s" --latency -s "$2" "$3" >"$1" 2>&1 &
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
bad_status=0 status_hint=""
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
        "$tag" "$wrk_name_width" "$target" "$rps" "$(us_to_ms "$p50")" "$(us_to_ms "$p99")" \
        "$((status_errors + socket_errors))")"
    if ((status_errors > 0)); then
        log "  $target answered $status_errors non-2xx/3xx responses$status_hint"
        bad_status=1
    fi
}

# run_rounds RUN ORDER TARGET...: the measurement, into a new
# $tmp/results.tsv. `RUN TARGET SECONDS TAG` runs wrk once: first an
# unrecorded warm-up of $warmup s per TARGET (TAG warmup; none if 0), then
# $rounds rounds of $duration s per TARGET (TAG round1, round2, ...). ORDER
# "alternate" reverses the TARGETs every other round, so that none always
# runs first; "fixed" keeps their order.
run_rounds() {
    local run=$1 order=$2 r t
    shift 2
    local forward=("$@") backward=()
    for t in "$@"; do backward=("$t" "${backward[@]}"); done
    : >"$tmp/results.tsv"
    if ((warmup > 0)); then
        log "warm-up (${warmup}s each)"
        for t in "${forward[@]}"; do "$run" "$t" "$warmup" warmup; done
    fi
    for ((r = 1; r <= rounds; r++)); do
        log "round $r/$rounds"
        if [[ "$order" == alternate ]] && ((r % 2 == 0)); then
            for t in "${backward[@]}"; do "$run" "$t" "$duration" "round$r"; done
        else
            for t in "${forward[@]}"; do "$run" "$t" "$duration" "round$r"; done
        fi
    done
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

# us_to_ms MICROSECONDS: the same in milliseconds.
us_to_ms() { awk -v v="$1" 'BEGIN { print v / 1000 }'; }

# median_table NAME...: the table of medians per NAME (limit.sh,
# observability.sh): req/s, p50, p99, and errors over all rounds.
median_table() {
    local t
    printf '%-10s %12s %10s %10s %8s\n' target req/s p50 p99 errors
    for t in "$@"; do
        printf '%-10s %12.0f %8.3fms %8.3fms %8s\n' "$t" "${m_rps[$t]}" \
            "$(us_to_ms "${m_p50[$t]}")" "$(us_to_ms "${m_p99[$t]}")" "${errs[$t]}"
    done
}

# rps_ratio A B: A's median req/s over B's, 3 decimals (0 if B has none).
rps_ratio() {
    awk -v a="${m_rps[$1]}" -v b="${m_rps[$2]}" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print 0 }'
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

# conclude REPORT NAME...: publish REPORT (to $out), then exit: 1 (after
# FAIL lines) if check_runs NAME... fails or, with --min-ratio, $ratio is
# below it; 0 otherwise.
conclude() {
    local report=$1
    shift
    publish_report "$report" "$out"
    status=0
    check_runs "$@"
    if [[ -n "${min_ratio:-}" ]] && awk -v r="$ratio" -v m="$min_ratio" 'BEGIN { exit !(r < m) }'; then
        log "FAIL: ratio $ratio below --min-ratio $min_ratio"
        status=1
    fi
    exit "$status"
}

# nginx_proxy_conf DIR PORT BACKEND_PORT [HTTP_EXTRA] [LOCATION_EXTRA]:
# writes DIR/nginx.conf for one nginx worker proxying 127.0.0.1:PORT to
# the backend (HTTP/1.1, kept-alive upstream connections, access log off,
# every temp path under DIR), with extra lines in `http` and in the
# location (proxy_cache and the like). Needs $NGINX.
nginx_proxy_conf() {
    local dir=$1 port=$2 backend=$3 http_extra=${4:-} location_extra=${5:-}
    local v temp_paths m user_line=""
    mkdir -p "$dir/temp"
    v=$("$NGINX" -V 2>&1)
    temp_paths="client_body_temp_path $dir/temp/body;"
    for m in proxy fastcgi uwsgi scgi; do
        [[ "$v" == *"--without-http_${m}_module"* ]] || temp_paths+=" ${m}_temp_path $dir/temp/$m;"
    done
    ((EUID == 0)) && user_line="user root;"
    cat >"$dir/nginx.conf" <<EOF
# generated by bench/${0##*/}
$user_line
daemon off;
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    $temp_paths
    $http_extra
    upstream backend {
        server 127.0.0.1:$backend;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            $location_extra
        }
    }
}
EOF
}

# haproxy_proxy_conf FILE PORT BACKEND_PORT [BIND_OPTIONS]: one HAProxy
# process (run it with -db: foreground, no master) of one thread proxying
# 127.0.0.1:PORT (with BIND_OPTIONS, e.g. `ssl crt ...`) to the backend,
# kept-alive and shared server connections (http-reuse always), no
# logging, like nginx_proxy_conf's nginx.
haproxy_proxy_conf() {
    cat >"$1" <<EOF
# generated by bench/${0##*/}
global
    nbthread 1
    maxconn 9000
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always
frontend bench
    bind 127.0.0.1:$2 ${4:-}
    default_backend origin
backend origin
    server s1 127.0.0.1:$3
EOF
}

# tollgate_proxy_conf FILE PORT ADMIN_PORT ENGINE DECOYS [full]: a tollgate
# of one thread (work_stealing from $work_stealing when set) on ENGINE, its
# state in $tmp/state-<FILE's name>, routing /bench/* to the echo backend on
# $port_backend among DECOYS decoy routes; the access log off (like
# nginx_proxy_conf's nginx) and request metrics on. With "full", every
# per-request feature a production route has: a client-IP rate limit on the
# bench route (never reached), and the JSON access log written to
# $tmp/access-<FILE's name>.log.
tollgate_proxy_conf() {
    local conf=$1 port=$2 admin=$3 engine=$4 decoys=$5 full=${6:-} name i
    name=$(basename "$conf" .yaml)
    {
        echo "# generated by bench/${0##*/}"
        echo "listen: [\"127.0.0.1:$port\"]"
        echo "admin: { listen: \"127.0.0.1:$admin\" }"
        echo "threads: 1"
        [[ -n "${work_stealing:-}" ]] && echo "work_stealing: $work_stealing"
        echo "state_dir: \"$tmp/state-$name\""
        echo "proxy: { engine: $engine }"
        echo "request_metrics: true"
        if [[ -n "$full" ]]; then
            echo "access_log: { enabled: true, path: \"$tmp/access-$name.log\", sample: 1.0 }"
        else
            # bench/observability.sh measures the access log's cost.
            echo "access_log: { enabled: false }"
        fi
        echo "routes:"
        echo "  - id: bench"
        echo "    paths: [\"/bench/*rest\"]"
        echo "    upstream: backend"
        [[ -n "$full" ]] && echo "    rate_limit: { rate: 1000000, burst: 1000000, key: client_ip }"
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
}
