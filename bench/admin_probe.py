#!/usr/bin/env python3
"""Admin API write -> served on every gateway, timed (bench/admin.sh).

For each of N routes: PUT /admin/v1/routes/<id> (a new path), then poll each
gateway's proxy port for that path until it answers 200 from the backend.
Prints, in milliseconds, p50/p99 of: the admin API's answer (the etcd write
included), and from that answer until the route was served on every node.

Usage: admin_probe.py ADMIN_BASE API_KEY N GATEWAY_URL...
"""
import json
import sys
import time
import urllib.error
import urllib.request


def put(base, key, rid, body):
    req = urllib.request.Request(
        f"{base}/routes/{rid}",
        data=json.dumps(body).encode(),
        method="PUT",
        headers={"x-api-key": key, "content-type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.status


def served(url):
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main():
    base, key, n, gateways = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    answer_ms, served_ms = [], []
    for i in range(n):
        rid = f"probe-{i}"
        t0 = time.monotonic()
        status = put(base, key, rid, {"paths": [f"/probe/{i}"], "upstream": "backend"})
        t1 = time.monotonic()
        if status not in (200, 201):
            sys.exit(f"PUT {rid}: HTTP {status}")
        pending = [f"{g}/probe/{i}" for g in gateways]
        deadline = t1 + 10
        while pending:
            pending = [u for u in pending if not served(u)]
            if time.monotonic() > deadline:
                sys.exit(f"{rid} not served within 10 s by {pending}")
        t2 = time.monotonic()
        answer_ms.append((t1 - t0) * 1000)
        served_ms.append((t2 - t1) * 1000)
    print(f"{pct(answer_ms, 50):.2f} {pct(answer_ms, 99):.2f} {pct(served_ms, 50):.2f} {pct(served_ms, 99):.2f}")


if __name__ == "__main__":
    main()
