#!/usr/bin/env python3
"""bench/tls.sh's helper for the certificate table: puts certificates into
etcd through its JSON gateway, and measures how long after a put returns
the first TLS handshake presents the new certificate.

  tls_probe.py put-certs ETCD CERT KEY FIRST COUNT
      puts /tollgate/certs/c<i> for i in FIRST..FIRST+COUNT-1, SNI
      c<i>.bench.test, the same PEM pair (each is parsed on its own)
  tls_probe.py latency ETCD PORT CERT1 KEY1 CERT2 KEY2 ITERATIONS
      alternates /tollgate/certs/probe (SNI probe.bench.test) between the
      two pairs; after each put, handshakes with that SNI until the new
      certificate is presented; prints p50 and p99 in ms
"""
import base64
import json
import socket
import ssl
import sys
import time
import urllib.request


def put(etcd, key, value):
    body = json.dumps({
        "key": base64.b64encode(key.encode()).decode(),
        "value": base64.b64encode(value.encode()).decode(),
    }).encode()
    req = urllib.request.Request(etcd + "/v3/kv/put", data=body, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        r.read()


def cert_value(sni, cert, key):
    return json.dumps({"snis": [sni], "cert": cert, "key": key})


def presented(port, sni):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        with ctx.wrap_socket(s, server_hostname=sni) as t:
            return t.getpeercert(binary_form=True)


def main():
    cmd, etcd = sys.argv[1], sys.argv[2]
    if cmd == "put-certs":
        cert, key = open(sys.argv[3]).read(), open(sys.argv[4]).read()
        first, count = int(sys.argv[5]), int(sys.argv[6])
        for i in range(first, first + count):
            put(etcd, f"/tollgate/certs/c{i}", cert_value(f"c{i}.bench.test", cert, key))
        return
    port = int(sys.argv[3])
    pairs = [(open(sys.argv[4]).read(), open(sys.argv[5]).read()),
             (open(sys.argv[6]).read(), open(sys.argv[7]).read())]
    ders = [ssl.PEM_cert_to_DER_cert(c) for c, _ in pairs]
    iterations = int(sys.argv[8])
    sni = "probe.bench.test"
    took = []
    for i in range(iterations + 1):
        which = i % 2
        put(etcd, "/tollgate/certs/probe", cert_value(sni, *pairs[which]))
        start = time.monotonic()
        deadline = start + 10
        while presented(port, sni) != ders[which]:
            if time.monotonic() > deadline:
                sys.exit(f"put {i}: the new certificate was not presented within 10 s")
        if i > 0:  # the first put creates the key; the rest rotate it
            took.append((time.monotonic() - start) * 1000)
    took.sort()
    p50 = took[len(took) // 2]
    p99 = took[min(len(took) - 1, int(len(took) * 0.99))]
    print(f"{p50:.2f} {p99:.2f}")


if __name__ == "__main__":
    main()
