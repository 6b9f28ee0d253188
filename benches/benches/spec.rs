//! Spec validation (`lmi_agent_core::spec::validate`) of a typical spec, once per CreateEnvironment.
//!
//! Run: `cargo bench -p lmi-benches --bench spec`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{criterion_group, criterion_main, Criterion};
use lmi_agent_core::catalog::Catalog;
use lmi_agent_core::spec::SpecDefaults;
use lmi_proto::v1 as pb;

fn validate(c: &mut Criterion) {
    let code = tempfile::tempdir().unwrap();
    let catalog = Catalog::load(None).unwrap();
    let defaults = SpecDefaults {
        region: "us-east-1".into(),
        account_id: "123456789012".into(),
    };
    let spec = pb::EnvironmentSpec {
        function: Some(pb::FunctionRef {
            name: "orders-api".into(),
            version: "42".into(),
            arn: String::new(),
        }),
        runtime: "provided.al2023".into(),
        handler: "bootstrap".into(),
        code: Some(pb::Code {
            source: Some(pb::code::Source::Directory(
                code.path().display().to_string(),
            )),
            sha256: String::new(),
        }),
        memory_mib: 4096,
        memory_gib_per_vcpu: 2,
        max_concurrency: 32,
        timeout_seconds: 30,
        ephemeral_storage_mib: 1024,
        environment: (0..8)
            .map(|i| (format!("SETTING_{i}"), format!("value-{i}")))
            .collect(),
    };
    let mut bad = spec.clone();
    bad.memory_mib = 3000;

    let mut group = c.benchmark_group("spec/validate");
    group.bench_function("valid", |b| {
        b.iter(|| {
            lmi_agent_core::wire::spec::validate(std::hint::black_box(&spec), &catalog, &defaults)
                .unwrap()
        });
    });
    group.bench_function("invalid_memory", |b| {
        b.iter(|| {
            lmi_agent_core::wire::spec::validate(std::hint::black_box(&bad), &catalog, &defaults)
                .unwrap_err()
        });
    });
    group.finish();
}

criterion_group!(benches, validate);
criterion_main!(benches);
