//! The Runtime API's request handling on any bytes a runtime could send over its connection: HTTP/1.1
//! parsing (hyper), routing, request ids, bodies, trailers and limits, against a broker holding real invokes.
//!
//! Checked on every input: no panic, the server ends the connection once the client is done and the
//! environment stops (all time is virtual, so a request that waits for an event or a stalled body ends at
//! its deadline without slowing the fuzzer), and every invoke ends in exactly one outcome whatever the runtime
//! sent.
#![no_main]

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use lmi_runtime_api::broker::Broker;
use lmi_runtime_api::invocation::{ErrorInfo, Event, Outcome};
use lmi_runtime_api::{InitErrorAnswer, RuntimeApi, RuntimeEvents};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug)]
struct Events;

impl RuntimeEvents for Events {
    fn polled(&self) {}
    fn init_error(&self, _error: ErrorInfo) -> InitErrorAnswer {
        InitErrorAnswer::Accepted
    }
}

/// The ids of the invokes the broker holds: short, so that the fuzzer finds them (see the seeds).
const IDS: [&str; 3] = ["a", "b", "c"];
const MAX_CONCURRENCY: u32 = 4;

fuzz_target!(|data: &[u8]| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .expect("a tokio runtime");
    rt.block_on(async {
        let broker = Broker::new(MAX_CONCURRENCY);
        let waits: Vec<_> = IDS
            .iter()
            .map(|id| {
                let pending = broker
                    .submit(Event::new(
                        (*id).to_owned(),
                        Bytes::from_static(b"{\"k\":1}"),
                        Duration::from_secs(3),
                        "arn:aws:lambda:us-east-1:000000000000:function:f:$LATEST".to_owned(),
                        None,
                        None,
                    ))
                    .expect("room for every invoke");
                tokio::spawn(pending.wait(Duration::from_secs(3)))
            })
            .collect();
        let api = RuntimeApi::new(broker.clone(), Arc::new(Events));
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let served = tokio::spawn(api.serve_connection(server));
        let input = data.to_vec();
        // Past every deadline the environment stops, as it would: a `/next` still waiting is answered then.
        let closer = {
            let broker = broker.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(10)).await;
                broker.close(None);
            })
        };
        let talk = async move {
            // Written from a task of its own: the server answers while the client still writes.
            let (mut rd, mut wr) = tokio::io::split(&mut client);
            let write = async {
                let _ = wr.write_all(&input).await;
                // Held open past the invokes' deadlines (3 s) and the body grace (1 s), so that a body
                // the input leaves incomplete stalls, as a slow runtime's would, instead of ending in EOF.
                tokio::time::sleep(Duration::from_secs(5)).await;
                let _ = wr.shutdown().await;
            };
            let mut answers = Vec::new();
            let read = rd.read_to_end(&mut answers);
            let _ = tokio::join!(write, read);
        };
        // A long virtual bound: a server that never ends the connection is a finding.
        tokio::time::timeout(Duration::from_secs(3600), talk)
            .await
            .expect("the server ended the connection");
        served.await.expect("the connection task did not panic");
        closer.abort();
        // Once the environment has stopped no slot is held: a slot taken and never given back is a leak.
        broker.close(None);
        assert_eq!(broker.in_flight(), 0, "a slot leaked");
        for w in waits {
            // Each caller gets exactly one outcome: an answer the runtime gave, or its timeout.
            match w.await.expect("the waiting caller did not panic") {
                Outcome::Success { .. } | Outcome::FunctionError(_) | Outcome::Timeout(_) => {}
                other => panic!("unexpected outcome {other:?}"),
            }
        }
    });
});
