#!/usr/bin/env bash
# Registry resilience benchmark: a real etcd, three echo backends each
# registered by a lease-client (the Go clientv3 pattern: keep-alive every
# TTL/3, give the lease up after a TTL without an answer, never register
# again), and tollgate in front (route with retries: 2), under wrk load.
#
#   (1) SIGKILL to ejection: one backend is SIGKILLed halfway through a
#       --kill-duration run while its lease lives on (its lease-client is
#       still running); how long until tollgate ejects it
#       (tollgate_ejections_total, polled every 10 ms), and what clients saw.
#   (2) an etcd outage of --outage seconds (longer than --ttl): the
#       lease-clients give their leases up; etcd comes back with the leases
#       restored for one more TTL, then expires them together. The run goes
#       on for 3 TTLs after etcd's return. Requests failed (target: 0 while
#       the services are healthy), instances preserved at the end.
#
# Usage: bench/registry.sh [options]
#   --ttl S              lease TTL of the services (default 10)
#   --outage S           seconds etcd is down (default 30; must exceed --ttl)
#   --kill-duration S    seconds of run (1) (default 10)
#   --preservation on|off  registry self-preservation (default on; off shows
#                        what the outage does without it)
#   --conns C            wrk connections (default 32)
#   --threads T          wrk threads (default 2)
#   --quick              smoke mode: --ttl 3 --outage 5 --kill-duration 4;
#                        writes bench/results/registry-quick.txt instead of -latest
#   --out FILE           where to write the report
#                        (default bench/results/registry-latest.txt)
#   --no-build           do not run cargo build (use the existing binaries)
#   -h, --help
#
# Environment: ECHO_BACKEND_BIN, TOLLGATE_BIN override the binaries (default
# target/release/*); KEEP_TMP=1 keeps the temp dir (config, logs, raw wrk output).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

ttl=10 outage=30 kill_duration=10 preservation=on
wrk_options
value_opts+=([--ttl]=ttl [--outage]=outage [--kill-duration]=kill_duration [--preservation]=preservation)
parse_args "$@"
quick_defaults --ttl=3 --outage=5 --kill-duration=4
check_wrk_options
require_positive "ttl:$ttl" "outage:$outage" "kill-duration:$kill_duration"
((ttl >= 2)) || die "--ttl must be at least 2 (etcd's least lease TTL)"
((outage > ttl)) || die "--outage must exceed --ttl: that is the case measured"
((kill_duration >= 2)) || die "--kill-duration must be at least 2"
[[ "$preservation" == on || "$preservation" == off ]] || die "--preservation takes on or off"

need_tools etcd etcdctl
gateway_bench_setup registry
LEASE_CLIENT=$(release_bin lease-client)
require_bin lease-client "$LEASE_CLIENT"
load_prefix=()

read -r port_etcd port_peer port_b1 port_b2 port_b3 port_toll port_admin < <(free_ports 7)
ETCD_URL="http://127.0.0.1:$port_etcd"
backend_ports=("$port_b1" "$port_b2" "$port_b3")
URL="http://127.0.0.1:$port_toll/api/echo"
export ETCDCTL_API=3
ctl() { etcdctl --endpoints "$ETCD_URL" --dial-timeout 2s "$@"; }
# keys N: how many registry keys etcd holds (empty when it cannot say).
keys() { ctl get --prefix --keys-only /services/api/ 2>/dev/null | grep -c . || true; }

# ---------------------------------------------------------------- the servers

start_etcd etcd "$port_etcd" "$port_peer"
backend_pids=() client_pids=()
for i in 0 1 2; do
    start_echo "echo-backend-$((i + 1))" "b$((i + 1))" "${backend_ports[$i]}" /
    backend_pids+=("$started_pid")
    start "lease-client-$((i + 1))" "$LEASE_CLIENT" --etcd "$ETCD_URL" \
        --key "/services/api/b$((i + 1))" --value "http://127.0.0.1:${backend_ports[$i]}" --ttl "$ttl"
    client_pids+=("$started_pid")
done
ctl put /tollgate/routes/api '{"paths":["/api/*rest"],"upstream":"api","retries":2}' >/dev/null

conf=$tmp/tollgate.yaml
{
    gateway_header "$port_toll" "$port_admin" "$tmp/state"
    cat <<EOF
access_log: { enabled: false }
etcd: { endpoints: ["$ETCD_URL"], self_preservation: { enabled: $([[ $preservation == on ]] && echo true || echo false) } }
EOF
} >"$conf"
start tollgate "$TOLLGATE" run -c "$conf"
toll_pid=$started_pid
wait_http tollgate "$toll_pid" "$URL"

status_field() { # FIELD: a number from /status
    curl -fsS --max-time 2 "http://127.0.0.1:$port_admin/status" |
        python3 -c "import json,sys; print(json.load(sys.stdin).get('$1', 0))"
}
ejections() {
    curl -fsS --max-time 2 "http://127.0.0.1:$port_admin/metrics" |
        awk '$1 == "tollgate_ejections_total{upstream=\"api\"}" { print $2; found = 1 } END { if (!found) print 0 }'
}
wait_instances() { # N
    local deadline=$((SECONDS + 30))
    until [[ "$(status_field instances)" == "$1" ]]; do
        ((SECONDS < deadline)) || die "tollgate never saw $1 instances"
        sleep 0.05
    done
}
wait_instances 3
lua_done_hook >"$tmp/report.lua"

# wrk_run TAG SECONDS: a wrk run in the background (wrk_wait_result to end it).
wrk_run() {
    raw=$tmp/wrk-$1.txt
    wrk_start "$raw" "$tmp/report.lua" "$URL" "$2"
}
# wrk_end TAG: waits for the run (in this shell: wrk is its child) and sets
# $res to "rps p50 p99 requests status_errors socket_errors".
wrk_end() {
    wrk_wait "$tmp/wrk-$1.txt" "$1" || die "wrk failed"
    res=$(wrk_result "$tmp/wrk-$1.txt" "$1") || die "no wrk result"
}

# ------------------------------------------------- (1) SIGKILL to ejection

log "(1) one of 3 backends SIGKILLed at $((kill_duration / 2))s of a ${kill_duration}s run; its lease lives on"
wrk_run kill "$kill_duration"
sleep "$((kill_duration / 2))"
before=$(ejections)
kill -KILL "${backend_pids[2]}"
killed_at=$(date +%s%N)
eject_ms=""
for _ in $(seq 1 500); do
    if [[ "$(ejections)" != "$before" ]]; then
        eject_ms=$((($(date +%s%N) - killed_at) / 1000000))
        break
    fi
    sleep 0.01
done
wrk_end kill
read -r k_rps _ k_p99 k_req k_status k_socket <<<"$res"
wait "${backend_pids[2]}" 2>/dev/null || true
log "  ejected after ${eject_ms:-never} ms; ${k_req} requests, errors ${k_status}+${k_socket}"
# Its lease-client dies too, without a word: the key expires after the TTL.
kill -KILL "${client_pids[2]}"
wait "${client_pids[2]}" 2>/dev/null || true
deadline=$((SECONDS + ttl + 15))
until [[ "$(keys)" == 2 ]]; do
    ((SECONDS < deadline)) || die "the killed instance's key never expired"
    sleep 0.2
done
wait_instances 2

# ----------------------------------------------- (2) an etcd outage > TTL

total=$((5 + outage + 3 * ttl + 5))
log "(2) etcd down ${outage}s (TTL ${ttl}s) during a ${total}s run; the lease-clients give up"
wrk_run outage "$total"
sleep 5
kill -KILL "$etcd_pid"
wait "$etcd_pid" 2>/dev/null || true
down_at=$SECONDS
sleep "$outage"
start_etcd etcd "$port_etcd" "$port_peer"
back_at=$SECONDS
log "  etcd back after $((back_at - down_at))s"
expired_after="" max_preserved=0
while alive "$wrk_pid"; do
    n=$(keys)
    if [[ -z "$expired_after" && "$n" == 0 ]]; then
        expired_after=$((SECONDS - back_at))
        log "  every registry key expired ${expired_after}s after etcd came back"
    fi
    p=$(status_field preserved_instances 2>/dev/null || echo 0)
    ((p > max_preserved)) && max_preserved=$p
    sleep 0.5
done
wrk_end outage
read -r o_rps _ o_p99 o_req o_status o_socket <<<"$res"
end_preserved=$(status_field preserved_instances)
end_instances=$(status_field instances)
given_up=$(grep -l "given up\|expired; not registering" "$tmp"/lease-client-[12].log 2>/dev/null | wc -l)
log "  ${o_req} requests, errors ${o_status}+${o_socket}; preserved ${end_preserved}, instances ${end_instances}"

# ---------------------------------------------------------------- the report

ms() { awk -v v="$1" 'BEGIN { printf "%.3fms", v / 1000 }'; }
report=$tmp/report.txt
duration="${kill_duration}s/${total}" # the two runs' lengths, for the header
{
    report_header "lease TTL ${ttl}s; route retries: 2; tollgate threads 1; self-preservation $preservation"
    echo "# (1) one of 3 backends SIGKILLed under load, its lease alive (the lease-client still runs)"
    printf '%-26s %s\n' "killed -> ejected" "${eject_ms:-never} ms (tollgate_ejections_total, polled every 10 ms)"
    printf '%-26s %s requests, %s non-2xx, %s socket errors, %.0f req/s, p99 %s\n' "clients saw" \
        "$k_req" "$k_status" "$k_socket" "$k_rps" "$(ms "$k_p99")"
    echo "# (2) etcd down ${outage}s (> TTL ${ttl}s); ${given_up} of 2 lease-clients gave their lease up and never registered again"
    printf '%-26s %s s after etcd returned\n' "registry keys expired" "${expired_after:-never}"
    printf '%-26s %s requests, %s non-2xx, %s socket errors, %.0f req/s, p99 %s\n' "clients saw" \
        "$o_req" "$o_status" "$o_socket" "$o_rps" "$(ms "$o_p99")"
    printf '%-26s %s of 2 (most seen %s); instances served: %s\n' "preserved at the end" \
        "$end_preserved" "$max_preserved" "$end_instances"
    echo "# target: (1) ejected at the first failed connect, no client error (retries); (2) 0 failed requests, both preserved"
} >"$report"
publish_report "$report" "$out"

status=0
[[ -n "$eject_ms" ]] || { log "FAIL: the killed instance was never ejected"; status=1; }
((k_status + k_socket == 0)) || { log "FAIL: clients saw errors when an instance was killed"; status=1; }
[[ -n "$expired_after" ]] || { log "FAIL: the keys never expired: the outage did not do what it should"; status=1; }
if [[ "$preservation" == on ]]; then
    ((o_status + o_socket == 0)) || { log "FAIL: requests failed through the etcd outage"; status=1; }
    ((end_preserved == 2)) || { log "FAIL: $end_preserved of 2 instances preserved at the end"; status=1; }
fi
exit "$status"
