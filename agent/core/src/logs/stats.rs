//! An environment's log counters, shown in `GetEnvironment` (`log_records`, `log_records_dropped`) and in the
//! agent's own records in the log.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one environment's log capture. All monotonic except the not-yet-reported drops.
#[derive(Debug, Default)]
pub struct LogStats {
    records: AtomicU64,
    dropped: AtomicU64,
    unreported_drops: AtomicU64,
    split_lines: AtomicU64,
    refused_connections: AtomicU64,
}

impl LogStats {
    /// Records handed to the sinks.
    pub fn records(&self) -> u64 {
        self.records.load(Ordering::Relaxed)
    }

    /// Records dropped because the queue to the sinks was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Pieces of overlong lines emitted as records of their own (`"split": true`).
    pub fn split_lines(&self) -> u64 {
        self.split_lines.load(Ordering::Relaxed)
    }

    /// Log-socket connections refused because the environment had too many open.
    pub fn refused_connections(&self) -> u64 {
        self.refused_connections.load(Ordering::Relaxed)
    }

    pub(crate) fn add_record(&self) {
        self.add_records(1);
    }

    pub(crate) fn add_drop(&self) {
        self.add_drops(1);
    }

    pub(crate) fn add_records(&self, n: u64) {
        self.records.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_drops(&self, n: u64) {
        self.dropped.fetch_add(n, Ordering::Relaxed);
        self.unreported_drops.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_split(&self) {
        self.split_lines.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a refused connection; true for the first one.
    pub(crate) fn add_refused(&self) -> bool {
        self.refused_connections.fetch_add(1, Ordering::Relaxed) == 0
    }

    /// Takes the drops not yet reported in the log.
    pub(crate) fn take_unreported(&self) -> u64 {
        self.unreported_drops.swap(0, Ordering::AcqRel)
    }

    /// Gives back drops whose report could not be queued (reported at the next try).
    pub(crate) fn restore_unreported(&self, n: u64) {
        self.unreported_drops.fetch_add(n, Ordering::AcqRel);
    }
}
