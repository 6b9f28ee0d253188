//! The gRPC contract of lmi-agent: generated types, client and server for package `lmi.agent.v1`.

/// Package `lmi.agent.v1`.
pub mod v1 {
    #![allow(missing_debug_implementations, clippy::all, rust_2018_idioms)]
    tonic::include_proto!("lmi.agent.v1");
}

/// `google.rpc.Status`, the rich error model's message (only `Status`: its details are `prost_types::Any`).
pub mod rpc {
    #![allow(missing_debug_implementations, clippy::all, rust_2018_idioms)]
    tonic::include_proto!("google.rpc");
}

/// The `type_url` of a [`v1::ThrottleDetails`] packed in an `Any`.
pub const THROTTLE_DETAILS_TYPE_URL: &str = "type.googleapis.com/lmi.agent.v1.ThrottleDetails";

impl v1::ThrottleDetails {
    /// The bytes of a `grpc-status-details-bin` trailer: a `google.rpc.Status` of `code` and `message`
    /// whose one detail is this message.
    pub fn to_status_details(&self, code: i32, message: &str) -> Vec<u8> {
        use prost::Message as _;
        rpc::Status {
            code,
            message: message.to_owned(),
            details: vec![prost_types::Any {
                type_url: THROTTLE_DETAILS_TYPE_URL.to_owned(),
                value: self.encode_to_vec(),
            }],
        }
        .encode_to_vec()
    }

    /// The throttle details in a status's details bytes (a `google.rpc.Status` holding one), if any.
    pub fn from_status_details(bytes: &[u8]) -> Option<Self> {
        use prost::Message as _;
        let status = rpc::Status::decode(bytes).ok()?;
        let any = status.details.iter().find(|a| {
            a.type_url == THROTTLE_DETAILS_TYPE_URL
                || a.type_url.rsplit('/').next() == Some("lmi.agent.v1.ThrottleDetails")
        })?;
        Self::decode(any.value.as_slice()).ok()
    }
}

/// The encoded `FileDescriptorSet` of every `.proto` in this crate, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("lmi_descriptor");

pub mod auth;
pub mod connect;

/// Wire constants shared by the agent and its clients.
pub mod wire {
    /// Largest gRPC message the agent sends or accepts (a 6 MB payload and the rest of its message fit).
    pub const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;
    /// Response metadata key naming the bottleneck of a throttled invoke (`RESOURCE_EXHAUSTED`).
    pub const THROTTLE_REASON_METADATA: &str = "lmi-throttle-reason";
}
