#!/usr/bin/env bash
# Runs every test of the project: Rust unit tests, the integration, fault and soak tests in tests/ (they start
# the real daemon and real runtimes, and skip with a printed reason when not root), a bounded run of every fuzz
# target, the runtime shims' tests, the packages' checks, and the installed package in a systemd/cgroup v2 VM.
# Idempotent set-up first: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

./tests/setup.sh

echo "== cargo test --workspace"
cargo test --workspace --locked

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

# The installed product on the machine production runs: the .deb just built, installed with dpkg -i in a QEMU
# VM (Debian's kernel, systemd as PID 1, cgroup v2 only), started with systemctl and checked there, then the
# library's cgroup tests in the VM. One line per check and `N passed, M failed`.
echo "== tests/vm/run.sh"
./tests/vm/run.sh
