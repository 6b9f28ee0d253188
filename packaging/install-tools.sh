#!/usr/bin/env bash
# Installs the packaging tools (cargo-deb, cargo-generate-rpm) from crates.io, once per machine.
#
# They take minutes to compile, so they go into a cache outside the work tree (a fresh CI clone keeps them):
# $LMI_TOOLS_DIR, default ~/.cache/lmi-agent/tools. A tool already there at the pinned version is skipped.
# Prints the tools' bin directory on stdout (everything else goes to stderr).
set -euo pipefail

TOOLS_DIR="${LMI_TOOLS_DIR:-$HOME/.cache/lmi-agent/tools}"
# Pinned: a new version is a deliberate change here, not a surprise in CI.
CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

install_tool() { # crate version binary
  local crate=$1 version=$2 bin=$3
  if [ -x "$TOOLS_DIR/bin/$bin" ] && [ -f "$TOOLS_DIR/.$crate-$version" ]; then
    return 0
  fi
  echo "install-tools: building $crate $version into $TOOLS_DIR (once per machine)" >&2
  cargo install --locked --quiet --root "$TOOLS_DIR" --version "$version" "$crate" >&2
  touch "$TOOLS_DIR/.$crate-$version"
}

mkdir -p "$TOOLS_DIR"
# The arm64 cross-build's Rust target, cross linker and qemu-aarch64 (a no-op on an aarch64 host).
"$(dirname "$0")/cross-setup.sh"
install_tool cargo-deb "$CARGO_DEB_VERSION" cargo-deb
install_tool cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION" cargo-generate-rpm
echo "$TOOLS_DIR/bin"
