#!/usr/bin/env bash
# Cluster coordination benchmark (#19): what sharing work through etcd
# costs and how fast it acts, against a real etcd, real gateway processes
# (threads 1 each, distinct node ids and ports) and a real ACME CA:
#   (1) probe load: 12 instances (one python process, a port each, counting
#       GET /healthz: bench/cluster_probe.py serve), registered on a lease
#       under /services/svc/, upstream svc with
#       health_check.active {path /healthz, interval_ms 200}. With 1, 3 and
#       10 gateways (--counts): once every node's /status says
#       health_verdicts "shared" and gateways N, probes per instance per
#       interval over --window s. The anchor: HAProxy, the same with 1, 3
#       and 10 processes, each with the 12 servers and
#       `check inter 200ms` (each process probes everything: N-fold);
#   (2) verdict -> traffic stops: 3 gateways, the 12 instances (unhealthy 2,
#       interval 200 ms, lb consistent_hash on header x-key so that one key
#       goes to one instance on every node); a poller per node sends that
#       instance's key every --poll-ms ms; at t0 the instance answers 503 on
#       /healthz and on requests; per node, the time from t0 to the last
#       request that reached it; p50/p99 of the max over nodes over --runs
#       runs (the instance back on every node between runs), and the parts:
#       t0 -> the prober's local verdict (the probing floor), local verdict
#       -> shared verdict written to etcd, written -> every node sends
#       elsewhere (bench/cluster_probe.py failover);
#   (3) ACME issuance -> served: the same 3 gateways with a TLS listener
#       each and the bootstrap `acme` pointing at pebble (Debian's ACME
#       test server, pebble-challtestsrv as its DNS; validation on node 3's
#       plain listener, whoever orders); /tollgate/certs/api put, then
#       --renewals forced renewals (/tollgate/acme/renew/api = "now"): the
#       order time (put -> the certificate in etcd -> presented by every
#       node, verified against pebble's issuing root) and issuance ->
#       served on every node, p50/p99 (bench/cluster_probe.py acme).
# Prints a report and writes it to bench/results/. The figures are
# reported, not asserted: the run fails only when something is broken (a
# node never shares, the probers do not cover the instances once, a verdict
# or certificate never arrives, a verdict flaps, an extra ACME order).
#
# Usage: bench/cluster.sh [options]
#   --counts LIST    gateway counts of (1), increasing (default 1,3,10)
#   --window S       seconds each probe count of (1) is measured (default 5)
#   --runs N         failures timed in (2) (default 20)
#   --poll-ms MS     each node's request interval in (2) (default 1)
#   --renewals N     forced renewals timed in (3) (default 10)
#   --handshake-ms MS  pause between one node's handshakes in (3) (default 1)
#   --quick          smoke mode (scripts/test.sh): 2 s windows, 3 runs,
#                    2 renewals; writes bench/results/cluster-quick.txt
#   --out FILE       where to write the report
#                    (default bench/results/cluster-latest.txt)
#   --no-build       do not run cargo build (use the existing binary)
#   -h, --help
#
# Environment: TOLLGATE_BIN overrides the binary (default target/release/
# tollgate, or $CARGO_TARGET_DIR/release/tollgate); KEEP_TMP=1 keeps the
# temp dir (configs, logs, the probe's JSON).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

INSTANCES=12 INTERVAL_MS=200 UNHEALTHY=2 SICK=5 NAME=api.acme.test
counts=1,3,10 window=5 runs=20 poll_ms=1 renewals=10 handshake_ms=1 out=""
value_opts+=([--counts]=counts [--window]=window [--runs]=runs [--poll-ms]=poll_ms
    [--renewals]=renewals [--handshake-ms]=handshake_ms [--out]=out)
parse_args "$@"
quick_defaults --window=2 --runs=3 --renewals=2
require_positive "window:$window" "runs:$runs" "poll-ms:$poll_ms" "renewals:$renewals"
is_uint "$handshake_ms" || die "--handshake-ms must be a non-negative integer"
[[ -n "$out" ]] || out=bench/results/cluster-$( ((quick)) && echo quick || echo latest).txt
IFS=, read -r -a sizes <<<"$counts"
prev=0
for n in "${sizes[@]}"; do
    require_positive "counts:$n"
    ((n > prev)) || die "--counts must be increasing"
    prev=$n
done
max_n=$prev
((max_n >= 3)) || die "--counts must reach 3 (parts 2 and 3 run on 3 gateways)"
settle=$( ((quick)) && echo 0.5 || echo 1)

# ------------------------------------------------------- tools, build, temp dir

need_tools etcd etcdctl haproxy pebble pebble-challtestsrv openssl curl python3
build_release -p tollgate --bins
TOLLGATE=${TOLLGATE_BIN:-$(release_bin tollgate)}
require_bin tollgate "$TOLLGATE"
make_tmp tollgate-cluster-bench

read -r -a p < <(free_ports $((8 + INSTANCES + 4 * max_n)))
port_etcd=${p[0]} peer_etcd=${p[1]} port_ctl=${p[2]}
acme_port=${p[3]} acme_mgmt=${p[4]} acme_tls=${p[5]} dns_port=${p[6]} dns_mgmt=${p[7]}
inst_ports=("${p[@]:8:INSTANCES}")
gw_http=("${p[@]:8+INSTANCES:max_n}")
gw_admin=("${p[@]:8+INSTANCES+max_n:max_n}")
gw_tls=("${p[@]:8+INSTANCES+2*max_n:max_n}")
hap_ports=("${p[@]:8+INSTANCES+3*max_n:max_n}")
etcd_url=http://127.0.0.1:$port_etcd
ctl_url=http://127.0.0.1:$port_ctl
ctl() { ETCDCTL_API=3 etcdctl --endpoints "$etcd_url" --dial-timeout 2s "$@"; }
elapsed_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
bench_start=$(date +%s.%N)

# stop PID...: SIGTERM them all, wait (SIGKILL after 10 s), forget them.
stop() {
    local pid deadline=$((SECONDS + 10)) keep=()
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        while alive "$pid" && ((SECONDS < deadline)); do sleep 0.05; done
        alive "$pid" && kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        [[ " $* " == *" $pid "* ]] || keep+=("$pid")
    done
    pids=("${keep[@]}")
}

# ------------------------------------------------------------- the instances

start instances python3 bench/cluster_probe.py serve "$port_ctl" "${inst_ports[@]}"
wait_http instances "$started_pid" "$ctl_url/counts"

# probe_rate BEFORE AFTER SECONDS: "mean min max" probes per instance per
# interval between two /counts snapshots SECONDS apart.
probe_rate() {
    python3 - "$1" "$2" "$3" "$INTERVAL_MS" <<'EOF'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
intervals = float(sys.argv[3]) * 1000 / float(sys.argv[4])
r = [(b[k] - a[k]) / intervals for k in a]
print(f"{sum(r) / len(r):.2f} {min(r):.2f} {max(r):.2f}")
EOF
}
# measure_probes: sleeps the settle time, then counts probes over --window s;
# prints "mean min max" (probe_rate).
measure_probes() {
    local before after t0
    sleep "$settle"
    before=$(curl -fsS "$ctl_url/counts") t0=$(date +%s.%N)
    sleep "$window"
    after=$(curl -fsS "$ctl_url/counts")
    probe_rate "$before" "$after" "$(elapsed_since "$t0")"
}

# --------------------------------------------------- (1) anchor: HAProxy

declare -A hap_rate=() gw_rate=() gw_split=()
hap_pids=()
start_haproxy() { # INDEX
    local i=$1 conf=$tmp/haproxy-$1.cfg k
    {
        echo "# generated by bench/${0##*/}"
        echo "global"
        echo "    nbthread 1"
        echo "defaults"
        echo "    mode http"
        echo "    timeout connect 1s"
        echo "    timeout client 5s"
        echo "    timeout server 5s"
        echo "    timeout check 1s"
        echo "frontend f"
        echo "    bind 127.0.0.1:${hap_ports[i]}"
        echo "    default_backend svc"
        echo "backend svc"
        echo "    option httpchk GET /healthz"
        for k in "${!inst_ports[@]}"; do
            printf '    server i%02d 127.0.0.1:%s check inter %sms rise 2 fall %s\n' \
                "$k" "${inst_ports[k]}" "$INTERVAL_MS" "$UNHEALTHY"
        done
    } >"$conf"
    haproxy -c -q -f "$conf" || die "haproxy rejected $conf"
    start "haproxy-$i" haproxy -db -f "$conf"
    hap_pids+=("$started_pid")
}
running=0
for n in "${sizes[@]}"; do
    while ((running < n)); do
        start_haproxy "$running"
        running=$((running + 1))
    done
    sleep 0.5
    for pid in "${hap_pids[@]}"; do alive "$pid" || die "haproxy (pid $pid) exited"; done
    hap_rate[$n]=$(measure_probes)
    log "(1) haproxy x$n: probes/instance/interval (mean min max) ${hap_rate[$n]}"
done
stop "${hap_pids[@]}"

# -------------------------------------------- etcd, the registry, the CA's files

start_etcd etcd "$port_etcd" "$peer_etcd"
lease=$(ctl lease grant 60 | awk '{ print $2 }')
[[ -n "$lease" ]] || die "no lease granted"
start lease-keepalive env ETCDCTL_API=3 etcdctl --endpoints "$etcd_url" lease keep-alive "$lease"
for k in "${!inst_ports[@]}"; do
    ctl put --lease="$lease" "$(printf '/services/svc/i%02d' "$k")" "http://127.0.0.1:${inst_ports[k]}" >/dev/null
done
ctl put /tollgate/upstreams/svc "{\"lb\": {\"type\": \"consistent_hash\", \"key\": \"header:x-key\"},
  \"health_check\": {\"active\": {\"path\": \"/healthz\", \"interval_ms\": $INTERVAL_MS,
  \"unhealthy\": $UNHEALTHY, \"healthy\": 2}}}" >/dev/null
ctl put /tollgate/routes/svc '{"paths": ["/svc/*rest"], "upstream": "svc"}' >/dev/null

# Pebble's own HTTPS certificate (for 127.0.0.1 and localhost) and its root,
# which the gateways' `acme.tls_roots` trusts. Its *issuing* root is another,
# made at its start (management API /roots/0).
peb=$tmp/pebble
mkdir -p "$peb"
(
    cd "$peb"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout root.key \
        -out tls-root.pem -days 30 -subj "/CN=bench pebble TLS root" \
        -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout tls-key.pem \
        -out tls.csr -subj "/CN=bench pebble"
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >ext.cnf
    openssl x509 -req -in tls.csr -CA tls-root.pem -CAkey root.key -CAcreateserial \
        -out tls-cert.pem -days 30 -extfile ext.cnf
) >"$peb/openssl.log" 2>&1 || {
    cat "$peb/openssl.log" >&2
    die "openssl could not make pebble's certificate"
}

# ------------------------------------------------------------- the gateways

# start_gateway INDEX: node g<INDEX+1> on etcd, threads 1, a plain and a TLS
# listener, the bootstrap acme pointing at pebble; waits until it is
# connected to etcd and ready.
gw_pids=()
start_gateway() {
    local i=$1 name=g$(($1 + 1)) conf=$tmp/g$(($1 + 1)).yaml
    cat >"$conf" <<EOF
# generated by bench/${0##*/}
listen: ["127.0.0.1:${gw_http[i]}", {addr: "127.0.0.1:${gw_tls[i]}", tls: true}]
admin: { listen: "127.0.0.1:${gw_admin[i]}" }
threads: 1
state_dir: "$tmp/state-$name"
node_id: $name
access_log: { enabled: false }
etcd: { endpoints: ["$etcd_url"] }
acme: { directory: "https://127.0.0.1:$acme_port/dir", email: "ops@acme.test", tls_roots: "$peb/tls-root.pem" }
EOF
    "$TOLLGATE" check -c "$conf" >/dev/null || die "$name: generated config rejected ($conf)"
    start "$name" env -u TOLLGATE_PROXY_ENGINE RUST_LOG=info "$TOLLGATE" run -c "$conf"
    gw_pids+=("$started_pid")
}
# node_status INDEX: node INDEX's /status (compact JSON).
node_status() { curl -fsS --max-time 2 "http://127.0.0.1:${gw_admin[$1]}/status"; }
# wait_shared N: until nodes 0..N-1 all say health_verdicts "shared" and
# gateways N (30 s at most); prints the seconds it took.
wait_shared() {
    local n=$1 i s t0 deadline=$((SECONDS + 30))
    t0=$(date +%s.%N)
    for ((i = 0; i < n; i++)); do
        while :; do
            s=$(node_status "$i" 2>/dev/null) || s=""
            [[ "$s" == *'"health_verdicts":"shared"'* && "$s" == *"\"gateways\":$n,"* &&
                "$s" == *'"ready":true'* ]] && break
            alive "${gw_pids[i]}" || die "g$((i + 1)) exited (see its log)"
            ((SECONDS < deadline)) || die "g$((i + 1)) not shared in a fleet of $n after 30 s: ${s:-no /status}"
            sleep 0.05
        done
    done
    elapsed_since "$t0"
}
# prober_split N: each node's tollgate_cluster_roles{role="health-prober"},
# "a/b/c" (from /status roles); dies unless they add up to the instances.
prober_split() {
    local n=$1 i v sum=0 split=""
    for ((i = 0; i < n; i++)); do
        v=$(node_status "$i" | python3 -c 'import json, sys; print(json.load(sys.stdin)["roles"].get("health-prober", 0))')
        sum=$((sum + v))
        split+="${split:+/}$v"
    done
    ((sum == INSTANCES)) || die "the probers of $n nodes cover $sum instances, not $INSTANCES ($split)"
    echo "$split"
}

# ------------------------------------------------------ (1) tollgate probes

declare -A shared_s=()
running=0
for n in "${sizes[@]}"; do
    while ((running < n)); do
        start_gateway "$running"
        running=$((running + 1))
    done
    shared_s[$n]=$(wait_shared "$n")
    gw_rate[$n]=$(measure_probes)
    gw_split[$n]=$(prober_split "$n")
    log "(1) tollgate x$n: shared after ${shared_s[$n]} s; probes/instance/interval (mean min max)" \
        "${gw_rate[$n]}; instances probed per node ${gw_split[$n]}"
done
# verdict_writes N: tollgate_health_verdict_writes_total summed over nodes 0..N-1.
verdict_writes() {
    local i
    for ((i = 0; i < $1; i++)); do curl -fsS "http://127.0.0.1:${gw_admin[i]}/metrics"; done |
        awk '/^tollgate_health_verdict_writes_total/ { s += $NF } END { printf "%.0f\n", s }'
}
# Every instance stayed healthy through (1): no verdict may have been written.
writes_1=$(verdict_writes "$max_n")
# Down to 3 nodes: the rest stop (each revokes its lease on the way out).
if ((max_n > 3)); then
    stop "${gw_pids[@]:3}"
    gw_pids=("${gw_pids[@]:0:3}")
    back3_s=$(wait_shared 3)
    log "stopped nodes 4-$max_n; 3 shared again after $back3_s s"
fi
writes_before=$(verdict_writes 3)

# ---------------------------------------------- (2) verdict -> traffic stops

log "(2) $runs failures of instance i$(printf %02d $SICK), each until every node sends elsewhere"
nodes=()
for i in 0 1 2; do nodes+=("g$((i + 1)),http://127.0.0.1:${gw_http[i]},$tmp/g$((i + 1)).log"); done
python3 bench/cluster_probe.py failover "$ctl_url" "$etcd_url" "${inst_ports[SICK]}" "$runs" "$poll_ms" \
    "${nodes[@]}" >"$tmp/failover.json" || die "the failover probe failed"
writes_2=$(($(verdict_writes 3) - writes_before))

# ------------------------------------------------- (3) ACME issuance -> served

cat >"$peb/pebble.json" <<EOF
{"pebble": {"listenAddress": "127.0.0.1:$acme_port", "managementListenAddress": "127.0.0.1:$acme_mgmt",
  "certificate": "$peb/tls-cert.pem", "privateKey": "$peb/tls-key.pem",
  "httpPort": ${gw_http[2]}, "tlsPort": $acme_tls, "ocspResponderURL": "",
  "externalAccountBindingRequired": false, "certificateValidityPeriod": 0}}
EOF
start challtestsrv pebble-challtestsrv -defaultIPv4 127.0.0.1 -defaultIPv6 "" \
    -dns01 "127.0.0.1:$dns_port" -http01 "" -https01 "" -tlsalpn01 "" -management "127.0.0.1:$dns_mgmt"
start pebble env PEBBLE_VA_NOSLEEP=1 PEBBLE_WFE_NONCEREJECT=0 PEBBLE_AUTHZREUSE=0 \
    pebble -config "$peb/pebble.json" -dnsserver "127.0.0.1:$dns_port"
pebble_pid=$started_pid
deadline=$((SECONDS + 30))
until curl -fsS -o /dev/null --max-time 2 --cacert "$peb/tls-root.pem" "https://127.0.0.1:$acme_port/dir" 2>/dev/null; do
    alive "$pebble_pid" || die "pebble exited during start-up"
    ((SECONDS < deadline)) || die "pebble does not answer its directory after 30 s"
    sleep 0.05
done
curl -fsS --max-time 10 --cacert "$peb/tls-root.pem" "https://127.0.0.1:$acme_mgmt/roots/0" >"$peb/issuer-root.pem" ||
    die "pebble's issuing root: GET /roots/0 failed"
grep -q "BEGIN CERTIFICATE" "$peb/issuer-root.pem" || die "pebble's /roots/0 is not a certificate"

log "(3) $NAME ordered from pebble, then $renewals forced renewal(s)"
tls_nodes=()
for i in 0 1 2; do tls_nodes+=("g$((i + 1)),${gw_tls[i]},$tmp/g$((i + 1)).log"); done
python3 bench/cluster_probe.py acme "$etcd_url" "$peb/issuer-root.pem" "$NAME" "$renewals" "$handshake_ms" api \
    "${tls_nodes[@]}" >"$tmp/acme.json" || die "the ACME probe failed"
orders=$(for i in 0 1 2; do curl -fsS "http://127.0.0.1:${gw_admin[i]}/metrics"; done |
    awk '/^tollgate_acme_orders_total\{result="issued"\}/ { s += $NF } END { printf "%.0f\n", s }')
orderers=$(for i in 0 1 2; do
    v=$(curl -fsS "http://127.0.0.1:${gw_admin[i]}/metrics" |
        awk '/^tollgate_acme_orders_total\{result="issued"\}/ { s += $NF } END { printf "%.0f", s }')
    printf 'g%s:%s ' "$((i + 1))" "$v"
done)
challenges_left=$(ctl get --prefix --keys-only /tollgate/acme/challenges/ | grep -c . || true)

# ---------------------------------------------------------------- the report

# j FILE EXPR: a value of the probe's JSON (python expression on `d`).
j() { python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print($2)" "$1"; }
fo=$tmp/failover.json ac=$tmp/acme.json
report=$tmp/report.txt
{
    rev=$(git rev-parse --short HEAD 2>/dev/null || echo "no commit")
    git diff --quiet HEAD 2>/dev/null || rev+="+dirty"
    echo "# bench/${0##*/} — $(date -u '+%Y-%m-%d %H:%M:%S UTC'), rev $rev$( ((quick)) && echo ", --quick")"
    echo "# host: $(nproc) cpu(s), $(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo), linux $(uname -r);" \
        "etcd $(etcd --version | awk 'NR == 1 { print $3 }'), $(haproxy -v | awk 'NR == 1 { print "HAProxy " $3 }'), all unpinned"
    echo "# gateways: release tollgate, threads 1 each, distinct node_id and ports, one etcd; $INSTANCES instances" \
        "(one python process, bench/cluster_probe.py serve) registered on one lease; upstream svc:" \
        "health_check.active {path /healthz, interval_ms $INTERVAL_MS, unhealthy $UNHEALTHY, healthy 2}"
    echo "(1) probe load: probes per instance per interval, over ${window} s once every node shares" \
        "(${settle} s settle after); mean over the $INSTANCES instances [min-max]"
    printf '    %-4s %-26s %-26s %s\n' N tollgate "haproxy (N processes)" "tollgate: last node started -> all shared / instances probed per node"
    for n in "${sizes[@]}"; do
        read -r gm gmin gmax <<<"${gw_rate[$n]}"
        read -r hm hmin hmax <<<"${hap_rate[$n]}"
        printf '    %-4s %-26s %-26s %s\n' "$n" "$gm [$gmin-$gmax]" "$hm [$hmin-$hmax]" "${shared_s[$n]} s / ${gw_split[$n]}"
    done
    echo "    verdicts written by tollgate through (1) (every instance healthy, nodes joining): $writes_1"
    echo "    haproxy: each process 'option httpchk GET /healthz', 'check inter ${INTERVAL_MS}ms rise 2 fall $UNHEALTHY' on all $INSTANCES"
    echo "(2) verdict -> traffic stops, 3 gateways: $(j "$fo" 'd["runs"]') failures of one instance (503 on /healthz and" \
        "on requests from t0); a poller per node every ${poll_ms} ms with the instance's consistent-hash key" \
        "($(j "$fo" 'd["requests"]') requests, $(j "$fo" 'd["errors"]') transport errors, largest gap $(j "$fo" 'round(d["max_gap_ms"], 1)') ms)"
    row() { # LABEL NAME
        printf '    %-58s p50 %7.1f ms  p99 %7.1f ms  [%.1f-%.1f]\n' "$1" \
            "$(j "$fo" "d['$2_p50']")" "$(j "$fo" "d['$2_p99']")" "$(j "$fo" "d['$2_min']")" "$(j "$fo" "d['$2_max']")"
    }
    row "t0 -> last request to it, max over nodes" stop_max
    row "  t0 -> the prober's local verdict (probing floor)" local
    row "  local verdict -> shared verdict written (put returned)" local_to_written
    row "  written -> every node sends elsewhere (next poll)" written_to_moved
    row "  seen on an etcd watch (JSON gateway) -> every node elsewhere" watched_to_moved
    row "recovery: well again -> verdict withdrawn (etcd watch)" withdrawn
    row "recovery: well again -> back on every node" back
    echo "    per node, t0 -> last request p50 (g1 g2 g3): $(j "$fo" '" ".join(f"{x:.1f}" for x in d["stop_node_p50"])') ms;" \
        "probers: $(j "$fo" '",".join(d["probers"])'); flaps (a node back on the sick instance): $(j "$fo" 'd["flaps"]');" \
        "other verdicts meanwhile: $(j "$fo" 'd["stray_verdicts"]'); verdict writes: $writes_2 (one down and one up per run)"
    echo "    floor: the verdict needs $UNHEALTHY failed probes in a row: the last comes ($UNHEALTHY - 1) x $INTERVAL_MS ms" \
        "+ [0, $INTERVAL_MS) ms after t0 ($(((UNHEALTHY - 1) * INTERVAL_MS))-$((UNHEALTHY * INTERVAL_MS)) ms), whoever probes"
    echo "(3) ACME (pebble, HTTP-01 through node 3's plain listener), 3 gateways with a TLS listener; served = a handshake" \
        "with SNI $NAME presenting the certificate in etcd, verified against pebble's issuing root (a handshake per node every $handshake_ms ms," \
        "one every $(j "$ac" 'round(d["handshake_cycle_ms"], 1)') ms in all: the resolution);" \
        "issued = the earlier of the orderer's log line once its write returned and an etcd watch seeing it"
    printf '    first order:  put -> issued (cert in etcd) %.0f ms; issued -> served on every node %.1f ms; put -> served %.0f ms\n' \
        "$(j "$ac" 'd["order"]["put_to_issued_ms"]')" "$(j "$ac" 'max(d["order"]["issued_to_served_ms"])')" \
        "$(j "$ac" 'd["order"]["put_to_served_ms"]')"
    printf '    %s forced renewals: renew put -> issued p50 %.0f ms, p99 %.0f ms; renew put -> served on every node p50 %.0f ms, p99 %.0f ms\n' \
        "$(j "$ac" 'd["renewals"]')" "$(j "$ac" 'd["renew_to_issued_p50"]')" "$(j "$ac" 'd["renew_to_issued_p99"]')" \
        "$(j "$ac" 'd["renew_to_served_p50"]')" "$(j "$ac" 'd["renew_to_served_p99"]')"
    printf '    issued -> served on every node (max over nodes), all %s issuances: p50 %.1f ms, p99 %.1f ms, max %.1f ms\n' \
        "$(($(j "$ac" 'd["renewals"]') + 1))" "$(j "$ac" 'd["issued_to_served_max_p50"]')" \
        "$(j "$ac" 'd["issued_to_served_max_p99"]')" "$(j "$ac" 'd["issued_to_served_max_max"]')"
    echo "    orders issued (tollgate_acme_orders_total{result=\"issued\"}): $orders (${orderers% }); challenge tokens left in etcd: $challenges_left"
    echo "# whole run: $(elapsed_since "$bench_start") s"
} >"$report"

publish_report "$report" "$out"
status=0
if ((writes_1 > 0)); then
    log "FAIL: $writes_1 health verdict(s) written in (1), where every instance was healthy"
    status=1
fi
if (($(j "$fo" 'd["flaps"]') > 0 || $(j "$fo" 'd["stray_verdicts"]') > 0)); then
    log "FAIL: a verdict flapped (a node sent to the sick instance again after it had stopped) or another instance was marked down"
    status=1
fi
if ((orders != renewals + 1)); then
    log "FAIL: $orders orders issued for 1 order and $renewals renewal(s)"
    status=1
fi
if ((challenges_left > 0)); then
    log "FAIL: $challenges_left ACME challenge token(s) left in etcd"
    status=1
fi
exit "$status"
