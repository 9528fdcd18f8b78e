#!/usr/bin/env bash
# Proxy overhead benchmark: wrk against the same echo backend
#   (a) directly, (b) through nginx, (b') through HAProxy (haproxy: nbthread 1,
#   http-reuse always), (b'') through the same HAProxy doing the header work
#   a tollgate route does by default (haproxy-headers: X-Forwarded-For and
#   -Proto, a request id upstream and on the response, its own Date), (c)
#   through a bare Pingora passthrough, (d) through the same passthrough
#   with tollgate's default upstream timeouts (pass-timeouts: what
#   Pingora's per-read and pooled-connection timers cost), (e) through the
#   same passthrough and timeouts on a straight pingora-core loop instead
#   of pingora-proxy's ProxyHttp (core-loop: what ProxyHttp itself costs),
#   (f) through tollgate (real routing: one bench route + decoy routes, on
#   its default engine, core), (g) through the same tollgate config on the
#   fallback engine, pingora-proxy's ProxyHttp (tollgate-pingora: `proxy:
#   { engine: pingora }`), (h) through tollgate on its default engine with
#   every per-request feature a production route has on (tollgate-full:
#   1,000 routes, a client-IP rate limit never reached, per-route metrics,
#   the JSON access log to a file), (f', h') tollgate and tollgate-full
#   again on the release binary built with profile-guided optimization
#   (tollgate-pgo, tollgate-full-pgo: scripts/pgo.sh; skipped when it is
#   not built),
# in one interleaved run: rounds of a -> b -> b' -> b'' -> c -> d -> e -> f
# -> g -> h -> f' -> h', repeated, median per target. Prints a table
# (req/s, p50, p99, req/s ratios vs passthrough and vs nginx, user and
# system CPU per request of the server under test, its context switches
# per request, how busy its CPU was and its requests per CPU-second;
# tollgate's ratios to both HAProxy targets, median and round by round,
# and per CPU-second) and writes it to bench/results/.
#
# CPU per request: utime and stime of /proc/PID/stat (clock ticks, all
# threads) of the server under test, plus those of its child processes
# (nginx: master + worker; the others are one process), read just before and
# just after each measured wrk run, converted to µs and divided by the
# requests wrk completed in that run; median over the rounds. For direct it
# is the echo backend's. Requests per CPU-second is the same figure turned
# over (requests / (utime + stime)): a core's rate, which req/s shows only
# when the server's CPU is saturated. On two CPUs a fast proxy's CPU idles
# part of the time while the load CPU (wrk and the backend) runs out, and
# then req/s measures the load side: busy% (/proc/stat, the server's CPU;
# idle and iowait against the total) says which it was.
#
# Every server is single-threaded (nginx: 1 worker; haproxy: nbthread 1;
# passthrough and tollgate: threads 1) and, with two or more CPUs, runs
# alone on one of them while wrk and the backend share the rest (--pin), so
# the numbers compare per-core cost, not scheduling luck. The direct
# target then has wrk and the backend on their CPU(s) only.
#
# Usage: bench/proxy.sh [options]
#   --duration S         seconds per wrk run (default 10)
#   --conns C            wrk connections (default 64)
#   --threads T          wrk threads (default 1: issue #20's method. wrk and
#                        the backend share the load CPU(s); on two cores a
#                        second wrk thread left that CPU the bottleneck, so
#                        a faster proxy's core idled and req/s measured
#                        the load side)
#   --rounds R           interleaved rounds; the median is reported (default 3)
#   --warmup S           unrecorded warm-up seconds per target (default 1)
#   --work-stealing B    true|false, passed to passthrough and tollgate
#                        (default: each binary's own default)
#   --decoys N           decoy routes in tollgate's table (default 300)
#   --request KIND       minimal (default): wrk's own request, a GET with
#                        only Host; browser: the same GET with the eight
#                        headers a browser's API call carries (User-Agent,
#                        Accept, Accept-Encoding, Accept-Language, Cookie,
#                        Referer, Sec-Fetch-Mode, X-Client-Version)
#   --targets LIST       comma-separated subset of
#                        direct,nginx,haproxy,haproxy-headers,passthrough,
#                        pass-timeouts,core-loop,
#                        tollgate,tollgate-pingora,tollgate-full,tollgate-pgo,
#                        tollgate-full-pgo
#   --pin auto|off       auto (default): each server under test runs alone on
#                        the first allowed CPU, wrk and the backend on the
#                        others, so a ratio compares CPU cost per request and
#                        not the scheduler's luck on a shared core; off: no
#                        pinning (also the fallback with a single CPU)
#   --cpu-quota PCT      hold the servers under test to PCT % of one CPU
#                        (one CPU cgroup they share; root; see
#                        bench/README.md on what it does not yet account
#                        for): on two CPUs a proxy faster
#                        than the load side idles part of the time, and its
#                        req/s measures wrk and the backend; held to part of
#                        a core it is saturated first, and req/s compares
#                        per-request cost again (default: no limit)
#   --quick              smoke mode: 1 round of 2 s (used by scripts/test.sh);
#                        writes bench/results/proxy-quick.txt instead of -latest
#   --out FILE           where to write the table
#                        (default bench/results/proxy-latest.txt)
#   --no-build           do not run cargo build (use the existing binaries)
#   -h, --help
#
# Environment: ECHO_BACKEND_BIN, PASSTHROUGH_BIN, TOLLGATE_BIN override the
# binaries (default target/release/*, or $CARGO_TARGET_DIR/release/*);
# TOLLGATE_PGO_BIN the profile-guided one (default target/pgo/release/tollgate,
# what scripts/pgo.sh builds);
# KEEP_TMP=1 keeps the temp dir (configs, logs, raw wrk output).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

ALL_TARGETS=(direct nginx haproxy haproxy-headers passthrough pass-timeouts core-loop tollgate tollgate-pingora tollgate-full
    tollgate-pgo tollgate-full-pgo)

decoys=300 work_stealing="" targets_arg="" pin=auto request=minimal quota=""
wrk_options
conns=64 wrk_threads=1
value_opts+=([--decoys]=decoys [--work-stealing]=work_stealing [--targets]=targets_arg [--pin]=pin
    [--request]=request [--cpu-quota]=quota)
parse_args "$@"
check_wrk_options
pin_cpus "$pin"
is_uint "$decoys" || die "--decoys must be a non-negative integer"
case "$work_stealing" in
"" | true | false) ;;
*) die "--work-stealing must be true or false" ;;
esac
case "$request" in
minimal | browser) ;;
*) die "--request must be minimal or browser" ;;
esac

targets=()
if [[ -n "$targets_arg" ]]; then
    IFS=, read -r -a wanted <<<"$targets_arg"
    for t in "${ALL_TARGETS[@]}"; do # keep the canonical a->b->c->d->e order
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
{ want haproxy || want haproxy-headers; } && need+=(haproxy)
need_tools "${need[@]}"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)

build_release -p tollgate -p passthrough -p testkit --bins

ECHO_BACKEND=${ECHO_BACKEND_BIN:-$(release_bin echo-backend)}
PASSTHROUGH=${PASSTHROUGH_BIN:-$(release_bin passthrough)}
TOLLGATE=${TOLLGATE_BIN:-$(release_bin tollgate)}
TOLLGATE_PGO=${TOLLGATE_PGO_BIN:-$ROOT/target/pgo/release/tollgate}

require_bin echo-backend "$ECHO_BACKEND"
{ want passthrough || want pass-timeouts || want core-loop; } && require_bin passthrough "$PASSTHROUGH"
# skip_targets BINARY WHY TARGET...: drop TARGETs when BINARY is not built.
skip_targets() {
    local bin=$1 why=$2 t s dropped=() kept=()
    shift 2
    [[ -x "$bin" ]] && return 0
    for t in "${targets[@]}"; do
        for s in "$@"; do [[ "$t" == "$s" ]] && dropped+=("$t") && continue 2; done
        kept+=("$t")
    done
    ((${#dropped[@]} > 0)) || return 0
    log "not built: $bin$why; skipping targets ${dropped[*]}"
    targets=("${kept[@]}")
    ((${#targets[@]} > 0)) || die "no targets left to measure"
}
skip_targets "$TOLLGATE" "" tollgate tollgate-pingora tollgate-full
skip_targets "$TOLLGATE_PGO" ": scripts/pgo.sh builds it" tollgate-pgo tollgate-full-pgo

# ----------------------------------------------------------- processes, cleanup

make_tmp tollgate-bench
cpu_quota "$quota"

# Ask the OS for free ports (bound together so they are distinct).
read -r port_backend port_nginx port_pass port_pass_to port_core port_toll port_admin \
    port_toll_pingora port_admin_pingora port_haproxy port_toll_full port_admin_full \
    port_toll_pgo port_admin_pgo port_toll_full_pgo port_admin_full_pgo port_haproxy_hdr < <(free_ports 17)

BENCH_PATH=/bench/echo
declare -A url=(
    [direct]="http://127.0.0.1:$port_backend$BENCH_PATH"
    [nginx]="http://127.0.0.1:$port_nginx$BENCH_PATH"
    [haproxy]="http://127.0.0.1:$port_haproxy$BENCH_PATH"
    [haproxy-headers]="http://127.0.0.1:$port_haproxy_hdr$BENCH_PATH"
    [passthrough]="http://127.0.0.1:$port_pass$BENCH_PATH"
    [pass-timeouts]="http://127.0.0.1:$port_pass_to$BENCH_PATH"
    [core-loop]="http://127.0.0.1:$port_core$BENCH_PATH"
    [tollgate]="http://127.0.0.1:$port_toll$BENCH_PATH"
    [tollgate-pingora]="http://127.0.0.1:$port_toll_pingora$BENCH_PATH"
    [tollgate-full]="http://127.0.0.1:$port_toll_full$BENCH_PATH"
    [tollgate-pgo]="http://127.0.0.1:$port_toll_pgo$BENCH_PATH"
    [tollgate-full-pgo]="http://127.0.0.1:$port_toll_full_pgo$BENCH_PATH"
)

# ---------------------------------------------------------------- the servers

# The process whose CPU time (with its children's) is each target's.
declare -A server_pid=()

start_echo echo-backend backend "$port_backend" "$BENCH_PATH"
server_pid[direct]=$started_pid

if want nginx; then
    ngx=$tmp/nginx
    nginx_proxy_conf "$ngx" "$port_nginx" "$port_backend"
    start nginx "${server_prefix[@]}" "$NGINX" -p "$ngx" -c "$ngx/nginx.conf" -e "$ngx/error.log"
    server_pid[nginx]=$started_pid
    wait_http nginx "$started_pid" "${url[nginx]}"
fi

# require_header TARGET PATTERN WHAT: die unless TARGET's answer has a
# header line matching PATTERN (grep -i): the proof that it does the work
# it is measured for. grep reads to the end (no -q), so curl never dies of
# a closed pipe.
require_header() {
    curl -fsS -D - -o /dev/null "${url[$1]}" | grep -i "$2" >/dev/null ||
        die "$1: the answer carries no $3"
}

# start_haproxy TARGET PORT [headers]: HAProxy (haproxy_proxy_conf).
start_haproxy() {
    haproxy_proxy_conf "$tmp/$1.cfg" "$2" "$port_backend" "" "${3:-}"
    "$HAPROXY" -c -q -f "$tmp/$1.cfg" || die "$1: generated config rejected ($tmp/$1.cfg)"
    start "$1" "${server_prefix[@]}" "$HAPROXY" -db -f "$tmp/$1.cfg"
    server_pid[$1]=$started_pid
    wait_http "$1" "$started_pid" "${url[$1]}"
}
want haproxy && start_haproxy haproxy "$port_haproxy"
if want haproxy-headers; then
    start_haproxy haproxy-headers "$port_haproxy_hdr" headers
    require_header haproxy-headers '^x-request-id: [0-9A-F]' "X-Request-Id"
fi

ws_args=()
[[ -n "$work_stealing" ]] && ws_args=(--work-stealing "$work_stealing")

if want passthrough; then
    start passthrough "${server_prefix[@]}" "$PASSTHROUGH" --listen "127.0.0.1:$port_pass" \
        --upstream "127.0.0.1:$port_backend" --threads 1 "${ws_args[@]}"
    server_pid[passthrough]=$started_pid
    wait_http passthrough "$started_pid" "${url[passthrough]}"
fi

if want pass-timeouts; then
    start pass-timeouts "${server_prefix[@]}" "$PASSTHROUGH" --listen "127.0.0.1:$port_pass_to" \
        --upstream "127.0.0.1:$port_backend" --threads 1 "${ws_args[@]}" --timeouts true
    server_pid[pass-timeouts]=$started_pid
    wait_http pass-timeouts "$started_pid" "${url[pass-timeouts]}"
fi

if want core-loop; then
    start core-loop "${server_prefix[@]}" "$PASSTHROUGH" --listen "127.0.0.1:$port_core" \
        --upstream "127.0.0.1:$port_backend" --threads 1 "${ws_args[@]}" --timeouts true --engine core
    server_pid[core-loop]=$started_pid
    wait_http core-loop "$started_pid" "${url[core-loop]}"
fi


# start_tollgate TARGET BINARY PORT ADMIN: the bench route among --decoys
# decoys on the core engine.
start_tollgate() {
    tollgate_proxy_conf "$tmp/$1.yaml" "$3" "$4" core "$decoys"
    # The environment override would win over the file; the bench means the file.
    start "$1" "${server_prefix[@]}" env -u TOLLGATE_PROXY_ENGINE "$2" run -c "$tmp/$1.yaml"
    server_pid[$1]=$started_pid
    wait_http "$1" "$started_pid" "${url[$1]}"
}

# start_tollgate_full TARGET BINARY PORT ADMIN: every per-request feature on.
start_tollgate_full() {
    local target=$1 bin=$2 i
    tollgate_proxy_conf "$tmp/$target.yaml" "$3" "$4" core 999 full
    "$bin" check -c "$tmp/$target.yaml" >/dev/null ||
        die "$target: generated config rejected ($tmp/$target.yaml)"
    start "$target" "${server_prefix[@]}" env -u TOLLGATE_PROXY_ENGINE "$bin" run -c "$tmp/$target.yaml"
    server_pid[$target]=$started_pid
    wait_http "$target" "$started_pid" "${url[$target]}"
    # Every feature is on: the answer carries the limit, the access log grows.
    require_header "$target" '^x-ratelimit-limit: 1000000' "X-RateLimit-Limit: 1000000"
    for ((i = 0; i < 100; i++)); do
        [[ -s "$tmp/access-$target.log" ]] && break
        sleep 0.1
    done
    grep -q '"status":200' "$tmp/access-$target.log" || die "$target: no request in its access log"
}

if want tollgate; then
    start_tollgate tollgate "$TOLLGATE" "$port_toll" "$port_admin"
fi

if want tollgate-pingora; then
    tollgate_proxy_conf "$tmp/tollgate-pingora.yaml" "$port_toll_pingora" "$port_admin_pingora" pingora "$decoys"
    start tollgate-pingora "${server_prefix[@]}" env -u TOLLGATE_PROXY_ENGINE "$TOLLGATE" run -c "$tmp/tollgate-pingora.yaml"
    server_pid[tollgate-pingora]=$started_pid
    wait_http tollgate-pingora "$started_pid" "${url[tollgate-pingora]}"
fi

if want tollgate-full; then
    start_tollgate_full tollgate-full "$TOLLGATE" "$port_toll_full" "$port_admin_full"
fi
if want tollgate-pgo; then
    start_tollgate tollgate-pgo "$TOLLGATE_PGO" "$port_toll_pgo" "$port_admin_pgo"
fi
if want tollgate-full-pgo; then
    start_tollgate_full tollgate-full-pgo "$TOLLGATE_PGO" "$port_toll_full_pgo" "$port_admin_full_pgo"
fi

# ---------------------------------------------------------------- measuring

{
    lua_done_hook
    if [[ "$request" == browser ]]; then
        cat <<'EOF'
wrk.headers["User-Agent"] = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0.0.0 Safari/537.36"
wrk.headers["Accept"] = "application/json, text/plain, */*"
wrk.headers["Accept-Encoding"] = "gzip, deflate, br"
wrk.headers["Accept-Language"] = "en-US,en;q=0.9"
wrk.headers["Cookie"] = "session=4f2a9c1e7b3d; theme=dark"
wrk.headers["Referer"] = "https://app.example.com/dashboard"
wrk.headers["Sec-Fetch-Mode"] = "cors"
wrk.headers["X-Client-Version"] = "4.2.1"
EOF
    fi
} >"$tmp/report.lua"
# shellcheck disable=SC2317  # run_wrk_cpu runs through run_rounds
# cpu_ticks PID: "utime stime voluntary involuntary" of PID plus its child
# processes (nginx's worker): clock ticks and context switches, all threads.
# A voluntary switch is the server going to sleep with nothing to do (an
# epoll_wait that blocked): what each wake-up costs is kernel time.
cpu_ticks() {
    local p stat status u=0 s=0 v=0 n=0 key value _
    for p in "$1" $(pgrep -P "$1" 2>/dev/null); do
        read -r stat <"/proc/$p/stat" 2>/dev/null || continue
        stat=${stat##*) }
        # shellcheck disable=SC2086
        set -- $stat
        u=$((u + ${12})) s=$((s + ${13}))
        for status in /proc/"$p"/task/*/status; do
            while read -r key value _; do
                case "$key" in
                voluntary_ctxt_switches:) v=$((v + value)) ;;
                nonvoluntary_ctxt_switches:) n=$((n + value)) ;;
                esac
            done <"$status" 2>/dev/null || true
        done
    done
    echo "$u $s $v $n"
}
HZ=$(getconf CLK_TCK)

# cpu_idle: "idle total" jiffies of the server's CPU (/proc/stat; idle and
# iowait), or "0 0" when it is not pinned to one.
cpu_idle() {
    local name rest
    [[ -n "$server_cpu" ]] || {
        echo "0 0"
        return 0
    }
    while read -r name rest; do
        if [[ "$name" == "cpu$server_cpu" ]]; then
            awk '{ t = 0; for (i = 1; i <= NF; i++) t += $i; print $4 + $5, t }' <<<"$rest"
            return 0
        fi
    done </proc/stat
    echo "0 0"
}

# shellcheck disable=SC2317
# run_wrk_cpu TARGET SECONDS TAG: run_wrk, and for a measured run the
# server's user and system CPU per request (µs), its context switches per
# request (voluntary, involuntary), how busy its CPU was (%) and the
# requests a second of its CPU served into $tmp/cpu.tsv.
run_wrk_cpu() {
    local target=$1 tag=$3 u0 s0 v0 n0 i0 t0 u1 s1 v1 n1 i1 t1 requests
    read -r u0 s0 v0 n0 < <(cpu_ticks "${server_pid[$target]}")
    read -r i0 t0 < <(cpu_idle)
    run_wrk "$@" || return 1
    [[ "$tag" == warmup ]] && return 0
    read -r u1 s1 v1 n1 < <(cpu_ticks "${server_pid[$target]}")
    read -r i1 t1 < <(cpu_idle)
    requests=$(awk -F'\t' -v t="$target" -v g="$tag" '$1 == t && $2 == g { r = $6 } END { print r + 0 }' \
        "$tmp/results.tsv")
    awk -v t="$target" -v g="$tag" -v du=$((u1 - u0)) -v ds=$((s1 - s0)) -v hz="$HZ" -v n="$requests" \
        -v dv=$((v1 - v0)) -v dn=$((n1 - n0)) -v di=$((i1 - i0)) -v dt=$((t1 - t0)) \
        'BEGIN { if (n > 0) printf "%s\t%s\t%.3f\t%.3f\t%.4f\t%.4f\t%s\t%s\n", t, g, du * 1e6 / hz / n,
            ds * 1e6 / hz / n, dv / n, dn / n, (dt > 0 ? sprintf("%.1f", 100 * (1 - di / dt)) : "-"),
            (du + ds > 0 ? sprintf("%.0f", n * hz / (du + ds)) : "-") }' \
        >>"$tmp/cpu.tsv"
}

wrk_name_width=17
: >"$tmp/cpu.tsv"
log "targets: ${targets[*]}; wrk -t$wrk_threads -c$conns -d${duration}s x $rounds round(s)"
run_rounds run_wrk_cpu fixed "${targets[@]}"

# ---------------------------------------------------------------- the table

summarize "${targets[@]}"

# cpu_median COLUMN TARGET [FORMAT]: median over the rounds of a cpu.tsv
# column (printf FORMAT, default %.2f).
cpu_median() {
    awk -F'\t' -v c="$1" -v t="$2" '$1 == t && $c != "-" { print $c }' "$tmp/cpu.tsv" | sort -g |
        awk -v f="${3:-%.2f}" '{ v[NR] = $1 } END { if (NR == 0) print "-"; else if (NR % 2) printf f, v[(NR + 1) / 2]; else printf f, (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# round_ratios TARGET BASELINE: TARGET's req/s over BASELINE's, round by
# round (the median hides how far apart the rounds were).
round_ratios() {
    awk -F'\t' -v a="$1" -v b="$2" '$1 == a { x[$2] = $3 } $1 == b { y[$2] = $3 }
        END { for (r = 1; ("round" r) in x; r++) if (y["round" r] > 0) printf "%s%.2f", (r > 1 ? " " : ""), x["round" r] / y["round" r] }' \
        "$tmp/results.tsv"
}

# cpu_ratio TARGET BASELINE: the ratio of their median requests per CPU-second.
cpu_ratio() {
    awk -v a="$(cpu_median 8 "$1" %.0f)" -v b="$(cpu_median 8 "$2" %.0f)" \
        'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.2fx", a / b; else print "-" }'
}

ratio() { # ratio TARGET BASELINE
    if [[ -n "${m_rps[$2]:-}" ]]; then
        awk -v a="${m_rps[$1]}" -v b="${m_rps[$2]}" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "-" }'
    else
        echo "-"
    fi
}

report=$tmp/report.txt
{
    report_header "$rounds interleaved round(s), median shown; warm-up ${warmup}s"
    echo "# servers: 1 thread/worker each; work_stealing=${work_stealing:-default};" \
        "tollgate: 1 bench route + $decoys decoys; path $BENCH_PATH; request: $request"
    echo "# tollgate-full: 1 bench route + 999 decoys, client-IP rate limit (never reached)," \
        "request_metrics, JSON access log to a file"
    echo "# targets (issue #20): tollgate >= 1.0x nginx and >= 1.0x haproxy; tollgate-full >= 0.9x nginx;" \
        "user µs/req <= 4 on tollgate; p99 <= nginx's"
    echo "# cpus: $pin_layout"
    [[ -z "$cpu_quota_layout" ]] || echo "# cpu quota: $cpu_quota_layout"
    [[ -z "${ECHO_BACKEND_BIN:-}" ]] || echo "# origin: $ECHO_BACKEND_BIN (ECHO_BACKEND_BIN)"
    [[ " ${targets[*]} " == *" tollgate "* ]] || echo "# tollgate: not measured"
    printf '%-18s %12s %10s %10s %14s %9s %13s %13s %9s %9s %6s %10s %8s\n' target req/s p50 p99 \
        vs-passthrough vs-nginx 'user µs/req' 'sys µs/req' vcsw/req ivcsw/req busy% req/CPU-s errors
    for t in "${targets[@]}"; do
        printf '%-18s %12.0f %8.3fms %8.3fms %14s %9s %12s %12s %9s %9s %6s %10s %8s\n' "$t" "${m_rps[$t]}" \
            "$(us_to_ms "${m_p50[$t]}")" "$(us_to_ms "${m_p99[$t]}")" \
            "$(ratio "$t" passthrough)" "$(ratio "$t" nginx)" \
            "$(cpu_median 3 "$t")" "$(cpu_median 4 "$t")" "$(cpu_median 5 "$t" %.3f)" \
            "$(cpu_median 6 "$t" %.3f)" "$(cpu_median 7 "$t" %.1f)" "$(cpu_median 8 "$t" %.0f)" "${errs[$t]}"
    done
    echo "# ratios: median req/s relative to the baseline (higher is better); errors: all rounds"
    echo "# user/sys µs/req: the server's CPU time (/proc/PID/stat utime, stime; nginx: master + worker;" \
        "direct: the echo backend) over each measured wrk run / the requests it completed, median"
    echo "# vcsw/ivcsw/req: the server's voluntary (slept: nothing to do) and involuntary context switches" \
        "per request, all threads; busy%: how much of its CPU's time was not idle (pinned runs only)"
    echo "# req/CPU-s: requests per second of the server's CPU (user + sys), median: its per-core rate, which" \
        "req/s reaches only at 100% busy; below that req/s is bounded by the load CPU (wrk + the backend)"
    for t in tollgate tollgate-pgo; do
        for h in haproxy haproxy-headers; do
            if [[ -n "${m_rps[$h]:-}" && -n "${m_rps[$t]:-}" ]]; then
                echo "# $t vs $h: $(ratio "$t" "$h") req/s (rounds: $(round_ratios "$t" "$h"))," \
                    "$(cpu_ratio "$t" "$h") per CPU-second"
            fi
        done
    done
    if [[ -n "${m_rps[tollgate-pgo]:-}" && -n "${m_rps[tollgate]:-}" ]]; then
        echo "# profile-guided vs plain release build: tollgate-pgo $(ratio tollgate-pgo tollgate)," \
            "tollgate-full-pgo $(ratio tollgate-full-pgo tollgate-full) req/s"
    fi
    if [[ -n "${m_rps[pass-timeouts]:-}" && -n "${m_rps[tollgate]:-}" ]]; then
        echo "# tollgate vs pass-timeouts (the passthrough with tollgate's default timeouts):" \
            "$(ratio tollgate pass-timeouts) req/s"
    fi
    if [[ -n "${m_rps[pass-timeouts]:-}" && -n "${m_rps[core-loop]:-}" ]]; then
        echo "# core-loop vs pass-timeouts (the same proxying and timeouts without ProxyHttp):" \
            "$(ratio core-loop pass-timeouts) req/s"
    fi
    if [[ -n "${m_rps[tollgate]:-}" && -n "${m_rps[tollgate-pingora]:-}" ]]; then
        echo "# tollgate vs tollgate-pingora (the same gateway on the ProxyHttp fallback engine):" \
            "$(ratio tollgate tollgate-pingora) req/s"
    fi
} >"$report"

conclude "$report" "${targets[@]}"
