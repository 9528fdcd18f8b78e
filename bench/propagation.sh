#!/usr/bin/env bash
# Config propagation benchmark: how fast etcd changes reach a running
# tollgate, what a large config costs in memory, and whether config churn
# slows the data path. One run measures, against a real etcd, real echo
# backends and target/release/tollgate (threads 1, etcd mode, loopback):
#   1. route put -> first 200 (and delete -> first 404) at 10 and 10,000 routes
#   2. registry instance re-pointed / added -> first answer from its backend
#   3. lease revoked -> first 503
#   4. gateway VmRSS with 10,000 routes + 10,000 leased instances applied
#   5. wrk req/s quiet vs. while 100 route updates/s are written (and vs. a
#      control window: the same writes where the gateway does not watch),
#      the gateway on a CPU of its own and everything else on the others
# Prints a table (measured numbers, each target PASS/MISS) and writes it to
# bench/results/propagation-latest.txt. The work is done by the
# `propagation` binary (bench/propagation/); see its doc comment.
#
# Usage: bench/propagation.sh [options]
#   --quick        smoke mode (scripts/test.sh): tables of 10 and 1,000
#                  routes, 50 samples each, 1,000 routes + 1,000 instances
#                  for memory, 3 s wrk windows; writes
#                  bench/results/propagation-quick.txt instead of -latest
#   --strict       exit non-zero when a target is missed (default: only
#                  when the harness fails: gateway died, a change never
#                  arrived, wrk errors)
#   --out FILE     where to write the table
#   --poll-gap-us N  pause N µs between polls that did not match yet
#                  (default 0: poll back-to-back)
#   --phases LIST  run only some of routes,instances,load (comma-separated;
#                  the table is then only printed unless --out is given)
#   --no-build     do not run cargo build (use the existing binaries)
#   -h, --help
#
# Environment: TOLLGATE_BIN overrides the gateway binary (default
# target/release/tollgate, or $CARGO_TARGET_DIR/release/tollgate);
# TESTKIT_ETCD_BIN the etcd binary (default: etcd on PATH).
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

# The options, but for --no-build, go to the propagation binary as given.
# shellcheck disable=SC2034  # poll_gap_us, phases: read through value_opts
strict=0 out="" poll_gap_us="" phases=""
switch_opts=([--strict]=strict)
value_opts=([--out]=out [--poll-gap-us]=poll_gap_us [--phases]=phases)
parse_args "$@"
args=()
((quick)) && args+=(--quick)
((strict)) && args+=(--strict)
for opt in --out --poll-gap-us --phases; do
    [[ -z "${explicit[$opt]:-}" ]] || args+=("$opt" "${!value_opts[$opt]}")
done

need_tools wrk etcd
build_release -p tollgate -p propagation

TOLLGATE=${TOLLGATE_BIN:-$(release_bin tollgate)}
PROPAGATION=$(release_bin propagation)
require_bin tollgate "$TOLLGATE"
require_bin propagation "$PROPAGATION"

# Run the bench in its own process group so that an interrupt also takes
# down what it started (etcd, gateways, wrk) even if it cannot clean up.
setsid "$PROPAGATION" --tollgate "$TOLLGATE" "${args[@]}" &
bench_pid=$!
# shellcheck disable=SC2317  # invoked from traps
stop() {
    trap - INT TERM
    kill -TERM -- "-$bench_pid" 2>/dev/null || kill -TERM "$bench_pid" 2>/dev/null || true
    wait "$bench_pid" 2>/dev/null || true
    exit "$1"
}
trap 'stop 130' INT
trap 'stop 143' TERM
rc=0
wait "$bench_pid" || rc=$?
exit "$rc"
