//! Everything a runtime process does to itself between `fork` and `exec`, after it joined its cgroup (and,
//! spawned by [`super::pidns::spawn_in_new_namespace`], as PID 2 of its own PID namespace): enter the
//! environment's network namespace (when isolated), take new mount, IPC and cgroup namespaces (the cgroup
//! namespace's root is the environment's cgroup, just joined) and set up its mounts (its own `/proc` and
//! cgroups among them), then drop to the environment's identity with no privilege left and, last, install the
//! seccomp filter ([`super::seccomp`]). Prepared before `fork`; [`Confinement::enter`] makes system calls
//! only (async-signal-safe, no allocation, no locks).

use std::{io, os::fd::RawFd};

use super::{
    identity::Identity,
    mounts::{CgroupView, MountPlan},
    netns::NetworkNamespace,
    privileges,
    seccomp::Filter,
};

/// One runtime's confinement.
#[derive(Debug)]
pub struct Confinement {
    /// The environment's network namespace, kept open by the agent until the runtime has exec'd.
    pub(crate) netns: Option<RawFd>,
    pub(crate) mounts: MountPlan,
    pub(crate) identity: Identity,
    /// The seccomp filter, compiled once by the agent (None when `sandbox.seccomp` is off).
    pub(crate) seccomp: Option<Filter>,
}

impl Confinement {
    /// The uid and gid the runtime runs as.
    pub fn identity(&self) -> Identity {
        self.identity
    }

    /// Shows the runtime the environment's cgroups (and only them) at `/sys/fs/cgroup`.
    pub fn show_cgroups(&mut self, view: CgroupView) {
        self.mounts.show_cgroups(view);
    }

    /// Applies the confinement to the calling process (a forked child, still root). Meant for `pre_exec`.
    pub fn enter(&self) -> io::Result<()> {
        if let Some(fd) = self.netns {
            NetworkNamespace::enter(fd)?;
        }
        // SAFETY: unshare(2) with constant flags. A private IPC namespace keeps System V IPC and POSIX
        // message queues of environments apart; the cgroup namespace is rooted at the cgroups the caller
        // has joined (`/proc/self/cgroup` shows them as `/`).
        if unsafe { libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWIPC | libc::CLONE_NEWCGROUP) }
            != 0
        {
            return Err(io::Error::last_os_error());
        }
        self.mounts.apply()?;
        privileges::drop_to(self.identity)?;
        // Last: the filter refuses calls the steps above make (unshare, mount, setns...).
        match &self.seccomp {
            Some(filter) => filter.install(),
            None => Ok(()),
        }
    }
}
