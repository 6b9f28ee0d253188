//! Validation of cgroup directory names supplied by callers.

use super::error::CgroupError;

/// Checks that `name` is usable as one cgroup directory name: non-empty, at most
/// 255 bytes, not `.`/`..`, no `/`, NUL or newline, and not starting with
/// `cgroup.` (the kernel's own interface-file namespace).
pub fn validate_name(name: &str) -> Result<(), CgroupError> {
    let bad = name.is_empty()
        || name.len() > 255
        || name == "."
        || name == ".."
        || name.starts_with("cgroup.")
        || name.contains(['/', '\0', '\n']);
    if bad {
        Err(CgroupError::InvalidName(name.to_owned()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_names() {
        for ok in ["lmi-agent", "env-1234", "a.b_c"] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_unsafe_names() {
        for bad in ["", ".", "..", "a/b", "/x", "a\nb", "a\0b", "cgroup.procs"] {
            assert!(
                matches!(validate_name(bad), Err(CgroupError::InvalidName(_))),
                "{bad:?}"
            );
        }
        assert!(validate_name(&"x".repeat(256)).is_err());
    }
}
