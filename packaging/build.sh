#!/usr/bin/env bash
# Builds the lmi-agent .deb (cargo-deb) and .rpm (cargo-generate-rpm) from one release build.
#
#   packaging/build.sh [--arch x86_64|aarch64] [--no-build]
#
# --arch     x86_64 (default; deb amd64, rpm x86_64: m7i, r7i) or aarch64 (deb arm64, rpm aarch64: Graviton
#            c7g). On an x86_64 host aarch64 is cross-built: packaging/cross-setup.sh (run by
#            install-tools.sh) installs the Rust target and Debian's cross linker, which .cargo/config.toml
#            names. On a Graviton host it is native.
# --no-build reuse target/<triple>/release/{lmi-agent,lmictl} as they are.
#
# Output: target/lmi-package/lmi-agent_<version>-1_<deb arch>.deb and lmi-agent-<version>-1.<rpm arch>.rpm.
set -euo pipefail
cd "$(dirname "$0")/.."
. packaging/lib.sh

arch=x86_64
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=$2; shift 2 ;;
    --arch=*) arch=${1#--arch=}; shift ;;
    --no-build) build=0; shift ;;
    *) echo "usage: $0 [--arch x86_64|aarch64] [--no-build]" >&2; exit 2 ;;
  esac
done
set_arch "$arch"

# The packagers, and the cross-build's toolchain (packaging/cross-setup.sh).
tools_bin=$(packaging/install-tools.sh)
export PATH="$tools_bin:$PATH"

if [ "$build" = 1 ]; then
  echo "== cargo build --release --target $TRIPLE"
  # Debug info stripped, symbols kept (backtraces keep function names); same binaries in both packages.
  CARGO_PROFILE_RELEASE_STRIP=debuginfo cargo build --release --locked -p lmi-agent -p lmictl --target "$TRIPLE"
fi
for bin in lmi-agent lmictl; do
  [ -x "target/$TRIPLE/release/$bin" ] || { echo "build.sh: target/$TRIPLE/release/$bin is missing" >&2; exit 1; }
done

# Staging: the runtime shims without their tests (the package metadata in agent/daemon/Cargo.toml points here), in two
# trees that both install into /usr/share/lmi-agent/runtime-shims/: stage/runtime-shims-exec holds the files that
# are executable in the source tree (packaged 0755: bootstraps the runtime executes), stage/runtime-shims the rest
# (0644). Both packagers take the mode from the asset entry, not from the file, hence the split.
rm -rf "$PKG_OUT/stage"
mkdir -p "$PKG_OUT/stage/runtime-shims" "$PKG_OUT/stage/runtime-shims-exec"
shim_executables >"$PKG_OUT/shim-executables.txt"
shim_files | while read -r f; do
  tree=runtime-shims
  grep -qxF -- "$f" "$PKG_OUT/shim-executables.txt" && tree=runtime-shims-exec
  mkdir -p "$PKG_OUT/stage/$tree/$(dirname "$f")"
  cp -p "runtime-shims/$f" "$PKG_OUT/stage/$tree/$f"
done

# Only this architecture's packages: the other's, built by an earlier run, stay for their own checks.
rm -f "$PKG_OUT"/lmi-agent_*_"$DEB_ARCH".deb "$PKG_OUT"/lmi-agent-*."$RPM_ARCH".rpm
echo "== cargo deb ($DEB_ARCH)"
# cargo-deb warns that the staged shim path is not a Cargo target path: expected, it is ours.
if ! cargo deb -p lmi-agent --no-build --no-strip --target "$TRIPLE" --output "$PKG_OUT/" >"$PKG_OUT/cargo-deb.log" 2>&1; then
  cat "$PKG_OUT/cargo-deb.log" >&2
  exit 1
fi
grep -v "does not match the pattern, and will not be built" "$PKG_OUT/cargo-deb.log" || true
echo "== cargo generate-rpm ($RPM_ARCH)"
cargo generate-rpm -p agent/daemon --target "$TRIPLE" --output "$PKG_OUT/"
ls -l "$PKG_OUT"/lmi-agent_*_"$DEB_ARCH".deb "$PKG_OUT"/lmi-agent-*."$RPM_ARCH".rpm
