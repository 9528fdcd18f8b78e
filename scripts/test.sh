#!/usr/bin/env bash
# Tollgate's whole test suite: dependencies, formatting, lints, build, tests,
# and a short smoke run of the benchmark scripts. Exits non-zero if any step
# fails. Independent steps keep going after a failure so one run reports
# everything; a failed dependency install or build stops the run, since the
# steps after it cannot mean anything.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1

if [[ "${CI:-}" == "true" ]]; then
    export CARGO_TERM_COLOR=never
fi

failed=()
passed=()

section() {
    printf '\n==================== %s ====================\n' "$*"
}

# step NAME [--fatal] CMD...: run CMD under a section header and record it.
step() {
    local name=$1 fatal=0
    shift
    if [[ "${1:-}" == "--fatal" ]]; then
        fatal=1
        shift
    fi
    section "$name"
    local start=$SECONDS
    if "$@"; then
        passed+=("$name")
        printf -- '--- %s: ok (%ss)\n' "$name" "$((SECONDS - start))"
    else
        local rc=$?
        failed+=("$name")
        printf -- '--- %s: FAILED (exit %s, %ss)\n' "$name" "$rc" "$((SECONDS - start))"
        if ((fatal)); then
            summary
            exit 1
        fi
    fi
}

summary() {
    section "summary"
    local s
    for s in "${passed[@]}"; do printf '  ok      %s\n' "$s"; done
    for s in "${failed[@]}"; do printf '  FAILED  %s\n' "$s"; done
}

# The tests' binary carries the test-only hooks (a request that panics on
# a header); release builds never do.
run_tests() {
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --workspace --no-fail-fast --features tollgate/test-hooks
    else
        echo "cargo-nextest not available; falling back to cargo test"
        cargo test --workspace --no-fail-fast --features tollgate/test-hooks
    fi
}

step "deps" --fatal scripts/deps.sh
# Once everything is there, deps.sh proves it again quietly: no install, no output.
deps_silent() {
    local out
    out=$(scripts/deps.sh 2>&1) || { printf '%s\n' "$out"; return 1; }
    [[ -z "$out" ]] || { printf 'deps.sh printed on a second run:\n%s\n' "$out"; return 1; }
}
step "deps (again: silent)" deps_silent
step "fmt" cargo fmt --all -- --check
step "clippy" cargo clippy --workspace --all-targets -- -D warnings
step "build" --fatal cargo build --workspace --bins --features tollgate/test-hooks
step "tests" run_tests
# The integration tests again on the fallback engine (proxy.engine: pingora):
# the binary reads the override at start, so every test runs unchanged.
run_pingora_engine_tests() {
    if cargo nextest --version >/dev/null 2>&1; then
        TOLLGATE_PROXY_ENGINE=pingora cargo nextest run --workspace --no-fail-fast \
            --features tollgate/test-hooks -E 'kind(test)'
    else
        TOLLGATE_PROXY_ENGINE=pingora cargo test --workspace --no-fail-fast \
            --features tollgate/test-hooks --tests
    fi
}
step "tests (pingora engine)" run_pingora_engine_tests
# The profile-guided release build (what the Dockerfile ships), trained
# for 1 s a load; bench/proxy.sh then measures it beside the plain build.
step "pgo build" scripts/pgo.sh --quick
step "bench smoke: proxy" bench/proxy.sh --quick
step "bench smoke: propagation" bench/propagation.sh --quick
step "bench smoke: rate limit" bench/limit.sh --quick
step "bench smoke: balancing" bench/lb.sh --quick
step "bench smoke: observability" bench/observability.sh --quick
step "bench smoke: registry" bench/registry.sh --quick
step "bench smoke: soak" bench/soak.sh --quick
step "bench smoke: tls" bench/tls.sh --quick
step "bench smoke: plugins" bench/plugins.sh --quick
step "bench smoke: admin" bench/admin.sh --quick
step "bench smoke: cache" bench/cache.sh --quick
step "bench smoke: cluster" bench/cluster.sh --quick

summary
if ((${#failed[@]} > 0)); then
    exit 1
fi
