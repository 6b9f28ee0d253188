//! Spec validation on any `EnvironmentSpec` the control API could receive: never a panic, and whatever is
//! accepted obeys LMI's sizing rules.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use lmi_agent_core::catalog::Catalog;
use lmi_agent_core::spec::{self, SpecDefaults};
use lmi_proto::v1 as pb;
use prost::Message;

fn catalog() -> &'static Catalog {
    static CATALOG: OnceLock<Catalog> = OnceLock::new();
    CATALOG.get_or_init(|| Catalog::load(None).expect("the built-in catalog parses"))
}

fuzz_target!(|data: &[u8]| {
    let Ok(wire) = pb::EnvironmentSpec::decode(data) else {
        return;
    };
    let defaults = SpecDefaults {
        region: "us-east-1".into(),
        account_id: "123456789012".into(),
    };
    let Ok(valid) = lmi_agent_core::wire::spec::validate(&wire, catalog(), &defaults) else {
        return;
    };
    let gib = u64::from(valid.memory_mib) / 1024;
    let ratio = u64::from(valid.memory_gib_per_vcpu);
    assert_eq!(u64::from(valid.memory_mib) % 1024, 0, "{valid:?}");
    assert!([2, 4, 8].contains(&ratio), "{valid:?}");
    assert!((2..=32).contains(&gib), "{valid:?}");
    assert_eq!(gib % ratio, 0, "{valid:?}");
    assert_eq!(u64::from(valid.vcpus), gib / ratio, "{valid:?}");
    assert!((1..=1600).contains(&valid.max_concurrency), "{valid:?}");
    assert!((512..=10240).contains(&valid.ephemeral_storage_mib), "{valid:?}");
    // What the agent shows back validates again to the same spec.
    let again = lmi_agent_core::wire::spec::validate(&lmi_agent_core::wire::spec::to_proto(&valid), catalog(), &defaults).expect("round trip");
    assert_eq!(again.memory_mib, valid.memory_mib);
    assert_eq!(again.max_concurrency, valid.max_concurrency);
});
