#!/usr/bin/env python3
"""bench/cluster.sh's helper: the instances, and the two timed parts.

  cluster_probe.py serve CONTROL_PORT PORT...
      one process serving every PORT (a thread each) as an instance:
      GET /healthz counts a probe and answers 200 "ok" (503 while the
      instance is sick); any other request answers 200 JSON (503 while
      sick), always with X-Port: <its port>. CONTROL_PORT (loopback) takes
      GET /counts -> {"<port>": probes so far, ...}, POST /sick/<port> and
      POST /well/<port> -> {"at": <CLOCK_MONOTONIC seconds of the switch>}.

  cluster_probe.py failover CONTROL ETCD SICK_PORT RUNS POLL_MS NODE_URL...
      (2) verdict -> traffic stops on every node. The upstream hashes on
      header x-key (consistent_hash), so one key goes to one instance on
      every node while it is healthy: a key that lands on SICK_PORT is
      found first. Then RUNS times: a poller per node sends GET /svc/x with
      that key every POLL_MS over a kept-alive connection (the answer's
      X-Port says which instance took it) and etcd's /tollgate/health/ is
      watched; at t0 the instance turns sick (503 on /healthz and on
      requests); per node, the last request that the sick instance answered
      (its send time) is when that node stopped; polling goes on 1 s after
      every node stopped (a request reaching the sick instance again is a
      flap, reported). Then the instance turns well, and the next run waits
      until every node sends the key to it again. Prints one JSON object.

  cluster_probe.py acme ETCD ROOT_PEM SNI RENEWALS POLL_MS CERT_ID TLS_PORT...
      (3) ACME issuance -> served. Watches /tollgate/certs/CERT_ID; puts it
      ({"snis": [SNI], "acme": {"challenge": "http-01"}}); a thread per
      node does TLS handshakes with SNI every POLL_MS, verifying the chain
      against ROOT_PEM (pebble's issuing root; Python's ssl is OpenSSL, the
      same check as `openssl s_client -verify_return_error`), and notes when
      each node first presents the certificate the entry holds. Then
      RENEWALS times /tollgate/acme/renew/CERT_ID = "now", each timed the
      same way. Prints one JSON object.

Times are CLOCK_MONOTONIC (time.monotonic() in both processes, one clock on
Linux).
"""
import base64
import calendar
import http.client
import http.server
import json
import socket
import socketserver
import ssl
import sys
import threading
import time
import urllib.request


# ------------------------------------------------------------------ etcd


def b64(s):
    return base64.b64encode(s.encode()).decode()


def unb64(s):
    return base64.b64decode(s).decode() if s else ""


def etcd_post(etcd, path, body, timeout=10):
    req = urllib.request.Request(etcd + path, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read() or b"{}")


def etcd_put(etcd, key, value):
    etcd_post(etcd, "/v3/kv/put", {"key": b64(key), "value": b64(value)})


def etcd_get_prefix(etcd, prefix):
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    r = etcd_post(etcd, "/v3/kv/range", {"key": b64(prefix), "range_end": b64(end)})
    return {unb64(kv["key"]): unb64(kv.get("value", "")) for kv in r.get("kvs", [])}


class Watch(threading.Thread):
    """etcd's JSON gateway watch stream on a key or prefix: events as
    (monotonic time, "PUT"|"DELETE", key, value), appended as they come."""

    def __init__(self, etcd, key, prefix):
        super().__init__(daemon=True)
        self.events, self.cond = [], threading.Condition()
        body = {"create_request": {"key": b64(key)}}
        if prefix:
            body["create_request"]["range_end"] = b64(key[:-1] + chr(ord(key[-1]) + 1))
        req = urllib.request.Request(etcd + "/v3/watch", data=json.dumps(body).encode(), method="POST")
        self.resp = urllib.request.urlopen(req, timeout=None)
        # The first message confirms the watch ("created"): from here on no
        # event is missed.
        first = json.loads(self.resp.readline())
        if not first.get("result", {}).get("created"):
            sys.exit(f"etcd watch not created: {first}")
        self.start()

    def run(self):
        for line in self.resp:
            t = time.monotonic()
            line = line.strip()
            if not line:
                continue
            msg = json.loads(line).get("result", {})
            with self.cond:
                for ev in msg.get("events", []):
                    kv = ev.get("kv", {})
                    self.events.append((t, ev.get("type", "PUT"), unb64(kv.get("key")), unb64(kv.get("value"))))
                self.cond.notify_all()

    def wait_for(self, start, pred, timeout, what):
        """The first event from index `start` on matching pred(event)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for ev in self.events[start:]:
                    if pred(ev):
                        return ev
                left = deadline - time.monotonic()
                if left <= 0:
                    sys.exit(f"etcd: no {what} within {timeout} s")
                self.cond.wait(left)


# ------------------------------------------------------------- instances


def serve(control_port, ports):
    counts = {p: 0 for p in ports}
    sick = set()
    lock = threading.Lock()

    def make_handler(port):
        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body are two writes: without TCP_NODELAY the body
            # waits for the peer's delayed ACK (40 ms).
            disable_nagle_algorithm = True

            def log_message(self, *a):
                pass

            def do_GET(self):
                if self.path == "/healthz":
                    with lock:
                        counts[port] += 1
                    body = b"ok"
                else:
                    body = b'{"port": %d}' % port
                code = 503 if port in sick else 200
                self.send_response(code)
                self.send_header("X-Port", str(port))
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return H

    class Control(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def answer(self, obj, code=200):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            with lock:
                snap = {str(p): n for p, n in counts.items()}
            self.answer(snap)

        def do_POST(self):
            what, _, port = self.path.strip("/").partition("/")
            port = int(port or 0)
            if port not in counts or what not in ("sick", "well"):
                return self.answer({"error": "no such instance or switch"}, 404)
            (sick.add if what == "sick" else sick.discard)(port)
            self.answer({"at": time.monotonic()})

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 1024

    servers = [Server(("127.0.0.1", p), make_handler(p)) for p in ports]
    servers.append(Server(("127.0.0.1", control_port), Control))
    for s in servers[:-1]:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    servers[-1].serve_forever()


# ------------------------------------------------------ (2) failover timing


class Conn:
    """One keep-alive HTTP/1.1 connection, re-opened when it breaks."""

    def __init__(self, base):
        host, _, port = base.split("//", 1)[-1].rstrip("/").partition(":")
        self.host, self.port, self.c = host, int(port), None

    def request(self, method, path, headers=None):
        for attempt in (0, 1):
            try:
                if self.c is None:
                    self.c = http.client.HTTPConnection(self.host, self.port, timeout=10)
                    self.c.connect()
                    self.c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.c.request(method, path, headers=headers or {})
                r = self.c.getresponse()
                data = r.read()
                return r.status, r.getheader("x-port"), data
            except (http.client.HTTPException, OSError):
                if self.c is not None:
                    self.c.close()
                self.c = None
                if attempt:
                    raise


def control(base, what, port):
    c = Conn(base)
    status, _, data = c.request("POST", f"/{what}/{port}")
    if status != 200:
        sys.exit(f"control {what} {port}: HTTP {status}")
    return json.loads(data)["at"]


class Poller(threading.Thread):
    """GET /svc/x with x-key KEY every poll_ms; records (sent, port, status)."""

    def __init__(self, url, key, poll_ms):
        super().__init__(daemon=True)
        self.conn, self.key, self.poll = Conn(url), key, poll_ms / 1000
        self.log, self.stop, self.errors = [], threading.Event(), 0

    def run(self):
        nxt = time.monotonic()
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                status, port, _ = self.conn.request("GET", "/svc/x", {"x-key": self.key})
            except OSError:
                self.errors += 1
                status, port = 0, None
            self.log.append((sent, int(port) if port else 0, status))
            nxt = max(nxt + self.poll, time.monotonic())
            time.sleep(max(0.0, nxt - time.monotonic()))


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def log_times(path, needle, since):
    """CLOCK_MONOTONIC times of the lines of gateway log PATH holding every
    string of NEEDLE, at or after SINCE (monotonic); the log's RFC 3339 UTC
    timestamps are wall-clock, moved onto the monotonic clock."""
    offset = time.time() - time.monotonic()
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            if not all(n in line for n in needle):
                continue
            stamp = line.split(" ", 1)[0].rstrip("Z")
            try:
                whole, _, frac = stamp.partition(".")
                wall = calendar.timegm(time.strptime(whole, "%Y-%m-%dT%H:%M:%S")) + float("0." + (frac or "0"))
            except ValueError:
                continue
            t = wall - offset
            if t >= since:
                out.append(t)
    return out


def failover(ctl, etcd, sick_port, runs, poll_ms, specs):
    nodes = [dict(zip(("id", "url", "log"), spec.split(",", 2))) for spec in specs]
    conns = [Conn(n["url"]) for n in nodes]
    # A key that every node sends to the sick-to-be instance.
    key = None
    for i in range(5000):
        k = f"k{i}"
        if all(c.request("GET", "/svc/x", {"x-key": k})[1] == str(sick_port) for c in conns):
            key = k
            break
    if key is None:
        sys.exit(f"no x-key maps to port {sick_port} on every node")
    watch = Watch(etcd, "/tollgate/health/", prefix=True)
    results, flaps, stray_verdicts = [], 0, 0

    def routed_to_sick_everywhere():
        return all(c.request("GET", "/svc/x", {"x-key": key})[1] == str(sick_port) for c in conns)

    for run in range(runs):
        # Back on every node (and no verdict left in etcd) before the next run.
        deadline = time.monotonic() + 20
        while not (routed_to_sick_everywhere() and not etcd_get_prefix(etcd, "/tollgate/health/")):
            if time.monotonic() > deadline:
                sys.exit(f"run {run}: the instance is not back on every node within 20 s")
            time.sleep(0.02)
        # A phase against the probe schedule that moves from run to run.
        time.sleep(0.05 + (run * 0.037) % 0.2)
        n_events = len(watch.events)
        pollers = [Poller(n["url"], key, poll_ms) for n in nodes]
        for p in pollers:
            p.start()
        time.sleep(0.1)
        t0 = control(ctl, "sick", sick_port)
        verdict = watch.wait_for(n_events, lambda ev: ev[1] == "PUT", 15, "verdict written")
        instance = verdict[2].rsplit("/", 1)[-1]
        # Poll until every node went 1 s past its last request to the sick one.
        deadline = time.monotonic() + 15
        while True:
            now = time.monotonic()
            lasts = []
            for p in pollers:
                sick_sent = [s for s, port, _ in list(p.log) if s >= t0 and port == sick_port]
                lasts.append(sick_sent[-1] if sick_sent else t0)
            if all(now - last > 1.0 for last in lasts) and now - verdict[0] > 1.0:
                break
            if now > deadline:
                sys.exit(f"run {run}: a node still sends to the sick instance 15 s after t0")
            time.sleep(0.05)
        for p in pollers:
            p.stop.set()
        for p in pollers:
            p.join()
        stray_verdicts += sum(1 for e in watch.events[n_events:] if not e[2].endswith("/" + instance))
        # Flaps: after a node's first request to another instance, one to
        # the sick one again.
        for p in pollers:
            switched = False
            for s, port, _ in p.log:
                if s < t0:
                    continue
                if port != sick_port and port:
                    switched = True
                elif switched and port == sick_port:
                    flaps += 1
                    break
        gaps = []
        for p in pollers:
            after = [s for s, _, _ in p.log if s >= t0]
            gaps.append(max((b - a for a, b in zip(after, after[1:])), default=0))
        # Per node, the first request sent elsewhere after its last one to
        # the sick instance: the stop lies between the two (one poll apart).
        moved = []
        for p, last in zip(pollers, lasts):
            later = [s for s, port, _ in p.log if s > last and port and port != sick_port]
            moved.append(later[0] if later else last)
        prober = json.loads(verdict[3] or "{}").get("node")
        # The prober's own account (its log): its unhealthy-th failed probe
        # (the local verdict), then the put of the shared verdict returned.
        local = written = None
        for n in nodes:
            if n["id"] == prober:
                local = log_times(n["log"], ("active health check verdict changed",
                                             f"addr=127.0.0.1:{sick_port} ", 'state="unhealthy"'), t0)
                written = log_times(n["log"], ("shared health verdict: unhealthy",
                                               f"instance={instance}"), t0)
        if not local or not written:
            sys.exit(f"run {run}: the prober ({prober}) did not log its verdict")
        results.append({
            "stop_ms": [(last - t0) * 1000 for last in lasts],
            "moved_ms": [(m - t0) * 1000 for m in moved],
            "local_ms": (local[0] - t0) * 1000,
            "written_ms": (written[0] - t0) * 1000,
            "watched_ms": (verdict[0] - t0) * 1000,
            "prober": prober,
            "errors": sum(p.errors for p in pollers),
            "requests": sum(len(p.log) for p in pollers),
            "max_gap_ms": max(gaps) * 1000,
        })
        # Recovery: well -> the verdict withdrawn -> every node sends the
        # key to the instance again.
        time.sleep((run * 0.053) % 0.2)  # its phase too
        t1 = control(ctl, "well", sick_port)
        withdrawn = watch.wait_for(n_events, lambda ev: ev[1] == "DELETE", 15, "verdict withdrawn")
        deadline = time.monotonic() + 15
        while not routed_to_sick_everywhere():
            if time.monotonic() > deadline:
                sys.exit(f"run {run}: the instance is not back on every node 15 s after the verdict went")
        results[-1]["withdrawn_ms"] = (withdrawn[0] - t1) * 1000
        results[-1]["back_ms"] = (time.monotonic() - t1) * 1000

    def col(f):
        return [f(r) for r in results]

    out = {"runs": len(results), "key": key}
    for name, xs in (
        ("stop_max", col(lambda r: max(r["stop_ms"]))),
        ("local", col(lambda r: r["local_ms"])),
        ("local_to_written", col(lambda r: r["written_ms"] - r["local_ms"])),
        ("written_to_moved", col(lambda r: max(r["moved_ms"]) - r["written_ms"])),
        ("watched_to_moved", col(lambda r: max(r["moved_ms"]) - r["watched_ms"])),
        ("withdrawn", col(lambda r: r["withdrawn_ms"])),
        ("back", col(lambda r: r["back_ms"])),
    ):
        out.update({f"{name}_p50": pct(xs, 50), f"{name}_p99": pct(xs, 99),
                    f"{name}_min": min(xs), f"{name}_max": max(xs)})
    out.update({
        "stop_node_p50": [pct([r["stop_ms"][i] for r in results], 50) for i in range(len(nodes))],
        "flaps": flaps, "stray_verdicts": stray_verdicts,
        "errors": sum(r["errors"] for r in results),
        "requests": sum(r["requests"] for r in results),
        "max_gap_ms": max(r["max_gap_ms"] for r in results),
        "probers": sorted({r["prober"] for r in results if r["prober"]}),
        "detail": results,
    })
    print(json.dumps(out))


# ------------------------------------------------------ (3) ACME timing


class Presenter(threading.Thread):
    """Handshakes with SNI against one TLS port every poll_ms; records each
    change of the verified certificate presented: (monotonic time, DER or None)."""

    def __init__(self, port, sni, root, poll_ms):
        super().__init__(daemon=True)
        self.port, self.sni, self.poll = port, sni, poll_ms / 1000
        self.ctx = ssl.create_default_context(cafile=root)
        self.changes, self.stop, self.handshakes = [], threading.Event(), 0
        self.cond = threading.Condition()

    def presented(self):
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                with self.ctx.wrap_socket(s, server_hostname=self.sni) as t:
                    return t.getpeercert(binary_form=True)
        except (ssl.SSLError, OSError):
            return None

    def run(self):
        last = object()
        while not self.stop.is_set():
            der = self.presented()
            # When the handshake completed: the certificate was served by then.
            t = time.monotonic()
            self.handshakes += 1
            if der != last:
                with self.cond:
                    self.changes.append((t, der))
                    self.cond.notify_all()
                last = der
            time.sleep(self.poll)

    def first_served(self, der, timeout):
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, d in self.changes:
                    if d == der:
                        return t
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)


def leaf_der(value):
    try:
        pem = json.loads(value).get("cert") or ""
    except ValueError:
        return None
    if "BEGIN CERTIFICATE" not in pem:
        return None
    first = pem[: pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
    return ssl.PEM_cert_to_DER_cert(first)


def acme(etcd, root, sni, renewals, poll_ms, cert_id, specs):
    nodes = [dict(zip(("id", "port", "log"), spec.split(",", 2))) for spec in specs]
    ports = [int(n["port"]) for n in nodes]
    key = f"/tollgate/certs/{cert_id}"
    watch = Watch(etcd, key, prefix=False)
    presenters = [Presenter(p, sni, root, poll_ms) for p in ports]
    t_start = time.monotonic()
    for p in presenters:
        p.start()
    rounds = []

    def one(kind, put_key, put_value, prev_der):
        n_events = len(watch.events)
        t_put = time.monotonic()
        etcd_put(etcd, put_key, put_value)
        ev = watch.wait_for(n_events, lambda e: e[1] == "PUT" and leaf_der(e[3]) not in (None, prev_der),
                            120, f"{kind}: a new certificate in {key}")
        der = leaf_der(ev[3])
        served = []
        for i, p in enumerate(presenters):
            t = p.first_served(der, 60)
            if t is None:
                sys.exit(f"{kind}: node {i + 1} does not present the issued certificate 60 s after issuance")
            served.append(t)
        # Issued: the earlier of the etcd watch seeing it (the JSON gateway
        # lags the gateways' gRPC watches by about a millisecond) and the
        # orderer's log line once its transaction returned.
        stored = [t for n in nodes for t in log_times(
            n["log"], ("managed certificate issued and stored", f'cert="{cert_id}"'), t_put)]
        t_issued = min([ev[0]] + stored)
        rounds.append({
            "kind": kind,
            "put_to_issued_ms": (t_issued - t_put) * 1000,
            "issued_to_served_ms": [(t - t_issued) * 1000 for t in served],
            "watch_lag_ms": (ev[0] - t_issued) * 1000,
            "put_to_served_ms": (max(served) - t_put) * 1000,
        })
        return der

    spec = json.dumps({"snis": [sni], "acme": {"challenge": "http-01"}})
    der = one("order", key, spec, None)
    for _ in range(renewals):
        der = one("renewal", f"/tollgate/acme/renew/{cert_id}", "now", der)
    for p in presenters:
        p.stop.set()
    for p in presenters:
        p.join()
    took = time.monotonic() - t_start
    ren = [r for r in rounds if r["kind"] == "renewal"]
    served_max = [max(r["issued_to_served_ms"]) for r in rounds]
    print(json.dumps({
        "order": rounds[0],
        "renewals": len(ren),
        "issued_to_served_max_p50": pct(served_max, 50),
        "issued_to_served_max_p99": pct(served_max, 99),
        "issued_to_served_max_max": max(served_max),
        "renew_to_issued_p50": pct([r["put_to_issued_ms"] for r in ren], 50),
        "renew_to_issued_p99": pct([r["put_to_issued_ms"] for r in ren], 99),
        "renew_to_served_p50": pct([r["put_to_served_ms"] for r in ren], 50),
        "renew_to_served_p99": pct([r["put_to_served_ms"] for r in ren], 99),
        "handshakes": sum(p.handshakes for p in presenters),
        "handshake_cycle_ms": took * 1000 * len(presenters) / max(1, sum(p.handshakes for p in presenters)),
        "detail": rounds,
    }))


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve":
        serve(int(args[0]), [int(p) for p in args[1:]])
    elif cmd == "failover":
        failover(args[0], args[1], int(args[2]), int(args[3]), float(args[4]), args[5:])
    elif cmd == "acme":
        acme(args[0], args[1], args[2], int(args[3]), float(args[4]), args[5], args[6:])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
