//! Protobuf encode and decode of the control API's messages.
//!
//! - `utilization_report/50`, `/100`: the report the agent streams to the scaler every period, built by the
//!   agent's own sampler and report builder over 50 and 100 environments (cgroups in a fake cgroupfs tree).
//! - `list_environments/50`: a `ListEnvironmentsResponse` with 50 fully populated environments, the largest
//!   control-API answer.
//! - `invoke_request` / `invoke_response`: the per-invoke messages with a 1 KiB payload.
//!
//! Run: `cargo bench -p lmi-benches --bench proto`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use lmi_agent_core::capacity::{Allocated, HostCapacity};
use lmi_agent_core::stats::Stats;
use lmi_agent_core::wire::report::ReportBuilder;
use lmi_benches::sampled_host;
use lmi_proto::v1 as pb;
use prost::Message;

fn timestamp(secs: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp {
        seconds: 1_760_000_000 + secs,
        nanos: 123_456_789,
    })
}

fn environment(i: usize) -> pb::Environment {
    pb::Environment {
        id: format!("3f2b8c1e-5d4a-4e7b-9c1d-{i:012}"),
        spec: Some(pb::EnvironmentSpec {
            function: Some(pb::FunctionRef {
                name: format!("function-{}", i % 7),
                version: "42".into(),
                arn: format!(
                    "arn:aws:lambda:us-east-1:123456789012:function:function-{}:42",
                    i % 7
                ),
            }),
            runtime: "python3.12".into(),
            handler: "app.handler".into(),
            code: Some(pb::Code {
                source: Some(pb::code::Source::Directory(format!(
                    "/var/lib/lmi-agent/code/{i:064}"
                ))),
                sha256: String::new(),
            }),
            memory_mib: 4096,
            memory_gib_per_vcpu: 2,
            max_concurrency: 32,
            timeout_seconds: 30,
            ephemeral_storage_mib: 512,
            environment: (0..4)
                .map(|k| (format!("SETTING_{k}"), format!("value-{k}")))
                .collect(),
        }),
        state: pb::EnvironmentState::Ready.into(),
        failure: None,
        vcpus: 2,
        max_concurrency: 32,
        in_flight: u32::try_from(i % 32).unwrap(),
        runtime_api: format!("127.0.0.1:{}", 40000 + i),
        pid: 10_000 + u32::try_from(i).unwrap(),
        cgroup: format!("/system.slice/lmi-agent.service/lmi/env-{i}"),
        created_at: timestamp(0),
        ready_at: timestamp(1),
        init_duration_ms: 180,
        ..Default::default()
    }
}

fn list_environments(c: &mut Criterion) {
    let msg = pb::ListEnvironmentsResponse {
        environments: (0..50).map(environment).collect(),
    };
    let bytes = msg.encode_to_vec();
    let mut group = c.benchmark_group("proto/list_environments");
    group.throughput(Throughput::Bytes(bytes.len() as u64));
    group.bench_function("encode/50", |b| {
        b.iter(|| std::hint::black_box(&msg).encode_to_vec());
    });
    group.bench_function("decode/50", |b| {
        b.iter(|| pb::ListEnvironmentsResponse::decode(std::hint::black_box(&bytes[..])).unwrap());
    });
    group.finish();
}

fn utilization_report(c: &mut Criterion) {
    let mut group = c.benchmark_group("proto/utilization_report");
    // 50 and 100 environments: the second is issue 16's host scale (benches/scale.py host-scale).
    for n in [50, 100] {
        let (tree, code) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (envs, mut sampler) = sampled_host(tree.path(), code.path(), n);
        let snapshot = sampler.tick(
            &envs,
            HostCapacity::new(64, 262_144, 0, 0),
            Allocated::default(),
            false,
            Instant::now(),
        );
        let msg = ReportBuilder::new("bench-host".into(), "bench-instance".into()).build(
            1,
            &snapshot,
            &Stats::default(),
        );
        assert_eq!(msg.environments.len(), n);
        let bytes = msg.encode_to_vec();
        eprintln!("utilization_report/{n}: {} bytes encoded", bytes.len());
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(format!("encode/{n}"), |b| {
            b.iter(|| std::hint::black_box(&msg).encode_to_vec());
        });
        group.bench_function(format!("decode/{n}"), |b| {
            b.iter(|| pb::UtilizationReport::decode(std::hint::black_box(&bytes[..])).unwrap());
        });
    }
    group.finish();
}

fn invoke_messages(c: &mut Criterion) {
    let payload = bytes::Bytes::from(vec![b'x'; 1024]);
    let req = pb::InvokeRequest {
        function_name: "function-1".into(),
        function_version: "42".into(),
        payload: payload.clone(),
        ..Default::default()
    };
    let resp = pb::InvokeResponse {
        request_id: "3f2b8c1e-5d4a-4e7b-9c1d-000000000001".into(),
        environment_id: "3f2b8c1e-5d4a-4e7b-9c1d-000000000002".into(),
        executed_version: "42".into(),
        outcome: pb::InvokeOutcome::Success.into(),
        payload,
        content_type: "application/json".into(),
        error: None,
    };
    let (req_bytes, resp_bytes) = (req.encode_to_vec(), resp.encode_to_vec());
    let mut group = c.benchmark_group("proto/invoke");
    group.bench_function("request/encode", |b| {
        b.iter(|| std::hint::black_box(&req).encode_to_vec());
    });
    group.bench_function("request/decode", |b| {
        b.iter(|| pb::InvokeRequest::decode(std::hint::black_box(&req_bytes[..])).unwrap());
    });
    group.bench_function("response/encode", |b| {
        b.iter(|| std::hint::black_box(&resp).encode_to_vec());
    });
    group.bench_function("response/decode", |b| {
        b.iter(|| pb::InvokeResponse::decode(std::hint::black_box(&resp_bytes[..])).unwrap());
    });
    group.finish();
}

criterion_group!(
    benches,
    utilization_report,
    list_environments,
    invoke_messages
);
criterion_main!(benches);
