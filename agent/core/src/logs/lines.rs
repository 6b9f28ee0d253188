//! Cutting a byte stream into lines of bounded length.
//!
//! Runtimes write whatever they like: a line may never end, or be binary. [`LineSplitter`] keeps at most
//! `max` bytes of an unfinished line; a longer line is handed on in pieces of at most `max` bytes (cut on a
//! UTF-8 character boundary when there is one near the end), each marked as split except the last. So a
//! reader's memory is bounded by `max` whatever comes in.

/// Splits a byte stream on `\n`. A trailing `\r` of a line is removed; empty lines are skipped.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    /// A splitter keeping lines of at most `max` bytes (at least 4, so a piece can hold any UTF-8 character).
    pub fn new(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            max: max.max(4),
        }
    }

    /// Bytes of an unfinished line held (at most `max`).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Feeds `data`. `emit(line, split)` gets every complete line (without its `\n` and trailing `\r`) with
    /// `split == false`, and every full piece of an overlong line with `split == true`.
    pub fn push(&mut self, mut data: &[u8], emit: &mut impl FnMut(&[u8], bool)) {
        while let Some(i) = data.iter().position(|&b| b == b'\n') {
            let (line, rest) = (&data[..i], &data[i + 1..]);
            if self.buf.is_empty() && line.len() <= self.max {
                emit_line(line, emit);
            } else {
                self.append(line, emit);
                let line = std::mem::take(&mut self.buf);
                emit_line(&line, emit);
                self.buf = line;
                self.buf.clear();
            }
            data = rest;
        }
        self.append(data, emit);
    }

    /// Hands on what is left of an unfinished line (end of stream).
    pub fn finish(&mut self, emit: &mut impl FnMut(&[u8], bool)) {
        let line = std::mem::take(&mut self.buf);
        emit_line(&line, emit);
    }

    /// Appends to the unfinished line, emitting pieces while it would grow past `max`.
    fn append(&mut self, mut data: &[u8], emit: &mut impl FnMut(&[u8], bool)) {
        while self.buf.len() + data.len() > self.max {
            let take = self.max - self.buf.len();
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            let cut = utf8_cut(&self.buf);
            emit(&self.buf[..cut], true);
            self.buf.drain(..cut);
        }
        self.buf.extend_from_slice(data);
    }
}

fn emit_line(line: &[u8], emit: &mut impl FnMut(&[u8], bool)) {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if !line.is_empty() {
        emit(line, false);
    }
}

/// The length of the longest prefix of `buf` that does not end inside a UTF-8 sequence (all of `buf` when
/// that would be empty or when `buf` is not UTF-8 near its end anyway).
fn utf8_cut(buf: &[u8]) -> usize {
    let len = buf.len();
    // Start of the last character: at most 3 continuation bytes back.
    let mut start = len;
    for back in 1..=4.min(len) {
        let b = buf[len - back];
        if b & 0xC0 != 0x80 {
            start = len - back;
            break;
        }
    }
    if start == len {
        return len;
    }
    let lead = buf[start];
    let need = match lead {
        0x00..=0x7F => 1,
        0xC0..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF7 => 4,
        _ => 1,
    };
    if len - start < need && start > 0 {
        start
    } else {
        len
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_all(max: usize, chunks: &[&[u8]]) -> Vec<(Vec<u8>, bool)> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        let mut emit = |l: &[u8], split: bool| out.push((l.to_vec(), split));
        for c in chunks {
            s.push(c, &mut emit);
            assert!(s.pending() <= max);
        }
        s.finish(&mut emit);
        out
    }

    fn texts(v: &[(Vec<u8>, bool)]) -> Vec<(String, bool)> {
        v.iter()
            .map(|(l, s)| (String::from_utf8_lossy(l).into_owned(), *s))
            .collect()
    }

    #[test]
    fn lines_across_chunks_crlf_and_empty_lines() {
        let out = split_all(64, &[b"ab", b"c\r\n\n\nde", b"f\ng", b"h"]);
        assert_eq!(
            texts(&out),
            vec![
                ("abc".into(), false),
                ("def".into(), false),
                ("gh".into(), false)
            ]
        );
    }

    #[test]
    fn long_lines_are_split_into_pieces_of_at_most_max() {
        let line = vec![b'x'; 25];
        let mut input = line.clone();
        input.push(b'\n');
        input.extend_from_slice(b"short\n");
        let out = split_all(10, &[&input]);
        assert_eq!(
            texts(&out),
            vec![
                ("x".repeat(10), true),
                ("x".repeat(10), true),
                ("x".repeat(5), false),
                ("short".into(), false)
            ]
        );
        // Fed byte by byte, the same pieces come out.
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(split_all(10, &bytes), out);
    }

    #[test]
    fn pieces_are_cut_on_character_boundaries() {
        // "é" is 2 bytes: 9 x's and an é do not fit in 10 bytes, so the first piece ends before the é.
        let out = split_all(10, &["xxxxxxxxxé€yy\n".as_bytes()]);
        let t = texts(&out);
        assert_eq!(t[0], ("x".repeat(9), true));
        assert!(t.iter().all(|(s, _)| !s.contains('\u{FFFD}')), "{t:?}");
        let joined: String = t.iter().map(|(s, _)| s.as_str()).collect();
        assert_eq!(joined, "xxxxxxxxxé€yy");
    }

    #[test]
    fn binary_garbage_never_grows_the_buffer() {
        let garbage: Vec<u8> = (0..100_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .filter(|b| *b != b'\n')
            .collect();
        let out = split_all(256, &[&garbage, &garbage]);
        assert!(out.iter().all(|(l, _)| l.len() <= 256));
        let total: usize = out.iter().map(|(l, _)| l.len()).sum();
        assert!(total >= garbage.len() * 2 - 256, "{total}");
    }

    #[test]
    fn utf8_cut_rules() {
        assert_eq!(utf8_cut(b"abc"), 3);
        assert_eq!(utf8_cut("aé".as_bytes()), 3);
        assert_eq!(utf8_cut(&"aé".as_bytes()[..2]), 1);
        assert_eq!(utf8_cut(&"a€".as_bytes()[..3]), 1);
        assert_eq!(utf8_cut(&[0xE2, 0x82]), 2, "nothing before: keep all");
        assert_eq!(utf8_cut(&[0x80, 0x80, 0x80, 0x80, 0x80]), 5);
    }
}
