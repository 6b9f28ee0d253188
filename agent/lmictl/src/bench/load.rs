//! The load generator: Invoke at a fixed concurrency (closed loop) or a fixed rate (open loop), recording
//! every measured invoke's latency in an HDR histogram and its outcome. Invokes go over gRPC (a unary call
//! each, or `InvokeStream`) or over the HTTP Invoke API (`super::http`).
//!
//! The run is a warm-up (not recorded), then the measured window; only invokes sent in the window count.
//! Callers stop sending at the window's end (or after `max_invokes`), and the run ends when the last
//! measured invoke has its answer. Everything is bounded: the window, the count, the invokes in flight.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use lmi_proto::v1::{
    invoke_stream_response, InvokeOutcome, InvokeRequest, InvokeResponse, InvokeStreamRequest,
};
use serde::Serialize;
use tokio::{task::JoinSet, time::Instant};

use super::http::{self, HttpTarget};
use crate::connect::Client;
use anyhow::Context as _;

/// How invokes are sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// `concurrency` callers, each sending its next invoke as soon as the previous one is answered.
    Closed { concurrency: u32 },
    /// `rate` invokes per second whatever the answers, at most `max_in_flight` at once.
    Open { rate: f64, max_in_flight: u32 },
}

/// How invokes travel to the agent.
#[derive(Debug, Clone)]
pub enum Transport {
    /// A unary `Invoke` per invoke (an HTTP/2 stream each).
    Unary,
    /// `InvokeStream`: one stream per connection, each invoke a message on it (closed loop only).
    Stream,
    /// The HTTP Invoke API: one HTTP/1.1 keep-alive connection per caller (closed loop), or a pool of them
    /// that grows to the invokes in flight (open loop).
    Http(Arc<HttpTarget>),
}

impl Transport {
    /// Its name in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Transport::Unary => "unary",
            Transport::Stream => "stream",
            Transport::Http(_) => "http",
        }
    }
}

/// How one invoke ended, whatever carried it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Success,
    FunctionError,
    Timeout,
    RuntimeFailure,
    /// gRPC RESOURCE_EXHAUSTED, or HTTP 429.
    Throttle,
    /// Anything else, with what it was.
    Other(String),
}

impl Answer {
    fn from_grpc(result: &Result<InvokeResponse, tonic::Status>) -> Self {
        match result {
            Ok(resp) => match resp.outcome() {
                InvokeOutcome::Success => Answer::Success,
                InvokeOutcome::FunctionError => Answer::FunctionError,
                InvokeOutcome::Timeout => Answer::Timeout,
                InvokeOutcome::RuntimeFailure => Answer::RuntimeFailure,
                InvokeOutcome::Unspecified => {
                    Answer::Other("an answer without an outcome".to_owned())
                }
            },
            Err(s) if s.code() == tonic::Code::ResourceExhausted => Answer::Throttle,
            Err(s) => Answer::Other(format!("{:?}: {}", s.code(), s.message())),
        }
    }
}

/// One load run.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub request: InvokeRequest,
    pub mode: Mode,
    pub transport: Transport,
    pub warmup: Duration,
    pub duration: Duration,
    pub max_invokes: Option<u64>,
}

/// How the measured invokes ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Outcomes {
    pub success: u64,
    pub function_error: u64,
    pub timeout: u64,
    pub runtime_failure: u64,
    /// gRPC RESOURCE_EXHAUSTED or HTTP 429 (any throttle reason).
    pub throttle: u64,
    /// Any other gRPC error or HTTP answer, or a broken connection.
    pub other: u64,
    /// Open loop only: scheduled invokes not sent because `max_in_flight` were already in flight.
    pub skipped: u64,
}

impl Outcomes {
    /// Invokes that got an answer (everything but skipped).
    pub fn answered(&self) -> u64 {
        self.success
            + self.function_error
            + self.timeout
            + self.runtime_failure
            + self.throttle
            + self.other
    }

    fn count(&mut self, answer: &Answer) {
        match answer {
            Answer::Success => self.success += 1,
            Answer::FunctionError => self.function_error += 1,
            Answer::Timeout => self.timeout += 1,
            Answer::RuntimeFailure => self.runtime_failure += 1,
            Answer::Throttle => self.throttle += 1,
            Answer::Other(_) => self.other += 1,
        }
    }
}

/// What a run measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Latency of every measured invoke, in nanoseconds.
    pub latency_ns: Histogram<u64>,
    pub outcomes: Outcomes,
    /// From the window's start to the last measured answer.
    pub elapsed: Duration,
    /// Open loop: how late invokes were sent after their scheduled time (timer granularity and a busy
    /// generator), in nanoseconds. Empty in closed loop.
    pub send_lag_ns: Histogram<u64>,
    /// The first error other than a throttle, to show what went wrong.
    pub first_error: Option<String>,
}

impl LoadResult {
    /// Answered invokes per second.
    pub fn throughput(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.outcomes.answered() as f64 / secs
        } else {
            0.0
        }
    }
}

/// A histogram of nanoseconds from 1 µs to one hour at 3 significant digits.
fn histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1_000, 3_600_000_000_000, 3)?)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Debug)]
struct Record {
    latency_ns: Histogram<u64>,
    send_lag_ns: Histogram<u64>,
    outcomes: Outcomes,
    last_answer: Option<Instant>,
    first_error: Option<String>,
}

/// State shared by the callers of one run.
#[derive(Debug)]
struct Shared {
    record: Mutex<Record>,
    /// Measured invokes sent so far (for `max_invokes`).
    sent: AtomicU64,
    measure_from: Instant,
    end: Instant,
    max_invokes: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May an invoke be sent at `now`? Ok(true): yes and it is measured; Ok(false): yes, warm-up; Err: stop.
    fn admit(&self, now: Instant) -> Result<bool, ()> {
        if now >= self.end {
            return Err(());
        }
        if now < self.measure_from {
            return Ok(false);
        }
        if self.sent.fetch_add(1, Ordering::Relaxed) >= self.max_invokes {
            return Err(());
        }
        Ok(true)
    }

    fn finish(&self, sent_at: Instant, answered_at: Instant, answer: &Answer) {
        let mut r = self.lock();
        r.latency_ns
            .saturating_record(nanos(answered_at.duration_since(sent_at)));
        r.outcomes.count(answer);
        r.last_answer = Some(r.last_answer.map_or(answered_at, |t| t.max(answered_at)));
        if let Answer::Other(e) = answer {
            if r.first_error.is_none() {
                r.first_error = Some(e.clone());
            }
        }
    }
}

async fn send(client: &mut Client, request: &InvokeRequest) -> Answer {
    Answer::from_grpc(
        &client
            .invoke(request.clone())
            .await
            .map(tonic::Response::into_inner),
    )
}

/// Idle HTTP connections of an open-loop run: an invoke takes one (or opens one) and gives it back.
#[derive(Debug, Default)]
struct HttpPool {
    idle: Mutex<Vec<http::Connection>>,
}

impl HttpPool {
    async fn invoke(&self, target: &HttpTarget) -> Answer {
        let taken = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut conn = taken;
        let answer = http::invoke(&mut conn, target).await;
        if let Some(c) = conn.filter(http::Connection::is_usable) {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        }
        answer
    }
}

/// What one invoke goes over.
#[derive(Debug, Clone)]
enum Sender {
    Grpc(Client),
    Http(Arc<HttpTarget>, Arc<HttpPool>),
}

impl Sender {
    async fn send(&mut self, request: &InvokeRequest) -> Answer {
        match self {
            Sender::Grpc(client) => send(client, request).await,
            Sender::Http(target, pool) => pool.invoke(target).await,
        }
    }
}

/// `callers` closed-loop callers over one `InvokeStream`: each answer (matched by its tag) lets its caller
/// send the next invoke. Ends when no caller may send any more and every sent invoke has its answer.
async fn stream_callers(
    mut client: Client,
    callers: usize,
    shared: &Shared,
    request: &InvokeRequest,
) -> Result<(), tonic::Status> {
    let (tx, rx) = tokio::sync::mpsc::channel(callers.max(1));
    let mut answers = client
        .invoke_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await?
        .into_inner();
    let mut sent: HashMap<u64, (Instant, bool)> = HashMap::with_capacity(callers);
    let mut next_tag = 0u64;
    let mut send_next = |sent: &mut HashMap<u64, (Instant, bool)>| {
        let now = Instant::now();
        let measured = shared.admit(now).ok()?;
        let tag = next_tag;
        next_tag += 1;
        sent.insert(tag, (now, measured));
        Some(InvokeStreamRequest {
            tag,
            invoke: Some(request.clone()),
        })
    };
    for _ in 0..callers {
        let Some(m) = send_next(&mut sent) else { break };
        if tx.send(m).await.is_err() {
            break;
        }
    }
    while !sent.is_empty() {
        let Some(answer) = answers.message().await? else {
            return Err(tonic::Status::unavailable(format!(
                "the stream ended with {} invokes unanswered",
                sent.len()
            )));
        };
        let Some((sent_at, measured)) = sent.remove(&answer.tag) else {
            return Err(tonic::Status::internal(format!(
                "an answer for tag {} that was never sent (or answered twice)",
                answer.tag
            )));
        };
        if measured {
            let result = match answer.result {
                Some(invoke_stream_response::Result::Response(r)) => Ok(r),
                Some(invoke_stream_response::Result::Rejected(r)) => {
                    Err(tonic::Status::new(tonic::Code::from(r.code), r.message))
                }
                None => Err(tonic::Status::internal("an answer without a result")),
            };
            shared.finish(sent_at, Instant::now(), &Answer::from_grpc(&result));
        }
        if let Some(m) = send_next(&mut sent) {
            if tx.send(m).await.is_err() {
                break;
            }
        }
    }
    Ok(())
}

/// Runs the plan over `clients` (invokes are spread over them). `at_measure_start` runs once, when the
/// measured window opens (to snapshot CPU counters); the result covers the window.
pub async fn run(
    clients: &[Client],
    plan: &LoadPlan,
    at_measure_start: impl FnOnce(),
) -> anyhow::Result<LoadResult> {
    anyhow::ensure!(!clients.is_empty(), "no connection to send invokes over");
    let start = Instant::now();
    let measure_from = start + plan.warmup;
    let shared = Arc::new(Shared {
        record: Mutex::new(Record {
            latency_ns: histogram()?,
            send_lag_ns: histogram()?,
            outcomes: Outcomes::default(),
            last_answer: None,
            first_error: None,
        }),
        sent: AtomicU64::new(0),
        measure_from,
        end: measure_from + plan.duration,
        max_invokes: plan.max_invokes.unwrap_or(u64::MAX),
    });
    let request = Arc::new(plan.request.clone());
    let mut tasks = JoinSet::new();
    let mut at_measure_start = Some(at_measure_start);
    match (plan.mode, &plan.transport) {
        (Mode::Closed { concurrency }, Transport::Stream) => {
            // The callers are spread over the connections, one stream each.
            let streams = clients.len().min(concurrency as usize);
            for (i, client) in clients.iter().take(streams).enumerate() {
                let callers = concurrency as usize / streams
                    + usize::from(i < concurrency as usize % streams);
                let (client, shared, request) = (client.clone(), shared.clone(), request.clone());
                tasks.spawn(async move {
                    if let Err(status) = stream_callers(client, callers, &shared, &request).await {
                        let mut r = shared.lock();
                        r.outcomes.other += 1;
                        r.first_error
                            .get_or_insert_with(|| format!("InvokeStream: {status}"));
                    }
                });
            }
            tokio::time::sleep_until(measure_from).await;
            if let Some(f) = at_measure_start.take() {
                f();
            }
        }
        (Mode::Closed { concurrency }, Transport::Http(target)) => {
            // One connection per caller, all opened before the clock starts.
            let mut conns = Vec::with_capacity(concurrency as usize);
            for _ in 0..concurrency {
                conns.push(
                    http::Connection::open(target.addr).await.with_context(|| {
                        format!("connecting to the Invoke API at {}", target.addr)
                    })?,
                );
            }
            for conn in conns {
                let (shared, target) = (shared.clone(), target.clone());
                tasks.spawn(async move {
                    let mut conn = Some(conn);
                    loop {
                        let sent_at = Instant::now();
                        let Ok(measured) = shared.admit(sent_at) else {
                            break;
                        };
                        let answer = http::invoke(&mut conn, &target).await;
                        if measured {
                            shared.finish(sent_at, Instant::now(), &answer);
                        }
                    }
                });
            }
            tokio::time::sleep_until(measure_from).await;
            if let Some(f) = at_measure_start.take() {
                f();
            }
        }
        (Mode::Closed { concurrency }, Transport::Unary) => {
            for i in 0..concurrency as usize {
                let mut client = clients[i % clients.len()].clone();
                let (shared, request) = (shared.clone(), request.clone());
                tasks.spawn(async move {
                    loop {
                        let sent_at = Instant::now();
                        let Ok(measured) = shared.admit(sent_at) else {
                            break;
                        };
                        let answer = send(&mut client, &request).await;
                        if measured {
                            shared.finish(sent_at, Instant::now(), &answer);
                        }
                    }
                });
            }
            tokio::time::sleep_until(measure_from).await;
            if let Some(f) = at_measure_start.take() {
                f();
            }
        }
        (
            Mode::Open {
                rate,
                max_in_flight,
            },
            _,
        ) => {
            let interval = Duration::from_secs_f64(1.0 / rate);
            let in_flight = Arc::new(AtomicU64::new(0));
            let pool = Arc::new(HttpPool::default());
            let mut k: u32 = 0;
            loop {
                let scheduled = start + interval.saturating_mul(k);
                k = k.saturating_add(1);
                tokio::time::sleep_until(scheduled).await;
                if scheduled >= measure_from {
                    if let Some(f) = at_measure_start.take() {
                        f();
                    }
                }
                let Ok(measured) = shared.admit(scheduled) else {
                    break;
                };
                while tasks.try_join_next().is_some() {}
                if in_flight.load(Ordering::Relaxed) >= u64::from(max_in_flight) {
                    if measured {
                        shared.lock().outcomes.skipped += 1;
                    }
                    continue;
                }
                let sent_at = Instant::now();
                if measured {
                    shared
                        .lock()
                        .send_lag_ns
                        .saturating_record(nanos(sent_at.duration_since(scheduled)));
                }
                in_flight.fetch_add(1, Ordering::Relaxed);
                let mut sender = match &plan.transport {
                    Transport::Http(target) => Sender::Http(target.clone(), pool.clone()),
                    _ => Sender::Grpc(clients[k as usize % clients.len()].clone()),
                };
                let (shared, request, in_flight) =
                    (shared.clone(), request.clone(), in_flight.clone());
                tasks.spawn(async move {
                    let answer = sender.send(&request).await;
                    if measured {
                        shared.finish(sent_at, Instant::now(), &answer);
                    }
                    in_flight.fetch_sub(1, Ordering::Relaxed);
                });
            }
            if let Some(f) = at_measure_start.take() {
                f();
            }
        }
    }
    while let Some(joined) = tasks.join_next().await {
        joined?;
    }
    let r = shared.lock();
    Ok(LoadResult {
        latency_ns: r.latency_ns.clone(),
        outcomes: r.outcomes.clone(),
        elapsed: r.last_answer.map_or(Duration::ZERO, |t| {
            t.saturating_duration_since(measure_from)
        }),
        send_lag_ns: r.send_lag_ns.clone(),
        first_error: r.first_error.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(outcome: InvokeOutcome) -> Result<InvokeResponse, tonic::Status> {
        Ok(InvokeResponse {
            outcome: outcome.into(),
            ..Default::default()
        })
    }

    #[test]
    fn every_answer_is_counted_once_under_its_outcome() {
        let mut o = Outcomes::default();
        let mut count = |r| o.count(&Answer::from_grpc(&r));
        count(ok(InvokeOutcome::Success));
        count(ok(InvokeOutcome::Success));
        count(ok(InvokeOutcome::FunctionError));
        count(ok(InvokeOutcome::Timeout));
        count(ok(InvokeOutcome::RuntimeFailure));
        count(Err(tonic::Status::resource_exhausted("throttled")));
        count(Err(tonic::Status::unavailable("gone")));
        assert_eq!(
            o,
            Outcomes {
                success: 2,
                function_error: 1,
                timeout: 1,
                runtime_failure: 1,
                throttle: 1,
                other: 1,
                skipped: 0,
            }
        );
        assert_eq!(o.answered(), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn admission_follows_the_window_and_the_count() {
        let now = Instant::now();
        let s = Shared {
            record: Mutex::new(Record {
                latency_ns: histogram().unwrap(),
                send_lag_ns: histogram().unwrap(),
                outcomes: Outcomes::default(),
                last_answer: None,
                first_error: None,
            }),
            sent: AtomicU64::new(0),
            measure_from: now + Duration::from_secs(1),
            end: now + Duration::from_secs(2),
            max_invokes: 2,
        };
        assert_eq!(s.admit(now), Ok(false), "warm-up");
        let inside = now + Duration::from_millis(1500);
        assert_eq!(s.admit(inside), Ok(true));
        assert_eq!(s.admit(inside), Ok(true));
        assert_eq!(s.admit(inside), Err(()), "max_invokes reached");
        assert_eq!(
            s.admit(now + Duration::from_secs(2)),
            Err(()),
            "window over"
        );
    }
}
