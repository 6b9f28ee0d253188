//! Invoke request ids: which ids a caller may choose, and the host-wide set of caller-chosen ids in flight.
//!
//! An id travels to the runtime in a header (`Lambda-Runtime-Aws-Request-Id`) and comes back as a path
//! segment (`/invocation/{id}/response`). Runtimes build that path without escaping it (the official Go,
//! Python and Java clients format it in), so an id that would need percent-encoding (`?`, `#`, `%`, `/`, a
//! space) or that a client would normalise as a path (`.`, `..`) cannot be answered reliably: its invoke would
//! wait for its timeout although the function answered. Lambda's own ids are UUIDs; a caller-chosen id is
//! held to the URL-safe "unreserved" characters of RFC 3986 and refused at `Invoke` otherwise.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
};

/// The longest request id a caller may choose.
pub const MAX_LEN: usize = 128;

/// Checks a caller-chosen request id: 1 to [`MAX_LEN`] characters of `A-Z a-z 0-9 - . _ ~`, at least one of
/// them a letter or digit. The error says what is allowed.
pub fn validate(id: &str) -> Result<(), String> {
    let allowed = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~');
    if id.is_empty()
        || id.len() > MAX_LEN
        || !id.bytes().all(allowed)
        || !id.bytes().any(|b| b.is_ascii_alphanumeric())
    {
        return Err(format!(
            "request_id must be 1-{MAX_LEN} characters of A-Z a-z 0-9 - . _ ~ with at least one letter or digit \
             (it is sent to the runtime as a URL path segment); omit it to get a UUID"
        ));
    }
    Ok(())
}

/// Caller-chosen request ids of the invokes running on this host. Each environment's broker refuses an id it
/// already holds; this set refuses the same id on two environments at once. Generated ids (UUIDs) are not
/// entered: they cannot collide.
#[derive(Debug, Default)]
pub struct InFlightIds {
    ids: Mutex<HashSet<Arc<str>>>,
}

/// Holds an id in its [`InFlightIds`] until dropped (whatever way the invoke ends: answer, timeout, throttle,
/// the caller going away).
#[derive(Debug)]
pub struct Held<'a> {
    set: &'a InFlightIds,
    id: Arc<str>,
}

impl InFlightIds {
    /// Enters `id`; `None` if it is already in flight.
    pub fn hold(&self, id: &str) -> Option<Held<'_>> {
        let id: Arc<str> = Arc::from(id);
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        if !ids.insert(id.clone()) {
            return None;
        }
        Some(Held { set: self, id })
    }

    /// How many ids are held.
    pub fn len(&self) -> usize {
        self.ids.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True when no id is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.set
            .ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_and_url_safe_ids_pass() {
        for id in [
            "8476a536-e9f4-11e8-9739-2dfe598c3fcd",
            "a",
            "job_42.retry~1",
            &"x".repeat(MAX_LEN),
        ] {
            assert_eq!(validate(id), Ok(()), "{id}");
        }
    }

    #[test]
    fn ids_a_runtime_cannot_put_in_a_path_are_refused() {
        for id in [
            "",
            "a?b",
            "a#b",
            "a%2Fb",
            "a/b",
            "a b",
            ".",
            "..",
            "-",
            "é",
            "a\u{0}",
            &"x".repeat(MAX_LEN + 1),
        ] {
            let e = validate(id).unwrap_err();
            assert!(e.contains("A-Z a-z 0-9 - . _ ~"), "{id}: {e}");
        }
    }

    #[test]
    fn an_id_is_held_once_until_its_guard_drops() {
        let set = InFlightIds::default();
        let first = set.hold("same").unwrap();
        assert!(set.hold("same").is_none());
        let other = set.hold("other").unwrap();
        assert_eq!(set.len(), 2);
        drop(first);
        let again = set.hold("same").unwrap();
        drop((again, other));
        assert!(set.is_empty());
    }
}
