#!/usr/bin/env bash
# Set-up of the VM harness (tests/vm/run.sh calls it; safe to run again, every step checks first):
#   - QEMU (qemu-system-x86), busybox-static and cpio from Debian;
#   - systemd on the host (the VM boots the host's own root file system, read-only, so PID 1 of the VM is the
#     host's /lib/systemd/systemd);
#   - Debian's kernel image (the package linux-image-amd64 depends on), fetched with `apt-get download` and
#     unpacked with `dpkg-deb -x` under $LMI_TEST_TOOLS/vm/kernel/<version>, kept there;
#   - the initramfs (tests/vm/init.sh as /init, busybox, the virtio, 9p and overlay modules), rebuilt only when
#     the kernel or init.sh changed.
# Prints KERNEL=<path to vmlinuz>, INITRD=<path>, MODULES=<path to lib/modules/<version>> on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
LMI_TEST_TOOLS="${LMI_TEST_TOOLS:-/var/cache/lmi-agent/test-tools}"
cache="$LMI_TEST_TOOLS/vm"
mkdir -p "$cache"
chmod 755 "$LMI_TEST_TOOLS" "$cache"

have() { command -v "$1" >/dev/null 2>&1; }
apt_install() {
  if [ ! -f /var/lib/apt/lists/.lmi-updated ]; then
    apt-get update -qq >&2 && touch /var/lib/apt/lists/.lmi-updated
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 --no-install-recommends "$@" >&2
}

have qemu-system-x86_64 || apt_install qemu-system-x86
# The initramfs has no libc: the static busybox.
dpkg -s busybox-static >/dev/null 2>&1 || apt_install busybox-static
have cpio || apt_install cpio
[ -x /lib/systemd/systemd ] || apt_install systemd
# depmod writes the kernel's modules.dep (the package's postinst would have).
have depmod || [ -x /sbin/depmod ] || apt_install kmod
PATH=$PATH:/sbin:/usr/sbin

# The kernel: the image package linux-image-amd64 currently depends on (e.g. linux-image-6.1.0-57-amd64).
kpkg=$(apt-cache depends linux-image-amd64 2>/dev/null | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1)
if [ -z "$kpkg" ]; then
  # A machine whose package lists are stale: refresh once.
  apt-get update -qq >&2
  kpkg=$(apt-cache depends linux-image-amd64 | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -1)
fi
[ -n "$kpkg" ] || { echo "vm setup: no kernel package found behind linux-image-amd64" >&2; exit 1; }
kver=${kpkg#linux-image-}
kdir="$cache/kernel/$kver"
if [ ! -f "$kdir/.done" ] || [ ! -s "$kdir/root/lib/modules/$kver/modules.dep" ]; then
  echo "vm setup: fetching $kpkg" >&2
  rm -rf "$kdir" && mkdir -p "$kdir/deb"
  (cd "$kdir/deb" && apt-get download -qq -o APT::Sandbox::User=root "$kpkg" >&2)
  dpkg-deb -x "$kdir"/deb/*.deb "$kdir/root"
  rm -rf "$kdir/deb"
  depmod -b "$kdir/root" "$kver"
  chmod -R a+rX "$kdir"
  touch "$kdir/.done"
fi
vmlinuz="$kdir/root/boot/vmlinuz-$kver"
mods="$kdir/root/lib/modules/$kver"
[ -f "$vmlinuz" ] && [ -d "$mods" ] || { echo "vm setup: $kpkg did not unpack a kernel and modules" >&2; exit 1; }

# The initramfs: busybox, /init, and the modules to reach the host's root (virtio PCI, 9p over virtio, overlay),
# loaded in dependency order (the order is computed here from modules.dep).
stamp=$( (echo "$kver"; cat "$here/init.sh" "$0") | sha256sum | cut -c1-16)
initrd="$cache/initrd-$stamp.cpio.gz"
if [ ! -f "$initrd" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work"/{bin,dev,proc,sys,newroot,lower,upper,modroot,modules}
  cp /bin/busybox "$work/bin/busybox"
  cp "$here/init.sh" "$work/init"
  chmod 755 "$work/init"
  # Module closure in load order (dependencies first), from modules.dep.
  order=()
  declare -A seen=()
  add_mod() {
    local rel=$1 dep
    [ -n "${seen[$rel]:-}" ] && return 0
    seen[$rel]=1
    for dep in $(awk -v m="$rel:" '$1 == m { for (i = 2; i <= NF; i++) print $i }' "$mods/modules.dep"); do
      add_mod "$dep"
    done
    order+=("$rel")
  }
  for name in virtio virtio_ring virtio_pci virtio_console 9pnet_virtio 9p overlay; do
    rel=$(awk -F: -v n="/$name.ko" 'index($1, n) && substr($1, length($1) - length(n) + 1) == n { print $1; exit }
      substr($1, length($1) - length(n) - 2) == n ".xz" { print $1; exit }' "$mods/modules.dep")
    # Built into the kernel: nothing to load.
    [ -n "$rel" ] && add_mod "$rel"
  done
  : >"$work/modules/order"
  for rel in "${order[@]}"; do
    base=$(basename "$rel")
    case "$base" in
      *.xz) xz -dc "$mods/$rel" >"$work/modules/${base%.xz}"; base=${base%.xz} ;;
      *) cp "$mods/$rel" "$work/modules/$base" ;;
    esac
    echo "$base" >>"$work/modules/order"
  done
  (cd "$work" && find . | cpio -o -H newc --quiet | gzip -1) >"$initrd.tmp"
  mv "$initrd.tmp" "$initrd"
  chmod 644 "$initrd"
fi
echo "KERNEL=$vmlinuz"
echo "INITRD=$initrd"
echo "MODULES=$mods"
