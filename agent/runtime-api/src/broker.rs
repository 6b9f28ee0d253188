//! The per-environment exchange between callers and the runtime's pollers.
//!
//! A caller submits an [`Event`]; it is queued until a `/next` long-poll takes it, and the caller waits for the
//! runtime's answer, its deadline, or the environment's death, whichever comes first. The broker counts
//! in-flight invokes itself and never lets more than `max` in: parked `/next` calls are not capacity (runtimes
//! re-poll while earlier invokes still run).
//!
//! A slot is held from admission until the runtime answers (even after the caller's deadline, since the code is
//! still running), until a queued invoke is dropped undelivered, or until the environment dies.
//!
//! A caller that can take a streamed answer submits with [`Broker::submit_streaming`]: when the runtime
//! streams (`Lambda-Runtime-Function-Response-Mode: streaming`), the Runtime API opens a [`ResponseStream`]
//! to it ([`Broker::open_stream`]) and passes the chunks on through a channel of [`STREAM_CHUNKS`] chunks as
//! they arrive: a caller that reads slowly stops the Runtime API reading the runtime's connection, and nothing
//! holds the whole answer. The slot stays held until the stream ends, and the stream ends with exactly one
//! [`Piece::End`]. Any other answer reaches such a caller whole ([`Answered::Whole`]).
//!
//! An optional [`InvokeObserver`] (the function log's platform records) learns when each invoke is delivered
//! and, exactly once, when it ends for its caller.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{
        atomic::{AtomicU32, Ordering},
        Arc, Mutex, MutexGuard, OnceLock,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, Notify};

use crate::invocation::{ErrorInfo, Event, Outcome};

/// Chunks of a streamed answer that may wait for its caller: past them the Runtime API stops reading the
/// runtime's connection (each chunk is one body frame, at most hyper's read buffer).
pub const STREAM_CHUNKS: usize = 16;

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

/// How a delivered invoke ended for its caller (see [`InvokeObserver::ended`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvokeEnd {
    /// The runtime answered.
    Success,
    /// The runtime reported a function error, or its answer was refused (too large, cut off).
    Error,
    /// The deadline passed first.
    Timeout,
    /// The environment stopped (its runtime exited or was stopped).
    Failure,
    /// The caller went away before an outcome.
    Cancelled,
}

impl InvokeEnd {
    /// `success`, `error`, `timeout`, `failure` or `cancelled`.
    pub fn as_str(self) -> &'static str {
        match self {
            InvokeEnd::Success => "success",
            InvokeEnd::Error => "error",
            InvokeEnd::Timeout => "timeout",
            InvokeEnd::Failure => "failure",
            InvokeEnd::Cancelled => "cancelled",
        }
    }

    fn of(outcome: &Outcome) -> (Self, Option<&str>) {
        match outcome {
            Outcome::Success { .. } => (InvokeEnd::Success, None),
            Outcome::FunctionError(e) => (InvokeEnd::Error, Some(&e.error_type)),
            Outcome::Timeout(e) => (InvokeEnd::Timeout, Some(&e.error_type)),
            Outcome::RuntimeFailure(e) => (InvokeEnd::Failure, Some(&e.error_type)),
        }
    }
}

/// Learns when invokes are delivered to the runtime and when they end. Called on the invoke path: must be
/// cheap and must not call back into the broker.
pub trait InvokeObserver: Send + Sync + std::fmt::Debug {
    /// A `/next` is taking the invoke. Called with the broker's table locked, so that it is seen before the
    /// invoke's end, whichever thread ends it.
    fn delivered(&self, id: &Arc<str>);
    /// A delivered invoke ended for its caller, `ran` after its delivery. Called once per delivered invoke,
    /// before the caller gets the outcome.
    fn ended(&self, id: &str, ran: Duration, end: InvokeEnd, error_type: Option<&str>);
}

/// What the Runtime API answers to a `/response` or `/error` for a request id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Accepted (202): the caller receives the outcome.
    Accepted,
    /// The id is unknown, not yet delivered, already answered or being answered (400).
    Unknown,
    /// The invoke timed out before the answer (410).
    TooLate,
}

/// What a caller that can take a stream receives first.
#[derive(Debug)]
pub enum Answered {
    /// The whole outcome (the runtime did not stream, or the invoke ended before it began to).
    Whole(Outcome),
    /// The runtime is streaming its answer: chunks, then the outcome.
    Stream(ResponseStream),
}

/// One piece of a streamed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// The next bytes of the answer.
    Chunk(Bytes),
    /// The end, always last and exactly once. A success's payload is empty: the chunks carried it.
    End(Outcome),
}

/// What the broker sends a waiting caller.
#[derive(Debug)]
enum Delivery {
    Whole(Outcome),
    Stream {
        content_type: String,
        chunks: mpsc::Receiver<Bytes>,
        end: oneshot::Receiver<Outcome>,
    },
}

/// Where the outcome of an invoke goes.
#[derive(Debug)]
enum ReplyTo {
    /// The caller waits for its [`Delivery`].
    Waiting(oneshot::Sender<Delivery>),
    /// The caller reads a stream; the outcome ends it.
    Streaming(oneshot::Sender<Outcome>),
}

impl ReplyTo {
    /// Sends the outcome; false when the caller has gone.
    fn send(self, outcome: Outcome) -> bool {
        match self {
            ReplyTo::Waiting(tx) => tx.send(Delivery::Whole(outcome)).is_ok(),
            ReplyTo::Streaming(tx) => tx.send(outcome).is_ok(),
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// The event until a `/next` takes it; dropping the entry frees the payload.
    event: Option<Event>,
    /// None once the caller has stopped waiting (deadline passed): the runtime still holds the invoke.
    reply: Option<ReplyTo>,
    /// The caller takes a streamed answer as a stream.
    accepts_stream: bool,
    /// A `/response` or `/error` for this id is being read: a second one is refused at once.
    answering: bool,
    /// The invoke's deadline on the monotonic clock, kept after delivery: an answer's body is read until then.
    deadline: std::time::Instant,
    /// When it was delivered, while the observer has not been told of its end (only with an observer).
    started: Option<Instant>,
}

impl Entry {
    fn delivered(&self) -> bool {
        self.event.is_none()
    }
}

#[derive(Debug, Default)]
struct Table {
    closed: bool,
    entries: HashMap<Arc<str>, Entry>,
    /// Ids of undelivered invokes, oldest first. Every id here has an entry with its event: the queue never
    /// holds more than the in-flight limit.
    queue: VecDeque<Arc<str>>,
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

/// The monotonic instant of an event's wall-clock deadline (ms since the epoch), read once at submit.
fn monotonic_deadline(deadline_ms: u64) -> std::time::Instant {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let left = std::time::Duration::from_millis(deadline_ms.saturating_sub(now_ms));
    let now = std::time::Instant::now();
    now.checked_add(left).unwrap_or(now)
}

/// See the module documentation.
#[derive(Debug)]
pub struct Broker {
    max: u32,
    in_flight: AtomicU32,
    idle: Notify,
    /// One permit per queued invoke; a dropped waiter passes its permit on.
    queued: Notify,
    table: Mutex<Table>,
    closed_tx: watch::Sender<bool>,
    observer: OnceLock<Arc<dyn InvokeObserver>>,
}

/// A submitted invoke; [`Pending::wait`] yields its outcome. Dropping it unanswered frees what it holds.
#[derive(Debug)]
pub struct Pending {
    broker: Arc<Broker>,
    id: Arc<str>,
    rx: Option<oneshot::Receiver<Delivery>>,
}

/// A streamed answer as its caller reads it ([`ResponseStream::next`]). Dropping it before its end cancels
/// the invoke: the Runtime API stops passing chunks on and frees the slot.
pub struct ResponseStream {
    broker: Arc<Broker>,
    id: Arc<str>,
    content_type: String,
    chunks: mpsc::Receiver<Bytes>,
    chunks_open: bool,
    end: oneshot::Receiver<Outcome>,
    /// The caller's deadline and its timeout (for the message).
    deadline: tokio::time::Instant,
    timeout: Duration,
    ended: bool,
    on_end: Option<EndHook>,
}

/// Told the outcome when a [`ResponseStream`] ends (not when it is dropped before its end).
pub type EndHook = Box<dyn FnOnce(&Outcome) + Send + Sync>;

impl Broker {
    /// A broker admitting at most `max` concurrent invokes.
    pub fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max,
            in_flight: AtomicU32::new(0),
            idle: Notify::new(),
            queued: Notify::new(),
            table: Mutex::new(Table::default()),
            closed_tx: watch::Sender::new(false),
            observer: OnceLock::new(),
        })
    }

    /// Sets the observer of deliveries and ends (once; a second one is ignored). Set it before the runtime
    /// can poll, so that every delivered invoke is seen.
    pub fn observe(&self, observer: Arc<dyn InvokeObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Tells the observer that a delivered invoke ended, if it was seen delivered and not yet ended.
    fn tell_end(
        &self,
        id: &str,
        started: Option<Instant>,
        end: InvokeEnd,
        error_type: Option<&str>,
    ) {
        if let (Some(observer), Some(started)) = (self.observer.get(), started) {
            observer.ended(id, started.elapsed(), end, error_type);
        }
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
        self.admit(event, false)
    }

    /// As [`Broker::submit`], for a caller that reads a streamed answer as a stream
    /// ([`Pending::wait_streamed`]).
    pub fn submit_streaming(self: &Arc<Self>, event: Event) -> Result<Pending, Refusal> {
        self.admit(event, true)
    }

    fn admit(self: &Arc<Self>, event: Event, accepts_stream: bool) -> Result<Pending, Refusal> {
        if !self.try_acquire() {
            return Err(Refusal::new(Rejected::Full, event));
        }
        let id: Arc<str> = Arc::from(event.request_id.as_str());
        let (tx, rx) = oneshot::channel();
        {
            let mut t = self.table();
            let refused = if t.closed {
                Some(Rejected::Closed)
            } else if t.entries.contains_key(&id) {
                Some(Rejected::DuplicateId)
            } else {
                None
            };
            if let Some(reason) = refused {
                drop(t);
                self.release(1);
                return Err(Refusal::new(reason, event));
            }
            let deadline = monotonic_deadline(event.deadline_ms);
            t.entries.insert(
                id.clone(),
                Entry {
                    event: Some(event),
                    reply: Some(ReplyTo::Waiting(tx)),
                    accepts_stream,
                    answering: false,
                    deadline,
                    started: None,
                },
            );
            t.queue.push_back(id.clone());
        }
        // The poller that waited least gets it: the connection that just answered is still warm in both
        // processes' caches, and with many idle pollers (max concurrency 1,600) a first-come wake would rotate
        // invokes through every connection, each one cold (docs/PERFORMANCE.md, "Concurrency sweep").
        self.queued.notify_last();
        Ok(Pending {
            broker: self.clone(),
            id,
            rx: Some(rx),
        })
    }

    fn take_queued(&self) -> Option<Event> {
        let observer = self.observer.get();
        let mut t = self.table();
        while let Some(id) = t.queue.pop_front() {
            let Some(entry) = t.entries.get_mut(&id) else {
                continue;
            };
            if let Some(event) = entry.event.take() {
                if let Some(observer) = observer {
                    entry.started = Some(Instant::now());
                    observer.delivered(&id);
                }
                return Some(event);
            }
        }
        None
    }

    /// Waits for the next invoke for the runtime (`/next`). None when the environment is closed.
    pub async fn next(&self) -> Option<Event> {
        let mut closed = self.closed_tx.subscribe();
        loop {
            let queued = self.queued.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            if *closed.borrow_and_update() {
                return None;
            }
            if let Some(event) = self.take_queued() {
                return Some(event);
            }
            tokio::select! {
                () = &mut queued => {}
                _ = closed.wait_for(|c| *c) => return None,
            }
        }
    }

    /// Claims a request id for an answer about to be read (`/response`, `/error`), so that the body is read at
    /// most once: a second post for the same id is refused while (and after) the first is read.
    pub fn claim(&self, id: &str) -> Answer {
        let mut t = self.table();
        let expired = t.expired.contains(id);
        match t.entries.get_mut(id) {
            Some(e) if e.delivered() && e.reply.is_some() && !e.answering => {
                e.answering = true;
                Answer::Accepted
            }
            Some(e) if e.delivered() && e.reply.is_none() => Answer::TooLate,
            Some(_) => Answer::Unknown,
            None if expired => Answer::TooLate,
            None => Answer::Unknown,
        }
    }

    /// Opens the stream of a claimed invoke whose caller takes streams: the caller gets a [`ResponseStream`]
    /// and the returned sender carries its chunks (a send fails once the caller has gone). The outcome still
    /// comes through [`Broker::answer`], after the last chunk. None when the caller does not take streams or
    /// is gone: the answer is then gathered as usual.
    pub fn open_stream(&self, id: &str, content_type: &str) -> Option<mpsc::Sender<Bytes>> {
        let mut t = self.table();
        let entry = t.entries.get_mut(id)?;
        if !entry.accepts_stream || !entry.delivered() {
            return None;
        }
        let Some(ReplyTo::Waiting(waiter)) = entry.reply.take() else {
            return None;
        };
        let (chunk_tx, chunk_rx) = mpsc::channel(STREAM_CHUNKS);
        let (end_tx, end_rx) = oneshot::channel();
        let stream = Delivery::Stream {
            content_type: content_type.to_owned(),
            chunks: chunk_rx,
            end: end_rx,
        };
        match waiter.send(stream) {
            Ok(()) => {
                entry.reply = Some(ReplyTo::Streaming(end_tx));
                Some(chunk_tx)
            }
            // The caller went between the claim and now: its drop is expiring the invoke.
            Err(_) => None,
        }
    }

    /// The deadline of an invoke the broker still holds (monotonic: a wall-clock step does not move it).
    pub fn deadline(&self, id: &str) -> Option<std::time::Instant> {
        self.table().entries.get(id).map(|e| e.deadline)
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
        if !entry.delivered() {
            // The runtime cannot answer what it was never given.
            return Answer::Unknown;
        }
        let Some((key, entry)) = t.entries.remove_entry(id) else {
            return Answer::Unknown;
        };
        if entry.reply.is_none() {
            t.remember_expired(key);
        }
        drop(t);
        // The slot is free before the caller learns the outcome: a caller that submits again as soon as it
        // has its answer must find the slot it just used (else a closed loop at the limit is throttled).
        self.release(1);
        let (end, error_type) = InvokeEnd::of(&outcome);
        self.tell_end(id, entry.started, end, error_type);
        match entry.reply {
            Some(reply) => {
                // The caller may have gone (cancelled); the answer is still accepted.
                let _ = reply.send(outcome);
                Answer::Accepted
            }
            None => Answer::TooLate,
        }
    }

    /// The runtime finished an invoke whose caller already timed out: frees its slot (no outcome to deliver).
    pub fn settle_late(&self, id: &str) {
        let mut t = self.table();
        let late = matches!(t.entries.get(id), Some(e) if e.delivered() && e.reply.is_none());
        if let (true, Some((key, _))) = (late, t.entries.remove_entry(id)) {
            t.remember_expired(key);
            drop(t);
            self.release(1);
        }
    }

    /// The caller stopped waiting: its deadline passed (`timed_out`) or it went away. Returns false if the
    /// answer already came.
    fn expire(&self, id: &Arc<str>, timed_out: bool) -> bool {
        let mut t = self.table();
        let (delivered, started) = match t.entries.get_mut(id) {
            None => return false,
            Some(e) => {
                if e.reply.take().is_none() {
                    return false;
                }
                (e.delivered(), e.started.take())
            }
        };
        t.remember_expired(id.clone());
        if !delivered {
            // Never reached the runtime: drop it (and its payload) and free the slot now.
            t.entries.remove(id);
            t.queue.retain(|q| q != id);
            drop(t);
            self.release(1);
        } else {
            drop(t);
        }
        let end = if timed_out {
            InvokeEnd::Timeout
        } else {
            InvokeEnd::Cancelled
        };
        self.tell_end(id, started, end, None);
        true
    }

    /// Stops taking invokes and ends every invoke in flight with `failure`; parked `/next` calls return None.
    /// Returns how many callers were told.
    pub fn close(&self, failure: Option<&ErrorInfo>) -> usize {
        let mut t = self.table();
        t.closed = true;
        t.queue.clear();
        let entries: Vec<_> = t.entries.drain().collect();
        drop(t);
        self.closed_tx.send_replace(true);
        let mut told = 0;
        let held = u32::try_from(entries.len()).unwrap_or(u32::MAX);
        for (id, entry) in entries {
            let error_type = failure.map_or("Runtime.ExitError", |f| f.error_type.as_str());
            self.tell_end(&id, entry.started, InvokeEnd::Failure, Some(error_type));
            if let Some(reply) = entry.reply {
                let info = failure.cloned().unwrap_or_else(|| {
                    ErrorInfo::new("Runtime.ExitError", "the execution environment stopped")
                });
                if reply.send(Outcome::RuntimeFailure(info)) {
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

#[cfg(test)]
impl Broker {
    fn is_delivered(&self, id: &str) -> bool {
        self.table().entries.get(id).is_some_and(Entry::delivered)
    }
}

impl Pending {
    /// The request id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits for the outcome; after `timeout` the caller gets `Sandbox.Timedout` (the code is not stopped).
    /// If this future is dropped before it finishes, the invoke is abandoned: dropped if still queued.
    pub async fn wait(self, timeout: Duration) -> Outcome {
        match self.wait_streamed(timeout).await {
            Answered::Whole(outcome) => outcome,
            // Only a caller that submitted with `submit_streaming` is sent a stream.
            Answered::Stream(stream) => stream.gather().await,
        }
    }

    /// Waits for the answer: whole, or the stream the runtime began (for an invoke submitted with
    /// [`Broker::submit_streaming`]). The stream's end comes by the same deadline, `timeout` from now.
    pub async fn wait_streamed(mut self, timeout: Duration) -> Answered {
        let deadline = tokio::time::Instant::now() + timeout;
        let Some(rx) = self.rx.as_mut() else {
            return Answered::Whole(Outcome::RuntimeFailure(ErrorInfo::new(
                "Runtime.Unknown",
                "invoke already awaited",
            )));
        };
        let first = tokio::time::timeout_at(deadline, &mut *rx).await;
        let delivery = match first {
            Ok(Ok(delivery)) => delivery,
            Ok(Err(_)) => Delivery::Whole(Outcome::RuntimeFailure(ErrorInfo::new(
                "Runtime.Unknown",
                "the execution environment dropped the invoke",
            ))),
            Err(_) => {
                if self.broker.expire(&self.id, true) {
                    Delivery::Whole(Outcome::Timeout(ErrorInfo::timed_out(timeout)))
                } else {
                    // The answer raced the deadline and won: it is in the channel.
                    rx.try_recv().unwrap_or_else(|_| {
                        Delivery::Whole(Outcome::Timeout(ErrorInfo::timed_out(timeout)))
                    })
                }
            }
        };
        // Settled (or handed to the stream, which abandons the invoke if dropped early): nothing left for
        // Drop to abandon.
        self.rx = None;
        match delivery {
            Delivery::Whole(outcome) => Answered::Whole(outcome),
            Delivery::Stream {
                content_type,
                chunks,
                end,
            } => Answered::Stream(ResponseStream {
                broker: self.broker.clone(),
                id: self.id.clone(),
                content_type,
                chunks,
                chunks_open: true,
                end,
                deadline,
                timeout,
                ended: false,
                on_end: None,
            }),
        }
    }
}

impl std::fmt::Debug for ResponseStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStream")
            .field("id", &self.id)
            .field("content_type", &self.content_type)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl ResponseStream {
    /// The request id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Sets what is told the outcome when the stream ends.
    pub fn on_end(&mut self, hook: EndHook) {
        self.on_end = Some(hook);
    }

    /// The answer's content type, as the runtime declared it.
    pub fn content_type(&self) -> &str {
        &self.content_type
    }

    /// The next piece: chunks in the runtime's order, then one [`Piece::End`]; None after the end. Past the
    /// invoke's deadline the end is `Sandbox.Timedout` (chunks already waiting are still passed on first).
    pub async fn next(&mut self) -> Option<Piece> {
        if self.ended {
            return None;
        }
        let read = async {
            loop {
                tokio::select! {
                    biased;
                    chunk = self.chunks.recv(), if self.chunks_open => match chunk {
                        Some(bytes) => return Piece::Chunk(bytes),
                        None => self.chunks_open = false,
                    },
                    outcome = &mut self.end => {
                        return Piece::End(outcome.unwrap_or_else(|_| {
                            Outcome::RuntimeFailure(ErrorInfo::new(
                                "Runtime.Unknown",
                                "the execution environment dropped the invoke",
                            ))
                        }))
                    }
                }
            }
        };
        let piece = match tokio::time::timeout_at(self.deadline, read).await {
            Ok(piece) => piece,
            Err(_) => {
                let timed_out = Outcome::Timeout(ErrorInfo::timed_out(self.timeout));
                if self.broker.expire(&self.id, true) {
                    Piece::End(timed_out)
                } else {
                    // The end raced the deadline and won.
                    Piece::End(self.end.try_recv().unwrap_or(timed_out))
                }
            }
        };
        if let Piece::End(outcome) = &piece {
            self.ended = true;
            if let Some(hook) = self.on_end.take() {
                hook(outcome);
            }
            // Chunks sent after the end (none, but a late sender must not block) are refused from now.
            self.chunks.close();
        }
        Some(piece)
    }

    /// The whole answer, its chunks gathered into a success's payload.
    pub async fn gather(mut self) -> Outcome {
        let mut payload = bytes::BytesMut::new();
        while let Some(piece) = self.next().await {
            match piece {
                Piece::Chunk(bytes) => payload.extend_from_slice(&bytes),
                Piece::End(Outcome::Success { content_type, .. }) => {
                    return Outcome::Success {
                        payload: payload.freeze(),
                        content_type,
                    }
                }
                Piece::End(other) => return other,
            }
        }
        Outcome::RuntimeFailure(ErrorInfo::new("Runtime.Unknown", "the stream ended twice"))
    }
}

impl Drop for ResponseStream {
    fn drop(&mut self) {
        // Dropped before its end: the caller went away. Its chunks are refused from now on, which tells the
        // Runtime API to stop reading the runtime and free the slot.
        if !self.ended {
            self.chunks.close();
            self.broker.expire(&self.id, false);
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        // Still holding the receiver means the caller went away before an outcome: free what the invoke holds.
        if self.rx.is_some() {
            self.broker.expire(&self.id, false);
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
    async fn the_poller_that_waited_least_takes_the_next_invoke() {
        let b = Broker::new(4);
        let mut first = spawn_poller(&b);
        tokio::task::yield_now().await;
        let mut second = spawn_poller(&b);
        tokio::task::yield_now().await;
        let _p = b.submit(event("a")).unwrap();
        let got = tokio::select! {
            e = &mut second => ("second", e),
            e = &mut first => ("first", e),
        };
        assert_eq!(got.0, "second");
        assert_eq!(got.1.unwrap().unwrap().request_id, "a");
        // the older poller still waits, and takes the one after
        let _q = b.submit(event("b")).unwrap();
        assert_eq!(first.await.unwrap().unwrap().request_id, "b");
    }

    fn spawn_poller(b: &Arc<Broker>) -> tokio::task::JoinHandle<Option<Event>> {
        let b = b.clone();
        tokio::spawn(async move { b.next().await })
    }

    #[tokio::test]
    async fn unknown_undelivered_and_second_answers_are_400() {
        let b = Broker::new(4);
        assert_eq!(b.answer("nope", ok(b"")), Answer::Unknown);
        let _p = b.submit(event("a")).unwrap();
        // queued but not yet given to the runtime
        assert_eq!(b.answer("a", ok(b"")), Answer::Unknown);
        b.next().await.unwrap();
        assert_eq!(b.claim("a"), Answer::Accepted);
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
        assert_eq!(b.claim("a"), Answer::TooLate);
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
        while !b.is_delivered("b") {
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

    #[tokio::test]
    async fn a_cancelled_wait_drops_the_queued_invoke() {
        let b = Broker::new(1);
        let p = b.submit(event("a")).unwrap();
        let t = tokio::spawn(p.wait(Duration::from_secs(60)));
        tokio::task::yield_now().await;
        t.abort();
        let _ = t.await;
        assert_eq!(b.in_flight(), 0);
        let _q = b.submit(event("b")).unwrap();
        assert_eq!(b.next().await.unwrap().request_id, "b");
    }

    #[tokio::test(start_paused = true)]
    async fn expired_queued_events_are_not_retained() {
        let b = Broker::new(1);
        for i in 0..100 {
            let p = b.submit(event(&format!("r{i}"))).unwrap();
            assert!(matches!(
                p.wait(Duration::from_millis(10)).await,
                Outcome::Timeout(_)
            ));
        }
        let t = b.table();
        assert!(t.queue.is_empty());
        assert!(t.entries.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reused_id_gets_its_own_payload() {
        let b = Broker::new(2);
        let mut e1 = event("x");
        e1.payload = Bytes::from_static(b"old");
        let p = b.submit(e1).unwrap();
        assert!(matches!(
            p.wait(Duration::from_millis(10)).await,
            Outcome::Timeout(_)
        ));
        let mut e2 = event("x");
        e2.payload = Bytes::from_static(b"new");
        let _q = b.submit(e2).unwrap();
        assert_eq!(&b.next().await.unwrap().payload[..], b"new");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_slot_is_free_when_the_caller_gets_its_answer() {
        // A closed loop at the limit: the caller submits again the moment it has its answer, on another
        // thread than the one answering. It must never find the slot still taken.
        let b = Broker::new(1);
        let runtime = {
            let b = b.clone();
            tokio::spawn(async move {
                while let Some(e) = b.next().await {
                    b.answer(&e.request_id, ok(b"1"));
                }
            })
        };
        for i in 0..2000 {
            let p = b
                .submit(event(&format!("r{i}")))
                .unwrap_or_else(|r| panic!("invoke {i} refused: {:?}", r.reason));
            assert_eq!(p.wait(Duration::from_secs(5)).await, ok(b"1"));
        }
        b.close(None);
        runtime.await.unwrap();
    }

    /// Records what the broker tells its observer.
    #[derive(Debug, Default)]
    struct Seen(Mutex<Vec<String>>);

    impl InvokeObserver for Seen {
        fn delivered(&self, id: &Arc<str>) {
            self.0.lock().unwrap().push(format!("start {id}"));
        }
        fn ended(&self, id: &str, _ran: Duration, end: InvokeEnd, error_type: Option<&str>) {
            let t = error_type.unwrap_or("-");
            self.0
                .lock()
                .unwrap()
                .push(format!("end {id} {} {t}", end.as_str()));
        }
    }

    fn observed(max: u32) -> (Arc<Broker>, Arc<Seen>) {
        let b = Broker::new(max);
        let seen = Arc::new(Seen::default());
        b.observe(seen.clone());
        (b, seen)
    }

    #[tokio::test(start_paused = true)]
    async fn the_observer_sees_each_delivered_invoke_start_and_end_once() {
        let (b, seen) = observed(8);
        // Answered: success, then a function error.
        let p = b.submit(event("ok")).unwrap();
        b.next().await.unwrap();
        b.answer("ok", ok(b"1"));
        p.wait(Duration::from_secs(5)).await;
        let p = b.submit(event("err")).unwrap();
        b.next().await.unwrap();
        b.answer("err", Outcome::FunctionError(ErrorInfo::new("Boom", "m")));
        p.wait(Duration::from_secs(5)).await;
        // Timed out: told at the deadline; the late answer tells nothing more.
        let p = b.submit(event("slow")).unwrap();
        b.next().await.unwrap();
        assert!(matches!(
            p.wait(Duration::from_secs(1)).await,
            Outcome::Timeout(_)
        ));
        assert_eq!(b.answer("slow", ok(b"late")), Answer::TooLate);
        // The caller went away after delivery; its late answer is refused and tells nothing more.
        let p = b.submit(event("gone")).unwrap();
        b.next().await.unwrap();
        drop(p);
        assert_eq!(b.claim("gone"), Answer::TooLate);
        b.settle_late("gone");
        // Never delivered: nothing at all.
        let p = b.submit(event("queued")).unwrap();
        assert!(matches!(
            p.wait(Duration::from_secs(1)).await,
            Outcome::Timeout(_)
        ));
        // In flight when the environment stops.
        let _p = b.submit(event("cut")).unwrap();
        b.next().await.unwrap();
        b.close(Some(&ErrorInfo::new("Runtime.ExitError", "exit 1")));
        assert_eq!(
            *seen.0.lock().unwrap(),
            [
                "start ok",
                "end ok success -",
                "start err",
                "end err error Boom",
                "start slow",
                "end slow timeout -",
                "start gone",
                "end gone cancelled -",
                "start cut",
                "end cut failure Runtime.ExitError",
            ]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_start_is_seen_before_its_end_under_concurrency() {
        // Deadlines race deliveries: whichever thread ends an invoke, its start was told first.
        let (b, seen) = observed(64);
        let runtime = {
            let b = b.clone();
            tokio::spawn(async move {
                let mut n = 0u32;
                while let Some(e) = b.next().await {
                    n += 1;
                    if n % 3 != 0 {
                        b.answer(&e.request_id, ok(b"1"));
                    }
                }
            })
        };
        let callers: Vec<_> = (0..500)
            .map(|i| {
                let b = b.clone();
                tokio::spawn(async move {
                    let p = b.submit(event(&format!("r{i}"))).ok()?;
                    Some(p.wait(Duration::from_millis(1 + i % 5)).await)
                })
            })
            .collect();
        for c in callers {
            c.await.unwrap();
        }
        b.close(None);
        runtime.await.unwrap();
        let seen = seen.0.lock().unwrap();
        let mut started = HashSet::new();
        let mut ended = HashSet::new();
        for line in seen.iter() {
            let mut w = line.split(' ');
            let (what, id) = (w.next().unwrap(), w.next().unwrap().to_owned());
            if what == "start" {
                assert!(started.insert(id), "started twice: {line}");
            } else {
                assert!(started.contains(&id), "ended before its start: {line}");
                assert!(ended.insert(id), "ended twice: {line}");
            }
        }
        assert_eq!(started, ended, "every delivered invoke ended exactly once");
        assert!(!started.is_empty());
    }

    #[tokio::test]
    async fn an_answer_is_read_once() {
        let b = Broker::new(1);
        let _p = b.submit(event("a")).unwrap();
        b.next().await.unwrap();
        assert_eq!(b.claim("a"), Answer::Accepted);
        assert_eq!(
            b.claim("a"),
            Answer::Unknown,
            "a second concurrent post is refused before its body is read"
        );
        assert_eq!(b.answer("a", ok(b"1")), Answer::Accepted);
    }
}
