#!/usr/bin/env bash
# Admin API and `tollgate apply` at scale (#17), against a real etcd and two
# gateway nodes (one thread each) in front of one echo backend:
#   (1) admin API write -> served on both nodes: N routes PUT one after the
#       other through node 1's admin API; for each, the API's answer time
#       (the etcd write included) and the time from that answer until both
#       nodes serve the new path (bench/admin_probe.py), p50 and p99
#       (target: p99 <= 10 ms beyond the etcd write);
#   (2) `tollgate apply` of --routes routes (default 10,000) from one file
#       with --wait: wall time, etcd transactions used, and what the
#       gateways served meanwhile (their route counts sampled every 20 ms:
#       with the batch hold, none of the apply or all of it, never a part).
# Prints a table and writes it to bench/results/.
#
# Usage: bench/admin.sh [options]
#   --writes N     admin API writes timed in (1) (default 200)
#   --routes N     routes in the apply of (2) (default 10000)
#   --quick        smoke mode: 20 writes, 500 routes; writes admin-quick.txt
#   --no-build     use the existing release binaries
#   -h, --help
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

writes=200 routes=10000
value_opts+=([--writes]=writes [--routes]=routes)
parse_args "$@"
if ((quick)); then
    [[ -n "${explicit[--writes]:-}" ]] || writes=20
    [[ -n "${explicit[--routes]:-}" ]] || routes=500
fi
require_positive writes:"$writes" routes:"$routes"

need_tools etcd
gateway_bench_setup admin
read -r port_etcd peer_etcd port_backend gw1 admin1 api1 gw2 admin2 <<<"$(free_ports 8)"
etcd_url=http://127.0.0.1:$port_etcd
start_etcd etcd "$port_etcd" "$peer_etcd"
start_echo backend b1 "$port_backend" /

API_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
key_hash=$("$TOLLGATE" hash-secret "$API_KEY" | python3 -c 'import json, sys; print(json.load(sys.stdin)["key_sha256"])')
node_config() { # NAME PORT ADMIN [ADMIN_API_PORT]
    gateway_header "$2" "$3" "$tmp/state-$1"
    echo "node_id: $1"
    echo "access_log: { enabled: false }"
    echo "etcd: { endpoints: [\"$etcd_url\"] }"
    if [[ -n "${4:-}" ]]; then
        echo "admin_api: { listen: \"127.0.0.1:$4\", keys: [{ name: bench, sha256: \"$key_hash\", role: admin }] }"
    fi
}
node_config n1 "$gw1" "$admin1" "$api1" >"$tmp/n1.yaml"
node_config n2 "$gw2" "$admin2" >"$tmp/n2.yaml"
for n in n1 n2; do
    "$TOLLGATE" check -c "$tmp/$n.yaml" >/dev/null || die "$n: generated config rejected"
done
start n1 "$TOLLGATE" run -c "$tmp/n1.yaml"
n1_pid=$started_pid
start n2 "$TOLLGATE" run -c "$tmp/n2.yaml"
n2_pid=$started_pid
wait_http n1 "$n1_pid" "http://127.0.0.1:$admin1/readyz"
wait_http n2 "$n2_pid" "http://127.0.0.1:$admin2/readyz"

api=http://127.0.0.1:$api1/admin/v1
code=$(curl -sS -o "$tmp/put.json" -w '%{http_code}' -X PUT -H "x-api-key: $API_KEY" \
    -H 'content-type: application/json' --data "{\"nodes\": [\"http://127.0.0.1:$port_backend\"]}" \
    "$api/upstreams/backend")
[[ "$code" == 201 ]] || die "PUT upstream: HTTP $code: $(cat "$tmp/put.json")"

# (1) write -> served on both nodes.
log "(1) $writes admin API writes, each until both nodes serve it"
read -r ans50 ans99 srv50 srv99 <<<"$(python3 bench/admin_probe.py "$api" "$API_KEY" "$writes" \
    "http://127.0.0.1:$gw1" "http://127.0.0.1:$gw2")"

# (2) a large apply, the gateways' route counts sampled meanwhile.
log "(2) tollgate apply of $routes routes"
python3 - "$routes" >"$tmp/routes.yaml" <<'PY'
import sys
for i in range(int(sys.argv[1])):
    print("---")
    print("kind: route")
    print(f"id: bulk-{i:05d}")
    print(f'spec: {{paths: ["/bulk/{i}"], upstream: backend}}')
PY
python3 - "$tmp/samples.txt" "http://127.0.0.1:$admin1/status" "http://127.0.0.1:$admin2/status" <<'PY' &
import json, sys, time, urllib.request
out, urls = sys.argv[1], sys.argv[2:]
seen = set()
stop = time.monotonic() + 600
with open(out, "w") as f:
    while time.monotonic() < stop:
        for u in urls:
            try:
                with urllib.request.urlopen(u, timeout=2) as r:
                    n = json.load(r)["routes"]
            except Exception:
                continue
            if n not in seen:
                seen.add(n)
                f.write(f"{n}\n")
                f.flush()
        time.sleep(0.02)
PY
sampler=$!
pids+=("$sampler")
base_routes=$(curl -fsS "http://127.0.0.1:$admin1/status" | python3 -c 'import json, sys; print(json.load(sys.stdin)["routes"])')
started=$(date +%s.%N)
"$TOLLGATE" apply -f "$tmp/routes.yaml" --etcd "$etcd_url" -c /nonexistent --wait 120 >"$tmp/apply.out" 2>&1 ||
    die "apply failed: $(tail -3 "$tmp/apply.out")"
ended=$(date +%s.%N)
sleep 0.2
kill "$sampler" 2>/dev/null || true
applied_line=$(grep '^applied at revision' "$tmp/apply.out")
txns=$(sed -E 's/.*, ([0-9]+) transactions\)/\1/' <<<"$applied_line")
wall=$(awk -v a="$started" -v b="$ended" 'BEGIN { printf "%.2f", b - a }')
# Route counts seen, less the ones there before: the gateways hold a
# multi-transaction apply until it is whole, so only 0 and all of it.
counts=$(sort -n -u "$tmp/samples.txt" | awk -v b="$base_routes" '{ print $1 - b }' | awk '$1 >= 0' | paste -sd, -)
partial=$(tr , '\n' <<<"$counts" | awk -v n="$routes" '$1 != 0 && $1 != n' | paste -sd, -)

report=$tmp/report.txt
{
    rev=$(git rev-parse --short HEAD 2>/dev/null || echo "no commit")
    git diff --quiet HEAD 2>/dev/null || rev+="+dirty"
    echo "# bench/${0##*/} — $(date -u '+%Y-%m-%d %H:%M:%S UTC'), rev $rev"
    echo "# host: $(nproc) cpu(s), linux $(uname -r); one etcd, two gateways (threads 1), one echo backend"
    echo "(1) admin API write -> served on both nodes, $writes writes one after the other"
    printf '    API answer (etcd write included): p50 %s ms, p99 %s ms\n' "$ans50" "$ans99"
    printf '    answer -> served on both:          p50 %s ms, p99 %s ms (target p99 <= 10 ms)\n' "$srv50" "$srv99"
    echo "(2) tollgate apply of $routes routes (--wait: until both nodes applied)"
    echo "    wall time ${wall} s, $txns etcd transactions ($applied_line)"
    echo "    route counts the gateways served meanwhile: ${counts:-none sampled}"
    echo "    counts that are part of the apply (held until whole): ${partial:-none}"
} >"$report"
out=bench/results/admin-latest.txt
((!quick)) || out=bench/results/admin-quick.txt
publish_report "$report" "$out"
[[ -z "$partial" ]] || die "a gateway served part of the apply: $partial"
