//! The bounded queue between the readers of runtime output and the sink writer.
//!
//! It is bounded twice: by records (a tokio bounded channel) and by bytes of encoded records. A reader never
//! waits: when either bound is reached the record being offered (the newest) is refused, and the caller counts
//! it as dropped. So a runtime that writes faster than the sinks drain costs the agent at most `max_bytes` of
//! queued records, however long it goes on.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use tokio::sync::mpsc;

use super::record::Source;

/// One encoded record (JSON and its `\n`) and the function version it belongs to.
#[derive(Debug)]
pub struct Entry {
    pub source: Arc<Source>,
    pub bytes: Vec<u8>,
}

/// The queue was full (or the sink writer has stopped): the record was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the log queue is full")]
pub struct Full;

/// The readers' end. Cloned into every environment's capture.
#[derive(Debug, Clone)]
pub struct QueueSender {
    tx: mpsc::Sender<Entry>,
    queued_bytes: Arc<AtomicUsize>,
    max_bytes: usize,
}

/// The sink writer's end.
#[derive(Debug)]
pub struct QueueReceiver {
    rx: mpsc::Receiver<Entry>,
    queued_bytes: Arc<AtomicUsize>,
}

/// A queue of at most `max_records` records and `max_bytes` bytes.
pub fn bounded(max_records: usize, max_bytes: usize) -> (QueueSender, QueueReceiver) {
    let (tx, rx) = mpsc::channel(max_records.max(1));
    let queued_bytes = Arc::new(AtomicUsize::new(0));
    (
        QueueSender {
            tx,
            queued_bytes: queued_bytes.clone(),
            max_bytes,
        },
        QueueReceiver { rx, queued_bytes },
    )
}

impl QueueSender {
    /// Whether a record could be taken now: lets a reader skip encoding a record that would be dropped.
    pub fn has_room(&self) -> bool {
        self.tx.capacity() > 0 && self.queued_bytes.load(Ordering::Relaxed) < self.max_bytes
    }

    /// Offers a record without waiting; refused when either bound would be passed.
    pub fn try_push(&self, entry: Entry) -> Result<(), Full> {
        let n = entry.bytes.len();
        let before = self.queued_bytes.fetch_add(n, Ordering::AcqRel);
        if before + n > self.max_bytes {
            self.queued_bytes.fetch_sub(n, Ordering::AcqRel);
            return Err(Full);
        }
        self.tx.try_send(entry).map_err(|_| {
            self.queued_bytes.fetch_sub(n, Ordering::AcqRel);
            Full
        })
    }

    /// Queues a record, waiting for room in the record bound. Used only for the agent's own small records
    /// (the end of a capture), never by readers; the byte bound is not checked for them.
    pub async fn push(&self, entry: Entry) -> Result<(), Full> {
        let n = entry.bytes.len();
        self.queued_bytes.fetch_add(n, Ordering::AcqRel);
        self.tx.send(entry).await.map_err(|_| {
            self.queued_bytes.fetch_sub(n, Ordering::AcqRel);
            Full
        })
    }

    /// Bytes of records queued now.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Relaxed)
    }
}

impl QueueReceiver {
    /// Blocks until at least one record is queued, then moves up to `limit` into `batch`; 0 when every sender
    /// is gone and the queue is empty. Call [`QueueReceiver::written`] once the batch is written.
    pub fn blocking_recv_many(&mut self, batch: &mut Vec<Entry>, limit: usize) -> usize {
        self.rx.blocking_recv_many(batch, limit)
    }

    /// Gives back the byte budget of records that have been written.
    pub fn written(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize) -> Entry {
        Entry {
            source: Arc::new(Source {
                function: "f".into(),
                version: "1".into(),
                environment: "e".into(),
            }),
            bytes: vec![b'x'; n],
        }
    }

    #[test]
    fn both_bounds_refuse_the_newest_record() {
        let (tx, mut rx) = bounded(3, 100);
        assert!(tx.has_room());
        tx.try_push(entry(10)).unwrap();
        tx.try_push(entry(10)).unwrap();
        assert_eq!(tx.try_push(entry(90)), Err(Full), "byte bound");
        tx.try_push(entry(10)).unwrap();
        assert!(!tx.has_room());
        assert_eq!(tx.try_push(entry(1)), Err(Full), "record bound");
        assert_eq!(tx.queued_bytes(), 30);
        let mut batch = Vec::new();
        assert_eq!(rx.blocking_recv_many(&mut batch, 10), 3);
        rx.written(batch.iter().map(|e| e.bytes.len()).sum());
        assert_eq!(tx.queued_bytes(), 0);
        assert!(tx.has_room());
    }

    #[test]
    fn a_stopped_writer_refuses_everything() {
        let (tx, rx) = bounded(3, 100);
        drop(rx);
        assert_eq!(tx.try_push(entry(1)), Err(Full));
        assert_eq!(tx.queued_bytes(), 0);
    }
}
