//! Authentication of the control API's TCP listener: a bearer token.
//!
//! The Unix socket is authenticated by its mode (0600, root's). A TCP listener has no such check, so one that
//! any other machine (or, without network isolation, any function: they share the host's loopback) may reach
//! needs a token: `listen_tcp_token_file` names a file holding it (config checks when it is required). Every
//! RPC of `lmi.agent.v1.Agent` and of server reflection on that listener then needs the metadata
//! `authorization: Bearer <token>`; a call without it, or with another token, ends with `UNAUTHENTICATED`
//! before the service sees it. gRPC health stays open (a load balancer's probe learns only "serving").
//!
//! The check compares SHA-256 digests of what was sent and of what is expected, in constant time: neither
//! the token's length nor how much of a guess matched shows in the time taken. The token is not encrypted on
//! the wire (the listener speaks h2c): use it on a trusted network, or behind a TLS proxy.

use std::{
    io::Read,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use sha2::{Digest, Sha256};
use tonic::{
    metadata::{Ascii, MetadataValue},
    service::Interceptor,
    Request, Status,
};

/// The metadata key that carries the token.
pub const AUTHORIZATION: &str = "authorization";
/// Shortest token accepted (bytes): 32 random characters are far beyond guessing.
pub const MIN_TOKEN_BYTES: usize = 32;
/// Longest token file read.
const MAX_TOKEN_FILE_BYTES: u64 = 4096;

/// Why a token file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("token file {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

/// Reads a token file: a regular file of the calling user, readable by nobody else (mode 0600 or 0400), holding
/// one token of at least [`MIN_TOKEN_BYTES`] visible ASCII characters (a trailing newline is ignored).
pub fn read_token(path: &Path) -> Result<String, TokenError> {
    let read = |source| TokenError::Read {
        path: path.to_owned(),
        source,
    };
    let invalid = |reason: String| TokenError::Invalid {
        path: path.to_owned(),
        reason,
    };
    let file = std::fs::File::open(path).map_err(read)?;
    let meta = file.metadata().map_err(read)?;
    if !meta.is_file() {
        return Err(invalid("is not a regular file".to_owned()));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(invalid(format!(
            "mode {mode:04o} lets other users read or change it: make it 0600"
        )));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(invalid(format!(
            "is owned by uid {}, not by uid {me} which reads it",
            meta.uid()
        )));
    }
    let mut text = String::new();
    file.take(MAX_TOKEN_FILE_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(read)?;
    if text.len() as u64 > MAX_TOKEN_FILE_BYTES {
        return Err(invalid(format!(
            "is longer than {MAX_TOKEN_FILE_BYTES} bytes"
        )));
    }
    let token = text.trim_end_matches(['\n', '\r']);
    if let Some(c) = token.chars().find(|c| !c.is_ascii_graphic()) {
        return Err(invalid(format!(
            "holds {c:?}: a token is one line of visible ASCII characters, without spaces"
        )));
    }
    if token.len() < MIN_TOKEN_BYTES {
        return Err(invalid(format!(
            "the token has {} characters, fewer than {MIN_TOKEN_BYTES} (e.g. `openssl rand -hex 32`)",
            token.len()
        )));
    }
    Ok(token.to_owned())
}

/// The `authorization` value that carries `token`.
pub fn bearer_value(token: &str) -> Result<MetadataValue<Ascii>, Status> {
    format!("Bearer {token}")
        .parse()
        .map_err(|_| Status::invalid_argument("the token is not a valid metadata value"))
}

/// The server's check: lets every call through ([`TokenCheck::open`]) or only those that carry the token.
#[derive(Clone)]
pub struct TokenCheck {
    expected: Option<Arc<[u8; 32]>>,
}

impl std::fmt::Debug for TokenCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.expected.is_some() {
            "TokenCheck(bearer)"
        } else {
            "TokenCheck(open)"
        })
    }
}

impl TokenCheck {
    /// No check (the Unix socket, whose mode is the check).
    pub fn open() -> Self {
        Self { expected: None }
    }

    /// Calls must carry `authorization: Bearer <token>`.
    pub fn bearer(token: &str) -> Self {
        Self {
            expected: Some(Arc::new(digest(format!("Bearer {token}").as_bytes()))),
        }
    }

    /// True when calls need the token.
    pub fn required(&self) -> bool {
        self.expected.is_some()
    }

    /// Whether a call carrying `presented` (the raw `authorization` value, None if absent) may proceed.
    pub fn admits(&self, presented: Option<&[u8]>) -> bool {
        let Some(expected) = &self.expected else {
            return true;
        };
        // A missing header is compared like a wrong one: the same work either way.
        let got = digest(presented.unwrap_or_default());
        let diff = got
            .iter()
            .zip(expected.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }
}

impl Interceptor for TokenCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let presented = request
            .metadata()
            .get(AUTHORIZATION)
            .map(MetadataValue::as_encoded_bytes);
        if self.admits(presented) {
            Ok(request)
        } else {
            tracing::debug!("control API call without a valid bearer token refused");
            Err(Status::unauthenticated(
                "this listener needs `authorization: Bearer <token>` with the token of listen_tcp_token_file",
            ))
        }
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// The client's side: adds `authorization: Bearer <token>` to every call (nothing without a token).
#[derive(Clone, Default)]
pub struct AddBearer {
    value: Option<MetadataValue<Ascii>>,
}

impl std::fmt::Debug for AddBearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.value.is_some() {
            "AddBearer(<token>)"
        } else {
            "AddBearer(none)"
        })
    }
}

impl AddBearer {
    /// Adds `token` when given.
    pub fn new(token: Option<&str>) -> Result<Self, Status> {
        Ok(Self {
            value: token.map(bearer_value).transpose()?,
        })
    }
}

impl Interceptor for AddBearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.value {
            request.metadata_mut().insert(AUTHORIZATION, v.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn file(text: &str, mode: u32) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        std::fs::set_permissions(f.path(), std::fs::Permissions::from_mode(mode)).unwrap();
        f
    }

    #[test]
    fn a_good_file_is_read_without_its_newline() {
        assert_eq!(
            read_token(file(&format!("{TOKEN}\n"), 0o600).path()).unwrap(),
            TOKEN
        );
        assert_eq!(read_token(file(TOKEN, 0o400).path()).unwrap(), TOKEN);
    }

    #[test]
    fn bad_files_are_refused_with_the_reason() {
        for (text, mode, why) in [
            (TOKEN, 0o640, "mode 0640"),
            (TOKEN, 0o604, "mode 0604"),
            ("short\n", 0o600, "fewer than 32"),
            ("", 0o600, "fewer than 32"),
            ("0123456789abcdef 0123456789abcdef", 0o600, "visible ASCII"),
            (
                "0123456789abcdef0123456789abcdef\nsecond",
                0o600,
                "visible ASCII",
            ),
        ] {
            let e = read_token(file(text, mode).path()).unwrap_err().to_string();
            assert!(e.contains(why), "{text:?} {mode:o}: {e}");
            assert!(!e.contains(TOKEN), "the error shows the token: {e}");
        }
        let long = "a".repeat(5000);
        let e = read_token(file(&long, 0o600).path()).unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let e = read_token(dir.path()).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        let e = read_token(&dir.path().join("none")).unwrap_err();
        assert!(matches!(e, TokenError::Read { .. }), "{e}");
    }

    #[test]
    fn a_file_of_another_user_is_refused() {
        if lmi_testkit::needs_root("changing a file's owner") {
            return;
        }
        let f = file(TOKEN, 0o600);
        std::os::unix::fs::chown(f.path(), Some(65_534), None).unwrap();
        let e = read_token(f.path()).unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
    }

    #[test]
    fn only_the_exact_token_is_admitted() {
        let check = TokenCheck::bearer(TOKEN);
        assert!(check.required());
        assert!(check.admits(Some(format!("Bearer {TOKEN}").as_bytes())));
        for bad in [
            String::new(),
            TOKEN.to_owned(),
            format!("Bearer {TOKEN}x"),
            format!("Bearer {}", &TOKEN[..31]),
            format!("bearer  {TOKEN}"),
            format!("Basic {TOKEN}"),
        ] {
            assert!(!check.admits(Some(bad.as_bytes())), "{bad:?}");
        }
        assert!(!check.admits(None));
        let open = TokenCheck::open();
        assert!(!open.required() && open.admits(None));
    }

    #[test]
    fn the_interceptors_agree() {
        let mut add = AddBearer::new(Some(TOKEN)).unwrap();
        let mut check = TokenCheck::bearer(TOKEN);
        let sent = add.call(Request::new(())).unwrap();
        assert!(check.call(sent).is_ok());
        let bare = AddBearer::new(None)
            .unwrap()
            .call(Request::new(()))
            .unwrap();
        let refused = check.call(bare).unwrap_err();
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(!refused.message().contains(TOKEN));
        let mut other = AddBearer::new(Some(&"z".repeat(32))).unwrap();
        let wrong = other.call(Request::new(())).unwrap();
        assert!(check.call(wrong).is_err());
        assert!(!format!("{add:?}{check:?}").contains(TOKEN));
    }
}
