//! How the workspace's tests skip.
//!
//! A test that cannot run where it is (not root, a tool or kernel feature missing) returns early, and libtest
//! then reports it as passed. [`skip`] makes that visible: it prints the reason and, when [`SKIPS_ENV`] names a
//! file, appends `<test>\t<reason>` to it, so that the runner counts skips as skips. `tests/run.sh` sets it,
//! prints the skipped tests after the run, and fails a run as root in which a test skipped for lack of root
//! ([`needs_root`]): here root is present, so those tests must run.

use std::io::Write;

/// The variable naming the file skips are appended to.
pub const SKIPS_ENV: &str = "LMI_TEST_SKIPS";

/// The start of the reason of a test skipped for lack of root.
pub const NEEDS_ROOT: &str = "needs root";

/// Records that the calling test skips, and why. The caller returns right after.
pub fn skip(reason: &str) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    eprintln!("skipping: {test}: {reason}");
    let Some(path) = std::env::var_os(SKIPS_ENV) else {
        return;
    };
    // One short write with O_APPEND: lines of tests running at once, in one process or several, never mix.
    let line = format!("{test}\t{}\n", reason.replace(['\t', '\n'], " "));
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!(
            "lmi-testkit: recording the skip in {}: {e}",
            path.to_string_lossy()
        );
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `true` (after recording the skip) when this is not root; `what` says what needs it:
/// `if lmi_testkit::needs_root("creating a veth pair") { return; }`.
pub fn needs_root(what: &str) -> bool {
    if is_root() {
        return false;
    }
    skip(&format!("{NEEDS_ROOT} ({what})"));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skip_is_one_line_naming_the_test_and_its_reason() {
        let dir = std::env::temp_dir().join(format!("lmi-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.join("skips");
        // Set for this process only; no other test of this crate reads it.
        std::env::set_var(SKIPS_ENV, &file);
        skip("no\tsuch\ntool");
        std::env::remove_var(SKIPS_ENV);
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{e}"));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            text,
            "tests::a_skip_is_one_line_naming_the_test_and_its_reason\tno such tool\n"
        );
    }
}
