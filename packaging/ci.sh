#!/usr/bin/env bash
# CI's packaging step: one release build, both packages, their checks, the unit and the AMI recipes.
#   packaging/ci.sh [--arch x86_64|aarch64]   (CI runs both: tests/run.sh; aarch64 is cross-built and its
#                                             binaries run under qemu-aarch64, packaging/cross-setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
. packaging/lib.sh
arch=x86_64
[ "${1:-}" = "--arch" ] && arch=$2
set_arch "$arch"

echo "== packaging/build.sh --arch $arch"
packaging/build.sh --arch "$arch"
echo "== packaging/check.sh"
packaging/check.sh --arch "$arch"
echo "== packaging/verify-unit.sh"
if [ "$(uname -m)" = "$RPM_ARCH" ]; then
  packaging/verify-unit.sh "target/$TRIPLE/release/lmi-agent"
else
  # The unit verified against the arm64 binary, which verify-unit.sh runs (check-config) under emulation.
  wrap=$(mktemp -d)
  trap 'rm -rf "$wrap"' EXIT
  printf '#!/bin/sh\nexec qemu-%s %s "$@"\n' "$RPM_ARCH" "$PWD/target/$TRIPLE/release/lmi-agent" >"$wrap/lmi-agent"
  chmod +x "$wrap/lmi-agent"
  packaging/verify-unit.sh "$wrap/lmi-agent"
fi
echo "== packaging/check_recipes.py"
python3 packaging/check_recipes.py "$PKG_OUT/files.txt"
