#!/usr/bin/env bash
# Response cache benchmark (#18), in three parts:
#   (1) cache hits: wrk against tollgate (a route with `cache`, threads 1)
#       and nginx (1 worker, proxy_cache in a temp dir) on the same URL,
#       the same small answer of one echo backend (echo-backend
#       --fixed-body), cached by both before the runs; interleaved rounds in
#       alternating order, median req/s, p50, p99 and the ratio
#       tollgate/nginx (target >= 1.0). Both must answer the probe's second
#       GET as a hit (X-Cache: HIT; nginx's $upstream_cache_status: HIT),
#       and the backend is stopped before the runs: a request that is not a
#       hit is a 502, which wrk counts and which fails the run;
#   (2) purge -> miss on two gateway nodes on one etcd: --purges purges of
#       one key one after the other through the admin API, each timed from
#       the API's answer until both nodes applied it (their
#       tollgate_cache_purges_total moved: the entry is gone) and until the
#       revision both report on /readyz and /status reached the purge's,
#       p50 and p99 (target p99 <= 10 ms); after each, one GET per node
#       must be a MISS (bench/cache_probe.py); then one `tollgate purge
#       --path-prefix --wait` through the CLI (it waits on the fleet view:
#       the nodes' records in etcd), and a MISS on both nodes after it;
#   (3) memory: one more node (threads 1) filled with --entries distinct
#       small entries (GET /bench/k<i>, wrk cycling over the keys until
#       tollgate_cache_entries has them all): VmRSS before and after, per
#       100,000 entries, beside the cache's own count (tollgate_cache_bytes);
#       then purges of one key on that full node, timed as in (2) (a purge
#       walks every entry of the node's cache).
# Prints a report and writes it to bench/results/. Targets are reported,
# not asserted: the run fails only when a target is broken (a probe fails,
# a non-hit under wrk, a purge not applied or not followed by a MISS, the
# entries not all cached).
#
# In (1) each server runs one thread/worker and, with two or more CPUs,
# alone on one CPU while wrk and the backend share the others (--pin), as
# in bench/proxy.sh; access logs off, tollgate's metrics on. Both cache
# the answer for 5 minutes (longer if the runs take longer).
#
# Usage: bench/cache.sh [options]
#   --duration S     seconds per wrk run in (1) (default 10)
#   --conns C        wrk connections (default 32)
#   --threads T      wrk threads (default 2)
#   --rounds R       interleaved rounds in (1); the median is reported (default 3)
#   --warmup S       unrecorded warm-up seconds per target in (1) (default 1)
#   --purges N       purges timed in (2) (default 200)
#   --entries N      distinct entries filled in (3) (default 100000)
#   --full-purges N  purges timed on the full node in (3) (default 20)
#   --max-bytes B    the gateways' cache.max_bytes (default 268435456,
#                    tollgate's own default)
#   --pin auto|off   as bench/proxy.sh (default auto)
#   --quick          smoke mode (scripts/test.sh): 1 round of 2 s, 20 purges,
#                    10,000 entries, 5 purges on the full node; writes
#                    bench/results/cache-quick.txt instead of -latest
#   --out FILE       where to write the report
#                    (default bench/results/cache-latest.txt)
#   --no-build       do not run cargo build (use the existing binaries)
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

TARGETS=(tollgate nginx)

purges=200 entries=100000 full_purges=20 max_bytes=268435456 pin=auto
wrk_options
value_opts+=([--purges]=purges [--entries]=entries [--full-purges]=full_purges
    [--max-bytes]=max_bytes [--pin]=pin)
parse_args "$@"
quick_defaults --purges=20 --entries=10000 --full-purges=5
check_wrk_options
pin_cpus "$pin"
require_positive "purges:$purges" "entries:$entries" "full-purges:$full_purges" "max-bytes:$max_bytes"

# ------------------------------------------------------- tools, build, temp dir

need_tools nginx etcd etcdctl
gateway_bench_setup cache
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

read -r port_hit_backend port_backend port_nginx port_toll admin_toll port_etcd peer_etcd \
    gw1 admin1 api1 gw2 admin2 gw3 admin3 < <(free_ports 14)

HIT_PATH=/bench/hit
declare -A url=(
    [tollgate]="http://127.0.0.1:$port_toll$HIT_PATH"
    [nginx]="http://127.0.0.1:$port_nginx$HIT_PATH"
)
# How long both keep the answer: 5 minutes, or longer than the runs of (1).
ttl_s=$((2 * (warmup + rounds * duration) + 120))
((ttl_s >= 300)) || ttl_s=300

# metric ADMIN_PORT PREFIX: the sum of the /metrics samples whose line starts
# with PREFIX (a name and "{" or " "), 0 if there is none.
metric() {
    curl -fsS --max-time 5 "http://127.0.0.1:$1/metrics" |
        awk -v p="$2" 'index($0, p) == 1 { s += $NF } END { printf "%.0f\n", s }'
}
# rss_kib PID: the process's resident set (VmRSS), KiB.
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# x_cache URL [HEADER]: the X-Cache (or HEADER) of a GET of URL, "code:value".
x_cache() {
    local h=${2:-x-cache}
    curl -sS -D - -o /dev/null --max-time 5 "$1" |
        awk -v h="$h" 'NR == 1 { code = $2 } tolower($1) == tolower(h ":") { sub(/\r$/, ""); v = $2 }
            END { print code ":" v }'
}
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

# ---------------------------------------------------------- (1) the servers

# Two backends: "hit" answers the first request of (1) and is stopped
# before the runs; "backend" serves (2) and (3).
start_echo hit-backend hit "$port_hit_backend" "$HIT_PATH"
hit_backend_pid=$started_pid
start_echo backend backend "$port_backend" /

ngx=$tmp/nginx
mkdir -p "$ngx/cache"
nginx_proxy_conf "$ngx" "$port_nginx" "$port_hit_backend" \
    "proxy_cache_path $ngx/cache levels=1:2 keys_zone=bench:10m max_size=1g inactive=1d use_temp_path=off;" \
    "proxy_cache bench; proxy_cache_valid 200 ${ttl_s}s; add_header X-Cache-Status \$upstream_cache_status;"
start nginx "${server_prefix[@]}" "$NGINX" -p "$ngx" -c "$ngx/nginx.conf" -e "$ngx/error.log"
wait_http nginx "$started_pid" "${url[nginx]}"

{
    gateway_header "$port_toll" "$admin_toll" "$tmp/state-tollgate"
    # Like the nginx above (access_log off); request metrics stay on.
    echo "access_log: { enabled: false }"
    echo "cache: { max_bytes: $max_bytes }"
    echo "routes:"
    echo "  - id: bench"
    echo "    paths: [\"/bench/*rest\"]"
    echo "    upstream: backend"
    echo "    cache: { ttl_s: $ttl_s }"
    echo "upstreams:"
    echo "  backend: { nodes: [\"http://127.0.0.1:$port_hit_backend\"] }"
} >"$tmp/tollgate.yaml"
"$TOLLGATE" check -c "$tmp/tollgate.yaml" >/dev/null || die "tollgate: generated config rejected ($tmp/tollgate.yaml)"
# The environment override would win over the file's (default) engine.
start tollgate "${server_prefix[@]}" env -u TOLLGATE_PROXY_ENGINE "$TOLLGATE" run -c "$tmp/tollgate.yaml"
wait_http tollgate "$started_pid" "${url[tollgate]}"

# probe_hit TARGET HEADER: a GET of the target's URL (a fill on the first
# call), then one that must be a 200 "ok" with HEADER: HIT from the backend.
probe_hit() {
    local t=$1 h=$2 hdrs=$tmp/probe-$1.headers body=$tmp/probe-$1.body code got
    curl -fsS -o /dev/null --max-time 5 "${url[$t]}" || die "$t: GET ${url[$t]} failed"
    code=$(curl -sS -D "$hdrs" -o "$body" -w '%{http_code}' --max-time 5 "${url[$t]}") || die "$t: GET failed"
    got=$(awk -v h="$h" 'tolower($1) == tolower(h ":") { sub(/\r$/, ""); print $2; exit }' "$hdrs")
    [[ "$code" == 200 ]] || die "$t: the cached GET answered $code"
    [[ "$got" == HIT ]] || die "$t: the second GET answered $h: ${got:-(none)}, not HIT"
    [[ "$(cat "$body")" == ok ]] || die "$t: the cached body is not the backend's"
    grep -qi '^x-backend: hit' "$hdrs" || die "$t: the cached answer lost the backend's X-Backend"
}
probe_hit tollgate x-cache
grep -qi '^age:' "$tmp/probe-tollgate.headers" || die "tollgate: a hit without Age"
probe_hit nginx x-cache-status
log "tollgate and nginx: the second GET of $HIT_PATH is a cache hit"

# From here on no request may reach a backend in (1): stop it, and check
# that a miss is now an error on both (so wrk would count one).
kill -TERM "$hit_backend_pid"
wait "$hit_backend_pid" 2>/dev/null || true
for t in "${TARGETS[@]}"; do
    code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 10 "${url[$t]%"$HIT_PATH"}/bench/not-cached") || true
    [[ "$code" == 502 || "$code" == 504 ]] || die "$t: a miss with the backend stopped answered $code, not 502"
    got=$(x_cache "${url[$t]}" "$([[ $t == nginx ]] && echo x-cache-status || echo x-cache)")
    [[ "$got" == 200:HIT ]] || die "$t: with the backend stopped, $HIT_PATH answered $got, not 200:HIT"
done

# ------------------------------------------------------------ (1) measuring

lua_done_hook >"$tmp/report.lua"
wrk_name_width=8 status_hint=" (a 502: a request that was not a cache hit reached the stopped backend)"
# tollgate's own count of how it answered, over the runs (every one a hit).
answers0=$(metric "$admin_toll" 'tollgate_cache_requests_total{')
hits0=$(metric "$admin_toll" 'tollgate_cache_requests_total{result="hit"}')
log "(1) cache hits: ${TARGETS[*]}; wrk -t$wrk_threads -c$conns -d${duration}s x $rounds round(s)"
run_rounds run_wrk alternate "${TARGETS[@]}"
hits_during=$(($(metric "$admin_toll" 'tollgate_cache_requests_total{result="hit"}') - hits0))
not_hits=$(($(metric "$admin_toll" 'tollgate_cache_requests_total{') - answers0 - hits_during))
summarize "${TARGETS[@]}"
ratio=$(rps_ratio tollgate nginx)

# ------------------------------------------------------- (2) two nodes, etcd

start_etcd etcd "$port_etcd" "$peer_etcd"
etcd_url=http://127.0.0.1:$port_etcd
ctl() { ETCDCTL_API=3 etcdctl --endpoints "$etcd_url" --dial-timeout 2s "$@" >/dev/null; }
ctl put /tollgate/upstreams/backend "{\"nodes\": [\"http://127.0.0.1:$port_backend\"]}"
ctl put /tollgate/routes/c '{"paths": ["/bench/*rest"], "upstream": "backend", "cache": {"ttl_s": 300}}'

API_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
key_hash=$(printf '%s' "$API_KEY" | "$TOLLGATE" hash-secret | python3 -c 'import json, sys; print(json.load(sys.stdin)["key_sha256"])')
node_config() { # NAME PORT ADMIN [ADMIN_API_PORT]
    gateway_header "$2" "$3" "$tmp/state-$1"
    echo "node_id: $1"
    echo "access_log: { enabled: false }"
    echo "cache: { max_bytes: $max_bytes }"
    echo "etcd: { endpoints: [\"$etcd_url\"] }"
    if [[ -n "${4:-}" ]]; then
        echo "admin_api: { listen: \"127.0.0.1:$4\", keys: [{ name: bench, sha256: \"$key_hash\", role: admin }] }"
    fi
}
# start_node NAME PORT ADMIN [ADMIN_API_PORT]: write, check and start it;
# wait until it serves the cached route.
start_node() {
    node_config "$@" >"$tmp/$1.yaml"
    "$TOLLGATE" check -c "$tmp/$1.yaml" >/dev/null || die "$1: generated config rejected ($tmp/$1.yaml)"
    start "$1" env -u TOLLGATE_PROXY_ENGINE "$TOLLGATE" run -c "$tmp/$1.yaml"
    wait_http "$1" "$started_pid" "http://127.0.0.1:$2/bench/ready"
}
start_node n1 "$gw1" "$admin1" "$api1"
start_node n2 "$gw2" "$admin2"
api=http://127.0.0.1:$api1/admin/v1
nodes12=("http://127.0.0.1:$gw1,http://127.0.0.1:$admin1" "http://127.0.0.1:$gw2,http://127.0.0.1:$admin2")

log "(2) $purges purges of one key, each until both nodes applied it"
probe_out=$(python3 bench/cache_probe.py "$api" "$API_KEY" "$purges" c /bench/purged "${nodes12[@]}") ||
    die "the purge probe failed"
read -r ans50 ans99 app50 app99 ann50 ann99 n_purged n_miss n_gets <<<"$probe_out"
((n_miss == n_gets)) || die "after a purge, $((n_gets - n_miss)) of $n_gets GETs were not a MISS"

# The CLI: a prefix purge with --wait, then a MISS on both nodes.
for g in "$gw1" "$gw2"; do
    x_cache "http://127.0.0.1:$g/bench/cli/a" >/dev/null
    got=$(x_cache "http://127.0.0.1:$g/bench/cli/a")
    [[ "$got" == 200:HIT ]] || die "node on :$g: /bench/cli/a answered $got, not 200:HIT"
done
cli_started=$(date +%s.%N)
"$TOLLGATE" purge --route c --path-prefix /bench/cli/ --wait 10 --etcd "$etcd_url" -c /nonexistent \
    >"$tmp/purge-cli.out" 2>&1 || die "tollgate purge failed: $(tail -3 "$tmp/purge-cli.out")"
cli_ended=$(date +%s.%N)
cli_wall=$(awk -v a="$cli_started" -v b="$cli_ended" 'BEGIN { printf "%.0f", (b - a) * 1000 }')
cli_after=""
for g in "$gw1" "$gw2"; do
    got=$(x_cache "http://127.0.0.1:$g/bench/cli/a")
    [[ "$got" == 200:MISS ]] || die "after tollgate purge --wait, node on :$g answered $got, not 200:MISS"
    cli_after+="${cli_after:+, }$got"
done

# ------------------------------------------------------------ (3) memory

start_node n3 "$gw3" "$admin3"
n3_pid=$started_pid

# fill_lua FILE PREFIX COUNT: a wrk script whose threads request PREFIX<k>,
# k cycling over 0..COUNT-1 (thread t starts at t, steps by the threads).
fill_lua() {
    {
        lua_done_hook
        cat <<EOF
local prefix, total, nthreads = "$2", $3, $wrk_threads
local next_tid = 0
function setup(thread)
  thread:set("tid", next_tid)
  next_tid = next_tid + 1
end
local i = 0
request = function()
  local k = (tid + i * nthreads) % total
  i = i + 1
  return wrk.format("GET", prefix .. k)
end
EOF
    } >"$1"
}
# fill NAME PREFIX COUNT: wrk against n3 until its tollgate_cache_entries
# grew by COUNT (5 minutes at most); sets fill_s (seconds it took).
fill() {
    local name=$1 count=$3 raw=$tmp/wrk-fill-$1.txt before now t0 deadline=$((SECONDS + 300))
    fill_lua "$tmp/fill-$name.lua" "$2" "$count"
    before=$(metric "$admin3" 'tollgate_cache_entries ')
    t0=$(date +%s.%N)
    "${load_prefix[@]}" wrk -t "$wrk_threads" -c "$conns" -d 600s -s "$tmp/fill-$name.lua" \
        "http://127.0.0.1:$gw3/" >"$raw" 2>&1 &
    wrk_pid=$!
    while :; do
        now=$(metric "$admin3" 'tollgate_cache_entries ')
        ((now - before < count)) || break
        alive "$wrk_pid" || { cat "$raw" >&2; die "fill $name: wrk ended early"; }
        ((SECONDS < deadline)) || die "fill $name: $((now - before)) of $count entries after 300 s"
        sleep 0.1
    done
    fill_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    kill -INT "$wrk_pid"
    wrk_wait "$raw" "n3 (fill $name)" || die "fill $name: wrk failed"
    grep -q '^Non-2xx' "$raw" && die "fill $name: non-2xx answers ($(grep '^Non-2xx' "$raw"))"
    return 0
}

log "(3) filling one node with $entries entries"
fill warmup /bench/w 1000 # connections, pools and arenas in place first
sleep 1
rss0=$(rss_kib "$n3_pid") ent0=$(metric "$admin3" 'tollgate_cache_entries ')
bytes0=$(metric "$admin3" 'tollgate_cache_bytes ') evict0=$(metric "$admin3" 'tollgate_cache_evictions_total ')
fill entries /bench/k "$entries"
sleep 1
rss1=$(rss_kib "$n3_pid") ent1=$(metric "$admin3" 'tollgate_cache_entries ')
bytes1=$(metric "$admin3" 'tollgate_cache_bytes ') evict1=$(metric "$admin3" 'tollgate_cache_evictions_total ')
d_ent=$((ent1 - ent0)) d_rss=$((rss1 - rss0)) d_bytes=$((bytes1 - bytes0))
((d_ent >= entries)) || die "only $d_ent of $entries entries in the cache after the fill"
per100k_rss=$(awk -v k="$d_rss" -v n="$d_ent" 'BEGIN { printf "%.1f", k / n * 100000 / 1024 }')
per100k_bytes=$(awk -v b="$d_bytes" -v n="$d_ent" 'BEGIN { printf "%.1f", b / n * 100000 / 1048576 }')
per_entry_rss=$(awk -v k="$d_rss" -v n="$d_ent" 'BEGIN { printf "%.0f", k * 1024 / n }')
per_entry_bytes=$(awk -v b="$d_bytes" -v n="$d_ent" 'BEGIN { printf "%.0f", b / n }')
rss_vs_count=$(awk -v k="$d_rss" -v b="$d_bytes" 'BEGIN { if (b > 0) printf "%.2f", k * 1024 / b; else print "-" }')

log "(3) $full_purges purges of one key on the node holding $ent1 entries"
probe_out=$(python3 bench/cache_probe.py "$api" "$API_KEY" "$full_purges" c /bench/probe \
    "http://127.0.0.1:$gw3,http://127.0.0.1:$admin3") || die "the purge probe on the full node failed"
read -r _ _ full50 full99 fann50 fann99 _ n_miss3 n_gets3 <<<"$probe_out"
((n_miss3 == n_gets3)) || die "after a purge on the full node, $((n_gets3 - n_miss3)) of $n_gets3 GETs were not a MISS"

# ---------------------------------------------------------------- the report

verdict() { # VALUE OP LIMIT: met / NOT met
    awk -v v="$1" -v l="$3" -v op="$2" 'BEGIN { ok = (op == ">=" ? v >= l : v <= l); print (ok ? "met" : "NOT met") }'
}
fs=$(df -PT "$ngx/cache" 2>/dev/null | awk 'NR == 2 { print $2 }')
report=$tmp/report.txt
{
    report_header "(1): $rounds interleaved round(s) (order alternating), median shown; warm-up ${warmup}s"
    echo "# cpus (1): $pin_layout; (2), (3): unpinned"
    echo "(1) cache hits: GET $HIT_PATH, echo-backend --fixed-body (3-byte body), answer cached before the runs," \
        "backend stopped during them"
    echo "# tollgate: threads 1, route cache { ttl_s: $ttl_s }, access log off, metrics on"
    echo "# nginx: 1 worker, proxy_cache (proxy_cache_path in a temp dir, ${fs:-unknown} fs)," \
        "proxy_cache_valid 200 ${ttl_s}s, access log off"
    median_table "${TARGETS[@]}"
    echo "ratio tollgate/nginx: $ratio (target >= 1.0: $(verdict "$ratio" '>=' 1.0))"
    echo "tollgate counted $hits_during hits and $not_hits other answers over the runs (warm-up included);" \
        "no request reached the stopped backend (no non-2xx)"
    echo "(2) purge -> miss: one etcd, two gateways (threads 1); $n_purged purges of one key one after the other" \
        "(POST /admin/v1/purge on node 1)"
    printf '    API answer (etcd write included):                      p50 %6.2f ms, p99 %6.2f ms\n' "$ans50" "$ans99"
    printf '    answer -> applied on both (entry dropped):             p50 %6.2f ms, p99 %6.2f ms (target p99 <= 10 ms: %s)\n' \
        "$app50" "$app99" "$(verdict "$app99" '<=' 10)"
    printf '    answer -> both report its revision (/readyz, /status): p50 %6.2f ms, p99 %6.2f ms\n' "$ann50" "$ann99"
    echo "    GETs after a purge answered MISS: $n_miss of $n_gets"
    echo "    tollgate purge --path-prefix /bench/cli/ --wait 10 (the fleet view): ${cli_wall} ms wall" \
        "($(tr '\n' ';' <"$tmp/purge-cli.out" | sed 's/;$//; s/;/; /g')); then $cli_after"
    echo "(3) memory: one gateway (threads 1, cache.max_bytes $max_bytes), $d_ent distinct entries" \
        "(GET /bench/k<i>, 3-byte bodies) filled in ${fill_s} s by wrk -t$wrk_threads -c$conns"
    echo "    tollgate_cache_entries $ent0 -> $ent1, evictions $((evict1 - evict0))"
    echo "    VmRSS $(mib "$rss0") -> $(mib "$rss1") MiB: +$(mib "$d_rss") MiB," \
        "$per_entry_rss bytes per entry, $per100k_rss MiB per 100,000 entries"
    echo "    the cache's own count (tollgate_cache_bytes): +$(awk -v b="$d_bytes" 'BEGIN { printf "%.1f", b / 1048576 }') MiB," \
        "$per_entry_bytes bytes per entry, $per100k_bytes MiB per 100,000; RSS growth / that count: $rss_vs_count"
    printf '    purge of one key with %s entries held, %s purges: answer -> applied p50 %.2f ms, p99 %.2f ms;' \
        "$ent1" "$full_purges" "$full50" "$full99"
    printf ' -> its revision on /status p50 %.2f ms, p99 %.2f ms\n' "$fann50" "$fann99"
} >"$report"

publish_report "$report" "$out"
status=0
check_runs "${TARGETS[@]}"
if ((not_hits > 0)); then
    log "FAIL: tollgate answered $not_hits requests of the runs other than from the cache"
    status=1
fi
exit "$status"
