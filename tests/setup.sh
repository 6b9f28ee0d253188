#!/usr/bin/env bash
# Installs what the tests need and the machine may lack. Safe to run again: each step checks first.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
have() { command -v "$1" >/dev/null 2>&1; }

apt_install() {
  if ! have apt-get; then
    echo "setup: $* missing and apt-get is not available; install it by hand" >&2
    return 1
  fi
  if [ ! -f /var/lib/apt/lists/.lmi-updated ] ; then
    apt-get update -qq && touch /var/lib/apt/lists/.lmi-updated
  fi
  # Wait for a concurrent apt/dpkg run instead of failing on its lock.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 "$@" >/dev/null
}

have cargo || { echo "setup: cargo is required (rustup)" >&2; exit 1; }
have python3 || apt_install python3
have curl || apt_install curl
python3 -m pytest --version >/dev/null 2>&1 || python3 -m pip install -q pytest
python3 -c "import prometheus_client" >/dev/null 2>&1 || python3 -m pip install -q prometheus_client
# Java and .NET runtimes, and the compiled `provided` test bootstrap: a JDK (java17 is Debian 12's default;
# other majors are used when installed), Mono for the .NET shim (.NET itself is not installable here), a C
# compiler. Then the shims and their test functions are built (each build script is cached by source hash).
have javac || apt_install default-jdk-headless
have mcs || apt_install mono-mcs
have mono || apt_install mono-runtime
[ -f /usr/lib/mono/4.5/System.Net.Http.dll ] || apt_install libmono-system-net-http4.0-cil
have cc || apt_install gcc libc6-dev
have flock || apt_install util-linux
"$root/runtime-shims/java/build.sh"
"$root/runtime-shims/dotnet/build.sh"
"$root/tests/fixtures/java/build.sh"
"$root/tests/fixtures/dotnet/build.sh"
"$root/tests/fixtures/provided/c/build.sh"
if ! cargo clippy --version >/dev/null 2>&1; then rustup component add clippy; fi
if ! cargo fmt --version >/dev/null 2>&1; then rustup component add rustfmt; fi
echo "setup: ok"
