#!/usr/bin/env bash
# Runs every test of the project: Rust unit tests, the integration and fault tests in tests/ (they start the
# real daemon and real runtimes, and skip with a printed reason when not root), and the runtime shims' tests.
# Idempotent set-up first: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

./tests/setup.sh

echo "== cargo test --workspace"
cargo test --workspace --locked

echo "== runtime shim tests (python, java, dotnet)"
python3 -m pytest -q -p no:cacheprovider runtime-shims/python/tests runtime-shims/java/tests \
  runtime-shims/dotnet/tests
