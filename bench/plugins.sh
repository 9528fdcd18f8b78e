#!/usr/bin/env bash
# Plugin-chain benchmark (#16): what a route's plugins cost. wrk against the
# same echo backend (echo-backend --fixed-body) through
#   none      tollgate: a plain route, no plugins, no rate limit;
#   chain     tollgate: the same route with plugins cors + key-auth +
#             proxy-rewrite (regex_uri) and a rate limit far above the
#             offered load (never reached);
#   jwt       tollgate: the same route with jwt-auth (ES256) alone (its
#             cache of verified tokens on: wrk sends one token, so this is
#             the remembered-token path);
#   jwt-verify  (only when asked for) the same with the cache off
#             (cache_ttl_s: 0): an ES256 signature check per request;
#   pingsix   PingSIX (zhu327/pingsix, an APISIX-style gateway on Pingora)
#             with the chain's work: cors, key-auth, proxy-rewrite,
#             limit-count (never reached) and prometheus (a global rule);
#   baseline  tollgate built from the commit before the plugin system
#             (--baseline-rev), the plain route,
# in one interleaved run: rounds alternate the order, median per target.
# Prints req/s, p50, p99 and the ratios chain/none (target >= 0.9),
# jwt/none (and jwt-verify/none), chain/pingsix (target >= 1.2) and
# none/baseline (target >= 0.99), and writes the table to bench/results/.
# The targets are reported, not asserted.
#
# Every target gets the same request: GET /bench/echo with an apikey, an
# Origin and an Authorization: Bearer <ES256 JWT> header (each gateway reads
# the ones its plugins ask for), so only the route differs. The tollgate
# targets read routes, upstreams and consumers from one etcd (a prefix
# each); PingSIX a static YAML file. Every server runs one thread and, with
# two or more CPUs, alone on one CPU (--pin), access logs off, metrics on.
# Before measuring, each target is probed with curl through a twin route
# to a JSON echo backend: 200 with the credentials, 401 without them (the
# auth targets), the path the upstream saw (rewritten on chain and
# pingsix), the key hidden from it, the CORS and rate-limit headers. wrk's
# non-2xx answers fail the run, so a misconfigured target cannot look fast.
#
# A target that cannot run is skipped with a one-line note, in the log and
# in the table: jwt (jwt-verify) when this tollgate has no jwt-auth plugin
# (or no cache_ttl_s), pingsix without --pingsix, baseline with --quick.
# PingSIX and the baseline are built when their binary is missing (not with
# --quick or --no-build): PingSIX in its tree (cargo build --release,
# DIR/target), the baseline in a `git archive` of --baseline-rev beside this
# repository (its own target/).
#
# Usage: bench/plugins.sh [options]
#   --targets LIST       comma-separated subset of
#                        none,chain,jwt,jwt-verify,pingsix,baseline
#                        (default none,chain,jwt, plus pingsix with --pingsix,
#                        plus baseline unless --quick)
#   --pingsix DIR        a PingSIX source tree; its binary is
#                        DIR/target/release/pingsix (built if missing)
#   --baseline-rev REV   the baseline's revision (default 8a2adef^, the commit
#                        before the plugin system)
#   --baseline-dir DIR   where its tree and target/ go (default
#                        ../tollgate-baseline-<short rev> beside this repository)
#   --duration S         seconds per wrk run (default 10)
#   --conns C            wrk connections (default 32)
#   --threads T          wrk threads (default 2)
#   --rounds R           interleaved rounds; the median is reported (default 3)
#   --warmup S           unrecorded warm-up seconds per target (default 1)
#   --pin auto|off       as bench/proxy.sh (default auto)
#   --quick              smoke mode (scripts/test.sh): 1 round of 2 s, builds
#                        nothing but tollgate, no baseline; fails only on a
#                        broken target (a failed probe, non-2xx answers);
#                        writes bench/results/plugins-quick.txt instead of -latest
#   --out FILE           where to write the table
#                        (default bench/results/plugins-latest.txt)
#   --no-build           do not run cargo build (use the existing binaries)
#   -h, --help
#
# Environment: ECHO_BACKEND_BIN, TOLLGATE_BIN, PINGSIX_BIN, BASELINE_BIN
# override the binaries; PINGSIX_TOOLCHAIN is the toolchain PingSIX is built
# with (RUSTUP_TOOLCHAIN for that build only: its rust-toolchain.toml pins
# one, which rustup installs; set stable where it cannot); KEEP_TMP=1 keeps
# the temp dir (configs, logs, raw wrk output).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

ALL_TARGETS=(none chain jwt jwt-verify pingsix baseline)

targets_arg="" pin=auto pingsix_dir="" baseline_rev="8a2adef^" baseline_dir=""
wrk_options
value_opts+=([--targets]=targets_arg [--pin]=pin [--pingsix]=pingsix_dir
    [--baseline-rev]=baseline_rev [--baseline-dir]=baseline_dir)
parse_args "$@"
check_wrk_options
pin_cpus "$pin"

targets=()
if [[ -n "$targets_arg" ]]; then
    IFS=, read -r -a wanted <<<"$targets_arg"
    for w in "${wanted[@]}"; do
        [[ " ${ALL_TARGETS[*]} " == *" $w "* ]] || die "unknown target: $w"
    done
    for t in "${ALL_TARGETS[@]}"; do # the canonical order
        for w in "${wanted[@]}"; do
            if [[ "$w" == "$t" ]]; then
                targets+=("$t")
                break
            fi
        done
    done
else
    targets=(none chain jwt)
    [[ -z "$pingsix_dir" ]] || targets+=(pingsix)
    ((quick)) || targets+=(baseline)
fi
((${#targets[@]} > 0)) || die "no targets selected"

want() { [[ " ${targets[*]} " == *" $1 "* ]]; }
# skip TARGET REASON: drop TARGET from the run; the report names it.
declare -A skipped=()
skip() {
    local t kept=()
    for t in "${targets[@]}"; do [[ "$t" == "$1" ]] || kept+=("$t"); done
    targets=("${kept[@]}")
    skipped[$1]=$2
    log "$1: skipped ($2)"
}

# ---------------------------------------------------------------- tools, build

need_tools wrk curl python3 etcd etcdctl openssl
build_release -p tollgate -p testkit --bins
ECHO_BACKEND=${ECHO_BACKEND_BIN:-$(release_bin echo-backend)}
TOLLGATE=${TOLLGATE_BIN:-$(release_bin tollgate)}
require_bin echo-backend "$ECHO_BACKEND"
require_bin tollgate "$TOLLGATE"

# PingSIX: built in its own tree when its binary is missing.
PINGSIX="" pingsix_rev=""
if want pingsix; then
    if [[ -z "$pingsix_dir" && -z "${PINGSIX_BIN:-}" ]]; then
        skip pingsix "no --pingsix DIR given"
    else
        [[ -z "$pingsix_dir" ]] || pingsix_dir=$(cd "$pingsix_dir" && pwd) || die "--pingsix: no such directory"
        PINGSIX=${PINGSIX_BIN:-$pingsix_dir/target/release/pingsix}
        if [[ ! -x "$PINGSIX" ]] && ((quick || !build)); then
            skip pingsix "not built ($PINGSIX); --quick and --no-build build nothing extra"
        elif [[ ! -x "$PINGSIX" ]]; then
            [[ -f "$pingsix_dir/Cargo.toml" ]] || die "--pingsix $pingsix_dir: no Cargo.toml there"
            log "building PingSIX in $pingsix_dir (cargo build --release${PINGSIX_TOOLCHAIN:+, toolchain $PINGSIX_TOOLCHAIN})"
            (
                cd "$pingsix_dir"
                [[ -z "${PINGSIX_TOOLCHAIN:-}" ]] || export RUSTUP_TOOLCHAIN=$PINGSIX_TOOLCHAIN
                CARGO_TARGET_DIR=$pingsix_dir/target cargo build --release --bin pingsix
            ) || die "PingSIX build failed (its rust-toolchain.toml's toolchain missing? rustup toolchain install it, or PINGSIX_TOOLCHAIN=stable)"
            require_bin pingsix "$PINGSIX"
        fi
        # Which PingSIX: its git revision, or a REVISION file in an exported tree.
        if [[ -n "$pingsix_dir" ]]; then
            if [[ "$(git -C "$pingsix_dir" rev-parse --show-toplevel 2>/dev/null)" == "$pingsix_dir" ]]; then
                pingsix_rev=$(git -C "$pingsix_dir" rev-parse --short HEAD)
            else
                pingsix_rev=$(head -c 7 "$pingsix_dir/REVISION" 2>/dev/null || echo "(unknown revision)")
            fi
        fi
    fi
fi

# The baseline: --baseline-rev exported beside the repository, built there.
BASELINE="" baseline_short=""
if want baseline; then
    if ((quick)); then
        skip baseline "--quick runs no baseline"
    elif ! baseline_full=$(git rev-parse --verify --quiet "$baseline_rev^{commit}"); then
        die "--baseline-rev $baseline_rev: no such commit"
    else
        baseline_short=${baseline_full:0:7}
        baseline_dir=${baseline_dir:-$(dirname "$ROOT")/tollgate-baseline-$baseline_short}
        BASELINE=${BASELINE_BIN:-$baseline_dir/target/release/tollgate}
        if [[ ! -x "$BASELINE" ]] && ((!build)); then
            skip baseline "not built ($BASELINE) and --no-build"
        elif [[ ! -x "$BASELINE" ]]; then
            if [[ -e "$baseline_dir/Cargo.toml" ]]; then
                [[ "$(cat "$baseline_dir/.bench-rev" 2>/dev/null)" == "$baseline_full" ]] ||
                    die "$baseline_dir holds something other than $baseline_short (no .bench-rev naming it)"
            else
                log "exporting $baseline_short into $baseline_dir"
                mkdir -p "$baseline_dir"
                git archive "$baseline_full" | tar -x -C "$baseline_dir"
                echo "$baseline_full" >"$baseline_dir/.bench-rev"
            fi
            log "building the baseline tollgate ($baseline_short) in $baseline_dir"
            (cd "$baseline_dir" && CARGO_TARGET_DIR=$baseline_dir/target cargo build --release -p tollgate --bin tollgate) ||
                die "baseline build failed"
            require_bin "tollgate (baseline)" "$BASELINE"
        fi
    fi
fi

make_tmp tollgate-plugins-bench

# ------------------------------------------------------------- the credentials

API_KEY=$(openssl rand -hex 16)
ORIGIN=https://app.bench.test
# An ES256 key pair and a token for consumer "bench": {"iss": "bench", "exp":
# now + 1 day}. openssl signs in DER (SEQUENCE of r and s); JWS wants r || s.
openssl ecparam -name prime256v1 -genkey -noout -out "$tmp/jwt.key" 2>/dev/null
openssl ec -in "$tmp/jwt.key" -pubout -out "$tmp/jwt.pub" 2>/dev/null
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
jwt_input="$(printf '%s' '{"alg":"ES256","typ":"JWT"}' | b64url).$(
    printf '{"iss":"bench","exp":%d}' "$(($(date +%s) + 86400))" | b64url
)"
printf '%s' "$jwt_input" >"$tmp/jwt.input"
openssl dgst -sha256 -sign "$tmp/jwt.key" -out "$tmp/jwt.der" "$tmp/jwt.input"
openssl dgst -sha256 -verify "$tmp/jwt.pub" -signature "$tmp/jwt.der" "$tmp/jwt.input" >/dev/null ||
    die "openssl cannot verify its own ES256 signature"
jwt_sig=$(/usr/bin/python3 - "$tmp/jwt.der" <<'EOF'
import base64, sys

der = open(sys.argv[1], "rb").read()

def length(i):  # DER length at der[i]: (value, index after it)
    n = der[i]
    if n < 0x80:
        return n, i + 1
    k = n & 0x7F
    return int.from_bytes(der[i + 1:i + 1 + k], "big"), i + 1 + k

assert der[0] == 0x30, "not a DER SEQUENCE"
_, i = length(1)
raw = b""
for _ in range(2):  # INTEGER r, INTEGER s
    assert der[i] == 0x02, "not a DER INTEGER"
    n, i = length(i + 1)
    raw += int.from_bytes(der[i:i + n], "big").to_bytes(32, "big")
    i += n
print(base64.urlsafe_b64encode(raw).decode().rstrip("="))
EOF
)
TOKEN=$jwt_input.$jwt_sig
# The same three headers on every request, to every target.
REQ_HEADERS=(-H "apikey: $API_KEY" -H "Origin: $ORIGIN" -H "Authorization: Bearer $TOKEN")

# json FILE: FILE's content as one JSON string.
json() { /usr/bin/python3 -c 'import json, sys; print(json.dumps(open(sys.argv[1]).read()))' "$1"; }
key_hash=$(printf '%s' "$API_KEY" | "$TOLLGATE" hash-secret) || die "tollgate hash-secret failed"
KEY_CONSUMER="{\"key_auth\": $key_hash}"
JWT_CONSUMER="{\"jwt\": {\"iss\": \"bench\", \"alg\": \"ES256\", \"public_key\": $(json "$tmp/jwt.pub")}}"

# --------------------------------------------------------------- the routes

# The rate limit on chain (and its twin on pingsix): never reached.
LIMIT='{"rate": 1000000, "burst": 1000000, "key": "client_ip"}'
# shellcheck disable=SC2016  # $1 is the template's capture, not the shell's
REWRITE='["^/[a-z]+/(.*)$", "/rewritten/$1"]'
CHAIN_PLUGINS="[{\"cors\": {\"origins\": [\"$ORIGIN\"]}}, {\"key-auth\": {}}, {\"proxy-rewrite\": {\"regex_uri\": $REWRITE}}]"
# What each tollgate target's routes carry besides paths and upstream.
declare -A route_extra=(
    [none]="" [baseline]=""
    [chain]=", \"rate_limit\": $LIMIT, \"plugins\": $CHAIN_PLUGINS"
    [jwt]=', "plugins": [{"jwt-auth": {}}]'
    [jwt-verify]=', "plugins": [{"jwt-auth": {"cache_ttl_s": 0}}]'
)
declare -A consumer=([chain]=$KEY_CONSUMER [jwt]=$JWT_CONSUMER [jwt-verify]=$JWT_CONSUMER)

# jwt needs a tollgate with jwt-auth: `tollgate check` on a standalone file
# says whether the plugin (and for jwt-verify its cache_ttl_s) exists (skip
# if not) and whether the consumer and route above are what it takes (fail
# if not: this script would be wrong).
jwt_check() { # TARGET FILE [CONSUMER]
    {
        gateway_header 1 2 "$tmp/state-check"
        [[ -z "${3:-}" ]] || echo "consumers: [$(/usr/bin/python3 -c '
import json, sys; c = json.loads(sys.argv[1]); c["name"] = "bench"; print(json.dumps(c))' "$3")]"
        echo "routes: [{\"id\": \"probe\", \"paths\": [\"/probe/*rest\"], \"upstream\": \"probe\"${route_extra[$1]}}]"
        echo "upstreams: {probe: {nodes: [\"http://127.0.0.1:1\"]}}"
    } >"$2"
    { "$TOLLGATE" check -c "$2" >/dev/null; } 2>&1
}
for t in jwt jwt-verify; do
    want "$t" || continue
    if ! check_out=$(jwt_check "$t" "$tmp/$t-plugin-check.yaml"); then
        if [[ "$check_out" == *'unknown plugin "jwt-auth"'* ]]; then
            skip "$t" "this tollgate has no jwt-auth plugin"
        elif [[ "$t" == jwt-verify && "$check_out" == *"unknown field"*cache_ttl_s* ]]; then
            skip "$t" "this tollgate's jwt-auth has no cache_ttl_s"
        else
            die "$t: tollgate check refuses the jwt-auth route: $check_out"
        fi
    elif ! check_out=$(jwt_check "$t" "$tmp/$t-consumer-check.yaml" "$JWT_CONSUMER"); then
        die "$t: tollgate check refuses the jwt consumer (the script's config is not the plugin's?): $check_out"
    fi
done
((${#targets[@]} > 0)) || die "no targets left to measure"

# ---------------------------------------------------------------- the servers

read -r port_etcd peer_etcd port_backend port_probe \
    port_none admin_none port_chain admin_chain port_jwt admin_jwt port_jwt_verify admin_jwt_verify \
    port_baseline admin_baseline port_pingsix status_pingsix prom_pingsix < <(free_ports 17)
ETCD_URL="http://127.0.0.1:$port_etcd"
BENCH_PATH=/bench/echo PROBE_PATH=/probe/echo
declare -A port=([none]=$port_none [chain]=$port_chain [jwt]=$port_jwt [jwt-verify]=$port_jwt_verify
    [baseline]=$port_baseline [pingsix]=$port_pingsix)
declare -A admin=([none]=$admin_none [chain]=$admin_chain [jwt]=$admin_jwt [jwt-verify]=$admin_jwt_verify
    [baseline]=$admin_baseline)
declare -A url=()
for t in "${targets[@]}"; do url[$t]="http://127.0.0.1:${port[$t]}$BENCH_PATH"; done

# wait_code NAME PID CODE URL [CURL_ARGS...]: poll until URL answers CODE;
# fail if PID dies or 30 s pass.
wait_code() {
    local name=$1 pid=$2 code=$3 target=$4 got="" deadline=$((SECONDS + 30))
    shift 4
    while :; do
        got=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "$target" 2>/dev/null) || true
        [[ "$got" == "$code" ]] && return 0
        if ! alive "$pid"; then
            log "$name exited during start-up"
            return 1
        fi
        if ((SECONDS >= deadline)); then
            log "$name: $target answered ${got:-nothing}, not $code, for 30 s"
            return 1
        fi
        sleep 0.05
    done
}

# The bench backend (fixed body) and the probe's (a JSON echo of the request).
start_echo echo-backend bench "$port_backend" "$BENCH_PATH"
start "probe-backend" "${load_prefix[@]}" "$ECHO_BACKEND" --name probe --listen "127.0.0.1:$port_probe"
wait_http probe-backend "$started_pid" "http://127.0.0.1:$port_probe$PROBE_PATH"

tollgate_targets=()
for t in "${targets[@]}"; do [[ "$t" == pingsix ]] || tollgate_targets+=("$t"); done
if ((${#tollgate_targets[@]} > 0)); then
    start_etcd etcd "$port_etcd" "$peer_etcd"
fi
ctl() { ETCDCTL_API=3 etcdctl --endpoints "$ETCD_URL" --dial-timeout 2s "$@" >/dev/null; }

# A tollgate target: its prefix /bench-TARGET in etcd holds the upstreams
# backend and probe, the routes bench (/bench/*rest -> backend) and probe
# (/probe/*rest -> probe, otherwise the same) and its consumer "bench".
for t in "${tollgate_targets[@]}"; do
    prefix=/bench-$t bin=$TOLLGATE
    [[ "$t" == baseline ]] && bin=$BASELINE
    ctl put "$prefix/upstreams/backend" "{\"nodes\": [\"http://127.0.0.1:$port_backend\"]}"
    ctl put "$prefix/upstreams/probe" "{\"nodes\": [\"http://127.0.0.1:$port_probe\"]}"
    ctl put "$prefix/routes/bench" "{\"paths\": [\"/bench/*rest\"], \"upstream\": \"backend\"${route_extra[$t]}}"
    ctl put "$prefix/routes/probe" "{\"paths\": [\"/probe/*rest\"], \"upstream\": \"probe\"${route_extra[$t]}}"
    [[ -z "${consumer[$t]:-}" ]] || ctl put "$prefix/consumers/bench" "${consumer[$t]}"
    conf=$tmp/$t.yaml
    {
        gateway_header "${port[$t]}" "${admin[$t]}" "$tmp/state-$t"
        echo "access_log: { enabled: false }"
        echo "etcd: { endpoints: [\"$ETCD_URL\"], prefix: \"$prefix\" }"
    } >"$conf"
    "$bin" check -c "$conf" >/dev/null || die "$t: generated config rejected ($conf)"
    # The environment override would win over the file's (default) engine.
    start "$t" "${server_prefix[@]}" env -u TOLLGATE_PROXY_ENGINE "$bin" run -c "$conf"
    wait_code "$t" "$started_pid" 200 "http://127.0.0.1:${port[$t]}$PROBE_PATH" "${REQ_HEADERS[@]}" ||
        die "$t: the probe route never answered 200 (routes, consumer loaded from etcd?)"
done

if want pingsix; then
    cat >"$tmp/pingsix.yaml" <<EOF
# generated by bench/plugins.sh
pingora:
  version: 1
  threads: 1
  pid_file: $tmp/pingsix.pid
  upgrade_sock: $tmp/pingsix-upgrade.sock
  # SIGTERM (the clean-up's) stops it at once, not after Pingora's minutes of grace.
  grace_period_seconds: 0
  graceful_shutdown_timeout_seconds: 1
pingsix:
  listeners:
    - address: 127.0.0.1:$port_pingsix
  status:
    address: 127.0.0.1:$status_pingsix
  prometheus:
    address: 127.0.0.1:$prom_pingsix
upstreams:
  - id: backend
    nodes: { "127.0.0.1:$port_backend": 1 }
    type: roundrobin
    scheme: http
  - id: probe
    nodes: { "127.0.0.1:$port_probe": 1 }
    type: roundrobin
    scheme: http
routes:
  - id: bench
    uri: /bench/{*rest}
    upstream_id: backend
    plugins: &chain
      cors: { allow_origins: "$ORIGIN" }
      key-auth: { key: "$API_KEY", hide_credentials: true }
      proxy-rewrite: { regex_uri: $REWRITE }
      limit-count: { key_type: vars, key: remote_addr, time_window: 1, count: 1000000, rejected_code: 429 }
  - id: probe
    uri: /probe/{*rest}
    upstream_id: probe
    plugins: *chain
global_rules:
  - id: metrics
    plugins:
      prometheus: {}
EOF
    start pingsix "${server_prefix[@]}" "$PINGSIX" -c "$tmp/pingsix.yaml"
    wait_code pingsix "$started_pid" 200 "http://127.0.0.1:$port_pingsix$PROBE_PATH" "${REQ_HEADERS[@]}" ||
        die "pingsix: the probe route never answered 200"
fi

# ------------------------------------------------------------------ the probes

# resp_header NAME: header NAME of the last probe's answer ($hdrs).
resp_header() {
    awk -v h="$1" 'tolower($1) == tolower(h ":") { sub(/\r$/, ""); $1 = ""; sub(/^ /, ""); print; exit }' "$hdrs"
}
# probe_code CURL_ARGS...: the status of a probe request.
probe_code() { curl -sS -o /dev/null -w '%{http_code}' "$@" || echo "no answer"; }
probe_fail() { die "$t: probe failed: $*"; }

# A token with a forged signature (its first character changed).
jwt_sig_forged=${jwt_sig:1}
if [[ "${jwt_sig:0:1}" == A ]]; then jwt_sig_forged=B$jwt_sig_forged; else jwt_sig_forged=A$jwt_sig_forged; fi
FORGED_TOKEN=$jwt_input.$jwt_sig_forged

# probe TARGET: the checks above, through the probe route (what the upstream
# saw) and the bench route (what wrk will get). Dies on the first failure.
probe() {
    local t=$1 base="http://127.0.0.1:${port[$1]}" body=$tmp/probe-$1.body code seen want_path=$PROBE_PATH
    hdrs=$tmp/probe-$1.headers
    code=$(curl -sS -D "$hdrs" -o "$body" -w '%{http_code}' "${REQ_HEADERS[@]}" "$base$PROBE_PATH") || probe_fail "curl"
    [[ "$code" == 200 ]] || probe_fail "$PROBE_PATH answered $code with the credentials"
    # What the upstream saw: "path <path>", then "<header>: <value>" lines.
    seen=$(/usr/bin/python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print("path", r["path"])
for k, v in r["headers"].items():
    print(k.lower() + ":", v)' "$body") || probe_fail "the upstream's echo is not JSON"
    case $t in chain | pingsix) want_path=/rewritten/echo ;; esac
    [[ "$seen" == "path $want_path"$'\n'* ]] || probe_fail "the upstream saw $(head -n 1 <<<"$seen"), not $want_path"
    case $t in
    chain | pingsix)
        [[ "$seen" != *$'\n'"apikey:"* ]] || probe_fail "the upstream saw the apikey header (not hidden)"
        [[ "$(resp_header access-control-allow-origin)" == "$ORIGIN" ]] ||
            probe_fail "no Access-Control-Allow-Origin: $ORIGIN"
        [[ -n "$(resp_header x-ratelimit-limit)$(resp_header x-rate-limit-limit)" ]] ||
            probe_fail "no rate-limit header: no limit?"
        if [[ "$t" == chain ]]; then
            [[ "$seen" == *$'\n'"x-consumer-name: bench"* ]] || probe_fail "the upstream saw no X-Consumer-Name: bench"
        fi
        code=$(probe_code -H "Origin: $ORIGIN" "$base$PROBE_PATH")
        [[ "$code" == 401 ]] || probe_fail "without the key: $code, not 401"
        code=$(probe_code -H "apikey: x$API_KEY" "$base$PROBE_PATH")
        [[ "$code" == 401 ]] || probe_fail "with a wrong key: $code, not 401"
        ;;
    jwt | jwt-verify)
        code=$(probe_code "$base$PROBE_PATH")
        [[ "$code" == 401 ]] || probe_fail "without the token: $code, not 401"
        code=$(probe_code -H "Authorization: Bearer $FORGED_TOKEN" "$base$PROBE_PATH")
        [[ "$code" == 401 ]] || probe_fail "with a forged signature: $code, not 401"
        ;;
    none | baseline)
        [[ "$seen" == *$'\n'"apikey: $API_KEY"* ]] || probe_fail "the upstream did not see the request's apikey header"
        [[ -z "$(resp_header access-control-allow-origin)" ]] || probe_fail "CORS headers on a route without plugins"
        ;;
    esac
    # The bench route: 200 from the fixed-body backend, with wrk's headers.
    code=$(curl -sS -D "$hdrs" -o "$body" -w '%{http_code}' "${REQ_HEADERS[@]}" "$base$BENCH_PATH") || probe_fail "curl"
    [[ "$code" == 200 ]] || probe_fail "$BENCH_PATH answered $code"
    [[ "$(resp_header x-backend)" == bench ]] || probe_fail "$BENCH_PATH was not answered by the bench backend"
    log "$t: probe ok (the upstream saw $want_path)"
}
for t in "${targets[@]}"; do probe "$t"; done

# ---------------------------------------------------------------- measuring

{
    lua_done_hook
    echo "wrk.headers[\"apikey\"] = \"$API_KEY\""
    echo "wrk.headers[\"Origin\"] = \"$ORIGIN\""
    echo "wrk.headers[\"Authorization\"] = \"Bearer $TOKEN\""
} >"$tmp/report.lua"
wrk_name_width=10 status_hint=" (401: key or token refused? 429: the limit was reached?)"
log "targets: ${targets[*]}; wrk -t$wrk_threads -c$conns -d${duration}s x $rounds round(s)"
run_rounds run_wrk alternate "${targets[@]}"

# ---------------------------------------------------------------- the table

summarize "${targets[@]}"

# ratio_line NAME A B TARGET: "NAME: A/B (target >= TARGET: met)" when
# both A and B ran; TARGET "-" for none.
ratio_line() {
    local r verdict=""
    [[ -n "${m_rps[$2]:-}" && -n "${m_rps[$3]:-}" ]] || return 0
    r=$(rps_ratio "$2" "$3")
    if [[ "$4" != - ]]; then
        verdict=" (target >= $4: $(awk -v r="$r" -v m="$4" 'BEGIN { print (r >= m ? "met" : "NOT met") }'))"
    fi
    echo "$1: $r$verdict"
}

report=$tmp/report.txt
{
    report_header "$rounds interleaved round(s) (order alternating), median shown; warm-up ${warmup}s"
    echo "# every target: GET $BENCH_PATH with apikey, Origin and Authorization: Bearer (ES256 JWT) headers;" \
        "echo-backend --fixed-body; servers 1 thread, access log off, metrics on"
    echo "# cpus: $pin_layout"
    ! want none || echo "# none: tollgate, a plain route (no plugins, no limit)"
    ! want chain || echo "# chain: the route with plugins cors, key-auth (consumer in etcd), proxy-rewrite" \
        "regex_uri; rate_limit {rate, burst: 1000000, key: client_ip} (never reached)"
    ! want jwt || echo "# jwt: the route with plugin jwt-auth alone (ES256, consumer in etcd;" \
        "one token: verified once, then remembered)"
    ! want jwt-verify || echo "# jwt-verify: jwt with cache_ttl_s: 0 (the signature checked on every request)"
    if want pingsix; then
        echo "# pingsix: PingSIX $pingsix_rev (static YAML, threads 1): cors, key-auth (hide_credentials)," \
            "proxy-rewrite regex_uri, limit-count remote_addr 1000000/s (never reached); prometheus global rule"
    fi
    ! want baseline ||
        echo "# baseline: tollgate $baseline_short (before the plugin system), the plain route"
    for t in "${ALL_TARGETS[@]}"; do
        [[ -z "${skipped[$t]:-}" ]] || echo "# $t: skipped (${skipped[$t]})"
    done
    median_table "${targets[@]}"
    ratio_line "chain/none" chain none 0.9
    ratio_line "jwt/none" jwt none -
    ratio_line "jwt-verify/none" jwt-verify none -
    ratio_line "chain/pingsix" chain pingsix 1.2
    ratio_line "none/baseline" none baseline 0.99
} >"$report"

conclude "$report" "${targets[@]}"
