//! The seccomp filter of every runtime: the system calls a Lambda function never needs, refused.
//!
//! Every call in [`REFUSED`] fails with `EPERM` (`ENOSYS` where a caller needs that to fall back); every other
//! call is allowed. Most of them need a capability the runtime no longer has ([`super::privileges`]), so the
//! filter is mostly about the kernel code a function can reach at all: keyrings, `bpf`, `perf_event_open`,
//! `userfaultfd`, `io_uring` and user namespaces are reachable without any capability, and the rest is
//! refused before the kernel gets to its capability check. The list follows what container runtimes refuse
//! by default (Docker's and containerd's default profiles, Firecracker's guest-facing filter), minus what
//! they only refuse without a capability nobody in an environment has anyway (`chroot`, `sethostname`...).
//!
//! The filter is compiled once per agent ([`Filter::compile`], at sandbox start) into classic BPF programs
//! for this build's architecture (x86_64 or aarch64; any other is a compile error). A program checks the
//! architecture of every call and kills a process that makes a call of another ABI (32-bit `int 0x80` on
//! x86_64); on x86_64 it refuses the x32 ABI's calls (`ENOSYS`, as on a kernel without x32). A runtime
//! installs it on itself as the last step before `exec`, after dropping its privileges
//! ([`super::confine::Confinement::enter`]); the namespace init (`lmi-init`, [`super::pidns`]) never runs
//! under it.

use std::{collections::BTreeMap, io, sync::Arc};

use seccompiler::{
    sock_filter, BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp,
    SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!(
    "the environments' seccomp filter (sandbox::seccomp) is written for x86_64 and aarch64 only: list \
     this architecture's system calls in its table first"
);

/// When a refused call is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Always.
    Always,
    /// When its flags (first argument) ask for a new namespace.
    NamespaceFlags,
    /// When its first argument is not one of [`HARMLESS_PERSONALITIES`].
    PersonalityChange,
}

/// One refused system call.
#[derive(Debug, Clone, Copy)]
pub struct Refused {
    /// `SYS_<name>`, as libc spells it.
    sys: &'static str,
    /// Its number on this architecture.
    pub nr: libc::c_long,
    /// When it is refused.
    pub when: When,
    /// The errno it fails with.
    pub errno: i32,
    /// Why a function does not get it.
    pub reason: &'static str,
}

impl Refused {
    /// The system call's name (`add_key`).
    pub fn name(&self) -> &'static str {
        self.sys.strip_prefix("SYS_").unwrap_or(self.sys)
    }
}

macro_rules! refuse {
    ($sys:ident, $reason:literal) => {
        refuse!($sys, When::Always, libc::EPERM, $reason)
    };
    ($sys:ident, $when:expr, $reason:literal) => {
        refuse!($sys, $when, libc::EPERM, $reason)
    };
    ($sys:ident, $when:expr, $errno:expr, $reason:literal) => {
        Refused {
            sys: stringify!($sys),
            nr: libc::$sys,
            when: $when,
            errno: $errno,
            reason: $reason,
        }
    };
}

/// The system calls an environment's processes may not make: the one list (docs/ARCHITECTURE.md, "Sandbox").
#[rustfmt::skip]
pub const REFUSED: &[Refused] = &[
    // Kernel code and the running kernel.
    refuse!(SYS_init_module, "loads kernel code"),
    refuse!(SYS_finit_module, "loads kernel code"),
    refuse!(SYS_delete_module, "unloads kernel code"),
    refuse!(SYS_kexec_load, "replaces the running kernel"),
    refuse!(SYS_kexec_file_load, "replaces the running kernel"),
    refuse!(SYS_reboot, "reboots or halts the host"),
    refuse!(SYS_swapon, "changes the host's swap"),
    refuse!(SYS_swapoff, "changes the host's swap"),
    refuse!(SYS_acct, "turns the host's process accounting on or off"),
    refuse!(SYS_syslog, "reads or clears the kernel's log (addresses of kernel objects)"),
    refuse!(SYS_quotactl, "changes disk quotas of the host's filesystems"),
    refuse!(SYS_lookup_dcookie, "resolves kernel directory entries for profilers (kernel internals)"),
    refuse!(SYS_vhangup, "hangs up the controlling terminal (a host's tty)"),
    // Programs and tracing inside the kernel: large attack surface, reachable without a capability on some hosts.
    refuse!(SYS_bpf, "loads programs and maps into the kernel"),
    refuse!(SYS_perf_event_open, "kernel and hardware performance counters: side channels, kernel surface"),
    refuse!(SYS_userfaultfd, "stalls kernel accesses to user memory at will (a tool for kernel races)"),
    refuse!(SYS_io_uring_setup, "a second system call interface, outside this filter's reach"),
    refuse!(SYS_io_uring_enter, "a second system call interface, outside this filter's reach"),
    refuse!(SYS_io_uring_register, "a second system call interface, outside this filter's reach"),
    // Keyrings: not namespaced, shared by every process of the kernel with the same uid.
    refuse!(SYS_add_key, "kernel keyrings are not namespaced"),
    refuse!(SYS_request_key, "kernel keyrings are not namespaced; can call out to a host helper"),
    refuse!(SYS_keyctl, "kernel keyrings are not namespaced"),
    // Other processes' memory and descriptors.
    refuse!(SYS_ptrace, "traces and rewrites processes"),
    refuse!(SYS_process_vm_readv, "reads another process's memory"),
    refuse!(SYS_process_vm_writev, "writes another process's memory"),
    refuse!(SYS_kcmp, "compares kernel objects of other processes (leaks kernel state)"),
    refuse!(SYS_pidfd_getfd, "takes a descriptor out of another process"),
    // Mounts: the environment's mount namespace is set up by the agent, once.
    refuse!(SYS_mount, "mounts filesystems"),
    refuse!(SYS_umount2, "unmounts what the sandbox mounted over the host"),
    refuse!(SYS_pivot_root, "changes the root filesystem"),
    refuse!(SYS_move_mount, "mounts filesystems (new mount API)"),
    refuse!(SYS_open_tree, "clones mount trees (new mount API)"),
    refuse!(SYS_fsopen, "creates filesystem contexts (new mount API)"),
    refuse!(SYS_fsconfig, "configures filesystem contexts (new mount API)"),
    refuse!(SYS_fsmount, "mounts filesystem contexts (new mount API)"),
    refuse!(SYS_fspick, "reconfigures mounted filesystems (new mount API)"),
    refuse!(SYS_mount_setattr, "changes mount flags such as read-only"),
    refuse!(SYS_open_by_handle_at, "opens files by handle, bypassing the paths the sandbox hides"),
    // Namespaces: the agent gives each environment its own; a user namespace would give capabilities back
    // inside it and reach kernel code otherwise behind CAP_SYS_ADMIN.
    refuse!(SYS_setns, "joins other namespaces"),
    refuse!(SYS_unshare, When::NamespaceFlags, "creates namespaces (unsharing files or fs is allowed)"),
    refuse!(SYS_clone, When::NamespaceFlags, "creates namespaces (plain fork and threads are allowed)"),
    refuse!(SYS_clone3, When::Always, libc::ENOSYS,
        "its flags are behind a pointer the filter cannot read: ENOSYS makes libc fall back to clone"),
    // Time: the host's clocks are shared by every environment.
    refuse!(SYS_settimeofday, "sets the host's clock"),
    refuse!(SYS_clock_settime, "sets the host's clock"),
    refuse!(SYS_clock_adjtime, "adjusts the host's clock"),
    // Execution domains.
    refuse!(SYS_personality, When::PersonalityChange,
        "turns off address randomization, makes data executable; querying and the Linux domains are allowed"),
    // x86 only: ports, and interfaces kept for old binaries.
    #[cfg(target_arch = "x86_64")]
    refuse!(SYS_iopl, "raw access to the host's I/O ports"),
    #[cfg(target_arch = "x86_64")]
    refuse!(SYS_ioperm, "raw access to the host's I/O ports"),
    #[cfg(target_arch = "x86_64")]
    refuse!(SYS_uselib, "obsolete a.out library loader"),
    #[cfg(target_arch = "x86_64")]
    refuse!(SYS_ustat, "obsolete filesystem statistics of any device"),
    #[cfg(target_arch = "x86_64")]
    refuse!(SYS_sysfs, "obsolete filesystem type listing"),
    #[cfg(target_arch = "x86_64")]
    refuse!(SYS__sysctl, "obsolete binary sysctl interface"),
    #[cfg(target_arch = "x86_64")]
    refuse!(SYS_nfsservctl, "obsolete NFS server control"),
];

/// The namespace flags of `clone` and `unshare` ([`When::NamespaceFlags`]). `CLONE_NEWTIME` shares its bit
/// with `clone`'s exit signal field, so it is checked for `unshare` only.
const NAMESPACE_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWCGROUP as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
];
/// `CLONE_NEWTIME` (not in libc for every target).
const CLONE_NEWTIME: u64 = 0x80;

/// The `personality` values allowed ([`When::PersonalityChange`]): `PER_LINUX`, `PER_LINUX32`, `UNAME26`
/// with either, and `0xffffffff` (a query, which changes nothing).
pub const HARMLESS_PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Why the filter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp: the rule for {syscall}: {source}")]
    Rule {
        syscall: &'static str,
        source: BackendError,
    },
    #[error("seccomp: compiling the filter: {0}")]
    Compile(BackendError),
    #[error("seccomp: the filter has {0} instructions, more than the kernel takes")]
    TooLong(usize),
}

/// The compiled filter: BPF programs, installed in order. Cheap to clone.
#[derive(Clone)]
pub struct Filter {
    programs: Arc<[BpfProgram]>,
}

impl std::fmt::Debug for Filter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Filter")
            .field("programs", &self.programs.len())
            .field("instructions", &self.instructions())
            .finish()
    }
}

impl Filter {
    /// Compiles [`REFUSED`] for this architecture: one program per errno (a seccomp program returns one
    /// action for every call it matches; the kernel runs every program installed and keeps the strictest
    /// answer, and these match disjoint calls).
    pub fn compile() -> Result<Self, SeccompError> {
        let mut by_errno: BTreeMap<i32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
        for refused in REFUSED {
            let rule_error = |source| SeccompError::Rule {
                syscall: refused.name(),
                source,
            };
            let rules = rules_for(refused).map_err(rule_error)?;
            by_errno
                .entry(refused.errno)
                .or_default()
                .insert(refused.nr, rules);
        }
        let mut programs = Vec::with_capacity(by_errno.len());
        for (errno, rules) in by_errno {
            let filter = SeccompFilter::new(
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(errno as u32),
                ARCH,
            )
            .map_err(SeccompError::Compile)?;
            let mut program = BpfProgram::try_from(filter).map_err(SeccompError::Compile)?;
            if programs.is_empty() {
                refuse_other_abis(&mut program);
            }
            if u16::try_from(program.len()).is_err() || program.len() > BPF_MAXINSNS {
                return Err(SeccompError::TooLong(program.len()));
            }
            programs.push(program);
        }
        Ok(Self {
            programs: programs.into(),
        })
    }

    /// BPF instructions in all, for the record.
    pub fn instructions(&self) -> usize {
        self.programs.iter().map(Vec::len).sum()
    }

    /// Installs the filter on the calling thread (and what it execs). Sets `no_new_privs` first (the
    /// kernel's condition for a process without CAP_SYS_ADMIN; [`super::privileges::drop_to`] has set it
    /// already). System calls only, no allocation: meant for `pre_exec`, as the last step before `exec`.
    pub fn install(&self) -> io::Result<()> {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        for program in self.programs.iter() {
            let fprog = SockFprog {
                // Checked against u16 in `compile`.
                len: program.len() as u16,
                filter: program.as_ptr(),
            };
            // SAFETY: seccomp(2) with a sock_fprog pointing at `len` valid instructions, alive for the call
            // (the kernel copies them).
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    std::ptr::from_ref(&fprog),
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }
}

/// `struct sock_fprog` of `<linux/filter.h>`, over seccompiler's instructions.
#[repr(C)]
struct SockFprog {
    len: libc::c_ushort,
    filter: *const sock_filter,
}

/// `BPF_MAXINSNS`: the longest program the kernel takes.
const BPF_MAXINSNS: usize = 4096;

fn rules_for(refused: &Refused) -> Result<Vec<SeccompRule>, BackendError> {
    let flag_set = |flag: u64| {
        SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(flag),
            flag,
        )
        .and_then(|c| SeccompRule::new(vec![c]))
    };
    match refused.when {
        // An empty rule list matches the call whatever its arguments.
        When::Always => Ok(Vec::new()),
        // One rule per flag: the call matches when any of them is set.
        When::NamespaceFlags => {
            let mut flags = NAMESPACE_FLAGS.to_vec();
            if refused.nr == libc::SYS_unshare {
                flags.push(CLONE_NEWTIME);
            }
            flags.into_iter().map(flag_set).collect()
        }
        // One rule whose conditions must all hold: the value is none of the harmless ones.
        When::PersonalityChange => {
            let conditions = HARMLESS_PERSONALITIES
                .iter()
                .map(|&v| SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, v))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(vec![SeccompRule::new(conditions)?])
        }
    }
}

/// On x86_64, the x32 ABI shares the architecture value of x86_64 and sets bit 30 of the call's number, so
/// its calls would not match this filter's numbers: refuse all of them (`ENOSYS`, as on kernels built
/// without x32) right after the architecture check. Inserted after that check's three instructions (no jump
/// crosses the point: BPF jumps are relative and only go forward).
#[cfg(target_arch = "x86_64")]
fn refuse_other_abis(program: &mut BpfProgram) {
    const X32_SYSCALL_BIT: u32 = 0x4000_0000;
    // BPF_LD | BPF_W | BPF_ABS, BPF_JMP | BPF_JGE | BPF_K, BPF_RET | BPF_K (<linux/bpf_common.h>).
    const BPF_LD_W_ABS: u16 = 0x20;
    const BPF_JMP_JGE_K: u16 = 0x35;
    const BPF_RET_K: u16 = 0x06;
    // seccomp_data.nr is the first field.
    let guard = [
        sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: 0,
        },
        sock_filter {
            code: BPF_JMP_JGE_K,
            jt: 0,
            jf: 1,
            k: X32_SYSCALL_BIT,
        },
        sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | (libc::ENOSYS as u32 & libc::SECCOMP_RET_DATA),
        },
    ];
    let at = ARCH_CHECK_LEN.min(program.len());
    program.splice(at..at, guard);
}

#[cfg(not(target_arch = "x86_64"))]
fn refuse_other_abis(_program: &mut BpfProgram) {}

/// Instructions of seccompiler's architecture check at the start of every program (load the arch, compare,
/// kill).
#[cfg(target_arch = "x86_64")]
const ARCH_CHECK_LEN: usize = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_and_numbers_are_unique_and_every_call_has_a_reason() {
        let mut names = HashSet::new();
        let mut numbers = HashSet::new();
        for r in REFUSED {
            assert!(names.insert(r.name()), "{} listed twice", r.name());
            assert!(numbers.insert(r.nr), "{} shares its number", r.name());
            assert!(!r.reason.is_empty(), "{} has no reason", r.name());
            assert!(r.errno == libc::EPERM || r.errno == libc::ENOSYS);
        }
    }

    /// Every name resolves, on this architecture, to the number the kernel's own headers give it (the table
    /// takes numbers from libc; this catches a libc constant that disagrees with the kernel's table).
    #[test]
    fn every_number_is_the_kernels() {
        let header = if cfg!(target_arch = "x86_64") {
            "/usr/include/x86_64-linux-gnu/asm/unistd_64.h"
        } else {
            // aarch64 uses the generic table.
            "/usr/include/asm-generic/unistd.h"
        };
        let Ok(text) = std::fs::read_to_string(header) else {
            lmi_testkit::skip(&format!("{header} is missing (package linux-libc-dev)"));
            return;
        };
        let kernel = |name: &str| -> Option<i64> {
            let define = format!("#define __NR_{name} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&define))
                .and_then(|n| n.trim().parse().ok())
        };
        for r in REFUSED {
            assert_eq!(kernel(r.name()), Some(r.nr), "{}", r.name());
        }
    }

    #[test]
    fn the_filter_compiles_to_one_program_per_errno_within_the_kernels_limit() {
        let filter = Filter::compile().unwrap();
        assert_eq!(filter.programs.len(), 2);
        for p in filter.programs.iter() {
            assert!(p.len() <= BPF_MAXINSNS);
            // Every program starts with the architecture check.
            assert_eq!(p[0].k, 4, "loads seccomp_data.arch");
        }
        assert!(filter.instructions() > REFUSED.len());
    }

    /// Installs the filter in a forked child (never in the test process) and checks the calls' answers.
    #[test]
    fn an_installed_filter_refuses_listed_calls_and_allows_the_rest() {
        let filter = Filter::compile().unwrap();
        // SAFETY: fork in a test; the child only makes system calls and _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let code = child_checks(&filter);
            // SAFETY: leaving the forked child without running the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFEXITED(status), "child status {status:#x}");
        assert_eq!(libc::WEXITSTATUS(status), 0, "check number that failed");
    }

    /// 0 when every check holds, else the number of the first that failed.
    fn child_checks(filter: &Filter) -> i32 {
        if filter.install().is_err() {
            return 1;
        }
        let errno = || io::Error::last_os_error().raw_os_error().unwrap_or(0);
        // SAFETY (all calls below): raw system calls with integer arguments or null pointers.
        unsafe {
            if libc::syscall(libc::SYS_keyctl, 0, 0, 0, 0, 0) != -1 || errno() != libc::EPERM {
                return 2;
            }
            if libc::syscall(libc::SYS_clone3, 0, 0) != -1 || errno() != libc::ENOSYS {
                return 3;
            }
            if libc::unshare(libc::CLONE_NEWUSER) != -1 || errno() != libc::EPERM {
                return 4;
            }
            // Harmless unshare and personality calls pass the filter.
            if libc::unshare(libc::CLONE_FILES) != 0 {
                return 5;
            }
            if libc::personality(0xffff_ffff) == -1 {
                return 6;
            }
            if libc::personality(0x0040000) != -1 || errno() != libc::EPERM {
                return 7;
            }
            if libc::getpid() <= 0 {
                return 8;
            }
            // A plain fork still works (clone without namespace flags).
            let child = libc::fork();
            if child == 0 {
                libc::_exit(0);
            }
            if child < 0 {
                return 9;
            }
            let mut status = 0;
            if libc::waitpid(child, &mut status, 0) != child {
                return 10;
            }
            #[cfg(target_arch = "x86_64")]
            if libc::syscall(0x4000_0000 + 39) != -1 || errno() != libc::ENOSYS {
                return 11;
            }
        }
        0
    }
}
