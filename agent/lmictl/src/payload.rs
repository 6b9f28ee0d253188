//! Where `invoke` takes its payload from.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The payload sent when none is given (and stdin is a terminal), as the Lambda Invoke API does.
pub const DEFAULT_PAYLOAD: &[u8] = b"{}";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadSource {
    /// `--payload TEXT`.
    Inline(String),
    /// `--payload-file PATH`.
    File(PathBuf),
    /// `--payload -`, `--payload-file -`, or neither given while stdin is not a terminal.
    Stdin,
    /// Neither given and stdin is a terminal: `{}`.
    Default,
}

/// Picks the source: an explicit flag wins ("-" means stdin); with neither flag, stdin when it is not a
/// terminal (a pipe or a file), else the default `{}`.
pub fn select(
    payload: Option<&str>,
    payload_file: Option<&Path>,
    stdin_is_tty: bool,
) -> anyhow::Result<PayloadSource> {
    match (payload, payload_file) {
        (Some(_), Some(_)) => anyhow::bail!("give at most one of --payload and --payload-file"),
        (Some("-"), None) => Ok(PayloadSource::Stdin),
        (Some(p), None) => Ok(PayloadSource::Inline(p.to_string())),
        (None, Some(f)) if f == Path::new("-") => Ok(PayloadSource::Stdin),
        (None, Some(f)) => Ok(PayloadSource::File(f.to_path_buf())),
        (None, None) if stdin_is_tty => Ok(PayloadSource::Default),
        (None, None) => Ok(PayloadSource::Stdin),
    }
}

/// Reads the payload bytes from the source.
pub fn read(source: &PayloadSource, stdin: &mut dyn Read) -> anyhow::Result<Vec<u8>> {
    match source {
        PayloadSource::Inline(p) => Ok(p.clone().into_bytes()),
        PayloadSource::File(f) => {
            std::fs::read(f).with_context(|| format!("cannot read --payload-file {}", f.display()))
        }
        PayloadSource::Stdin => {
            let mut buf = Vec::new();
            stdin
                .read_to_end(&mut buf)
                .context("cannot read the payload from stdin")?;
            Ok(buf)
        }
        PayloadSource::Default => Ok(DEFAULT_PAYLOAD.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection() {
        let p = |a, b: Option<&str>, tty| select(a, b.map(Path::new), tty).unwrap();
        assert_eq!(
            p(Some("{\"a\":1}"), None, true),
            PayloadSource::Inline("{\"a\":1}".into())
        );
        assert_eq!(p(Some("-"), None, true), PayloadSource::Stdin);
        assert_eq!(p(None, Some("-"), true), PayloadSource::Stdin);
        assert_eq!(
            p(None, Some("in.json"), false),
            PayloadSource::File("in.json".into())
        );
        assert_eq!(p(None, None, false), PayloadSource::Stdin);
        assert_eq!(p(None, None, true), PayloadSource::Default);
        assert_eq!(
            p(Some("x"), None, false),
            PayloadSource::Inline("x".into()),
            "flags beat piped stdin"
        );
        assert!(select(Some("x"), Some(Path::new("y")), false).is_err());
    }

    #[test]
    fn reading() {
        let mut stdin = std::io::Cursor::new(b"from stdin".to_vec());
        assert_eq!(
            read(&PayloadSource::Stdin, &mut stdin).unwrap(),
            b"from stdin"
        );
        let mut empty = std::io::empty();
        assert_eq!(read(&PayloadSource::Default, &mut empty).unwrap(), b"{}");
        assert_eq!(
            read(&PayloadSource::Inline("[1]".into()), &mut empty).unwrap(),
            b"[1]"
        );
        let err = read(
            &PayloadSource::File("/nonexistent/p.json".into()),
            &mut empty,
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/p.json"), "{err}");
    }
}
