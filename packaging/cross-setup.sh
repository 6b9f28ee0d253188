#!/usr/bin/env bash
# What building and running the arm64 (Graviton: c7g) agent needs on an x86_64 Debian machine, installed once
# and checked first on every run (idempotent; tests/setup.sh and packaging/build.sh --arch aarch64 call it):
#   - the Rust standard library for aarch64-unknown-linux-gnu (rustup);
#   - Debian's cross linker and arm64 C library (gcc-aarch64-linux-gnu, libc6-dev-arm64-cross), which
#     .cargo/config.toml names;
#   - the arm64 C runtime as multiarch packages (libc6:arm64, libgcc-s1:arm64 under /lib/aarch64-linux-gnu), so
#     arm64 programs run without a loader prefix: the agent starts its runtimes and its PID namespaces' init
#     with an empty environment, where no QEMU_LD_PREFIX reaches them;
#   - qemu-aarch64 (user-mode emulation) in /usr/local/bin, registered with binfmt_misc (flags F: the kernel
#     keeps the interpreter open, so it works in every mount namespace; O, P as Debian's), which runs every
#     arm64 program the tests start, including the agent re-executing itself. QEMU 8.1 or newer: Debian 12's
#     7.2 answers ENOSYS to open_tree and move_mount, which the sandbox uses. Taken from the qemu-user
#     package of bookworm-backports (a static binary; nothing else of the package is installed, and the
#     machine's qemu-system stays as it is) unless the distribution's own qemu-aarch64 is new enough.
# On an aarch64 host nothing is needed and nothing is done. Progress goes to stderr.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1; }
say() { echo "cross-setup: $*" >&2; }
TRIPLE=aarch64-unknown-linux-gnu
QEMU=/usr/local/bin/qemu-aarch64
QEMU_MIN=8.1
QEMU_SUITE=bookworm-backports

[ "$(uname -m)" = aarch64 ] && exit 0

apt_ready() {
  if [ ! -f /var/lib/apt/lists/.lmi-updated ] || [ "${1:-}" = again ]; then
    apt-get update -qq >&2 && touch /var/lib/apt/lists/.lmi-updated
  fi
}
apt_install() {
  have apt-get || { say "install $* by hand (no apt-get)"; exit 1; }
  say "apt-get install $*"
  apt_ready
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends \
    "$@" >/dev/null
}

if ! rustup target list --installed 2>/dev/null | grep -qx "$TRIPLE"; then
  say "rustup target add $TRIPLE"
  rustup target add "$TRIPLE" >&2
fi

missing=()
have aarch64-linux-gnu-gcc || missing+=(gcc-aarch64-linux-gnu)
[ -f /usr/aarch64-linux-gnu/lib/libc.so.6 ] || missing+=(libc6-dev-arm64-cross)
[ ${#missing[@]} -eq 0 ] || apt_install "${missing[@]}"

if [ ! -e /lib/ld-linux-aarch64.so.1 ] || [ ! -e /lib/aarch64-linux-gnu/libgcc_s.so.1 ]; then
  if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    say "dpkg --add-architecture arm64"
    dpkg --add-architecture arm64
    apt_ready again
  fi
  apt_install libc6:arm64 libgcc-s1:arm64
fi

version_ok() { # qemu binary: its version is at least QEMU_MIN
  local v
  v=$("$1" --version 2>/dev/null | sed -n 's/^qemu-aarch64 version \([0-9]*\.[0-9]*\).*/\1/p')
  [ -n "$v" ] && [ "$(printf '%s\n%s\n' "$QEMU_MIN" "$v" | sort -V | head -1)" = "$QEMU_MIN" ]
}
if ! version_ok "$QEMU"; then
  if have qemu-aarch64 && version_ok "$(command -v qemu-aarch64)"; then
    ln -sf "$(command -v qemu-aarch64)" "$QEMU"
  else
    # Debian 12: the qemu-user package of bookworm-backports, downloaded (not installed) and its static
    # qemu-aarch64 copied out. The backports list is added if missing (pinned at 100: nothing upgrades from it).
    list=/etc/apt/sources.list.d/lmi-bookworm-backports.list
    if ! apt-cache policy qemu-user 2>/dev/null | grep -q "$QEMU_SUITE"; then
      say "adding $QEMU_SUITE to apt's sources for qemu-user"
      echo "deb http://deb.debian.org/debian $QEMU_SUITE main" >"$list"
      apt_ready again
    fi
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    say "qemu-aarch64 from qemu-user/$QEMU_SUITE into $QEMU"
    (cd "$tmp" && apt-get download -qq "qemu-user/$QEMU_SUITE" 2>/dev/null)
    dpkg-deb -x "$tmp"/qemu-user_*.deb "$tmp/x"
    install -m 0755 "$tmp/x/usr/bin/qemu-aarch64" "$QEMU.new"
    mv -f "$QEMU.new" "$QEMU"
    version_ok "$QEMU" || { say "$QEMU is older than $QEMU_MIN"; exit 1; }
  fi
fi

# binfmt_misc: mounted if it is not, then qemu-aarch64 registered for arm64 ELF executables (the magic and
# mask of Debian's qemu-aarch64.conf), replacing a registration of another interpreter.
binfmt=/proc/sys/fs/binfmt_misc
[ -f "$binfmt/register" ] || mount -t binfmt_misc binfmt_misc "$binfmt"
entry="$binfmt/qemu-aarch64"
if [ ! -f "$entry" ] || ! grep -qx "interpreter $QEMU" "$entry" || ! grep -q '^flags: .*F' "$entry" ||
  ! grep -qx enabled "$entry"; then
  [ -f "$entry" ] && echo -1 >"$entry"
  say "registering $QEMU for arm64 executables (binfmt_misc)"
  printf '%s' ':qemu-aarch64:M::\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00:\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff:'"$QEMU"':OPF' \
    >"$binfmt/register"
fi
# The check: an arm64 program runs by itself (binfmt) and under the runner of .cargo/config.toml.
/lib/ld-linux-aarch64.so.1 --version >/dev/null 2>&1 ||
  { say "arm64 programs do not run through binfmt_misc"; exit 1; }
qemu-aarch64 /lib/ld-linux-aarch64.so.1 --version >/dev/null 2>&1 ||
  { say "qemu-aarch64 cannot run the arm64 loader"; exit 1; }
