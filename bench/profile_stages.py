#!/usr/bin/env python3
"""Instructions per request by stage, from `callgrind_annotate --inclusive=yes`.

profile_stages.py TARGET REQUESTS ANNOTATE_FILE  -> TSV lines: target, stage, Ir/request
profile_stages.py --table TSV                     -> the report table
profile_stages.py --events TARGET REQUESTS DUMP   -> TSV lines: target, event, count/request
                                                     (a --cache-sim --branch-sim dump's totals)
profile_stages.py --events-table TSV              -> the simulated misses' table

A stage is the inclusive count of the functions listed for it (callgrind
lists a function again for each source file of its inlined code, and
the largest is the whole). Nested stages are not double counted: each function below is the
outermost call of its stage on the core engine's path. Functions inlined away
count toward "event loop and the rest", the total less the stages.
"""
import re
import sys
from collections import OrderedDict

CORE = "pingora_core::protocols::http"
# The core engine's own upstream HTTP/1.1 client (src/proxy/upstream_h1).
OWN_H1 = "tollgate::proxy::upstream_h1"
STAGES = OrderedDict([
    # A plain request's head is the core engine's own codec's (src/proxy/client_h1);
    # any other goes to pingora-core's session.
    ("read + parse request", [
        f"{CORE}::server::Session::read_request::{{{{closure}}}}",
        "tollgate::proxy::client_h1::head::parse",
        "tollgate::proxy::client_h1::ClientH1::take_plain",
    ]),
    ("route (match, limit, plugins)", ["tollgate::proxy::gate::Gate::route_request::{{closure}}"]),
    # The instance picked (balancing), then its pooled or new connection.
    ("upstream connection (pool)", [
        "tollgate::proxy::instance_pick::<impl tollgate::proxy::gate::Gate>::choose_instance",
        "tollgate::proxy::engine::target::Target::of",
        "tollgate::proxy::engine::CoreEngine::connect::{{closure}}",
        "tollgate::proxy::engine::CoreEngine::release::{{closure}}",
        "pingora_core::connectors::http::Connector<C>::get_http_session::{{closure}}",
        "pingora_core::connectors::http::Connector<C>::release_http_session::{{closure}}",
    ]),
    ("request header rewrite", [
        "tollgate::proxy::engine::exchange::<impl tollgate::proxy::engine::CoreEngine>::upstream_request",
        "tollgate::proxy::upstream_request::<impl tollgate::proxy::gate::Gate>::upstream_edits",
        "tollgate::proxy::upstream_request::UpstreamEdits::direct_head",
    ]),
    ("upstream write", [
        f"{CORE}::v1::client::HttpSession::write_request_header::{{{{closure}}}}",
        f"{CORE}::v1::client::HttpSession::finish_body::{{{{closure}}}}",
        f"{OWN_H1}::UpstreamH1::write_request_header::{{{{closure}}}}",
        f"{OWN_H1}::UpstreamH1::send::{{{{closure}}}}",
        f"{OWN_H1}::UpstreamH1::finish_body::{{{{closure}}}}",
    ]),
    ("response read + parse", [
        f"{CORE}::v1::client::HttpSession::read_response_task::{{{{closure}}}}",
        f"{OWN_H1}::UpstreamH1::fill::{{{{closure}}}}",
        f"{OWN_H1}::head::parse",
        # Its header map, built only for what reads or edits it.
        f"{OWN_H1}::head::Head::header",
    ]),
    # The map edited, or (nothing but ours to add) the lines of ours.
    ("response header edit", [
        "tollgate::proxy::response_fields::<impl tollgate::proxy::gate::Gate>::edit_response",
        "tollgate::proxy::response_fields::<impl tollgate::proxy::gate::Gate>::response_ours_only",
        "tollgate::proxy::response_fields::ResponseOurs::lines",
    ]),
    # The core engine's session calls go straight to its codec
    # (client_h1::direct) when it serves the request.
    ("response write", [
        f"{CORE}::server::Session::write_response_header::{{{{closure}}}}",
        f"{CORE}::server::Session::write_response_body::{{{{closure}}}}",
        f"{CORE}::server::Session::finish_body::{{{{closure}}}}",
        "tollgate::proxy::client_h1::direct::write_response_header::{{closure}}",
        # A head from the upstream's bytes: its writing is inlined into the
        # exchange, so it is counted by its parts (the map's way calls them
        # inside write_response_header; no profiled target takes it).
        "tollgate::proxy::client_h1::response::status_line",
        "tollgate::proxy::client_h1::response::write_fields",
        "tollgate::proxy::client_h1::response::<impl tollgate::proxy::client_h1::ClientH1>::send_head::{{closure}}",
        "tollgate::proxy::client_h1::direct::write_response_body::{{closure}}",
        "tollgate::proxy::client_h1::direct::finish_body::{{closure}}",
    ]),
    ("request end (keep-alive)", [
        f"{CORE}::server::Session::finish::{{{{closure}}}}",
        "tollgate::proxy::client_h1::ClientH1::end::{{closure}}",
    ]),
    ("access log + metrics", ["tollgate::proxy::request_log::<impl tollgate::proxy::gate::Gate>::log_request"]),
])
LINE = re.compile(r"^\s*([\d,]+) \([\s\d.]+%\)\s+(?:\S+?:)?(.+?)(?: \[[^\]]*\])?\s*$")


def parse(path):
    total, by_fn = None, {}
    for line in open(path, errors="replace"):
        m = LINE.match(line)
        if not m:
            continue
        ir = int(m.group(1).replace(",", ""))
        name = m.group(2).strip()
        if name == "PROGRAM TOTALS":
            total = ir
            continue
        by_fn[name] = max(by_fn.get(name, 0), ir)
    return total, by_fn


def split(target, requests, path):
    total, by_fn = parse(path)
    if not total:
        sys.exit(f"{path}: no PROGRAM TOTALS")
    rows = []
    if target.startswith("tollgate"):
        staged = 0
        for stage, fns in STAGES.items():
            ir = sum(by_fn.get(f, 0) for f in fns)
            staged += ir
            rows.append((stage, ir))
        rows.append(("event loop and the rest", total - staged))
    rows.append(("total", total))
    for stage, ir in rows:
        print(f"{target}\t{stage}\t{ir / requests:.0f}")


def table(path, last="total"):
    data = OrderedDict()
    for line in open(path):
        t, stage, ir = line.rstrip("\n").split("\t")
        data.setdefault(stage, {})[t] = int(ir)
    # The stages in order, the total last.
    if last:
        data.move_to_end(last)
    targets = []
    for stage in data.values():
        for t in stage:
            if t not in targets:
                targets.append(t)
    print(f"{'stage':32}" + "".join(f"{t:>15}" for t in targets))
    for stage, vals in data.items():
        print(f"{stage:32}" + "".join(f"{vals[t]:>15,}" if t in vals else f"{'':>15}" for t in targets))


# What the simulated totals are reported as: (label, events summed).
SIMULATED = [
    ("instructions", ["Ir"]),
    ("L1 instruction misses", ["I1mr"]),
    ("L1 data misses (read + write)", ["D1mr", "D1mw"]),
    ("last-level misses (all)", ["ILmr", "DLmr", "DLmw"]),
    ("mispredicted branches", ["Bcm", "Bim"]),
]


def events(target, requests, dump):
    names = totals = None
    for line in open(dump, errors="replace"):
        if line.startswith("events:"):
            names = line.split()[1:]
        elif line.startswith("summary:"):
            totals = [int(x) for x in line.split()[1:]]
    if not names or not totals:
        sys.exit(f"{dump}: no events or summary line")
    ev = dict(zip(names, totals))
    missing = [e for _, es in SIMULATED for e in es if e not in ev]
    if missing:
        sys.exit(f"{dump}: not simulated: {', '.join(missing)} (run callgrind with --cache-sim=yes --branch-sim=yes)")
    rows = [(label, sum(ev[e] for e in es)) for label, es in SIMULATED]
    get = dict(rows)
    cycles = (get["instructions"] + 10 * (get["L1 instruction misses"] + get["L1 data misses (read + write)"])
              + 100 * get["last-level misses (all)"] + 15 * get["mispredicted branches"])
    rows.append(("estimated cycles", cycles))
    for label, n in rows:
        print(f"{target}\t{label}\t{n / requests:.0f}")


if __name__ == "__main__":
    if sys.argv[1] == "--table":
        table(sys.argv[2])
    elif sys.argv[1] == "--events-table":
        table(sys.argv[2], last=None)
    elif sys.argv[1] == "--events":
        events(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        split(sys.argv[1], int(sys.argv[2]), sys.argv[3])
