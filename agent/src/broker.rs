//! The per-environment exchange between callers and the runtime's pollers.
//!
//! A caller submits an [`Event`]; it is queued until a `/next` long-poll takes it, and the caller waits for the
//! runtime's answer, its deadline, or the environment's death, whichever comes first. The broker counts
//! in-flight invokes itself and never lets more than `max` in: parked `/next` calls are not capacity (runtimes
//! re-poll while earlier invokes still run).
//!
//! A slot is held from admission until the runtime answers (even after the caller's deadline, since the code is
//! still running), until a queued invoke is dropped undelivered, or until the environment dies.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::invocation::{ErrorInfo, Event, Outcome};

/// How many timed-out request ids are remembered to answer a late `/response` with 410 instead of 400.
const EXPIRED_MEMORY: usize = 4096;

/// Why a submit was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Every slot is taken.
    Full,
    /// The environment is stopping or dead.
    Closed,
    /// An invoke with this request id is already in flight here.
    DuplicateId,
}

/// A refused submit: the reason, and the event back so that the caller can offer it elsewhere.
#[derive(Debug)]
pub struct Refusal {
    pub reason: Rejected,
    pub event: Box<Event>,
}

impl Refusal {
    fn new(reason: Rejected, event: Event) -> Self {
        Self {
            reason,
            event: Box::new(event),
        }
    }
}

/// What the Runtime API answers to a `/response` or `/error` for a request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Accepted (202): the caller receives the outcome.
    Accepted,
    /// The id is unknown or was already answered (400).
    Unknown,
    /// The invoke timed out before the answer (410).
    TooLate,
}

#[derive(Debug)]
struct Entry {
    delivered: bool,
    /// None once the caller has stopped waiting (deadline passed): the runtime still holds the invoke.
    reply: Option<oneshot::Sender<Outcome>>,
}

#[derive(Debug, Default)]
struct Table {
    closed: bool,
    entries: HashMap<Arc<str>, Entry>,
    expired: HashSet<Arc<str>>,
    expired_order: VecDeque<Arc<str>>,
}

impl Table {
    fn remember_expired(&mut self, id: Arc<str>) {
        if self.expired.insert(id.clone()) {
            self.expired_order.push_back(id);
            while self.expired_order.len() > EXPIRED_MEMORY {
                if let Some(old) = self.expired_order.pop_front() {
                    self.expired.remove(&old);
                }
            }
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub struct Broker {
    max: u32,
    in_flight: AtomicU32,
    idle: Notify,
    queue_tx: mpsc::UnboundedSender<(Arc<str>, Event)>,
    queue_rx: tokio::sync::Mutex<mpsc::UnboundedReceiver<(Arc<str>, Event)>>,
    table: Mutex<Table>,
    closed_tx: watch::Sender<bool>,
}

/// A submitted invoke; [`Pending::wait`] yields its outcome. Dropping it unanswered frees what it holds.
#[derive(Debug)]
pub struct Pending {
    broker: Arc<Broker>,
    id: Arc<str>,
    rx: Option<oneshot::Receiver<Outcome>>,
}

impl Broker {
    /// A broker admitting at most `max` concurrent invokes.
    pub fn new(max: u32) -> Arc<Self> {
        let (queue_tx, queue_rx) = mpsc::unbounded_channel();
        Arc::new(Self {
            max,
            in_flight: AtomicU32::new(0),
            idle: Notify::new(),
            queue_tx,
            queue_rx: tokio::sync::Mutex::new(queue_rx),
            table: Mutex::new(Table::default()),
            closed_tx: watch::Sender::new(false),
        })
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // A poisoned lock means a panic elsewhere; the table itself is still consistent (no multi-step updates
        // across a panic point), so keep serving.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The concurrency limit.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// Invokes holding a slot now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// True once the environment stopped taking invokes.
    pub fn is_closed(&self) -> bool {
        *self.closed_tx.borrow()
    }

    fn try_acquire(&self) -> bool {
        let mut cur = self.in_flight.load(Ordering::Relaxed);
        loop {
            if cur >= self.max {
                return false;
            }
            match self.in_flight.compare_exchange_weak(
                cur,
                cur + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => cur = now,
            }
        }
    }

    fn release(&self, n: u32) {
        if n == 0 {
            return;
        }
        let before = self.in_flight.fetch_sub(n, Ordering::AcqRel);
        if before == n {
            self.idle.notify_waiters();
        }
    }

    /// Admits and queues an invoke, or gives the event back with the reason.
    pub fn submit(self: &Arc<Self>, event: Event) -> Result<Pending, Refusal> {
        if !self.try_acquire() {
            return Err(Refusal::new(Rejected::Full, event));
        }
        let id: Arc<str> = Arc::from(event.request_id.as_str());
        let (tx, rx) = oneshot::channel();
        {
            let mut t = self.table();
            if t.closed {
                drop(t);
                self.release(1);
                return Err(Refusal::new(Rejected::Closed, event));
            }
            if t.entries.contains_key(&id) {
                drop(t);
                self.release(1);
                return Err(Refusal::new(Rejected::DuplicateId, event));
            }
            t.entries.insert(
                id.clone(),
                Entry {
                    delivered: false,
                    reply: Some(tx),
                },
            );
            // Sent under the table lock so that `close` cannot run between insert and send.
            if let Err(mpsc::error::SendError((_, event))) = self.queue_tx.send((id.clone(), event))
            {
                t.entries.remove(&id);
                drop(t);
                self.release(1);
                return Err(Refusal::new(Rejected::Closed, event));
            }
        }
        Ok(Pending {
            broker: self.clone(),
            id,
            rx: Some(rx),
        })
    }

    /// Waits for the next invoke for the runtime (`/next`). None when the environment is closed.
    pub async fn next(&self) -> Option<Event> {
        let mut closed = self.closed_tx.subscribe();
        loop {
            if *closed.borrow_and_update() {
                return None;
            }
            let item = {
                let mut rx = tokio::select! {
                    rx = self.queue_rx.lock() => rx,
                    _ = closed.wait_for(|c| *c) => return None,
                };
                tokio::select! {
                    item = rx.recv() => item,
                    _ = closed.wait_for(|c| *c) => return None,
                }
            };
            let (id, event) = item?;
            let mut t = self.table();
            match t.entries.get_mut(&id) {
                Some(e) if !e.delivered && e.reply.is_some() => {
                    e.delivered = true;
                    return Some(event);
                }
                // Expired or abandoned while queued: its slot was already released; skip it.
                _ => continue,
            }
        }
    }

    /// Tells whether a request id can be answered now, without consuming it (to refuse a body early).
    pub fn check(&self, id: &str) -> Answer {
        let t = self.table();
        match t.entries.get(id) {
            Some(e) if e.delivered && e.reply.is_some() => Answer::Accepted,
            Some(e) if e.delivered => Answer::TooLate,
            _ if t.expired.contains(id) => Answer::TooLate,
            _ => Answer::Unknown,
        }
    }

    /// Hands the runtime's answer to the caller (`/response`, `/error`).
    pub fn answer(&self, id: &str, outcome: Outcome) -> Answer {
        let mut t = self.table();
        let Some(entry) = t.entries.get(id) else {
            return if t.expired.contains(id) {
                Answer::TooLate
            } else {
                Answer::Unknown
            };
        };
        if !entry.delivered {
            // The runtime cannot answer what it was never given.
            return Answer::Unknown;
        }
        let Some((key, entry)) = t.entries.remove_entry(id) else {
            return Answer::Unknown;
        };
        let answer = match entry.reply {
            Some(reply) => {
                // The caller may have gone (cancelled); the answer is still accepted.
                let _ = reply.send(outcome);
                Answer::Accepted
            }
            None => {
                t.remember_expired(key);
                Answer::TooLate
            }
        };
        drop(t);
        self.release(1);
        answer
    }

    /// The runtime finished an invoke whose caller already timed out: frees its slot (no outcome to deliver).
    pub fn settle_late(&self, id: &str) {
        let mut t = self.table();
        let late = matches!(t.entries.get(id), Some(e) if e.delivered && e.reply.is_none());
        if let (true, Some((key, _))) = (late, t.entries.remove_entry(id)) {
            t.remember_expired(key);
            drop(t);
            self.release(1);
        }
    }

    /// The caller stopped waiting (deadline or cancellation). Returns false if the answer already came.
    fn expire(&self, id: &Arc<str>) -> bool {
        let mut t = self.table();
        let delivered = match t.entries.get_mut(id) {
            None => return false,
            Some(e) => {
                if e.reply.take().is_none() {
                    return false;
                }
                e.delivered
            }
        };
        t.remember_expired(id.clone());
        if !delivered {
            // Never reached the runtime: drop it and free the slot now.
            t.entries.remove(id);
            drop(t);
            self.release(1);
        }
        true
    }

    /// Stops taking invokes and ends every invoke in flight with `failure`; parked `/next` calls return None.
    /// Returns how many callers were told.
    pub fn close(&self, failure: Option<&ErrorInfo>) -> usize {
        let mut t = self.table();
        t.closed = true;
        let entries: Vec<_> = t.entries.drain().collect();
        drop(t);
        self.closed_tx.send_replace(true);
        let mut told = 0;
        let held = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        for (_, entry) in entries {
            if let Some(reply) = entry.reply {
                let info = failure.cloned().unwrap_or_else(|| {
                    ErrorInfo::new("Runtime.ExitError", "the execution environment stopped")
                });
                if reply.send(Outcome::RuntimeFailure(info)).is_ok() {
                    told += 1;
                }
            }
        }
        self.release(held);
        told
    }

    /// Stops taking new invokes but lets those in flight finish (draining).
    pub fn stop_admitting(&self) {
        self.table().closed = true;
    }

    /// Resolves when no invoke holds a slot.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Pending {
    /// The request id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits for the outcome; after `timeout` the caller gets `Sandbox.Timedout` (the code is not stopped).
    pub async fn wait(mut self, timeout: Duration) -> Outcome {
        let Some(mut rx) = self.rx.take() else {
            return Outcome::RuntimeFailure(ErrorInfo::new(
                "Runtime.Unknown",
                "invoke already awaited",
            ));
        };
        let first = tokio::time::timeout(timeout, &mut rx).await;
        match first {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Outcome::RuntimeFailure(ErrorInfo::new(
                "Runtime.Unknown",
                "the execution environment dropped the invoke",
            )),
            Err(_) => {
                if self.broker.expire(&self.id) {
                    Outcome::Timeout(ErrorInfo::timed_out(timeout))
                } else {
                    // The answer raced the deadline and won: it is in the channel.
                    rx.try_recv()
                        .unwrap_or_else(|_| Outcome::Timeout(ErrorInfo::timed_out(timeout)))
                }
            }
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Still holding the receiver means the caller went away before an outcome: free what the invoke holds.
        if self.rx.is_some() {
            self.broker.expire(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn event(id: &str) -> Event {
        Event::new(
            id.into(),
            Bytes::from_static(b"{}"),
            Duration::from_secs(3),
            "arn".into(),
            None,
            None,
        )
    }

    fn ok(p: &'static [u8]) -> Outcome {
        Outcome::Success {
            payload: Bytes::from_static(p),
            content_type: "application/json".into(),
        }
    }

    #[tokio::test]
    async fn never_admits_more_than_max_and_frees_on_answer() {
        let b = Broker::new(2);
        let p1 = b.submit(event("a")).unwrap();
        let p2 = b.submit(event("b")).unwrap();
        assert_eq!(b.submit(event("c")).unwrap_err().reason, Rejected::Full);
        assert_eq!(b.in_flight(), 2);
        let e = b.next().await.unwrap();
        assert_eq!(e.request_id, "a");
        assert_eq!(b.answer("a", ok(b"1")), Answer::Accepted);
        assert_eq!(p1.wait(Duration::from_secs(5)).await, ok(b"1"));
        assert_eq!(b.in_flight(), 1);
        assert!(b.submit(event("c")).is_ok());
        drop(p2);
    }

    #[tokio::test]
    async fn unknown_undelivered_and_second_answers_are_400() {
        let b = Broker::new(4);
        assert_eq!(b.answer("nope", ok(b"")), Answer::Unknown);
        let _p = b.submit(event("a")).unwrap();
        // queued but not yet given to the runtime
        assert_eq!(b.answer("a", ok(b"")), Answer::Unknown);
        b.next().await.unwrap();
        assert_eq!(b.check("a"), Answer::Accepted);
        assert_eq!(b.answer("a", ok(b"")), Answer::Accepted);
        assert_eq!(b.answer("a", ok(b"")), Answer::Unknown);
    }

    #[tokio::test]
    async fn duplicate_request_id_is_refused() {
        let b = Broker::new(4);
        let _p = b.submit(event("a")).unwrap();
        assert_eq!(
            b.submit(event("a")).unwrap_err().reason,
            Rejected::DuplicateId
        );
        assert_eq!(b.in_flight(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn delivered_invoke_times_out_keeps_its_slot_until_late_answer_gets_410() {
        let b = Broker::new(1);
        let p = b.submit(event("a")).unwrap();
        b.next().await.unwrap();
        let out = p.wait(Duration::from_secs(3)).await;
        assert_eq!(
            out,
            Outcome::Timeout(ErrorInfo::new(
                "Sandbox.Timedout",
                "Task timed out after 3.00 seconds"
            ))
        );
        // the runtime still runs it: the slot stays taken
        assert_eq!(b.in_flight(), 1);
        assert_eq!(b.check("a"), Answer::TooLate);
        assert_eq!(b.answer("a", ok(b"late")), Answer::TooLate);
        assert_eq!(b.in_flight(), 0);
        assert_eq!(b.answer("a", ok(b"late")), Answer::TooLate);
    }

    #[tokio::test(start_paused = true)]
    async fn queued_invoke_that_times_out_is_never_delivered() {
        let b = Broker::new(2);
        let p = b.submit(event("a")).unwrap();
        assert!(matches!(
            p.wait(Duration::from_secs(1)).await,
            Outcome::Timeout(_)
        ));
        assert_eq!(b.in_flight(), 0);
        let _q = b.submit(event("b")).unwrap();
        assert_eq!(b.next().await.unwrap().request_id, "b");
    }

    #[tokio::test]
    async fn dropped_caller_frees_the_slot() {
        let b = Broker::new(1);
        let p = b.submit(event("a")).unwrap();
        drop(p);
        assert_eq!(b.in_flight(), 0);
        let _q = b.submit(event("b")).unwrap();
        assert_eq!(b.next().await.unwrap().request_id, "b");
    }

    #[tokio::test]
    async fn close_fails_every_waiter_and_wakes_pollers() {
        let b = Broker::new(4);
        let p1 = b.submit(event("a")).unwrap();
        let p2 = b.submit(event("b")).unwrap();
        b.next().await.unwrap();
        let b2 = b.clone();
        let poller = tokio::spawn(async move {
            // one queued event remains; take it, then park
            b2.next().await.unwrap();
            b2.next().await
        });
        let fail = ErrorInfo::new(
            "Runtime.ExitError",
            "Runtime exited with error: exit status 1",
        );
        // wait until the poller took "b" (it is delivered) before closing
        while b.check("b") != Answer::Accepted {
            tokio::task::yield_now().await;
        }
        assert_eq!(b.close(Some(&fail)), 2);
        assert!(poller.await.unwrap().is_none());
        assert_eq!(
            p1.wait(Duration::from_secs(5)).await,
            Outcome::RuntimeFailure(fail.clone())
        );
        assert_eq!(
            p2.wait(Duration::from_secs(5)).await,
            Outcome::RuntimeFailure(fail)
        );
        assert_eq!(b.in_flight(), 0);
        assert_eq!(b.submit(event("c")).unwrap_err().reason, Rejected::Closed);
        assert!(b.next().await.is_none());
    }

    #[tokio::test]
    async fn drain_waits_for_in_flight() {
        let b = Broker::new(4);
        let p = b.submit(event("a")).unwrap();
        b.next().await.unwrap();
        b.stop_admitting();
        assert_eq!(b.submit(event("x")).unwrap_err().reason, Rejected::Closed);
        let b2 = b.clone();
        let idle = tokio::spawn(async move { b2.wait_idle().await });
        tokio::task::yield_now().await;
        assert!(!idle.is_finished());
        b.answer("a", ok(b"done"));
        idle.await.unwrap();
        assert_eq!(p.wait(Duration::from_secs(1)).await, ok(b"done"));
    }

    #[tokio::test]
    async fn concurrent_pollers_each_get_one_event() {
        let b = Broker::new(16);
        let mut pollers = Vec::new();
        for _ in 0..16 {
            let b = b.clone();
            pollers.push(tokio::spawn(
                async move { b.next().await.map(|e| e.request_id) },
            ));
        }
        let pend: Vec<_> = (0..16)
            .map(|i| b.submit(event(&format!("r{i}"))).unwrap())
            .collect();
        let mut got: Vec<String> = Vec::new();
        for p in pollers {
            got.push(p.await.unwrap().unwrap());
        }
        got.sort();
        let mut want: Vec<String> = (0..16).map(|i| format!("r{i}")).collect();
        want.sort();
        assert_eq!(got, want);
        drop(pend);
        assert_eq!(
            b.in_flight(),
            16,
            "delivered invokes keep their slots until answered"
        );
    }
}
