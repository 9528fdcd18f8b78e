#!/usr/bin/env bash
# Proxy overhead benchmark: wrk against the same echo backend
#   (a) directly, (b) through nginx, (c) through a bare Pingora passthrough,
#   (d) through the same passthrough with tollgate's default upstream
#   timeouts (pass-timeouts: what Pingora's per-read and pooled-connection
#   timers cost), (e) through the same passthrough and timeouts on a
#   straight pingora-core loop instead of pingora-proxy's ProxyHttp
#   (core-loop: what ProxyHttp itself costs), (f) through tollgate (real
#   routing: one bench route + decoy routes, on its default engine, core),
#   (g) through the same tollgate config on the fallback engine, pingora-proxy's
#   ProxyHttp (tollgate-pingora: `proxy: { engine: pingora }`),
# in one interleaved run: rounds of a -> b -> c -> d -> e -> f -> g, repeated, median
# per target. Prints a table (req/s, p50, p99, req/s ratios vs passthrough
# and vs nginx) and writes it to bench/results/.
#
# Every server is single-threaded (nginx: 1 worker; passthrough and tollgate:
# threads 1) and, with two or more CPUs, runs alone on one of them while wrk
# and the backend share the rest (--pin), so the numbers compare per-core
# cost, not scheduling luck. The direct target then has wrk and the backend
# on their CPU(s) only.
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
#   --request KIND       minimal (default): wrk's own request, a GET with
#                        only Host; browser: the same GET with the eight
#                        headers a browser's API call carries (User-Agent,
#                        Accept, Accept-Encoding, Accept-Language, Cookie,
#                        Referer, Sec-Fetch-Mode, X-Client-Version)
#   --targets LIST       comma-separated subset of
#                        direct,nginx,passthrough,pass-timeouts,core-loop,tollgate,
#                        tollgate-pingora
#   --pin auto|off       auto (default): each server under test runs alone on
#                        the first allowed CPU, wrk and the backend on the
#                        others, so a ratio compares CPU cost per request and
#                        not the scheduler's luck on a shared core; off: no
#                        pinning (also the fallback with a single CPU)
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
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

ALL_TARGETS=(direct nginx passthrough pass-timeouts core-loop tollgate tollgate-pingora)

decoys=300 work_stealing="" targets_arg="" pin=auto request=minimal
wrk_options
value_opts+=([--decoys]=decoys [--work-stealing]=work_stealing [--targets]=targets_arg [--pin]=pin
    [--request]=request)
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
need_tools "${need[@]}"
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

build_release -p tollgate -p passthrough -p testkit --bins

ECHO_BACKEND=${ECHO_BACKEND_BIN:-$(release_bin echo-backend)}
PASSTHROUGH=${PASSTHROUGH_BIN:-$(release_bin passthrough)}
TOLLGATE=${TOLLGATE_BIN:-$(release_bin tollgate)}

require_bin echo-backend "$ECHO_BACKEND"
{ want passthrough || want pass-timeouts || want core-loop; } && require_bin passthrough "$PASSTHROUGH"
if { want tollgate || want tollgate-pingora; } && [[ ! -x "$TOLLGATE" ]]; then
    log "tollgate: not built ($TOLLGATE); skipping targets tollgate, tollgate-pingora"
    kept=()
    for t in "${targets[@]}"; do [[ "$t" == tollgate* ]] || kept+=("$t"); done
    targets=("${kept[@]}")
    ((${#targets[@]} > 0)) || die "no targets left to measure"
fi

# ----------------------------------------------------------- processes, cleanup

make_tmp tollgate-bench

# Ask the OS for free ports (bound together so they are distinct).
read -r port_backend port_nginx port_pass port_pass_to port_core port_toll port_admin \
    port_toll_pingora port_admin_pingora < <(free_ports 9)

BENCH_PATH=/bench/echo
declare -A url=(
    [direct]="http://127.0.0.1:$port_backend$BENCH_PATH"
    [nginx]="http://127.0.0.1:$port_nginx$BENCH_PATH"
    [passthrough]="http://127.0.0.1:$port_pass$BENCH_PATH"
    [pass-timeouts]="http://127.0.0.1:$port_pass_to$BENCH_PATH"
    [core-loop]="http://127.0.0.1:$port_core$BENCH_PATH"
    [tollgate]="http://127.0.0.1:$port_toll$BENCH_PATH"
    [tollgate-pingora]="http://127.0.0.1:$port_toll_pingora$BENCH_PATH"
)

# ---------------------------------------------------------------- the servers

start_echo echo-backend backend "$port_backend" "$BENCH_PATH"

if want nginx; then
    ngx=$tmp/nginx
    nginx_proxy_conf "$ngx" "$port_nginx" "$port_backend"
    start nginx "${server_prefix[@]}" "$NGINX" -p "$ngx" -c "$ngx/nginx.conf" -e "$ngx/error.log"
    wait_http nginx "$started_pid" "${url[nginx]}"
fi

ws_args=()
[[ -n "$work_stealing" ]] && ws_args=(--work-stealing "$work_stealing")

if want passthrough; then
    start passthrough "${server_prefix[@]}" "$PASSTHROUGH" --listen "127.0.0.1:$port_pass" \
        --upstream "127.0.0.1:$port_backend" --threads 1 "${ws_args[@]}"
    wait_http passthrough "$started_pid" "${url[passthrough]}"
fi

if want pass-timeouts; then
    start pass-timeouts "${server_prefix[@]}" "$PASSTHROUGH" --listen "127.0.0.1:$port_pass_to" \
        --upstream "127.0.0.1:$port_backend" --threads 1 "${ws_args[@]}" --timeouts true
    wait_http pass-timeouts "$started_pid" "${url[pass-timeouts]}"
fi

if want core-loop; then
    start core-loop "${server_prefix[@]}" "$PASSTHROUGH" --listen "127.0.0.1:$port_core" \
        --upstream "127.0.0.1:$port_backend" --threads 1 "${ws_args[@]}" --timeouts true --engine core
    wait_http core-loop "$started_pid" "${url[core-loop]}"
fi

# tollgate_conf FILE PORT ADMIN_PORT ENGINE: the bench config; the two
# tollgate targets differ only in ports, state dir and proxy.engine.
tollgate_conf() {
    local conf=$1 port=$2 admin=$3 engine=$4
    {
        echo "# generated by bench/proxy.sh"
        echo "listen: [\"127.0.0.1:$port\"]"
        echo "admin: { listen: \"127.0.0.1:$admin\" }"
        echo "threads: 1"
        [[ -n "$work_stealing" ]] && echo "work_stealing: $work_stealing"
        echo "state_dir: \"$tmp/state-$engine\""
        echo "proxy: { engine: $engine }"
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
}

if want tollgate; then
    tollgate_conf "$tmp/tollgate.yaml" "$port_toll" "$port_admin" core
    # The environment override would win over the file; the bench means the file.
    start tollgate "${server_prefix[@]}" env -u TOLLGATE_PROXY_ENGINE "$TOLLGATE" run -c "$tmp/tollgate.yaml"
    wait_http tollgate "$started_pid" "${url[tollgate]}"
fi

if want tollgate-pingora; then
    tollgate_conf "$tmp/tollgate-pingora.yaml" "$port_toll_pingora" "$port_admin_pingora" pingora
    start tollgate-pingora "${server_prefix[@]}" env -u TOLLGATE_PROXY_ENGINE "$TOLLGATE" run -c "$tmp/tollgate-pingora.yaml"
    wait_http tollgate-pingora "$started_pid" "${url[tollgate-pingora]}"
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
wrk_name_width=13
log "targets: ${targets[*]}; wrk -t$wrk_threads -c$conns -d${duration}s x $rounds round(s)"
run_rounds run_wrk fixed "${targets[@]}"

# ---------------------------------------------------------------- the table

summarize "${targets[@]}"

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
    echo "# cpus: $pin_layout"
    [[ " ${targets[*]} " == *" tollgate "* ]] || echo "# tollgate: not measured"
    printf '%-16s %12s %10s %10s %14s %9s %8s\n' target req/s p50 p99 vs-passthrough vs-nginx errors
    for t in "${targets[@]}"; do
        printf '%-16s %12.0f %8.3fms %8.3fms %14s %9s %8s\n' "$t" "${m_rps[$t]}" \
            "$(us_to_ms "${m_p50[$t]}")" "$(us_to_ms "${m_p99[$t]}")" \
            "$(ratio "$t" passthrough)" "$(ratio "$t" nginx)" "${errs[$t]}"
    done
    echo "# ratios: median req/s relative to the baseline (higher is better); errors: all rounds"
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
