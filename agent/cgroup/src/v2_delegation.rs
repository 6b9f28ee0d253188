//! Enabling controllers in `cgroup.subtree_control` on cgroup v2, from the
//! agent's own cgroup down to the agent's parent cgroup — and never above the
//! agent's own cgroup, which belongs to whoever delegated it (systemd).
//!
//! cgroup v2's "no internal processes" rule makes the kernel refuse (`EBUSY`)
//! to enable controllers in the subtree of a non-root cgroup that has member
//! processes. The agent's own cgroup usually contains the agent itself, so on
//! `EBUSY` every process in it is moved into a leaf sibling of the parent
//! cgroup, `<own>/<parent_name>.supervisor`, and the write is retried.

use std::io;
use std::path::{Path, PathBuf};

use super::error::CgroupError;
use super::fsutil;

/// Controllers the agent needs in every environment cgroup.
pub const REQUIRED_CONTROLLERS: [&str; 3] = ["cpu", "memory", "pids"];

/// How many times the agent's cgroup is vacated before giving up (new
/// processes may be forked into it concurrently).
const VACATE_ROUNDS: usize = 5;

/// Name of the leaf cgroup, beside the parent cgroup, that receives the
/// agent's own processes when its cgroup must be vacated.
pub fn supervisor_leaf_name(parent_name: &str) -> String {
    format!("{parent_name}.supervisor")
}

/// Writes one value to a cgroup interface file (injectable for tests).
pub(crate) type WriteFn<'a> = dyn FnMut(&Path, &str) -> io::Result<()> + 'a;

/// Where to enable controllers.
#[derive(Debug)]
pub(crate) struct Delegation<'a> {
    /// cgroup2 mount point.
    pub root: &'a Path,
    /// The agent's own cgroup, relative to `root`.
    pub own_path: &'a str,
    /// The cgroup whose children need the controllers (the agent's parent
    /// cgroup), relative to `root`; must be `own_path` or below it.
    pub target_path: &'a str,
    /// Leaf name under `own_path` for [`vacate`].
    pub supervisor_leaf: &'a str,
    /// Skip (with a warning) controllers that are not available instead of failing.
    pub skip_unavailable: bool,
}

/// Enables `wanted` in `cgroup.subtree_control` of every cgroup from the
/// agent's own cgroup down to (and including) the target. Returns the
/// controllers the target's children will have.
pub(crate) fn enable_controllers_down(
    d: &Delegation<'_>,
    wanted: &[&str],
    write: &mut WriteFn<'_>,
) -> Result<Vec<String>, CgroupError> {
    let own = d.own_path.trim_end_matches('/');
    let below = d
        .target_path
        .strip_prefix(own)
        .filter(|rest| rest.is_empty() || rest.starts_with('/') || own.is_empty())
        .ok_or_else(|| {
            CgroupError::NoHierarchy(format!(
                "parent cgroup {} is not inside the agent's own cgroup {}",
                d.target_path, d.own_path
            ))
        })?;

    let mut carried: Vec<String> = wanted.iter().map(|c| (*c).to_owned()).collect();
    let mut dir = fsutil::abs_dir(d.root, d.own_path);
    let mut first = true;
    let mut components = below.split('/').filter(|c| !c.is_empty());
    loop {
        carried = enable_at(d, &dir, &carried, first, write)?;
        first = false;
        match components.next() {
            Some(c) => dir.push(c),
            None => return Ok(carried),
        }
    }
}

/// Enables `wanted` in `dir/cgroup.subtree_control`; returns what is now enabled.
fn enable_at(
    d: &Delegation<'_>,
    dir: &Path,
    wanted: &[String],
    is_own: bool,
    write: &mut WriteFn<'_>,
) -> Result<Vec<String>, CgroupError> {
    let controllers_file = dir.join("cgroup.controllers");
    let subtree_file = dir.join("cgroup.subtree_control");
    let available = fsutil::read_string(&controllers_file)?;
    let enabled = fsutil::read_string(&subtree_file)?;
    let has = |text: &str, c: &str| text.split_whitespace().any(|x| x == c);

    let mut result = Vec::new();
    let mut to_enable = Vec::new();
    for c in wanted {
        if has(&enabled, c) {
            result.push(c.clone());
        } else if has(&available, c) {
            to_enable.push(format!("+{c}"));
            result.push(c.clone());
        } else if d.skip_unavailable {
            tracing::warn!(controller = %c, path = %controllers_file.display(),
                "controller not available; its limits will be skipped");
        } else {
            return Err(CgroupError::ControllerUnavailable {
                controller: c.clone(),
                path: controllers_file,
            });
        }
    }
    if to_enable.is_empty() {
        return Ok(result);
    }
    let value = to_enable.join(" ");
    let mut rounds = 0;
    loop {
        match write(&subtree_file, &value) {
            Ok(()) => {
                tracing::debug!(path = %subtree_file.display(), %value, "enabled controllers");
                return Ok(result);
            }
            // The real root cgroup is exempt from the rule, but the root of a
            // cgroup namespace (a container's "/") is not, so no special case.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && is_own && rounds < VACATE_ROUNDS => {
                rounds += 1;
                vacate(dir, d.supervisor_leaf, write)?;
            }
            Err(source) => {
                return Err(CgroupError::Write {
                    path: subtree_file,
                    value,
                    source,
                })
            }
        }
    }
}

/// Moves every process of cgroup `dir` (the agent's own cgroup, including the
/// agent itself) into the leaf `dir/<leaf>`, creating it if needed. Returns
/// the leaf directory.
pub(crate) fn vacate(
    dir: &Path,
    leaf: &str,
    write: &mut WriteFn<'_>,
) -> Result<PathBuf, CgroupError> {
    let leaf_dir = fsutil::mkdir_p(dir, leaf)?;
    let leaf_procs = leaf_dir.join("cgroup.procs");
    let procs = dir.join("cgroup.procs");
    let pids = fsutil::parse_pids(&fsutil::read_string(&procs)?, &procs)?;
    for pid in &pids {
        match write(&leaf_procs, &pid.to_string()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
            Err(e) => {
                return Err(CgroupError::Vacate {
                    path: dir.to_path_buf(),
                    reason: format!("moving pid {pid} into {}: {e}", leaf_procs.display()),
                })
            }
        }
    }
    tracing::info!(from = %dir.display(), to = %leaf_dir.display(), count = pids.len(),
        "moved the agent's processes into a leaf cgroup (cgroup v2 no-internal-processes rule)");
    Ok(leaf_dir)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use super::*;
    use crate::testutil::{fake_v2_tree, read};
    use crate::v2::{V2Driver, V2Options};
    use crate::CgroupDriver;

    const OWN: &str = "/system.slice/lmi-agent.service";

    #[test]
    fn enables_controllers_only_from_own_cgroup_down() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fake_v2_tree(tmp.path(), "cpu memory pids\n", "");
        V2Driver::new(root.clone(), OWN, "lmi-agent", V2Options::default()).unwrap();
        let own = root.join("system.slice/lmi-agent.service");
        assert_eq!(
            read(&own.join("cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        assert_eq!(
            read(&own.join("lmi-agent/cgroup.subtree_control")),
            "+cpu +memory +pids"
        );
        // Ancestors above the agent's own cgroup are untouched.
        assert_eq!(
            read(&root.join("system.slice/cgroup.subtree_control")),
            "memory pids\n"
        );
        assert_eq!(
            read(&root.join("cgroup.subtree_control")),
            "cpu memory pids\n"
        );
        // Nothing was moved.
        assert_eq!(read(&own.join("lmi-agent.supervisor/cgroup.procs")), "");
    }

    #[test]
    fn only_missing_controllers_are_written() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fake_v2_tree(tmp.path(), "cpu memory pids\n", "");
        let own = root.join("system.slice/lmi-agent.service");
        std::fs::write(own.join("cgroup.subtree_control"), "cpu memory\n").unwrap();
        V2Driver::new(root.clone(), OWN, "lmi-agent", V2Options::default()).unwrap();
        assert_eq!(read(&own.join("cgroup.subtree_control")), "+pids");
    }

    /// The kernel refuses (EBUSY) to enable controllers while the own cgroup
    /// has processes; simulate that until the supervisor leaf got them.
    #[test]
    fn ebusy_moves_own_processes_to_supervisor_leaf_then_retries() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fake_v2_tree(tmp.path(), "cpu memory pids\n", "4242\n4343\n");
        let own = root.join("system.slice/lmi-agent.service");
        let leaf_procs = own.join("lmi-agent.supervisor/cgroup.procs");
        let log = RefCell::new(Vec::<(PathBuf, String, bool)>::new());
        let moved = RefCell::new(Vec::<String>::new());
        let mut write = |path: &Path, value: &str| -> io::Result<()> {
            if path == leaf_procs {
                moved.borrow_mut().push(value.to_owned());
                log.borrow_mut()
                    .push((path.to_path_buf(), value.to_owned(), true));
                return Ok(());
            }
            let busy = path == own.join("cgroup.subtree_control") && moved.borrow().len() < 2;
            log.borrow_mut()
                .push((path.to_path_buf(), value.to_owned(), !busy));
            if busy {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            fsutil::write_raw(path, value)
        };
        let driver = V2Driver::with_writer(
            root.clone(),
            OWN,
            "lmi-agent",
            V2Options::default(),
            &mut write,
        )
        .unwrap();
        assert_eq!(driver.parent_path(), format!("{OWN}/lmi-agent"));
        let subtree = own.join("cgroup.subtree_control");
        let expected = vec![
            (subtree.clone(), "+cpu +memory +pids".to_owned(), false),
            (leaf_procs.clone(), "4242".to_owned(), true),
            (leaf_procs.clone(), "4343".to_owned(), true),
            (subtree.clone(), "+cpu +memory +pids".to_owned(), true),
            (
                own.join("lmi-agent/cgroup.subtree_control"),
                "+cpu +memory +pids".to_owned(),
                true,
            ),
        ];
        assert_eq!(*log.borrow(), expected);
        assert_eq!(
            read(&root.join("system.slice/cgroup.subtree_control")),
            "memory pids\n"
        );
    }

    #[test]
    fn persistent_ebusy_gives_up() {
        let tmp = tempfile::tempdir().unwrap();
        let root = fake_v2_tree(tmp.path(), "cpu memory pids\n", "4242\n");
        let mut write = |path: &Path, value: &str| -> io::Result<()> {
            if path.ends_with("cgroup.subtree_control") {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
            fsutil::write_raw(path, value)
        };
        let err = V2Driver::with_writer(root, OWN, "lmi-agent", V2Options::default(), &mut write)
            .unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBUSY), "{err}");
    }

    #[test]
    fn parent_outside_own_cgroup_is_rejected() {
        let tmp = tempfile::tempdir().unwrap();
        let d = Delegation {
            root: tmp.path(),
            own_path: "/a",
            target_path: "/ab/x",
            supervisor_leaf: "x.supervisor",
            skip_unavailable: false,
        };
        let err =
            enable_controllers_down(&d, &REQUIRED_CONTROLLERS, &mut fsutil::write_raw).unwrap_err();
        assert!(matches!(err, CgroupError::NoHierarchy(_)), "{err}");
    }
}
