#!/usr/bin/env bash
# Soak: tollgate under a mix of abuse and churn for --minutes (default 10),
# then a report of whether anything grew or failed.
#
# Running all the while, against a real etcd and the release binary:
#   - wrk keep-alive load (-t1 -c16) on a route with retries: 2;
#   - a client mix (bench/soak_mix.py): new connections per request, client
#     aborts (a request cut off mid-headers, one mid-body), 64 KiB uploads,
#     pipelined pairs;
#   - 100 route updates/s through etcd's JSON gateway (one route rewritten,
#     one created and deleted in turn);
#   - registry churn: an extra instance registers (lease-client, TTL 3 s)
#     and is SIGKILLed every 5 s, so its lease expires;
#   - one of the three backends SIGKILLed and restarted every minute.
# Sampled every 10 s: tollgate's RSS and open file descriptors. Then 10,000
# idle connections are opened at once: RSS per idle connection.
#
# Targets: RSS and fds flat (end within 5% of the first sample after the
# 1-minute warm-up); no 5xx not explained by a killed backend; no panic.
#
# Usage: bench/soak.sh [options]
#   --minutes M          how long (default 10)
#   --idle N             idle connections for the per-connection figure (default 10000)
#   --quick              smoke mode: 30 s, 1,000 idle connections; writes
#                        bench/results/soak-quick.txt instead of -latest
#   --out FILE           where to write the report (default bench/results/soak-latest.txt)
#   --no-build           do not run cargo build
#   -h, --help
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

minutes=10 idle=10000 seconds=""
wrk_options
conns=16 wrk_threads=1 # the keep-alive share of the load; the mix adds the rest
value_opts+=([--minutes]=minutes [--idle]=idle)
parse_args "$@"
quick_defaults --idle=1000
check_wrk_options
require_positive "minutes:$minutes" "idle:$idle"
seconds=$((minutes * 60))
((quick)) && seconds=30
duration=$seconds
warm=$((seconds >= 120 ? 60 : seconds / 3))
first_kill=$((seconds >= 120 ? 60 : seconds / 2))

need_tools etcd etcdctl
gateway_bench_setup soak
LEASE_CLIENT=$(release_bin lease-client)
require_bin lease-client "$LEASE_CLIENT"
load_prefix=()
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

read -r port_etcd port_peer port_b1 port_b2 port_b3 port_extra port_toll port_admin < <(free_ports 8)
ETCD_URL="http://127.0.0.1:$port_etcd"
backend_ports=("$port_b1" "$port_b2" "$port_b3")
BASE="http://127.0.0.1:$port_toll"

start_etcd etcd "$port_etcd" "$port_peer"
export ETCDCTL_API=3
ctl() { etcdctl --endpoints "$ETCD_URL" --dial-timeout 2s "$@" >/dev/null; }

backend_pids=()
for i in 0 1 2; do
    start_echo "echo-backend-$((i + 1))" "b$((i + 1))" "${backend_ports[$i]}" /
    backend_pids+=("$started_pid")
    start "lease-client-$((i + 1))" "$LEASE_CLIENT" --etcd "$ETCD_URL" \
        --key "/services/api/b$((i + 1))" --value "http://127.0.0.1:${backend_ports[$i]}" --ttl 10
done
start_echo echo-backend-extra extra "$port_extra" /
ctl put /tollgate/routes/api '{"paths":["/api/*rest"],"upstream":"api","retries":2}'

conf=$tmp/tollgate.yaml
{
    gateway_header "$port_toll" "$port_admin" "$tmp/state"
    cat <<EOF
access_log: { enabled: true, path: "$tmp/access.log" }
etcd: { endpoints: ["$ETCD_URL"] }
proxy: { client_keepalive_secs: 120 }
EOF
} >"$conf"
start tollgate "$TOLLGATE" run -c "$conf"
toll_pid=$started_pid
wait_http tollgate "$toll_pid" "$BASE/api/ready"

# ------------------------------------------------------------ the load

lua_done_hook >"$tmp/report.lua"
wrk_start "$tmp/wrk.txt" "$tmp/report.lua" "$BASE/api/keepalive" "$seconds"
start mix python3 bench/soak_mix.py --base "$BASE" --etcd "$ETCD_URL" --seconds "$seconds" \
    --out "$tmp/mix.json"
mix_pid=$started_pid

sample() { # -> "rss_kib fds"
    local rss fds
    rss=$(awk '/^VmRSS:/ { print $2 }' "/proc/$toll_pid/status")
    fds=$(find "/proc/$toll_pid/fd" -mindepth 1 -maxdepth 1 2>/dev/null | wc -l)
    echo "$rss $fds"
}
: >"$tmp/samples.tsv"
start_at=$SECONDS next_sample=0 next_kill=$first_kill next_churn=0 extra_pid="" kills=0
while ((SECONDS - start_at < seconds)); do
    t=$((SECONDS - start_at))
    if ((t >= next_sample)); then
        printf '%s\t%s\n' "$t" "$(sample | tr ' ' '\t')" >>"$tmp/samples.tsv"
        next_sample=$((next_sample + 10))
    fi
    if ((t >= next_churn)); then # the extra instance: registered, then killed silently
        if [[ -n "$extra_pid" ]]; then
            kill -KILL "$extra_pid" 2>/dev/null || true
            wait "$extra_pid" 2>/dev/null || true
        fi
        start lease-client-extra "$LEASE_CLIENT" --etcd "$ETCD_URL" --key "/services/api/extra-$t" \
            --value "http://127.0.0.1:$port_extra" --ttl 3
        extra_pid=$started_pid
        next_churn=$((next_churn + 5))
    fi
    if ((t >= next_kill)); then # a backend dies and comes back on its port
        i=$((kills % 3))
        kill -KILL "${backend_pids[$i]}" 2>/dev/null || true
        wait "${backend_pids[$i]}" 2>/dev/null || true
        start_echo "echo-backend-$((i + 1))-r$kills" "b$((i + 1))" "${backend_ports[$i]}" /
        backend_pids[i]=$started_pid
        kills=$((kills + 1))
        log "  $t s: backend b$((i + 1)) killed and restarted"
        next_kill=$((next_kill + 60))
    fi
    sleep 1
done
wrk_wait "$tmp/wrk.txt" soak || die "wrk failed"
read -r w_rps _ w_p99 w_req w_status w_socket <<<"$(wrk_result "$tmp/wrk.txt" soak)"
wait "$mix_pid" || die "the client mix failed"
printf '%s\t%s\n' "$((SECONDS - start_at))" "$(sample | tr ' ' '\t')" >>"$tmp/samples.tsv"

# ------------------------------------------- memory per idle connection

rss_before=$(sample | cut -d' ' -f1)
python3 - "$port_toll" "$idle" "$toll_pid" >"$tmp/idle.txt" <<'PY'
import socket, sys, time
port, n, pid = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    socks.append(s)
def rss():
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1])
time.sleep(1.0)  # let the gateway take every one of them
print(rss(), len(socks))
for s in socks:
    s.close()
PY
read -r rss_idle idle_open <"$tmp/idle.txt"
per_conn=$(awk -v a="$rss_before" -v b="$rss_idle" -v n="$idle_open" 'BEGIN { printf "%.2f", (b - a) / n }')

# ---------------------------------------------------------------- the report

first=$(awk -F'\t' -v w="$warm" '$1 >= w { print; exit }' "$tmp/samples.tsv")
last=$(tail -n 1 "$tmp/samples.tsv")
read -r _ rss0 fd0 <<<"$first"
read -r _ rss1 fd1 <<<"$last"
grow() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.1f%%", (a > 0 ? (b - a) * 100 / a : 0) }'; }
statuses=$(python3 -c '
import json, sys, collections
c = collections.Counter()
for l in open(sys.argv[1]):
    try:
        j = json.loads(l)
    except ValueError:
        continue
    c[j.get("status")] += 1
print(" ".join(f"{k}:{v}" for k, v in sorted(c.items(), key=lambda kv: str(kv[0]))))
' "$tmp/access.log")
fivexx=$(python3 -c '
import json, sys
n = 0
for l in open(sys.argv[1]):
    try:
        s = json.loads(l).get("status", 0)
    except ValueError:
        continue
    n += 500 <= s < 600
print(n)
' "$tmp/access.log")
causes=$(grep -o 'status=5[0-9][0-9] error=[^=]*' "$tmp/tollgate.log" | sed 's/ [a-z_]*$//' | sort | uniq -c | sort -rn | head -5 || true)
panics=$(grep -c -i 'panic' "$tmp/tollgate.log" || true)
mix=$(cat "$tmp/mix.json")

report=$tmp/report.txt
{
    report_header "soak ${seconds}s; tollgate threads 1; samples every 10 s, warm-up ${warm} s"
    echo "# load: wrk keep-alive (above) + client mix (new connections, aborts, uploads, pipelining)"
    echo "#       + 100 route updates/s + an instance registered and expired every 5 s + a backend killed every 60 s ($kills kills)"
    printf '%-28s %s KiB -> %s KiB (%s)\n' "RSS after warm-up -> end" "$rss0" "$rss1" "$(grow "$rss0" "$rss1")"
    printf '%-28s %s -> %s (%s)\n' "open fds after warm-up -> end" "$fd0" "$fd1" "$(grow "$fd0" "$fd1")"
    printf '%-28s %s requests, %s non-2xx, %s socket errors, %.0f req/s, p99 %s us\n' "wrk" \
        "$w_req" "$w_status" "$w_socket" "$w_rps" "$w_p99"
    printf '%-28s %s\n' "client mix" "$mix"
    printf '%-28s %s\n' "access log statuses" "$statuses"
    printf '%-28s %s\n' "5xx answered" "$fivexx"
    if [[ -n "$causes" ]]; then
        echo "# 5xx causes (gateway log, one line a second per route and status):"
        sed 's/^/#   /' <<<"$causes"
    fi
    printf '%-28s %s\n' "panics in the log" "$panics"
    printf '%-28s %s KiB for %s idle connections: %s KiB each\n' "idle connections" \
        "$((rss_idle - rss_before))" "$idle_open" "$per_conn"
    echo "# samples (s, RSS KiB, fds):"
    sed 's/^/#   /' "$tmp/samples.tsv"
    echo "# target: RSS and fds within 5% after warm-up; no unexplained 5xx; no panic"
} >"$report"
publish_report "$report" "$out"

status=0
within() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(b <= a * 1.05) }'; }
((quick)) || within "$rss0" "$rss1" || { log "FAIL: RSS grew more than 5%"; status=1; }
((quick)) || within "$fd0" "$fd1" || { log "FAIL: open fds grew more than 5%"; status=1; }
((panics == 0)) || { log "FAIL: panics in the log"; status=1; }
((fivexx == 0)) || { log "FAIL: $fivexx 5xx answers (causes above)"; status=1; }
exit "$status"
