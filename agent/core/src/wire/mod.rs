//! Every conversion between the core's types and the gRPC contract (`lmi_proto::v1`).

pub mod environment;
pub mod report;
pub mod spec;
