#!/usr/bin/env bash
# Clean-room check of the README's two commands: a minimal Debian root made
# with debootstrap from the archive apt already uses, the host's Rust toolchain
# bind-mounted read-only (a fresh machine of this kind has one, and nothing
# else), the working tree copied in, then inside it:
#
#   1. scripts/deps.sh, timed, with what it installs;
#   2. scripts/deps.sh again: it must print nothing and install nothing;
#   3. the release build scripts/demo.sh makes (with network, for crates.io);
#   4. scripts/demo.sh itself, in a network namespace of its own (loopback
#      only, default ports, nothing on the host can clash), until it prints
#      "Tollgate is up"; then a request through it must reach the users
#      service and /status must say etcd is connected;
#   5. with --tests, scripts/test.sh (the whole suite, ~25 min more).
#
# Run it before changing dependencies (Cargo.toml, scripts/deps.sh, the
# Dockerfile): your own machine keeps what earlier work installed, so a green
# run there proves nothing about a fresh one. Needs root, debootstrap (it is
# installed if missing), mount and unshare. Takes about 10-15 minutes on the
# 2-core machines, most of it the release build.
#
#   scripts/fresh-machine.sh [--tests] [--keep] [--root DIR]
set -euo pipefail
cd "$(dirname "$0")/.."

run_tests=0
keep=0
root=""
while (($#)); do
    case $1 in
    --tests) run_tests=1 ;;
    --keep) keep=1 ;;
    --root) root=$2; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "fresh-machine.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done

say() { printf '\nfresh-machine: %s\n' "$*"; }
die() { printf 'fresh-machine: FAILED: %s\n' "$*" >&2; exit 1; }
((EUID == 0)) || die "run as root (debootstrap, mount and chroot need it)"

# The archive and suite apt uses on this host.
suite=$(. /etc/os-release && echo "${VERSION_CODENAME:-}")
[[ -n "$suite" ]] || die "cannot tell the Debian suite from /etc/os-release"
mirror=$(grep -hoE '^(URIs:|deb) +[a-z]+://[^ ]*/debian/?( |$)' \
    /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null |
    awk '{print $2}' | head -n1 || true)
[[ -n "$mirror" ]] || die "no Debian archive found in apt's sources"

if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap (it builds the clean root)"
    apt-get update -q >/dev/null && apt-get install -y -q debootstrap >/dev/null
fi

rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_bin=${CARGO_HOME:-$HOME/.cargo}/bin
[[ -x "$cargo_bin/cargo" && -d "$rustup_home/toolchains" ]] ||
    die "no rustup toolchain at $rustup_home with proxies in $cargo_bin"

[[ -n "$root" ]] || root=$(mktemp -d /var/tmp/tollgate-fresh.XXXXXX)
mkdir -p "$root"
t0=$SECONDS
stamp() { printf '%ss' "$((SECONDS - $1))"; }

cleanup() {
    local m p
    # Whatever still runs inside the root (a demo that did not stop).
    for p in /proc/[0-9]*; do
        [[ "$(readlink "$p/root" 2>/dev/null)" == "$root" ]] && kill -KILL "${p#/proc/}" 2>/dev/null || true
    done
    # Unmount whatever is still mounted below the root, deepest first.
    for m in $(awk -v r="$root" '$2 ~ "^"r {print $2}' /proc/mounts | sort -r); do
        umount -l "$m" 2>/dev/null || true
    done
    if ((keep)); then
        echo "fresh-machine: root kept at $root"
    else
        rm -rf --one-file-system "$root"
    fi
}
trap cleanup EXIT

say "debootstrap $suite from $mirror into $root"
t=$SECONDS
# minbase + what every machine of this kind has before any project work:
# CA certificates (cargo reaches crates.io over https). No compiler, no
# curl, no python3: deps.sh must bring what the build and scripts use.
debootstrap --variant=minbase --include=ca-certificates "$suite" "$root" "$mirror" \
    >"$root.debootstrap.log" 2>&1 || { tail -n 20 "$root.debootstrap.log"; die "debootstrap"; }
rm -f "$root.debootstrap.log"
echo "  done in $(stamp "$t")"

# The host's apt sources (same archive, security updates too), resolver and
# local CA certificates: the machine's network setup (a registry reached
# through an inspecting proxy), which every machine of this kind has.
cp /etc/resolv.conf "$root/etc/resolv.conf"
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
    chroot "$root" update-ca-certificates >/dev/null 2>&1 || die "update-ca-certificates in the root"
fi
[[ -d /etc/apt/sources.list.d ]] && cp /etc/apt/sources.list.d/*.sources "$root/etc/apt/sources.list.d/" 2>/dev/null || true
[[ -f /etc/apt/sources.list ]] && cp /etc/apt/sources.list "$root/etc/apt/sources.list"

# Mounts: kernel filesystems, the toolchain read-only, cargo-nextest (on
# every machine of this kind) read-only.
mkdir -p "$root/opt/rustup" "$root/opt/cargo/bin"
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount --bind "$rustup_home" "$root/opt/rustup" && mount -o remount,bind,ro "$root/opt/rustup"
mount --bind "$cargo_bin" "$root/opt/cargo/bin" && mount -o remount,bind,ro "$root/opt/cargo/bin"
if nextest=$(command -v cargo-nextest); then
    touch "$root/usr/local/bin/cargo-nextest"
    mount --bind "$nextest" "$root/usr/local/bin/cargo-nextest"
fi

# The working tree as git sees it (tracked and untracked-not-ignored files),
# so uncommitted changes are checked too.
mkdir -p "$root/src/tollgate"
git ls-files -z --cached --others --exclude-standard |
    tar --null -T - -cf - | tar -xf - -C "$root/src/tollgate"

# in_root CMD: run CMD with bash in the clean root, as root, with a login-like
# environment (no host variables but TERM).
in_root() {
    chroot "$root" /usr/bin/env -i HOME=/root TERM="${TERM:-dumb}" \
        RUSTUP_HOME=/opt/rustup CARGO_HOME=/root/.cargo \
        PATH=/opt/cargo/bin:/root/.cargo/bin:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin \
        CI="${CI:-}" \
        bash -c "cd /src/tollgate && $1"
}

say "scripts/deps.sh (first run)"
t=$SECONDS
in_root 'scripts/deps.sh' || die "scripts/deps.sh failed on a clean root"
echo "  done in $(stamp "$t")"

say "scripts/deps.sh (second run: must print nothing)"
out=$(in_root 'scripts/deps.sh 2>&1') || die "second scripts/deps.sh failed: $out"
[[ -z "$out" ]] || die "second scripts/deps.sh printed: $out"
echo "  silent, nothing installed"

say "release build (as scripts/demo.sh makes it)"
t=$SECONDS
in_root 'cargo build --release --quiet -p tollgate -p testkit --bins' || die "release build"
echo "  done in $(stamp "$t")"

# The demo in a network namespace of its own: loopback only, so its default
# ports (8080, 9180, 2379, 9001-9003) clash with nothing on the host.
say "scripts/demo.sh (own network namespace, default ports)"
t=$SECONDS
demo_log="$root/demo.out"
smoke=$(
    cat <<'SMOKE'
ip link set lo up
chroot "$ROOT" /usr/bin/env -i HOME=/root RUSTUP_HOME=/opt/rustup CARGO_HOME=/root/.cargo \
    PATH=/opt/cargo/bin:/root/.cargo/bin:/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin \
    bash -c 'cd /src/tollgate && exec setsid scripts/demo.sh' >"$ROOT/demo.out" 2>&1 </dev/null &
demo=$!
deadline=$((SECONDS + 120))
until grep -q 'Tollgate is up' "$ROOT/demo.out"; do
    kill -0 "$demo" 2>/dev/null || { echo "demo.sh exited before the gateway was up"; exit 1; }
    ((SECONDS < deadline)) || { echo "demo.sh not up after 120 s"; kill -TERM "$demo"; exit 1; }
    sleep 0.2
done
rc=0
body=$(chroot "$ROOT" curl -sS --max-time 5 -w ' %{http_code}' localhost:8080/api/users/42) || rc=1
echo "GET /api/users/42 -> $body"
[[ "$body" == *users*" 200" ]] || rc=1
status=$(chroot "$ROOT" curl -sS --max-time 5 localhost:9180/status) || rc=1
echo "GET /status -> $status"
[[ "$status" == *'"etcd":"connected"'* ]] || rc=1
# TERM, not INT: a background job of a non-interactive shell ignores SIGINT.
kill -TERM "$demo" 2>/dev/null
wait "$demo" 2>/dev/null || true
exit "$rc"
SMOKE
)
if ! ROOT=$root unshare --net --fork bash -c "$smoke"; then
    echo "--- demo.sh output:"
    cat "$demo_log" || true
    for f in "$root"/src/tollgate/.demo/logs/*.log; do
        echo "--- $f (last lines)"
        tail -n 15 "$f"
    done 2>/dev/null
    die "scripts/demo.sh"
fi
echo "  up and serving in $(stamp "$t")"

if ((run_tests)); then
    say "scripts/test.sh (the whole suite)"
    t=$SECONDS
    in_root 'scripts/test.sh' || die "scripts/test.sh"
    echo "  passed in $(stamp "$t")"
fi

installed=$(chroot "$root" dpkg-query -W -f='${binary:Package}\n' | wc -l)
say "PASSED in $(stamp "$t0") ($installed Debian packages in the root)"
