//! Where `invoke` takes its payload from.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// The payload sent when none is given, as the Lambda Invoke API does.
pub const DEFAULT_PAYLOAD: &[u8] = b"{}";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadSource {
    /// `--payload TEXT`.
    Inline(String),
    /// `--payload-file PATH`.
    File(PathBuf),
    /// `--payload -` or `--payload-file -`: stdin is read only when asked, so `lmictl invoke` inside a
    /// `while read` loop does not swallow the loop's input.
    Stdin,
    /// Neither given: `{}`.
    Default,
}

/// Picks the source: an explicit flag ("-" means stdin), else the default `{}`.
pub fn select(payload: Option<&str>, payload_file: Option<&Path>) -> anyhow::Result<PayloadSource> {
    match (payload, payload_file) {
        (Some(_), Some(_)) => anyhow::bail!("give at most one of --payload and --payload-file"),
        (Some("-"), None) => Ok(PayloadSource::Stdin),
        (Some(p), None) => Ok(PayloadSource::Inline(p.to_string())),
        (None, Some(f)) if f == Path::new("-") => Ok(PayloadSource::Stdin),
        (None, Some(f)) => Ok(PayloadSource::File(f.to_path_buf())),
        (None, None) => Ok(PayloadSource::Default),
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
        let p = |a, b: Option<&str>| select(a, b.map(Path::new)).unwrap();
        assert_eq!(
            p(Some("{\"a\":1}"), None),
            PayloadSource::Inline("{\"a\":1}".into())
        );
        assert_eq!(p(Some("-"), None), PayloadSource::Stdin);
        assert_eq!(p(None, Some("-")), PayloadSource::Stdin);
        assert_eq!(
            p(None, Some("in.json")),
            PayloadSource::File("in.json".into())
        );
        assert_eq!(
            p(None, None),
            PayloadSource::Default,
            "stdin only when asked"
        );
        assert!(select(Some("x"), Some(Path::new("y"))).is_err());
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
