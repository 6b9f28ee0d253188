//! Reading a throttle (gRPC RESOURCE_EXHAUSTED from Invoke) back out of a tonic `Status`.
//!
//! The contract puts a `google.rpc.Status` in the status details whose `details` hold a `ThrottleDetails`
//! as an `Any` (the gRPC rich error model), and the reason in the `lmi-throttle-reason` metadata key. A bare
//! `ThrottleDetails` (what agents before the rich error model sent) is accepted too; the metadata is the
//! fallback for the reason.

use lmi_proto::v1::{ThrottleDetails, ThrottleReason};
use prost::Message;
use serde::Serialize;

pub const REASON_METADATA_KEY: &str = lmi_proto::wire::THROTTLE_REASON_METADATA;

/// A throttle as shown to the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Throttle {
    /// CONCURRENCY, CPU, MEMORY, DISK, NO_READY_ENVIRONMENT or UNSPECIFIED.
    pub reason: String,
    pub retry_elsewhere: bool,
    pub message: String,
}

/// The throttle carried by a RESOURCE_EXHAUSTED status (whatever parts of it are present).
pub fn from_status(status: &tonic::Status) -> Throttle {
    let details = decode_details(status.details());
    let mut reason = details
        .as_ref()
        .and_then(|d| ThrottleReason::try_from(d.reason).ok())
        .filter(|r| *r != ThrottleReason::Unspecified)
        .map(reason_name);
    if reason.is_none() {
        reason = status
            .metadata()
            .get(REASON_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .map(normalize_reason)
            .filter(|r| !r.is_empty());
    }
    let message = details
        .as_ref()
        .map(|d| d.message.clone())
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| status.message().to_string());
    Throttle {
        reason: reason.unwrap_or_else(|| "UNSPECIFIED".to_string()),
        retry_elsewhere: details.is_some_and(|d| d.retry_elsewhere),
        message,
    }
}

fn decode_details(bytes: &[u8]) -> Option<ThrottleDetails> {
    if bytes.is_empty() {
        return None;
    }
    ThrottleDetails::from_status_details(bytes).or_else(|| ThrottleDetails::decode(bytes).ok())
}

/// `THROTTLE_REASON_CONCURRENCY` → `CONCURRENCY`.
pub fn reason_name(reason: ThrottleReason) -> String {
    normalize_reason(reason.as_str_name())
}

fn normalize_reason(s: &str) -> String {
    let s = s.trim().to_ascii_uppercase();
    s.strip_prefix("THROTTLE_REASON_").unwrap_or(&s).to_string()
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use tonic::metadata::{MetadataMap, MetadataValue};
    use tonic::Code;

    /// The status the contract describes: a google.rpc.Status holding the ThrottleDetails, the reason in
    /// metadata.
    pub fn throttle_status(
        reason: ThrottleReason,
        retry_elsewhere: bool,
        message: &str,
    ) -> tonic::Status {
        let details = ThrottleDetails {
            reason: reason as i32,
            retry_elsewhere,
            message: message.to_string(),
        };
        let mut md = MetadataMap::new();
        md.insert(
            REASON_METADATA_KEY,
            MetadataValue::try_from(reason.as_str_name()).unwrap(),
        );
        tonic::Status::with_details_and_metadata(
            Code::ResourceExhausted,
            "throttled",
            details
                .to_status_details(Code::ResourceExhausted as i32, "throttled")
                .into(),
            md,
        )
    }

    #[test]
    fn rich_error_model_details() {
        let t = from_status(&throttle_status(
            ThrottleReason::Concurrency,
            true,
            "all 4 busy",
        ));
        assert_eq!(
            t,
            Throttle {
                reason: "CONCURRENCY".into(),
                retry_elsewhere: true,
                message: "all 4 busy".into()
            }
        );
    }

    #[test]
    fn bare_details_of_older_agents() {
        let inner = ThrottleDetails {
            reason: ThrottleReason::Memory as i32,
            retry_elsewhere: false,
            message: "host memory".into(),
        };
        let status = tonic::Status::with_details(
            Code::ResourceExhausted,
            "throttled",
            inner.encode_to_vec().into(),
        );
        let t = from_status(&status);
        assert_eq!(t.reason, "MEMORY");
        assert_eq!(t.message, "host memory");
    }

    #[test]
    fn metadata_only_and_nothing() {
        let mut status = tonic::Status::resource_exhausted("busy, try later");
        status
            .metadata_mut()
            .insert(REASON_METADATA_KEY, MetadataValue::from_static("cpu"));
        let t = from_status(&status);
        assert_eq!(
            (t.reason.as_str(), t.message.as_str()),
            ("CPU", "busy, try later")
        );
        assert!(!t.retry_elsewhere);

        let t = from_status(&tonic::Status::resource_exhausted("x"));
        assert_eq!(t.reason, "UNSPECIFIED");
        // Garbage details never panic.
        let t = from_status(&tonic::Status::with_details(
            Code::ResourceExhausted,
            "x",
            vec![0xff, 0xff, 0xff].into(),
        ));
        assert_eq!(t.reason, "UNSPECIFIED");
    }
}
