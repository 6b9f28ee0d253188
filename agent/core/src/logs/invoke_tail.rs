//! The last 4 KB of one invoke's log lines, for the Invoke API's `LogType: Tail` (`X-Amz-Log-Result`).
//!
//! An invoke that asks for its tail registers its request id with [`InvokeTails::watch`] before it is
//! submitted. While any invoke is watched, the capture copies each line attributed to a watched id (see
//! [`super::lift`]) and the platform log copies the invoke's START, END and REPORT lines into that invoke's
//! buffer, which keeps only the last [`TAIL_BYTES`] bytes. The END and REPORT lines are kept apart and always
//! come last, as in Lambda's tail: the capture reads pipes and sockets on tasks of their own, so a line the
//! function wrote before it answered may be read after the invoke's end was recorded. When no invoke is watched (the common case), a line
//! costs one atomic load. Lines without a request id are not in the tail (they are not attributed, see
//! [`super::lift`]); lines read after the invoke's answer was taken are not either.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

/// How much of the end of an invoke's log lines is kept (Lambda's `LogType: Tail` returns the last 4 KB).
pub const TAIL_BYTES: usize = 4096;

/// The invokes whose tails are being collected, by request id.
#[derive(Debug, Default)]
pub struct InvokeTails {
    watched: AtomicUsize,
    map: Mutex<HashMap<String, Arc<Mutex<Tail>>>>,
}

impl InvokeTails {
    /// Starts collecting the lines of `request_id` until the returned watch is finished or dropped.
    /// `None` when that id is already watched (ids in flight are unique, so only a caller's mistake).
    pub fn watch(self: &Arc<Self>, request_id: &str) -> Option<TailWatch> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(request_id) {
            return None;
        }
        let buf = Arc::new(Mutex::new(Tail::default()));
        map.insert(request_id.to_owned(), buf.clone());
        self.watched.fetch_add(1, Ordering::Release);
        Some(TailWatch {
            tails: self.clone(),
            id: request_id.to_owned(),
            buf,
        })
    }

    /// Whether any invoke is watched: callers skip finding a line's id when none is.
    pub fn active(&self) -> bool {
        self.watched.load(Ordering::Acquire) > 0
    }

    /// Appends `line` (a newline is added) to the tail of `request_id` if it is watched.
    pub fn line(&self, request_id: &str, line: &[u8]) {
        self.with(request_id, |t| {
            push_bounded(&mut t.lines, line);
            push_bounded(&mut t.lines, b"\n");
        });
    }

    /// Appends one of the invoke's end lines (END, REPORT, the timeout line): those stay after its other
    /// lines, even those read later.
    pub fn end_line(&self, request_id: &str, line: &[u8]) {
        self.with(request_id, |t| {
            push_bounded(&mut t.end, line);
            push_bounded(&mut t.end, b"\n");
        });
    }

    fn with(&self, request_id: &str, f: impl FnOnce(&mut Tail)) {
        if !self.active() {
            return;
        }
        let buf = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(request_id)
            .cloned();
        if let Some(buf) = buf {
            f(&mut buf.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }
}

/// One invoke's lines so far: its end lines apart, each part bounded to [`TAIL_BYTES`].
#[derive(Debug, Default)]
struct Tail {
    lines: VecDeque<u8>,
    end: VecDeque<u8>,
}

/// Appends `bytes`, then drops from the front what exceeds [`TAIL_BYTES`].
fn push_bounded(buf: &mut VecDeque<u8>, bytes: &[u8]) {
    let bytes = &bytes[bytes.len().saturating_sub(TAIL_BYTES)..];
    let over = (buf.len() + bytes.len()).saturating_sub(TAIL_BYTES);
    buf.drain(..over);
    buf.extend(bytes);
}

/// One invoke's tail being collected; dropping it stops the collection.
#[derive(Debug)]
pub struct TailWatch {
    tails: Arc<InvokeTails>,
    id: String,
    buf: Arc<Mutex<Tail>>,
}

impl TailWatch {
    /// The last [`TAIL_BYTES`] bytes collected so far.
    pub fn snapshot(&self) -> Vec<u8> {
        let t = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        let all = t.lines.len() + t.end.len();
        t.lines
            .iter()
            .chain(t.end.iter())
            .skip(all.saturating_sub(TAIL_BYTES))
            .copied()
            .collect()
    }
}

impl Drop for TailWatch {
    fn drop(&mut self) {
        let mut map = self.tails.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.remove(&self.id).is_some() {
            self.tails.watched.fetch_sub(1, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_watched_ids_collect_and_the_tail_keeps_the_last_4_kb() {
        let tails = Arc::new(InvokeTails::default());
        tails.line("a", b"before any watch");
        assert!(!tails.active());
        let w = tails.watch("a").unwrap();
        assert!(tails.watch("a").is_none());
        assert!(tails.active());
        tails.line("b", b"other invoke");
        tails.line("a", b"first");
        assert_eq!(w.snapshot(), b"first\n");
        for i in 0..1000 {
            tails.line("a", format!("line {i}").as_bytes());
        }
        let s = w.snapshot();
        assert_eq!(s.len(), TAIL_BYTES);
        assert!(s.ends_with(b"line 999\n"));
        tails.line("a", &vec![b'x'; 3 * TAIL_BYTES]);
        let s = w.snapshot();
        assert_eq!(s.len(), TAIL_BYTES);
        assert!(s[..TAIL_BYTES - 1].iter().all(|&c| c == b'x') && s.ends_with(b"\n"));
        tails.end_line("a", b"END");
        tails.line("a", b"late");
        let s = w.snapshot();
        assert_eq!(s.len(), TAIL_BYTES);
        assert!(s.ends_with(b"xx\nlate\nEND\n"));
        drop(w);
        assert!(!tails.active());
        assert!(tails.watch("a").is_some());
    }
}
