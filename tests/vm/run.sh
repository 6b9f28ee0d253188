#!/usr/bin/env bash
# The installed package under systemd on a pure cgroup v2 kernel: boots a QEMU VM (Debian's kernel, the host's
# root file system read-only over 9p under a tmpfs overlay, systemd as PID 1 with
# systemd.unified_cgroup_hierarchy=1), installs the .deb built by packaging/build.sh with dpkg -i, starts the
# lmi-agent service and runs tests/vm/check.sh in it: one line per check, then `N passed, M failed`.
# Exits non-zero on any failed check, and when the VM cannot boot or does not report back in time.
#
#   tests/vm/run.sh [--deb FILE] [--timeout SECONDS] [--keep]
#
# The .deb defaults to target/lmi-package/lmi-agent_*_amd64.deb (built with packaging/build.sh when missing).
# Set-up (QEMU, busybox, the kernel, the initramfs) is tests/vm/setup.sh, cached under $LMI_TEST_TOOLS/vm.
# Environment: LMI_VM_SMP (default 2), LMI_VM_MEM (default 6G), LMI_VM_ACCEL (kvm|tcg; default: KVM when a
# probe boot under it reaches the initramfs, the result cached per kernel and QEMU version; else TCG),
# LMI_VM_LIBTESTS_BIN (the library's test binary to run in the VM instead of building it),
# LMI_VM_NO_LIBTESTS=1 (do not run it: the checks then say "skip").
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
cd "$repo"
timeout_s=2400
deb=
keep=0
while [ $# -gt 0 ]; do
  case "$1" in
    --deb) deb=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    *) echo "usage: $0 [--deb FILE] [--timeout SECONDS] [--keep]" >&2; exit 2 ;;
  esac
done
started=$(date +%s)
say() { echo "vm: $*"; }
die() { echo "vm: FAILED: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root (QEMU shares / with the VM as root)"

eval "$(tests/vm/setup.sh)"
[ -n "${KERNEL:-}" ] && [ -n "${INITRD:-}" ] && [ -n "${MODULES:-}" ] || die "tests/vm/setup.sh gave no kernel"

if [ -z "$deb" ]; then
  deb=$(ls target/lmi-package/lmi-agent_*_amd64.deb 2>/dev/null | head -1 || true)
  if [ -z "$deb" ]; then
    say "no .deb in target/lmi-package: packaging/build.sh"
    packaging/build.sh >&2
    deb=$(ls target/lmi-package/lmi-agent_*_amd64.deb | head -1)
  fi
fi
deb=$(readlink -f "$deb")
[ -f "$deb" ] || die "no package $deb"
say "package $deb"

# The tests of the cgroup crate, lmi-cgroup (point 3): the unit test binary, built on the host, run in the VM (the pure
# cgroup v2 real-hierarchy tests must run there). Its path comes from cargo's own report, or from
# LMI_VM_LIBTESTS_BIN (a binary built before, e.g. while the tree does not build); it is copied into the run
# directory so that a rebuild on the host during the run cannot change it.
libtests=${LMI_VM_LIBTESTS_BIN:-}
if [ -z "$libtests" ] && [ "${LMI_VM_NO_LIBTESTS:-0}" != 1 ]; then
  libtests=$(cargo test -p lmi-cgroup --lib --locked --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    try: m = json.loads(l)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"] and m["profile"]["test"]:
        print(m["executable"])' | tail -1)
fi
if [ "${LMI_VM_NO_LIBTESTS:-0}" != 1 ]; then
  [ -n "$libtests" ] && [ -x "$libtests" ] || die "cargo test --no-run gave no library test binary"
  say "library tests $libtests"
fi

run=$(mktemp -d /tmp/lmi-vm.XXXXXX)
chmod 755 "$run"
qemu_pid=
cleanup() {
  [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null || true
  [ "$keep" = 1 ] && { echo "vm: run directory kept: $run"; return; }
  rm -rf "$run"
}
trap cleanup EXIT
mkdir -p "$run/units" "$run/out"
chmod 777 "$run/out"
vm_libtests=
if [ -n "$libtests" ] && [ "${LMI_VM_NO_LIBTESTS:-0}" != 1 ]; then
  cp "$libtests" "$run/libtests"
  vm_libtests=/lmi-vm/libtests
fi

# The VM's own target: only what the product needs (sysinit, journald, the service) plus the check script;
# the host's multi-user.target units (databases, getty...) never start.
cat >"$run/units/lmi-test.target" <<EOF
[Unit]
Description=lmi-agent VM checks
Requires=lmi-test.service
After=lmi-test.service
AllowIsolate=yes
EOF
cat >"$run/units/lmi-test.service" <<EOF
[Unit]
Description=lmi-agent VM checks (tests/vm/check.sh)
After=basic.target systemd-journald.service
SuccessAction=poweroff-force
FailureAction=poweroff-force
[Service]
Type=oneshot
Environment=LMI_VM_DEB=$deb LMI_VM_REPO=$repo LMI_VM_OUT=/lmi-vm/out LMI_VM_LIBTESTS=$vm_libtests
ExecStart=/bin/bash $repo/tests/vm/check.sh
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
EOF
# Units of the host that have no business in the VM (time sync, first-boot set-up, timers, binfmt...).
printf '%s\n' systemd-timesyncd.service systemd-pstore.service systemd-binfmt.service \
  proc-sys-fs-binfmt_misc.automount systemd-firstboot.service systemd-repart.service \
  systemd-pcrphase.service systemd-pcrphase-sysinit.service systemd-random-seed.service \
  systemd-update-utmp.service systemd-machine-id-commit.service timers.target \
  apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer fstrim.timer man-db.timer \
  systemd-udev-trigger.service systemd-udevd.service systemd-hwdb-update.service ldconfig.service \
  systemd-journal-catalog-update.service systemd-networkd-wait-online.service networking.service \
  >"$run/units/mask"

smp=${LMI_VM_SMP:-2}
mem=${LMI_VM_MEM:-6G}
qemu_version=$(qemu-system-x86_64 --version | head -1)
kvm_cache="$(dirname "$INITRD")/kvm-$(echo "$KERNEL $qemu_version" | sha256sum | cut -c1-16)"
append="console=ttyS0 panic=-1 oops=panic systemd.unified_cgroup_hierarchy=1 cgroup_no_v1=all \
systemd.unit=lmi-test.target systemd.show_status=1 \
loglevel=4 rw"

boot() { # accel console-log
  local a=$1 cpu=host
  [ "$a" = tcg ] && a=tcg,thread=multi cpu=max
  qemu-system-x86_64 -accel "$a" -cpu "$cpu" -smp "$smp" -m "$mem" \
    -display none -no-reboot -monitor none -serial "file:$2" -nic none \
    -kernel "$KERNEL" -initrd "$INITRD" -append "$append" \
    -virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap" \
    -virtfs "local,path=$MODULES,mount_tag=hostmods,security_model=none,readonly=on,multidevs=remap" \
    -virtfs "local,path=$run,mount_tag=lmirun,security_model=none,multidevs=remap" &
  qemu_pid=$!
}
# Waits until the console log matches $2 or QEMU exits or $3 seconds pass; 0 when it matched.
wait_for() {
  local log=$1 pattern=$2 limit=$3 t=0
  while [ "$t" -lt "$limit" ]; do
    grep -qa -- "$pattern" "$log" 2>/dev/null && return 0
    kill -0 "$qemu_pid" 2>/dev/null || return 1
    sleep 1
    t=$((t + 1))
  done
  return 1
}

accel=${LMI_VM_ACCEL:-}
if [ -z "$accel" ]; then
  if [ -f "$kvm_cache" ]; then
    accel=$(cat "$kvm_cache")
  elif [ -c /dev/kvm ]; then
    # KVM once: does the kernel get as far as the initramfs's first line within a minute?
    boot kvm "$run/kvm-probe.log" 2>"$run/kvm-probe.err"
    if wait_for "$run/kvm-probe.log" "lmi-vm-init:" 60; then accel=kvm; else accel=tcg; fi
    kill "$qemu_pid" 2>/dev/null || true
    wait "$qemu_pid" 2>/dev/null || true
    qemu_pid=
    echo "$accel" >"$kvm_cache"
    say "KVM probe: $([ "$accel" = kvm ] && echo "boots" || echo "does not boot ($(tail -c 300 "$run/kvm-probe.err" "$run/kvm-probe.log" 2>/dev/null | tr -d '\r' | tr '\n' ' '))"), using $accel"
  else
    accel=tcg
  fi
fi
say "booting: $accel, $smp vCPUs, $mem, kernel $(basename "$KERNEL")"
boot_start=$(date +%s)
boot "$accel" "$run/console.log"
# Bounded in time: the watchdog below kills QEMU after $timeout_s.
(sleep "$timeout_s"; kill "$qemu_pid" 2>/dev/null) &
watchdog=$!
# Progress: the check lines as they come.
tail -n +1 -F "$run/console.log" 2>/dev/null | grep -a --line-buffered -oE '(LMI-CHECK|LMI-INFO|lmi-vm-init).*' &
tailer=$!
rc=0
wait "$qemu_pid" || rc=$?
qemu_pid=
kill "$watchdog" "$tailer" 2>/dev/null || true
wait 2>/dev/null || true
elapsed=$(($(date +%s) - boot_start))

results="$run/out/results"
if grep -qa "LMI-VM-INIT-FAILED" "$run/console.log" || ! grep -qa "lmi-vm-init: switching" "$run/console.log"; then
  tail -n 40 "$run/console.log" >&2
  die "the VM did not boot (QEMU exit $rc): console above"
fi
if [ ! -f "$results" ] || ! grep -q '^LMI-DONE' "$results"; then
  tail -n 60 "$run/console.log" >&2
  [ -f "$results" ] && cat "$results" >&2
  die "the checks did not finish within ${timeout_s}s (QEMU exit $rc, ${elapsed}s): console above"
fi
echo "== results"
grep -E '^(ok|FAIL|skip) ' "$results"
passed=$(grep -c '^ok ' "$results" || true)
failed=$(grep -c '^FAIL ' "$results" || true)
skipped=$(grep -c '^skip ' "$results" || true)
say "VM run: ${elapsed}s ($accel); whole script $(($(date +%s) - started))s"
if [ "$failed" != 0 ] && [ -f "$run/out/journal.txt" ]; then
  echo "== the VM's journal (last 80 lines of lmi-agent)"
  grep -a 'lmi-agent' "$run/out/journal.txt" | tail -n 80
fi
echo "$passed passed, $failed failed${skipped:+, $skipped skipped}"
[ "$failed" = 0 ] && [ "$passed" -gt 0 ]
