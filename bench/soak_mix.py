#!/usr/bin/env python3
"""The client mix and config churn of bench/soak.sh, for --seconds.

Threads: new connection per request; client aborts (cut mid-headers, cut
mid-body); 64 KiB uploads on a keep-alive connection; pipelined pairs; 100
route updates/s through etcd's JSON gateway (one route rewritten, another
created and deleted in turn). Writes a JSON summary to --out: per kind, the
statuses seen and the errors (a refused or reset connection counts there).
Loopback only; every loop is bounded by the deadline.
"""

import argparse
import base64
import collections
import http.client
import json
import socket
import threading
import time
import urllib.parse

p = argparse.ArgumentParser()
p.add_argument("--base", required=True)
p.add_argument("--etcd", required=True)
p.add_argument("--seconds", type=int, required=True)
p.add_argument("--out", required=True)
args = p.parse_args()

base = urllib.parse.urlparse(args.base)
HOST, PORT = base.hostname, base.port
deadline = time.monotonic() + args.seconds
lock = threading.Lock()
seen = collections.defaultdict(collections.Counter)


def count(kind, what):
    with lock:
        seen[kind][str(what)] += 1


def status_of(data):
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return "garbled"


def read_response(sock, buf):
    """One response from sock (Content-Length framing); returns (status, rest)."""
    while b"\r\n\r\n" not in buf:
        got = sock.recv(65536)
        if not got:
            raise ConnectionError("closed")
        buf += got
    head, rest = buf.split(b"\r\n\r\n", 1)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(rest) < length:
        got = sock.recv(65536)
        if not got:
            raise ConnectionError("closed mid-body")
        rest += got
    return status_of(head), rest[length:]


def paced(kind, per_second, fn):
    gap = 1.0 / per_second
    while time.monotonic() < deadline:
        t = time.monotonic()
        try:
            fn()
        except OSError as e:
            count(kind, type(e).__name__)
        time.sleep(max(0.0, gap - (time.monotonic() - t)))


def new_connection():
    with socket.create_connection((HOST, PORT), timeout=10) as s:
        s.sendall(b"GET /api/new HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n")
        count("new_connection", read_response(s, b"")[0])


aborts = [0]


def abort():
    aborts[0] += 1
    with socket.create_connection((HOST, PORT), timeout=10) as s:
        if aborts[0] % 2:
            s.sendall(b"GET /api/abort HTTP/1.1\r\nHo")
        else:
            s.sendall(b"POST /api/abort HTTP/1.1\r\nHost: soak\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
    count("abort", "sent")


class KeepAlive:
    def __init__(self):
        self.sock, self.buf = None, b""

    def send(self, raw, responses):
        if self.sock is None:
            self.sock = socket.create_connection((HOST, PORT), timeout=10)
            self.buf = b""
        try:
            self.sock.sendall(raw)
            out = []
            for _ in range(responses):
                status, self.buf = read_response(self.sock, self.buf)
                out.append(status)
            return out
        except OSError:
            self.sock.close()
            self.sock = None
            raise


uploads, pipes = KeepAlive(), KeepAlive()
BODY = b"u" * 65536


def upload():
    head = b"POST /api/upload HTTP/1.1\r\nHost: soak\r\nContent-Length: %d\r\n\r\n" % len(BODY)
    for s in uploads.send(head + BODY, 1):
        count("upload", s)


def pipelined():
    req = b"GET /api/pipe HTTP/1.1\r\nHost: soak\r\n\r\n"
    for s in pipes.send(req + req, 2):
        count("pipelined", s)


etcd = urllib.parse.urlparse(args.etcd)
etcd_conn = [None]
updates = [0]


def b64(s):
    return base64.b64encode(s.encode()).decode()


def etcd_call(path, body):
    if etcd_conn[0] is None:
        etcd_conn[0] = http.client.HTTPConnection(etcd.hostname, etcd.port, timeout=5)
    try:
        etcd_conn[0].request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = etcd_conn[0].getresponse()
        r.read()
        return r.status
    except (OSError, http.client.HTTPException):
        etcd_conn[0].close()
        etcd_conn[0] = None
        raise OSError("etcd request failed")


def route_update():
    n = updates[0] = updates[0] + 1
    if n % 2:
        value = json.dumps({"paths": ["/churn/*rest"], "upstream": "api", "priority": n % 7})
        status = etcd_call("/v3/kv/put", {"key": b64("/tollgate/routes/churn"), "value": b64(value)})
    elif n % 4 == 0:
        value = json.dumps({"paths": [f"/tmp-{n}/*rest"], "upstream": "api"})
        status = etcd_call("/v3/kv/put", {"key": b64("/tollgate/routes/tmp"), "value": b64(value)})
    else:
        status = etcd_call("/v3/kv/deleterange", {"key": b64("/tollgate/routes/tmp")})
    count("route_update", status)


threads = [
    threading.Thread(target=paced, args=("new_connection", 50, new_connection)),
    threading.Thread(target=paced, args=("abort", 20, abort)),
    threading.Thread(target=paced, args=("upload", 20, upload)),
    threading.Thread(target=paced, args=("pipelined", 20, pipelined)),
    threading.Thread(target=paced, args=("route_update", 100, route_update)),
]
for t in threads:
    t.start()
for t in threads:
    t.join()
with open(args.out, "w") as f:
    json.dump({k: dict(v) for k, v in sorted(seen.items())}, f, sort_keys=True)
