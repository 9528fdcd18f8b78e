#!/usr/bin/env bash
# Brings up a working gateway on this machine: a local etcd (data in
# .demo/), three demo services that register themselves with
# `tollgate register`, routes written to etcd, and tollgate in front.
# Ctrl-C stops everything. Ports: gateway 8080, admin 9180, etcd 2379,
# services 9001-9003 (override with TOLLGATE_PORT, ETCD_PORT).
set -euo pipefail
cd "$(dirname "$0")/.."

GW_PORT=${TOLLGATE_PORT:-8080}
ADMIN_PORT=${TOLLGATE_ADMIN_PORT:-9180}
ETCD_PORT=${ETCD_PORT:-2379}
ETCD_PEER_PORT=$((ETCD_PORT + 1))
ETCD="http://127.0.0.1:${ETCD_PORT}"

scripts/deps.sh
echo "building (release)..."
cargo build --release --quiet -p tollgate -p testkit --bins

DEMO=.demo
mkdir -p "$DEMO/state" "$DEMO/logs"
pids=()
cleanup() {
    trap - EXIT INT TERM
    echo; echo "stopping demo..."
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

wait_http() { # URL, what
    for _ in $(seq 1 100); do
        if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    echo "$2 did not come up; see $DEMO/logs/" >&2
    return 1
}

etcd --name demo --data-dir "$DEMO/etcd" \
    --listen-client-urls "$ETCD" --advertise-client-urls "$ETCD" \
    --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-cluster "demo=http://127.0.0.1:${ETCD_PEER_PORT}" \
    >"$DEMO/logs/etcd.log" 2>&1 &
pids+=($!)
wait_http "$ETCD/health" etcd

for svc in users:9001 users:9002 web:9003; do
    name=${svc%%:*}; port=${svc##*:}
    target/release/echo-backend --name "$name-$port" --listen "127.0.0.1:$port" \
        >"$DEMO/logs/$name-$port.log" 2>&1 &
    pids+=($!)
    target/release/tollgate register --etcd "$ETCD" --service "$name" \
        --addr "http://127.0.0.1:$port" --id "$name-$port" --ttl 10 \
        --health-url "http://127.0.0.1:$port/healthz" \
        >"$DEMO/logs/register-$name-$port.log" 2>&1 &
    pids+=($!)
done

export ETCDCTL_API=3
etcdctl --endpoints "$ETCD" put /tollgate/routes/users \
    '{"paths":["/api/users/:id","/api/users"],"upstream":"users","strip_prefix":"/api"}' >/dev/null
etcdctl --endpoints "$ETCD" put /tollgate/routes/web \
    '{"paths":["/*rest"],"priority":-1,"upstream":"web"}' >/dev/null

sed -e "s#^listen:.*#listen: [\"127.0.0.1:${GW_PORT}\"]#" \
    -e "s#^admin:.*#admin: { listen: \"127.0.0.1:${ADMIN_PORT}\" }#" \
    -e "s#^state_dir:.*#state_dir: $PWD/$DEMO/state#" \
    -e "s#endpoints: .*#endpoints: [\"$ETCD\"]#" \
    conf/tollgate-etcd.yaml >"$DEMO/tollgate.yaml"
target/release/tollgate check -c "$DEMO/tollgate.yaml"
target/release/tollgate run -c "$DEMO/tollgate.yaml" >"$DEMO/logs/tollgate.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:${ADMIN_PORT}/readyz" tollgate

cat <<TXT

Tollgate is up (logs in $DEMO/logs/):
  curl -s localhost:${GW_PORT}/api/users/42        # users service, round-robin over 2 instances
  curl -s localhost:${GW_PORT}/anything            # web service
  curl -s localhost:${ADMIN_PORT}/status           # applied revision, counts, etcd state
  curl -s localhost:${ADMIN_PORT}/metrics
  ETCDCTL_API=3 etcdctl --endpoints $ETCD put /tollgate/routes/hello '{"paths":["/hello"],"upstream":"web"}'
  ETCDCTL_API=3 etcdctl --endpoints $ETCD get --prefix /services/
Press Ctrl-C to stop.
TXT
wait "${pids[-1]}"
