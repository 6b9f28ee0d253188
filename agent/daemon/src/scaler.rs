//! The agent's side of `lmi.agent.v1.Scaler/Report`: dial the configured scaler, send a utilization report
//! every period, obey its directives, and reconnect after any failure.
//!
//! Invokes never wait for the scaler: this runs on its own task and reads only the sampler's latest
//! snapshot and the lock-free counters. Nothing queues while the scaler is slow or away: at most one report
//! waits in the outgoing stream, a tick that finds it still waiting is skipped, and the next report carries
//! the counters of the skipped period (deltas are taken when a report is built). Sequence numbers increase
//! by one per report for the life of the agent process, across reconnects.

use std::{sync::Arc, time::Duration};

use lmi_proto::v1::{self as pb, scaler_client::ScalerClient};
use tokio_stream::wrappers::ReceiverStream;

use lmi_agent_core::agent::Agent;
use lmi_agent_core::config::ScalerConfig;
use lmi_agent_core::wire::report::ReportBuilder;

/// Longest and shortest report interval a directive may set.
const INTERVAL_RANGE_MS: std::ops::RangeInclusive<u32> = 100..=60_000;

/// Reconnect delays: exponential from `initial` to `max`, each drawn uniformly from [0, delay] ("full
/// jitter") so that a fleet of agents does not reconnect in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self {
            initial,
            max,
            next: initial,
        }
    }

    /// The delay before the next attempt.
    pub fn delay(&mut self) -> Duration {
        let cap = self.next;
        self.next = (self.next * 2).min(self.max);
        let random = uuid::Uuid::new_v4().as_u128();
        let cap_ns = cap.as_nanos().max(1);
        Duration::from_nanos(u64::try_from(random % cap_ns).unwrap_or(0))
    }

    /// After a successful connection.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Runs forever (spawn it). Returns only if the endpoint is not a valid URI.
pub async fn run(agent: Arc<Agent>, cfg: ScalerConfig) {
    let Some(endpoint) = cfg.endpoint.clone() else {
        return;
    };
    let endpoint = match tonic::transport::Endpoint::from_shared(endpoint.clone()) {
        Ok(e) => e.connect_timeout(Duration::from_secs(5)).tcp_nodelay(true),
        Err(e) => {
            tracing::error!(%endpoint, error = %e, "scaler endpoint is not a valid URI; not reporting");
            return;
        }
    };
    let mut builder = ReportBuilder::new(
        lmi_agent_core::host::hostname(),
        agent.instance_id().to_owned(),
    );
    let mut sequence = 0u64;
    let mut interval = Duration::from_millis(cfg.report_interval_ms);
    let mut backoff = Backoff::new(
        Duration::from_millis(cfg.backoff_initial_ms),
        Duration::from_millis(cfg.backoff_max_ms),
    );
    loop {
        match session(
            &agent,
            &endpoint,
            &mut builder,
            &mut sequence,
            &mut interval,
            &mut backoff,
        )
        .await
        {
            Ok(()) => tracing::info!("scaler closed the report stream; reconnecting"),
            Err(e) => {
                tracing::warn!(error = %e, "scaler unreachable or stream failed; reconnecting")
            }
        }
        tokio::time::sleep(backoff.delay()).await;
    }
}

async fn session(
    agent: &Arc<Agent>,
    endpoint: &tonic::transport::Endpoint,
    builder: &mut ReportBuilder,
    sequence: &mut u64,
    interval: &mut Duration,
    backoff: &mut Backoff,
) -> Result<(), tonic::Status> {
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut client = ScalerClient::new(channel);
    // One report may wait to be sent; more would be a queue.
    let (tx, rx) = tokio::sync::mpsc::channel::<pb::UtilizationReport>(1);
    let mut directives = client.report(ReceiverStream::new(rx)).await?.into_inner();
    backoff.reset();
    tracing::info!(endpoint = %endpoint.uri(), "reporting to the scaler");
    let mut ticks = tokio::time::interval(*interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                match tx.try_reserve() {
                    Ok(permit) => {
                        *sequence += 1;
                        let snap = agent.utilization().borrow().clone();
                        permit.send(builder.build(*sequence, &snap, agent.stats()));
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Full(())) => {
                        tracing::debug!("previous report not sent yet; skipping this tick");
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(())) => return Ok(()),
                }
            }
            msg = directives.message() => match msg? {
                None => return Ok(()),
                Some(d) => match d.directive {
                    Some(pb::scaler_directive::Directive::Acknowledge(a)) => {
                        tracing::trace!(sequence = a.sequence, "scaler acknowledged");
                    }
                    Some(pb::scaler_directive::Directive::SetReportInterval(s)) => {
                        if INTERVAL_RANGE_MS.contains(&s.interval_ms) {
                            *interval = Duration::from_millis(u64::from(s.interval_ms));
                            ticks = tokio::time::interval(*interval);
                            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                            tracing::info!(interval_ms = s.interval_ms, "scaler changed the report interval");
                        } else {
                            tracing::warn!(interval_ms = s.interval_ms, "ignoring a report interval outside 100..60000 ms");
                        }
                    }
                    Some(pb::scaler_directive::Directive::DrainHost(d)) => {
                        let agent = agent.clone();
                        tokio::spawn(async move { agent.drain_host(&d.reason).await });
                    }
                    None => tracing::warn!("empty directive from the scaler"),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_below_it() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let caps = [100u64, 200, 400, 800, 800, 800];
        for cap in caps {
            let d = b.delay();
            assert!(d <= Duration::from_millis(cap), "{d:?} > {cap} ms");
        }
        b.reset();
        assert!(b.delay() <= Duration::from_millis(100));
    }
}
