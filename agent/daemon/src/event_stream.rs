//! The AWS event-stream message framing (`application/vnd.amazon.eventstream`), as the Lambda API's
//! `InvokeWithResponseStream` answers: each message is a prelude (total length and headers length, both
//! big-endian u32, then the CRC32 of those 8 bytes), the headers, the payload, and the CRC32 of everything
//! before it. Only string headers (type 7: u16 length, then the bytes) are written: they are all the
//! Lambda events carry (`:event-type`, `:content-type`, `:message-type`).

use bytes::{BufMut, Bytes, BytesMut};

/// The type byte of a string header value.
const STRING: u8 = 7;
/// Prelude (8) + its CRC (4).
const PRELUDE: usize = 12;
/// The message CRC.
const TRAILER: usize = 4;

/// One message: its string headers, then its payload. A header name longer than 255 bytes or a value
/// longer than 65,535 is cut (the agent writes only its own short names and values).
pub fn message(headers: &[(&str, &str)], payload: &[u8]) -> Bytes {
    let headers_len: usize = headers
        .iter()
        .map(|(n, v)| 1 + n.len().min(255) + 1 + 2 + v.len().min(u16::MAX as usize))
        .sum();
    let total = PRELUDE + headers_len + payload.len() + TRAILER;
    let mut out = BytesMut::with_capacity(total);
    out.put_u32(u32::try_from(total).unwrap_or(u32::MAX));
    out.put_u32(u32::try_from(headers_len).unwrap_or(u32::MAX));
    let prelude_crc = crc32fast::hash(&out[..8]);
    out.put_u32(prelude_crc);
    for (name, value) in headers {
        let name = &name.as_bytes()[..name.len().min(255)];
        let value = &value.as_bytes()[..value.len().min(u16::MAX as usize)];
        out.put_u8(name.len() as u8);
        out.put_slice(name);
        out.put_u8(STRING);
        out.put_u16(value.len() as u16);
        out.put_slice(value);
    }
    out.put_slice(payload);
    let crc = crc32fast::hash(&out);
    out.put_u32(crc);
    out.freeze()
}

/// A Lambda `PayloadChunk` event carrying `chunk`.
pub fn payload_chunk(chunk: &[u8]) -> Bytes {
    message(
        &[
            (":event-type", "PayloadChunk"),
            (":content-type", "application/octet-stream"),
            (":message-type", "event"),
        ],
        chunk,
    )
}

/// A Lambda `InvokeComplete` event: `ErrorCode` and `ErrorDetails` when the invoke failed, and `LogResult`
/// (base64 of the log tail) when asked for.
pub fn invoke_complete(
    error_code: Option<&str>,
    error_details: Option<&str>,
    log_result: Option<&str>,
) -> Bytes {
    let mut body = serde_json::Map::new();
    if let Some(c) = error_code {
        body.insert("ErrorCode".into(), c.into());
    }
    if let Some(d) = error_details {
        body.insert("ErrorDetails".into(), d.into());
    }
    if let Some(l) = log_result {
        body.insert("LogResult".into(), l.into());
    }
    message(
        &[
            (":event-type", "InvokeComplete"),
            (":content-type", "application/json"),
            (":message-type", "event"),
        ],
        serde_json::Value::Object(body).to_string().as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// The public event-stream test vectors (`encoded/positive/empty_message` and `payload_no_headers`).
    #[test]
    fn known_vectors() {
        assert_eq!(
            message(&[], b"").to_vec(),
            hex("000000100000000005c248eb7d98c8ff")
        );
        let mut want = hex("0000001d00000000fd528c5a");
        want.extend_from_slice(b"{'foo':'bar'}");
        want.extend_from_slice(&hex("c3653936"));
        assert_eq!(message(&[], b"{'foo':'bar'}").to_vec(), want);
    }

    /// Reads one message back: (headers, payload), checking both CRCs and every length.
    fn decode(m: &[u8]) -> (Vec<(String, String)>, Vec<u8>) {
        let total = u32::from_be_bytes(m[0..4].try_into().unwrap()) as usize;
        let headers_len = u32::from_be_bytes(m[4..8].try_into().unwrap()) as usize;
        assert_eq!(total, m.len());
        assert_eq!(
            u32::from_be_bytes(m[8..12].try_into().unwrap()),
            crc32fast::hash(&m[..8])
        );
        assert_eq!(
            u32::from_be_bytes(m[total - 4..].try_into().unwrap()),
            crc32fast::hash(&m[..total - 4])
        );
        let mut h = &m[12..12 + headers_len];
        let mut headers = Vec::new();
        while !h.is_empty() {
            let n = h[0] as usize;
            let name = String::from_utf8(h[1..1 + n].to_vec()).unwrap();
            assert_eq!(h[1 + n], STRING);
            let len = u16::from_be_bytes([h[2 + n], h[3 + n]]) as usize;
            let value = String::from_utf8(h[4 + n..4 + n + len].to_vec()).unwrap();
            headers.push((name, value));
            h = &h[4 + n + len..];
        }
        (headers, m[12 + headers_len..total - 4].to_vec())
    }

    #[test]
    fn lambda_events_carry_their_headers_and_payload() {
        let (headers, payload) = decode(&payload_chunk(b"hello"));
        assert_eq!(
            headers,
            [
                (":event-type".to_owned(), "PayloadChunk".to_owned()),
                (":content-type".into(), "application/octet-stream".into()),
                (":message-type".into(), "event".into()),
            ]
        );
        assert_eq!(payload, b"hello");
        let (headers, payload) = decode(&invoke_complete(Some("Unhandled"), Some("boom"), None));
        assert_eq!(headers[0].1, "InvokeComplete");
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"ErrorCode": "Unhandled", "ErrorDetails": "boom"})
        );
        let (_, payload) = decode(&invoke_complete(None, None, None));
        assert_eq!(payload, b"{}");
    }

    #[test]
    fn the_crc_is_crc32_ieee() {
        assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    }
}
