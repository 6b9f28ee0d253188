//! Each environment's own unprivileged identity: a uid (and the gid of the same number) from the configured
//! range, held until the environment's processes are gone. A uid is never handed out while it is held or
//! while any process on the host still runs under it (say, one left over from an earlier life of the agent).

use std::{collections::BTreeSet, path::Path, sync::Mutex};

/// An environment's uid and gid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

/// Every uid of the range is held or in use.
#[derive(Debug, thiserror::Error)]
#[error("all {count} uids of sandbox.uid_first..+uid_count ({first}..) are in use")]
pub struct IdentitiesExhausted {
    pub first: u32,
    pub count: u32,
}

/// The configured uid range and which of its uids are held.
#[derive(Debug)]
pub struct IdentityPool {
    first: u32,
    count: u32,
    state: Mutex<PoolState>,
}

#[derive(Debug, Default)]
struct PoolState {
    held: BTreeSet<u32>,
    /// Offset tried first next time: round-robin, so a released uid is reused as late as possible.
    next: u32,
}

impl IdentityPool {
    pub fn new(first: u32, count: u32) -> Self {
        Self {
            first,
            count,
            state: Mutex::new(PoolState::default()),
        }
    }

    /// Holds and returns a uid that is neither held nor running a process.
    pub fn allocate(&self) -> Result<Identity, IdentitiesExhausted> {
        let running = uids_with_processes(Path::new("/proc"), self.first, self.count);
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        for i in 0..self.count {
            let offset = (s.next + i) % self.count;
            let uid = self.first + offset;
            if running.contains(&uid) || s.held.contains(&uid) {
                continue;
            }
            s.held.insert(uid);
            s.next = (offset + 1) % self.count;
            return Ok(Identity { uid, gid: uid });
        }
        Err(IdentitiesExhausted {
            first: self.first,
            count: self.count,
        })
    }

    /// Gives the uid back (call only once no process of the environment is left).
    pub fn release(&self, identity: Identity) {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .held
            .remove(&identity.uid);
    }

    /// How many uids are held.
    pub fn held(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .held
            .len()
    }
}

/// Uids in `first..first+count` that any process under `proc` runs with (real, effective, saved or
/// filesystem uid). Processes that vanish while being read are skipped.
fn uids_with_processes(proc: &Path, first: u32, count: u32) -> BTreeSet<u32> {
    let range = u64::from(first)..u64::from(first) + u64::from(count);
    let mut found = BTreeSet::new();
    let Ok(entries) = std::fs::read_dir(proc) else {
        return found;
    };
    for e in entries.flatten() {
        if !e
            .file_name()
            .as_encoded_bytes()
            .iter()
            .all(u8::is_ascii_digit)
        {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let Some(line) = status.lines().find(|l| l.starts_with("Uid:")) else {
            continue;
        };
        for uid in line[4..]
            .split_whitespace()
            .filter_map(|u| u.parse::<u32>().ok())
        {
            if range.contains(&u64::from(uid)) {
                found.insert(uid);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_distinct_reused_last_and_bounded() {
        let pool = IdentityPool::new(4_000_000, 3);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        assert_eq!(
            a,
            Identity {
                uid: 4_000_000,
                gid: 4_000_000
            }
        );
        assert_eq!(b.uid, 4_000_001);
        pool.release(a);
        assert_eq!(pool.allocate().unwrap().uid, 4_000_002);
        assert_eq!(pool.allocate().unwrap(), a);
        let e = pool.allocate().unwrap_err();
        assert_eq!(
            e.to_string(),
            "all 3 uids of sandbox.uid_first..+uid_count (4000000..) are in use"
        );
        assert_eq!(pool.held(), 3);
    }

    #[test]
    fn a_uid_running_a_process_is_skipped() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path();
        for (pid, uids) in [("17", "5000\t5000\t5000\t5000"), ("18", "0\t5002\t0\t0")] {
            std::fs::create_dir(p.join(pid)).unwrap();
            std::fs::write(
                p.join(pid).join("status"),
                format!("Name:\tx\nUid:\t{uids}\nGid:\t0\t0\t0\t0\n"),
            )
            .unwrap();
        }
        std::fs::create_dir(p.join("self")).unwrap();
        let found = uids_with_processes(p, 5000, 10);
        assert_eq!(found.into_iter().collect::<Vec<_>>(), vec![5000, 5002]);
        assert!(uids_with_processes(p, 6000, 10).is_empty());
    }

    #[test]
    fn the_agents_own_uid_is_seen_in_the_real_proc() {
        let me = nix::unistd::getuid().as_raw();
        assert!(uids_with_processes(Path::new("/proc"), me, 1).contains(&me));
    }
}
