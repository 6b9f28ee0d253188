//! Dropping from root to an environment's identity between `fork` and `exec`: no supplementary groups, the
//! environment's gid and uid (real, effective and saved), an empty capability bounding set, no ambient,
//! inheritable, permitted or effective capabilities, and `no_new_privs` (so no setuid binary or file
//! capability can give any back). Everything here is a raw system call on values prepared before `fork`:
//! async-signal-safe, no allocation, no locks.

use std::io;

use super::identity::Identity;

/// `_LINUX_CAPABILITY_VERSION_3` (64-bit capability sets, two data words).
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// Capability numbers tried when emptying the bounding set; the kernel answers EINVAL past its last one.
const MAX_CAPABILITY: libc::c_ulong = 63;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// Becomes `identity` with no privilege at all. Must run as root (it needs CAP_SETPCAP, CAP_SETGID and
/// CAP_SETUID), after every step that needs privileges (cgroup placement, namespaces, mounts).
pub fn drop_to(identity: Identity) -> io::Result<()> {
    // The bounding set first: emptying it needs CAP_SETPCAP, which setuid below takes away.
    for cap in 0..=MAX_CAPABILITY {
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) } != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINVAL) {
                break;
            }
            return Err(e);
        }
    }
    // SAFETY: setgroups with a count of 0 reads no memory.
    check(unsafe { libc::setgroups(0, std::ptr::null()) })?;
    // SAFETY: plain system calls with integer arguments.
    check(unsafe { libc::setresgid(identity.gid, identity.gid, identity.gid) })?;
    // SAFETY: as above. Changing every uid away from 0 also clears the permitted, effective and ambient sets.
    check(unsafe { libc::setresuid(identity.uid, identity.uid, identity.uid) })?;
    // The inheritable set survives setuid: clear it (and, explicitly, the rest).
    let header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: the header and two data words are valid for the duration of the call, as capset(2) requires.
    check(unsafe {
        libc::syscall(libc::SYS_capset, std::ptr::from_ref(&header), data.as_ptr()) as libc::c_int
    })?;
    // SAFETY: prctl with integer arguments only.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    })?;
    // SAFETY: as above.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) })?;
    Ok(())
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    /// Runs `sh -c 'grep ... /proc/self/status; id'` after dropping, and reads what it printed.
    #[test]
    fn a_dropped_child_has_no_capability_and_no_way_back() {
        if lmi_testkit::needs_root("dropping privileges") {
            return;
        }
        let identity = Identity {
            uid: 3_999_000,
            gid: 3_999_000,
        };
        let mut cmd = std::process::Command::new("/bin/sh");
        cmd.args([
            "-c",
            "grep -E '^(Uid|Gid|Groups|Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs):' /proc/self/status",
        ]);
        // SAFETY: drop_to only makes system calls on values captured by copy.
        unsafe {
            cmd.pre_exec(move || drop_to(identity));
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        let status = String::from_utf8(out.stdout).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .unwrap_or_else(|| panic!("{name} missing in {status}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(field("Uid"), vec!["3999000"; 4]);
        assert_eq!(field("Gid"), vec!["3999000"; 4]);
        assert!(field("Groups").is_empty(), "{status}");
        for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            assert_eq!(field(cap), vec!["0000000000000000"], "{cap}");
        }
        assert_eq!(field("NoNewPrivs"), vec!["1"]);
    }
}
