#!/bin/busybox sh
# /init of the VM's initramfs (built by tests/vm/setup.sh). Loads the virtio, 9p and overlay modules, mounts the
# host's root file system (9p tag "hostroot", read-only) under a tmpfs overlay, binds the kernel's modules into
# it, writes the test units into the overlay's /etc, and switch_roots into systemd (cgroup v2 only).
# Kernel command line: lmi.run=<host directory shared as 9p tag "lmirun"> (the run's scripts and results).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
say() { echo "lmi-vm-init: $*" >/dev/console; }
fail() { say "FAILED: $*"; echo "LMI-VM-INIT-FAILED $*" >/dev/console; sleep 2; poweroff -f; }

while read -r m; do
  insmod "/modules/$m" 2>/dev/null || say "insmod $m failed (built in?)"
done </modules/order

mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=262144 hostroot /lower || fail "mount of the host root over 9p"
mount -t tmpfs -o mode=755,size=75% tmpfs /upper || fail "tmpfs"
mkdir -p /upper/upper /upper/work
mount -t overlay -o lowerdir=/lower,upperdir=/upper/upper,workdir=/upper/work overlay /newroot || fail "overlay root"

# The kernel's modules (systemd and the agent may load veth, nftables...), from the share of the unpacked package.
kver=$(uname -r)
mount -t 9p -o trans=virtio,version=9p2000.L,ro hostmods /modroot || fail "mount of the modules share"
mkdir -p "/newroot/lib/modules/$kver"
mount --bind /modroot "/newroot/lib/modules/$kver"

# The run directory: scripts in, results out (read-write). Not under /run: systemd mounts a tmpfs there.
mkdir -p /newroot/lmi-vm
mount -t 9p -o trans=virtio,version=9p2000.L,rw lmirun /newroot/lmi-vm || fail "mount of the run share"
for u in /newroot/lmi-vm/units/*.target /newroot/lmi-vm/units/*.service; do
  cp "$u" /newroot/etc/systemd/system/ || fail "test unit $u"
done
# Units of the host the VM does not need, masked in the overlay only.
while read -r u; do
  rm -f "/newroot/etc/systemd/system/$u"
  ln -s /dev/null "/newroot/etc/systemd/system/$u"
done </newroot/lmi-vm/units/mask
# The host is a container: its marker files would make systemd believe it runs in one (and then ignore the
# kernel command line, systemd.unit= included).
rm -f /newroot/.dockerenv /newroot/run/.containerenv
# Clean temporary directories (the host's are not the VM's; systemd-tmpfiles would otherwise sweep them over 9p).
mount -t tmpfs -o mode=1777 tmpfs /newroot/tmp
mount -t tmpfs -o mode=1777 tmpfs /newroot/var/tmp
# A machine id of its own (not the host's; an empty file would mean "first boot" to systemd).
tr -d '-' </proc/sys/kernel/random/uuid >/newroot/etc/machine-id
# The host's fstab describes the host: nothing to mount here.
: >/newroot/etc/fstab
say "switching to systemd"
umount /proc /sys
exec switch_root /newroot /lib/systemd/systemd
