//! Choosing and building the driver for the running host.

use std::path::Path;
use std::sync::Arc;

use super::driver::CgroupDriver;
use super::error::CgroupError;
use super::fsutil;
use super::mounts::{discover, Layout};
use super::v1::V1Driver;
use super::v2::{V2Driver, V2Options};

/// Inspects this process's mounts and cgroup memberships.
pub fn detect_layout() -> Result<Layout, CgroupError> {
    let mountinfo = fsutil::read_string(Path::new("/proc/self/mountinfo"))?;
    let proc_cgroup = fsutil::read_string(Path::new("/proc/self/cgroup"))?;
    discover(&mountinfo, &proc_cgroup, &|p: &Path| {
        std::fs::read_to_string(p).ok()
    })
}

/// Detects the host's cgroup layout and returns a driver whose parent cgroup
/// `<own cgroup>/<parent_name>` exists (created if missing) in every managed
/// hierarchy. On v2 this also enables the controllers (see the module docs).
pub fn detect(parent_name: &str) -> Result<Arc<dyn CgroupDriver>, CgroupError> {
    let driver: Arc<dyn CgroupDriver> = match detect_layout()? {
        Layout::V2(h) => Arc::new(V2Driver::new(
            h.mount_point,
            &h.own_path,
            parent_name,
            V2Options::default(),
        )?),
        Layout::V1(mounts) => Arc::new(V1Driver::new(*mounts, parent_name)?),
    };
    tracing::info!(version = %driver.version(), parent = driver.parent_path(), "cgroup driver ready");
    Ok(driver)
}
