#!/usr/bin/env bash
# Checks the packages packaging/build.sh made: lists their contents, compares them with the expected file list,
# checks architecture and conffiles, then unpacks the .deb into a throwaway root and runs the installed
# `lmi-agent --version` and `check-config` on the installed default configuration (arm64 ones under qemu).
#
#   packaging/check.sh [--arch x86_64|aarch64]
#
# Writes target/lmi-package/files.txt (the .deb's file list), which packaging/check_recipes.py reads.
set -euo pipefail
cd "$(dirname "$0")/.."
. packaging/lib.sh

arch=x86_64
[ "${1:-}" = "--arch" ] && arch=$2
set_arch "$arch"

deb=$(ls "$PKG_OUT"/lmi-agent_*_"$DEB_ARCH".deb)
rpm=$(ls "$PKG_OUT"/lmi-agent-*."$RPM_ARCH".rpm)
fail() { echo "package check FAILED: $*" >&2; exit 1; }

expected_files >"$PKG_OUT/expected.txt"

echo "== $deb"
dpkg-deb -c "$deb"
# Regular files only ('-' mode), without the leading '.'; the copyright file is Debian's own.
dpkg-deb -c "$deb" | awk '$1 ~ /^-/ {print $6}' | sed 's#^\.##' | grep -v '^/usr/share/doc/lmi-agent/copyright$' | sort >"$PKG_OUT/files.txt"
diff -u "$PKG_OUT/expected.txt" "$PKG_OUT/files.txt" || fail ".deb file list differs from the expected one (- expected, + in package)"
[ "$(dpkg-deb -f "$deb" Architecture)" = "$DEB_ARCH" ] || fail ".deb architecture is not $DEB_ARCH"
[ "$(dpkg-deb -I "$deb" conffiles)" = "/etc/lmi-agent/agent.toml" ] || fail ".deb conffiles must be exactly /etc/lmi-agent/agent.toml"

echo "== $rpm"
rpm -qip "$rpm" 2>/dev/null | sed -n '1,12p'
rpm -qp --qf '[%{FILEMODES:perms} %{FILENAMES}\n]' "$rpm" 2>/dev/null
rpm -qp --qf '[%{FILEMODES:perms} %{FILENAMES}\n]' "$rpm" 2>/dev/null | awk '$1 ~ /^-/ {print $2}' | sort >"$PKG_OUT/rpm-files.txt"
diff -u "$PKG_OUT/expected.txt" "$PKG_OUT/rpm-files.txt" || fail ".rpm file list differs from the expected one"
[ "$(rpm -qp --qf '%{ARCH}' "$rpm" 2>/dev/null)" = "$RPM_ARCH" ] || fail ".rpm architecture is not $RPM_ARCH"
[ "$(rpm -qcp "$rpm" 2>/dev/null)" = "/etc/lmi-agent/agent.toml" ] || fail ".rpm config files must be exactly /etc/lmi-agent/agent.toml"

# The mode of every installed file, in both packages: 0755 for the binaries and for every shim that is executable
# in the source tree (shim_executables: git's +x bit), 0644 for everything else. Written out from the same
# lists build.sh stages from, so a new executable shim is checked without being named here.
echo "== file modes"
shim_executables | sed 's#^#/usr/share/lmi-agent/runtime-shims/#' >"$PKG_OUT/expected-exec.txt"
printf '%s\n' /usr/bin/lmi-agent /usr/bin/lmictl >>"$PKG_OUT/expected-exec.txt"
while read -r f; do
  if grep -qxF -- "$f" "$PKG_OUT/expected-exec.txt"; then echo "-rwxr-xr-x $f"; else echo "-rw-r--r-- $f"; fi
done <"$PKG_OUT/expected.txt" | sort -k2 >"$PKG_OUT/expected-modes.txt"
dpkg-deb -c "$deb" | awk '$1 ~ /^-/ {print $1, $6}' | sed 's# \./# /#' | grep -v ' /usr/share/doc/lmi-agent/copyright$' | sort -k2 >"$PKG_OUT/deb-modes.txt"
diff -u "$PKG_OUT/expected-modes.txt" "$PKG_OUT/deb-modes.txt" || fail ".deb file modes differ from the expected ones (- expected, + in package)"
rpm -qp --qf '[%{FILEMODES:perms} %{FILENAMES}\n]' "$rpm" 2>/dev/null | awk '$1 ~ /^-/' | sort -k2 >"$PKG_OUT/rpm-modes.txt"
diff -u "$PKG_OUT/expected-modes.txt" "$PKG_OUT/rpm-modes.txt" || fail ".rpm file modes differ from the expected ones (- expected, + in package)"
echo "modes: $(grep -c rwx "$PKG_OUT/expected-modes.txt") executables 0755, the rest 0644, in both packages"
echo "== install the .deb into a throwaway root"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
dpkg-deb -x "$deb" "$root"
# Both packages carry the same files: the .rpm's recorded SHA-256 digests against the unpacked .deb.
rpm -qp --qf '[%{FILEDIGESTS} %{FILENAMES}\n]' "$rpm" 2>/dev/null | while read -r digest path; do
  [ -n "$digest" ] || continue
  [ "$(sha256sum "$root$path" | cut -d' ' -f1)" = "$digest" ] || fail "$path differs between the .deb and the .rpm"
done
# The installed binaries run: natively, or (arm64 packages on an x86_64 host) under qemu-aarch64, which
# packaging/cross-setup.sh installs. Emulation runs the same code; only its speed differs.
run=()
if [ "$(uname -m)" != "$RPM_ARCH" ]; then
  command -v "qemu-$RPM_ARCH" >/dev/null 2>&1 || fail "the $arch binaries cannot run here: no qemu-$RPM_ARCH (packaging/cross-setup.sh)"
  run=("qemu-$RPM_ARCH")
  echo "(the $arch binaries run under $(command -v "qemu-$RPM_ARCH"))"
fi
# The ELF header's e_machine (bytes 18-19): 0xb7 AArch64, 0x3e x86-64.
for bin in lmi-agent lmictl; do
  machine=$(od -An -tx1 -j18 -N2 "$root/usr/bin/$bin" | tr -d ' ')
  [ "$machine" = "$(case "$RPM_ARCH" in aarch64) echo b700 ;; *) echo 3e00 ;; esac)" ] ||
    fail "/usr/bin/$bin is not an $arch executable (ELF e_machine $machine)"
done
"${run[@]}" "$root/usr/bin/lmi-agent" --version
"${run[@]}" "$root/usr/bin/lmictl" --version
# The installed default configuration is valid, and the shims it points at are where the package put them.
out=$(env -u LMI_AGENT_CONFIG "${run[@]}" "$root/usr/bin/lmi-agent" check-config --config "$root/etc/lmi-agent/agent.toml")
echo "$out"
shims=$(echo "$out" | sed -n 's/^shims_dir = "\(.*\)".*/\1/p')
[ -f "$root$shims/python/bootstrap.py" ] || fail "shims_dir $shims does not hold the packaged Python shim"
cmp -s "$root/usr/share/lmi-agent/runtimes.toml" agent/core/catalog/runtimes.toml || fail "packaged catalog differs from the built-in one"
echo "packages: ok ($(wc -l <"$PKG_OUT/files.txt") files each)"
