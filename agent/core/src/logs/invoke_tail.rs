//! The last 4 KB of one invoke's log lines, for the Invoke API's `LogType: Tail` (`X-Amz-Log-Result`).
//!
//! An invoke that asks for its tail registers its request id with [`InvokeTails::watch`] before it is
//! submitted. While any invoke is watched, the capture copies each line attributed to a watched id (see
//! [`super::lift`]) and the platform log copies the invoke's START, END and REPORT lines into that invoke's
//! buffer, which keeps only the last [`TAIL_BYTES`] bytes. The END and REPORT lines are kept apart and always
//! come last, as in Lambda's tail: the capture reads pipes and sockets on tasks of their own, so a line the
//! function wrote before it answered may be read after the invoke's end was recorded. When no invoke is
//! watched (the common case), a line costs one atomic load. A line without a request id is in the tail only
//! in an environment that runs one invoke at a time (max concurrency 1): there every line belongs to the
//! invoke delivered last, until the next one is (see [`super::platform::PlatformLog::serial`]); with more
//! slots such a line cannot be told apart and is in no tail (see [`super::lift`]). Lines read after the
//! invoke's answer was taken are not in it either.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

/// How much of the end of an invoke's log lines is kept (Lambda's `LogType: Tail` returns the last 4 KB).
pub const TAIL_BYTES: usize = 4096;

/// The invokes whose tails are being collected, by request id.
#[derive(Debug, Default)]
pub struct InvokeTails {
    watched: AtomicUsize,
    map: Mutex<HashMap<String, Arc<Cell>>>,
}

impl InvokeTails {
    /// Starts collecting the lines of `request_id` until the returned watch is finished or dropped.
    /// `None` when that id is already watched (ids in flight are unique, so only a caller's mistake).
    pub fn watch(self: &Arc<Self>, request_id: &str) -> Option<TailWatch> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(request_id) {
            return None;
        }
        let buf = Arc::new(Cell::default());
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
            f(&mut buf.tail.lock().unwrap_or_else(|p| p.into_inner()));
            buf.grew.notify_waiters();
        }
    }
}

/// One invoke's tail, and what wakes a [`TailWatch::settled`] waiting for more.
#[derive(Debug, Default)]
struct Cell {
    tail: Mutex<Tail>,
    grew: tokio::sync::Notify,
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
    buf: Arc<Cell>,
}

impl TailWatch {
    /// The tail once the lines still in flight have arrived: a runtime writes an invoke's lines before it
    /// answers, but the capture reads pipes and sockets on tasks of their own, so the last lines may be read
    /// just after the answer. Taken when no line came for `quiet`, or after `max` at most.
    pub async fn settled(&self, quiet: Duration, max: Duration) -> Vec<u8> {
        let until = tokio::time::Instant::now() + max;
        loop {
            let grew = self.buf.grew.notified();
            let wait = quiet.min(until.saturating_duration_since(tokio::time::Instant::now()));
            if wait.is_zero() || tokio::time::timeout(wait, grew).await.is_err() {
                return self.snapshot();
            }
        }
    }

    /// The last [`TAIL_BYTES`] bytes collected so far.
    pub fn snapshot(&self) -> Vec<u8> {
        let t = self.buf.tail.lock().unwrap_or_else(|p| p.into_inner());
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

    #[tokio::test(start_paused = true)]
    async fn settled_waits_for_lines_still_coming_then_for_quiet() {
        let tails = Arc::new(InvokeTails::default());
        let w = tails.watch("a").unwrap();
        let writer = {
            let tails = tails.clone();
            tokio::spawn(async move {
                for i in 0..3 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    tails.line("a", format!("late {i}").as_bytes());
                }
            })
        };
        let got = w
            .settled(Duration::from_millis(10), Duration::from_millis(100))
            .await;
        assert_eq!(got, b"late 0\nlate 1\nlate 2\n");
        writer.await.unwrap();
        // Lines that never stop: taken at `max`.
        let start = tokio::time::Instant::now();
        let busy = {
            let tails = tails.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    tails.line("a", b"more");
                }
            })
        };
        w.settled(Duration::from_millis(10), Duration::from_millis(100))
            .await;
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        busy.abort();
    }
}
