# Shared by packaging/build.sh and packaging/check.sh (sourced, not run). Run from the repository root.

# Architecture parameter → Rust target, Debian and RPM architecture names.
# x86_64: m7i, r7i (and any x86_64 instance); aarch64: Graviton (c7g, m7g, r7g).
set_arch() {
  case "$1" in
    x86_64 | amd64) TRIPLE=x86_64-unknown-linux-gnu DEB_ARCH=amd64 RPM_ARCH=x86_64 ;;
    aarch64 | arm64) TRIPLE=aarch64-unknown-linux-gnu DEB_ARCH=arm64 RPM_ARCH=aarch64 ;;
    *) echo "unknown architecture $1 (x86_64 or aarch64)" >&2; return 1 ;;
  esac
}

# Where packages and the staging tree go.
PKG_OUT=target/lmi-package

# Runtime shim files that are shipped, relative to runtime-shims/: everything but tests and caches.
shim_files() {
  (cd runtime-shims && find . -type f \
    -not -path '*/tests/*' -not -path '*/testlib/*' -not -path '*/__pycache__/*' \
    -not -name '*.pyc' -not -path '*/node_modules/*' -not -path '*/target/*' | sed 's#^\./##' | sort)
}

# The shipped shim files that must be executable (mode 0755 once installed; every other file is 0644): those
# with the +x bit in git (in a checkout; the file system's bit in an unpacked source tarball). The runtime
# launches them directly (the java and dotnet bootstraps, the Node entry point), so the list is read from the
# source tree here, once, by both packaging/build.sh (which stages them apart) and packaging/check.sh.
shim_executables() {
  if git -C runtime-shims rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git ls-files -s -- runtime-shims | awk '$1 == "100755" { print $4 }' | sed 's#^runtime-shims/##' | sort >"${TMPDIR:-/tmp}/lmi-shim-x.$$"
  else
    (cd runtime-shims && find . -type f -perm -u+x | sed 's#^\./##' | sort) >"${TMPDIR:-/tmp}/lmi-shim-x.$$"
  fi
  shim_files | comm -12 - "${TMPDIR:-/tmp}/lmi-shim-x.$$"
  rm -f "${TMPDIR:-/tmp}/lmi-shim-x.$$"
}

# Every regular file a package must hold, sorted.
expected_files() {
  {
    printf '%s\n' \
      /usr/bin/lmi-agent \
      /usr/bin/lmictl \
      /usr/lib/systemd/system/lmi-agent.service \
      /etc/lmi-agent/agent.toml \
      /usr/share/lmi-agent/runtimes.toml \
      /usr/share/doc/lmi-agent/README.md \
      /usr/share/doc/lmi-agent/configuration.md \
      /usr/share/doc/lmi-agent/operations.md
    shim_files | sed 's#^#/usr/share/lmi-agent/runtime-shims/#'
  } | sort
}
