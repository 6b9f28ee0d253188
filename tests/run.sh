#!/usr/bin/env bash
# Runs every test of the project: Rust unit tests, the integration, fault and soak tests in tests/ (they start
# the real daemon and real runtimes, and skip with a printed reason when not root), a bounded run of every fuzz
# target, the runtime shims' tests, the packages' checks, and the installed package in a systemd/cgroup v2 VM.
# Idempotent set-up first: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

./tests/setup.sh

# A test that cannot run here returns early and libtest counts it as passed: each one records why instead
# (lmi-testkit), and the skips are listed below. As root, a test skipped for lack of root is a failure.
skips=$(mktemp /tmp/lmi-test-skips.XXXXXX)
trap 'rm -f "$skips"' EXIT
export LMI_TEST_SKIPS=$skips

echo "== cargo test --workspace"
cargo test --workspace --locked

if [ -s "$skips" ]; then
  echo "== $(wc -l <"$skips") tests skipped:"
  sort "$skips" | sed 's/^/   /'
else
  echo "== no test skipped"
fi
if [ "$(id -u)" = 0 ] && grep -q $'\tneeds root' "$skips"; then
  echo "tests/run.sh: running as root, yet tests skipped for lack of root (above)" >&2
  exit 1
fi

# A checkout under /tmp: functions have a /tmp of their own, so nothing under such a checkout is visible to them.
# The system tests that hand files under the checkout to functions (fixtures, shims, rendezvous directories, the
# README's example) run again from a copy of the tracked tree under /tmp, with the binaries just built.
echo "== tests/relocated.sh"
./tests/relocated.sh

# The agent core's unit tests (create and its rollback, routing, throttles, recovery, shutdown on fakes) as an
# unprivileged user, so that they stay runnable without root.
if [ "$(id -u)" = 0 ]; then
  core_tests=$(cargo test -p lmi-agent-core --lib --locked --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    try: m = json.loads(l)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])' | tail -1)
  echo "== lmi-agent-core's unit tests as nobody ($core_tests)"
  (cd /tmp && setpriv --reuid=65534 --regid=65534 --clear-groups -- "$core_tests" -q)
fi

# Every fuzz target for a bounded time (longer by hand: tests/fuzz/run.sh 3600; see docs/RELIABILITY.md).
echo "== fuzz (${LMI_FUZZ_SECONDS:-20}s per target)"
./tests/fuzz/run.sh "${LMI_FUZZ_SECONDS:-20}"

# One pytest run per shim: each tests/ folder has its own conftest.py, and the Python shim's tests import
# theirs by module name.
for shim in python java dotnet; do
  echo "== runtime shim tests ($shim)"
  python3 -m pytest -q -p no:cacheprovider "runtime-shims/$shim/tests"
done

# The Node shim's own tests (node:test, against a stub Runtime API), on each Node major the catalog runs.
for node in node node22; do
  echo "== runtime shim tests (node: $node $("$node" --version))"
  "$node" --test runtime-shims/node/tests/*.test.mjs
done

# The packages: .deb and .rpm from one release build, their file lists and modes, the .deb unpacked and run,
# systemd-analyze verify of the unit, the AMI recipes checked offline.
./packaging/ci.sh

# Graviton (arm64, c7g): the arm64 packages built (cross) and checked like the x86_64 ones, the workspace's unit
# tests built for aarch64-unknown-linux-gnu and run under qemu-aarch64, and the arm64 agent under emulation
# through a subset of the system tests against this machine's cgroups and namespaces (tests/arm64/run.sh says
# what cannot run emulated, and why). Each part ends with its own `N passed, M failed`.
./packaging/ci.sh --arch aarch64
./tests/arm64/run.sh unit
./tests/arm64/run.sh system

# The installed product on the machine production runs: the .deb just built, installed with dpkg -i in a QEMU
# VM (Debian's kernel, systemd as PID 1, cgroup v2 only), started with systemctl and checked there, then the
# library's cgroup tests in the VM. One line per check and `N passed, M failed`.
echo "== tests/vm/run.sh"
./tests/vm/run.sh
