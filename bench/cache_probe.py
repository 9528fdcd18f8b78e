#!/usr/bin/env python3
"""Cache purge -> applied on every gateway, timed (bench/cache.sh).

For each of N purges of one key, one after the other:
  1. the key is filled on every node: GET it until it answers X-Cache: HIT;
  2. each node's tollgate_cache_purges_total{kind="purge"} is read;
  3. POST /admin/v1/purge {"route": ROUTE, "key": KEY} through the admin API
     (the answer carries the record's etcd revision);
  4. every node's admin listener is polled (keep-alive connections, no sleep)
     until (a) its purge counter moved: the node applied the purge, its entry
     is gone ("applied"), and (b) the revision it reports on /readyz (and
     /status) reached the purge's ("reported");
  5. one GET of the key per node must answer X-Cache: MISS (and refills it).
Polling the key itself would refill it, hence the counters.

Prints one line, in milliseconds: p50 and p99 of the API's answer (the etcd
write included), of answer -> applied on every node, and of answer ->
reported by every node; then the number of purges, of MISS answers after
them and of GETs that should have been a MISS. Exits 1 with a message if a
node does not apply a purge within 10 s or a GET fails.

Usage: cache_probe.py ADMIN_API_BASE API_KEY N ROUTE KEY NODE...
  NODE is GATEWAY_URL,ADMIN_URL (e.g. http://127.0.0.1:8080,http://127.0.0.1:9180)
"""
import http.client
import json
import sys
import time
import urllib.parse

PURGES = 'tollgate_cache_purges_total{kind="purge"}'


class Conn:
    """One keep-alive HTTP/1.1 connection, re-opened when it breaks."""

    def __init__(self, base):
        u = urllib.parse.urlsplit(base)
        self.host, self.port, self.c = u.hostname, u.port, None

    def request(self, method, path, body=None, headers=None):
        for attempt in (0, 1):
            try:
                if self.c is None:
                    self.c = http.client.HTTPConnection(self.host, self.port, timeout=10)
                self.c.request(method, path, body=body, headers=headers or {})
                r = self.c.getresponse()
                data = r.read()
                if (r.getheader("connection") or "").lower() == "close":
                    self.close()
                return r.status, r, data
            except (http.client.HTTPException, OSError):
                self.close()
                if attempt:
                    raise

    def close(self):
        if self.c is not None:
            self.c.close()
        self.c = None


class Node:
    def __init__(self, spec):
        gw, admin = spec.split(",")
        self.name = gw
        self.gw, self.admin = Conn(gw), Conn(admin)

    def get(self, key):
        status, r, _ = self.gw.request("GET", key)
        if status != 200:
            sys.exit(f"{self.name}{key}: HTTP {status}")
        return (r.getheader("x-cache") or "").upper()

    def purges(self):
        status, _, data = self.admin.request("GET", "/metrics")
        if status != 200:
            sys.exit(f"{self.name}: /metrics answered {status}")
        for line in data.decode().splitlines():
            if line.startswith(PURGES + " "):
                return float(line.split()[-1])
        return 0.0  # no purge applied yet: the series does not exist

    def revision(self):
        _, _, data = self.admin.request("GET", "/readyz")
        return int(json.loads(data)["revision"])


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    if len(sys.argv) < 7:
        sys.exit(__doc__)
    base, key_header, n, route, key = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    nodes = [Node(s) for s in sys.argv[6:]]
    u = urllib.parse.urlsplit(base)
    api, api_path = Conn(base), u.path.rstrip("/") + "/purge"
    body = json.dumps({"route": route, "key": key})
    headers = {"x-api-key": key_header, "content-type": "application/json"}
    answer_ms, applied_ms, reported_ms = [], [], []
    misses = 0
    for i in range(n):
        for node in nodes:
            for _ in range(5):
                if node.get(key) == "HIT":
                    break
            else:
                sys.exit(f"purge {i}: {node.name}{key} never answered X-Cache: HIT")
        before = [node.purges() for node in nodes]
        t0 = time.monotonic()
        status, _, data = api.request("POST", api_path, body=body, headers=headers)
        t1 = time.monotonic()
        if status != 202:
            sys.exit(f"POST {api_path}: HTTP {status}: {data[:200]!r}")
        revision = int(json.loads(data)["revision"])
        applied, reported = {}, {}
        deadline = t1 + 10
        while len(applied) < len(nodes) or len(reported) < len(nodes):
            for j, node in enumerate(nodes):
                if j not in applied and node.purges() > before[j]:
                    applied[j] = time.monotonic()
                if j not in reported and node.revision() >= revision:
                    reported[j] = time.monotonic()
            if time.monotonic() > deadline:
                sys.exit(
                    f"purge {i} (revision {revision}) not applied within 10 s: "
                    f"applied by {sorted(applied)}, reported by {sorted(reported)} of {len(nodes)} nodes"
                )
        answer_ms.append((t1 - t0) * 1000)
        applied_ms.append((max(applied.values()) - t1) * 1000)
        reported_ms.append((max(reported.values()) - t1) * 1000)
        misses += sum(node.get(key) == "MISS" for node in nodes)
    print(
        f"{pct(answer_ms, 50):.2f} {pct(answer_ms, 99):.2f} "
        f"{pct(applied_ms, 50):.2f} {pct(applied_ms, 99):.2f} "
        f"{pct(reported_ms, 50):.2f} {pct(reported_ms, 99):.2f} "
        f"{n} {misses} {n * len(nodes)}"
    )


if __name__ == "__main__":
    main()
