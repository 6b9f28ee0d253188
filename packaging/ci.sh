#!/usr/bin/env bash
# CI's packaging step: one release build, both packages, their checks, the unit and the AMI recipes.
#   packaging/ci.sh [--arch x86_64|aarch64]   (CI runs x86_64, the only target this machine can build)
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
  echo "(the $arch binary cannot run here: verify-unit skipped)"
fi
echo "== packaging/check_recipes.py"
python3 packaging/check_recipes.py "$PKG_OUT/files.txt"
