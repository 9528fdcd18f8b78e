#!/usr/bin/python3
"""A real gRPC server and client (grpcio, raw bytes: no generated code) for
tests/upstream_protocols.rs.

  grpc_echo.py server PORT        serves test.Echo on 127.0.0.1:PORT, prints "ready"
  grpc_echo.py client TARGET [CA SNI]
                                  runs every call through TARGET (host:port;
                                  h2c, or TLS trusting CA for name SNI) and
                                  prints one JSON object
  grpc_echo.py call TARGET METHOD prints {"code", "details"} of one unary call
"""
import json
import sys
import time
from concurrent import futures

import grpc

SERVICE = "test.Echo"


def unary(request, context):
    context.send_initial_metadata((("x-initial", "i1"),))
    context.set_trailing_metadata((("x-trailer", "t1"),))
    return b"echo:" + request


def server_stream(request, context):
    for i in range(int(request)):
        yield f"part{i}".encode()


def client_stream(request_iterator, context):
    return b"+".join(request_iterator)


def bidi(request_iterator, context):
    for r in request_iterator:
        yield b"re:" + r


def fail(request, context):
    context.set_trailing_metadata((("x-why", "because"),))
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def slow(request, context):
    time.sleep(float(request))
    return b"late"


def serve(port):
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    }
    s.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    s.add_insecure_port(f"127.0.0.1:{port}")
    s.start()
    print("ready", flush=True)
    s.wait_for_termination()


def status(e):
    return {"code": e.code().name, "details": e.details(),
            "trailers": dict(e.trailing_metadata() or ())}


def channel(target, tls):
    if not tls:
        return grpc.insecure_channel(target)
    ca, sni = tls
    creds = grpc.ssl_channel_credentials(root_certificates=open(ca, "rb").read())
    return grpc.secure_channel(target, creds, options=(("grpc.ssl_target_name_override", sni),))


def call(target, method):
    with grpc.insecure_channel(target) as ch:
        try:
            ch.unary_unary(method)(b"", timeout=10)
            print(json.dumps({"code": "OK", "details": ""}))
        except grpc.RpcError as e:
            print(json.dumps(status(e)))


def client(target, tls):
    out = {}
    with channel(target, tls) as ch:
        call = ch.unary_unary(f"/{SERVICE}/Unary")
        resp, c = call.with_call(b"hi", timeout=10, metadata=(("x-client", "c1"),))
        out["unary"] = {"resp": resp.decode(), "initial": dict(c.initial_metadata()),
                        "trailers": dict(c.trailing_metadata()), "code": c.code().name}
        out["server_stream"] = [m.decode() for m in ch.unary_stream(f"/{SERVICE}/ServerStream")(b"3", timeout=10)]
        out["client_stream"] = ch.stream_unary(f"/{SERVICE}/ClientStream")(iter([b"a", b"b", b"c"]), timeout=10).decode()
        out["bidi"] = [m.decode() for m in ch.stream_stream(f"/{SERVICE}/Bidi")(iter([b"x", b"y"]), timeout=10)]
        try:
            ch.unary_unary(f"/{SERVICE}/Fail")(b"", timeout=10)
            out["fail"] = "no error"
        except grpc.RpcError as e:
            out["fail"] = status(e)
        try:
            ch.unary_unary(f"/{SERVICE}/Slow")(b"3", timeout=0.5)
            out["deadline"] = "no error"
        except grpc.RpcError as e:
            out["deadline"] = status(e)
        try:
            ch.unary_unary("/no.Such/Method")(b"", timeout=10)
            out["no_route"] = "no error"
        except grpc.RpcError as e:
            out["no_route"] = status(e)
    print(json.dumps(out))


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve(int(sys.argv[2]))
    elif sys.argv[1] == "call":
        call(sys.argv[2], sys.argv[3])
    else:
        client(sys.argv[2], sys.argv[3:5] if len(sys.argv) > 4 else None)
