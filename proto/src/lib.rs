//! The gRPC contract of lmi-agent: generated types, client and server for package `lmi.agent.v1`.

/// Package `lmi.agent.v1`.
pub mod v1 {
    #![allow(missing_debug_implementations, clippy::all, rust_2018_idioms)]
    tonic::include_proto!("lmi.agent.v1");
}

/// The encoded `FileDescriptorSet` of every `.proto` in this crate, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lmi_descriptor");
