//! The `:authority` that standard gRPC clients send on a Unix socket, made acceptable to the HTTP/2 server.
//!
//! On a Unix socket there is no host name, so clients send what they have: grpcio (gRPC C-core) the
//! percent-encoded socket path (`run%2Flmi-agent%2Fagent.sock`), grpc-java the path itself. Neither is a valid
//! URI authority, and the HTTP/2 server under tonic (h2) answers such a request with `RST_STREAM
//! PROTOCOL_ERROR` before any service sees it, with no option to relax the check. On the Unix socket the
//! authority means nothing (there is one server behind it), so [`UnixAuthority`] rewrites it in the client's
//! header blocks before they reach the server: an invalid `:authority` value becomes `localhost`.
//!
//! Only HEADERS and CONTINUATION frames are touched; every other frame passes through as it came, without
//! being buffered. A header block is rewritten in place: each representation is copied as is, except the
//! value of a literal `:authority` field, which keeps its representation (so the client's and the server's
//! HPACK dynamic tables keep the same entries at the same indices) and gets a value no longer than the one it
//! replaces (so the server's table never evicts an entry the client still refers to). A value sent with
//! Huffman coding is replaced whatever it is (it cannot be checked without decoding it), by a prefix of
//! `localhost` short enough to satisfy the length rule; any prefix of `localhost` is a valid authority.
//! A header block this reader cannot parse is passed on unchanged, for the server to judge; after a frame
//! sequence it does not understand (a CONTINUATION out of place, a block over [`MAX_BLOCK`]) the rest of the
//! connection passes through unchanged.

use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// Frames this module writes are at most this long: the smallest `SETTINGS_MAX_FRAME_SIZE` a server has.
const MAX_FRAME: usize = 16_384;
/// The largest header block (HEADERS and its CONTINUATIONs) rewritten; a larger one passes unchanged.
pub const MAX_BLOCK: usize = 1 << 20;
/// HPACK static table index of `:authority`.
const AUTHORITY_INDEX: u64 = 1;
const REPLACEMENT: &str = "localhost";

/// The client-to-server byte stream of one HTTP/2 connection, with `:authority` made valid (sans I/O).
#[derive(Debug, Default)]
struct Rewriter {
    /// Bytes received and not yet decided on.
    input: Vec<u8>,
    /// Preface bytes still expected.
    preface_left: Option<usize>,
    /// Payload bytes of the current non-header frame still to pass through.
    skip: usize,
    /// A HEADERS frame waiting for its CONTINUATIONs: the raw frames so far and the block being collected.
    pending: Option<Pending>,
    /// Set when something was not understood: everything passes through unchanged.
    passthrough: bool,
}

#[derive(Debug)]
struct Pending {
    raw: Vec<u8>,
    stream: [u8; 4],
    flags: u8,
    priority: Option<[u8; 5]>,
    block: Vec<u8>,
}

impl Rewriter {
    fn new() -> Self {
        Self {
            preface_left: Some(PREFACE_LEN),
            ..Self::default()
        }
    }

    /// Takes `data` from the client and appends to `out` what the server may be given now.
    fn push(&mut self, mut data: &[u8], out: &mut Vec<u8>) {
        // Fast paths that need no buffering: passthrough, and the rest of a frame being passed through.
        loop {
            if self.passthrough {
                out.extend_from_slice(&self.input);
                self.input.clear();
                out.extend_from_slice(data);
                return;
            }
            if self.skip > 0 && self.input.is_empty() && !data.is_empty() {
                let n = self.skip.min(data.len());
                out.extend_from_slice(&data[..n]);
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            break;
        }
        self.input.extend_from_slice(data);
        self.drain(out);
    }

    /// The connection ended: whatever is held goes out unchanged.
    fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some(p) = self.pending.take() {
            out.extend_from_slice(&p.raw);
        }
        out.append(&mut self.input);
    }

    /// How many bytes at the start of `data` reach the server as they are, with the state advanced over them;
    /// for the reader to leave them where they landed instead of copying them through [`Rewriter::push`].
    /// Only when nothing is held (no buffered input, no unfinished header block): the preface, every frame but
    /// a header block, and a HEADERS frame that is whole in `data`, ends its block and needs no rewrite. It
    /// stops at the first byte that needs the buffered path (a frame header cut by the read, a header block
    /// that is cut, continued, to be rewritten or out of the ordinary); [`Rewriter::push`] takes it from there.
    fn pass_in_place(&mut self, data: &[u8]) -> usize {
        if self.passthrough {
            return if self.input.is_empty() { data.len() } else { 0 };
        }
        if !self.input.is_empty() || self.pending.is_some() {
            return 0;
        }
        let mut at = 0;
        loop {
            let rest = &data[at..];
            if rest.is_empty() {
                return at;
            }
            if self.skip > 0 {
                let n = self.skip.min(rest.len());
                self.skip -= n;
                at += n;
                continue;
            }
            if let Some(left) = self.preface_left {
                let n = left.min(rest.len());
                at += n;
                self.preface_left = (left > n).then_some(left - n);
                continue;
            }
            if rest.len() < FRAME_HEADER_LEN {
                return at;
            }
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            if kind != HEADERS && kind != CONTINUATION {
                at += FRAME_HEADER_LEN;
                self.skip = len;
                continue;
            }
            let whole = kind == HEADERS
                && flags & END_HEADERS != 0
                && len <= MAX_BLOCK
                && rest.len() >= FRAME_HEADER_LEN + len;
            if !whole {
                return at;
            }
            let unchanged =
                headers_fragment(&rest[FRAME_HEADER_LEN..FRAME_HEADER_LEN + len], flags)
                    .is_some_and(|(_, fragment)| !needs_rewrite(fragment));
            if !unchanged {
                return at;
            }
            at += FRAME_HEADER_LEN + len;
        }
    }

    fn give_up(&mut self, out: &mut Vec<u8>) {
        self.passthrough = true;
        self.finish(out);
    }

    fn drain(&mut self, out: &mut Vec<u8>) {
        let mut at = 0;
        loop {
            if self.passthrough {
                break;
            }
            let rest = &self.input[at..];
            if self.skip > 0 {
                let n = self.skip.min(rest.len());
                out.extend_from_slice(&rest[..n]);
                self.skip -= n;
                at += n;
                if self.skip > 0 {
                    break;
                }
                continue;
            }
            if let Some(left) = self.preface_left {
                let n = left.min(rest.len());
                out.extend_from_slice(&rest[..n]);
                at += n;
                self.preface_left = (left > n).then_some(left - n);
                if self.preface_left.is_some() {
                    break;
                }
                continue;
            }
            if rest.len() < FRAME_HEADER_LEN {
                break;
            }
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            let (kind, flags) = (rest[3], rest[4]);
            let stream = [rest[5], rest[6], rest[7], rest[8]];
            if kind != HEADERS && kind != CONTINUATION {
                if self.pending.is_some() {
                    // Only CONTINUATIONs may follow an unfinished HEADERS: not ours to judge.
                    self.input.drain(..at);
                    return self.give_up(out);
                }
                out.extend_from_slice(&rest[..FRAME_HEADER_LEN]);
                at += FRAME_HEADER_LEN;
                self.skip = len;
                continue;
            }
            let held = self.pending.as_ref().map_or(0, |p| p.block.len());
            if held + len > MAX_BLOCK {
                self.input.drain(..at);
                return self.give_up(out);
            }
            if rest.len() < FRAME_HEADER_LEN + len {
                break;
            }
            let frame = rest[..FRAME_HEADER_LEN + len].to_vec();
            at += frame.len();
            let ok = if kind == HEADERS {
                self.headers(&frame, flags, stream, out)
            } else {
                self.continuation(&frame, flags, stream, out)
            };
            if !ok {
                self.input.drain(..at);
                return self.give_up(out);
            }
        }
        self.input.drain(..at);
    }

    /// A HEADERS frame; false when it cannot be read.
    fn headers(&mut self, frame: &[u8], flags: u8, stream: [u8; 4], out: &mut Vec<u8>) -> bool {
        if self.pending.is_some() {
            out.extend_from_slice(frame);
            return false;
        }
        let Some((priority, fragment)) = headers_fragment(&frame[FRAME_HEADER_LEN..], flags) else {
            out.extend_from_slice(frame);
            return false;
        };
        self.pending = Some(Pending {
            raw: frame.to_vec(),
            stream,
            flags,
            priority,
            block: fragment.to_vec(),
        });
        if flags & END_HEADERS != 0 {
            self.complete(out);
        }
        true
    }

    fn continuation(
        &mut self,
        frame: &[u8],
        flags: u8,
        stream: [u8; 4],
        out: &mut Vec<u8>,
    ) -> bool {
        let Some(p) = self.pending.as_mut().filter(|p| p.stream == stream) else {
            out.extend_from_slice(frame);
            return false;
        };
        p.raw.extend_from_slice(frame);
        p.block.extend_from_slice(&frame[FRAME_HEADER_LEN..]);
        if flags & END_HEADERS != 0 {
            self.complete(out);
        }
        true
    }

    /// The header block is whole: out it goes, rewritten when it needs to be.
    fn complete(&mut self, out: &mut Vec<u8>) {
        let Some(p) = self.pending.take() else {
            return;
        };
        match rewrite_block(&p.block) {
            Some(block) => write_headers(&p, &block, out),
            None => out.extend_from_slice(&p.raw),
        }
    }
}

/// A HEADERS frame's payload split into its priority fields (when flagged) and its header block fragment,
/// without the padding; `None` when the payload is too short for what its flags declare.
fn headers_fragment(payload: &[u8], flags: u8) -> Option<(Option<[u8; 5]>, &[u8])> {
    let mut payload = payload;
    let mut pad = 0;
    if flags & PADDED != 0 {
        let (&p, rest) = payload.split_first()?;
        pad = usize::from(p);
        payload = rest;
    }
    let mut priority = None;
    if flags & PRIORITY != 0 {
        let (p, rest) = payload.split_first_chunk::<5>()?;
        priority = Some(*p);
        payload = rest;
    }
    let n = payload.len().checked_sub(pad)?;
    Some((priority, &payload[..n]))
}

/// Writes a header block as one HEADERS frame and as many CONTINUATIONs as it needs.
fn write_headers(p: &Pending, block: &[u8], out: &mut Vec<u8>) {
    let prio_len = if p.priority.is_some() { 5 } else { 0 };
    let first = block.len().min(MAX_FRAME - prio_len);
    let (head, mut rest) = block.split_at(first);
    let mut flags = p.flags & (END_STREAM | PRIORITY);
    if rest.is_empty() {
        flags |= END_HEADERS;
    }
    frame_header(out, head.len() + prio_len, HEADERS, flags, p.stream);
    if let Some(prio) = &p.priority {
        out.extend_from_slice(prio);
    }
    out.extend_from_slice(head);
    while !rest.is_empty() {
        let (chunk, after) = rest.split_at(rest.len().min(MAX_FRAME));
        let flags = if after.is_empty() { END_HEADERS } else { 0 };
        frame_header(out, chunk.len(), CONTINUATION, flags, p.stream);
        out.extend_from_slice(chunk);
        rest = after;
    }
}

fn frame_header(out: &mut Vec<u8>, len: usize, kind: u8, flags: u8, stream: [u8; 4]) {
    let len = len.to_be_bytes();
    out.extend_from_slice(&len[len.len() - 3..]);
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream);
}

/// An HPACK integer with an `n`-bit prefix at `b[*at]`; advances `at`.
fn int(b: &[u8], at: &mut usize, n: u32) -> Option<u64> {
    let mask = (1u64 << n) - 1;
    let mut v = u64::from(*b.get(*at)?) & mask;
    *at += 1;
    if v < mask {
        return Some(v);
    }
    let mut shift = 0;
    loop {
        let byte = *b.get(*at)?;
        *at += 1;
        v = v.checked_add(u64::from(byte & 0x7f).checked_shl(shift)?)?;
        if byte & 0x80 == 0 {
            return Some(v);
        }
        shift += 7;
        if shift > 56 {
            return None;
        }
    }
}

/// An HPACK string at `b[*at]`: (Huffman-coded, bytes); advances `at`.
fn string<'a>(b: &'a [u8], at: &mut usize) -> Option<(bool, &'a [u8])> {
    let huffman = b.get(*at)? & 0x80 != 0;
    let len = usize::try_from(int(b, at, 7)?).ok()?;
    let s = b.get(*at..at.checked_add(len)?)?;
    *at += len;
    Some((huffman, s))
}

/// The block with every invalid `:authority` replaced, or `None` when nothing needs to change or the block
/// cannot be read (the server then judges it as sent).
fn rewrite_block(b: &[u8]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut at = 0;
    while at < b.len() {
        let start = at;
        let first = b[at];
        let prefix = if first & 0x80 != 0 {
            int(b, &mut at, 7)?;
            None
        } else if first & 0xe0 == 0x20 {
            int(b, &mut at, 5)?;
            None
        } else if first & 0xc0 == 0x40 {
            Some(6)
        } else {
            Some(4)
        };
        let Some(bits) = prefix else {
            if let Some(o) = out.as_mut() {
                o.extend_from_slice(&b[start..at]);
            }
            continue;
        };
        let index = int(b, &mut at, bits)?;
        let is_authority = if index == 0 {
            let (huffman, name) = string(b, &mut at)?;
            !huffman && name == b":authority"
        } else {
            index == AUTHORITY_INDEX
        };
        let name_end = at;
        let (huffman, value) = string(b, &mut at)?;
        let replacement = if is_authority {
            replacement(huffman, value)
        } else {
            None
        };
        match replacement {
            Some(new) => {
                let o = out.get_or_insert_with(|| b[..start].to_vec());
                o.extend_from_slice(&b[start..name_end]);
                // A raw string of at most 9 bytes: its length fits the 7-bit prefix.
                o.push(new.len() as u8);
                o.extend_from_slice(new.as_bytes());
            }
            None => {
                if let Some(o) = out.as_mut() {
                    o.extend_from_slice(&b[start..at]);
                }
            }
        }
    }
    out
}

/// Whether [`rewrite_block`] would change the block (it allocates only once it finds something to change).
fn needs_rewrite(b: &[u8]) -> bool {
    rewrite_block(b).is_some()
}

/// The value to send instead of an `:authority` value, if it must change: a prefix of `localhost` no longer
/// than the value it replaces.
fn replacement(huffman: bool, value: &[u8]) -> Option<&'static str> {
    if huffman {
        if value.is_empty() {
            return None;
        }
        // Each Huffman code is at most 30 bits and the padding under 8: at least this many characters.
        let at_least = (8 * value.len()).saturating_sub(7).div_ceil(30).max(1);
        return Some(&REPLACEMENT[..at_least.min(REPLACEMENT.len())]);
    }
    if value.is_empty() || hyper::http::uri::Authority::try_from(value).is_ok() {
        return None;
    }
    Some(&REPLACEMENT[..value.len().min(REPLACEMENT.len())])
}

/// A Unix-socket connection of the control API whose client header blocks pass through the rewrite
/// described in the module documentation.
#[derive(Debug)]
pub struct UnixAuthority<IO> {
    io: IO,
    rewriter: Rewriter,
    /// Rewritten bytes not yet handed to the server.
    out: Vec<u8>,
    out_at: usize,
    /// The bytes of a read handed back to the rewriter (kept to reuse its allocation).
    scratch: Vec<u8>,
    eof: bool,
}

impl<IO> UnixAuthority<IO> {
    pub fn new(io: IO) -> Self {
        Self {
            io,
            rewriter: Rewriter::new(),
            out: Vec::new(),
            out_at: 0,
            scratch: Vec::new(),
            eof: false,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for UnixAuthority<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_at < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_at);
                buf.put_slice(&this.out[this.out_at..this.out_at + n]);
                this.out_at += n;
                if this.out_at == this.out.len() {
                    this.out.clear();
                    this.out_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            match Pin::new(&mut this.io).poll_read(cx, buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let got = buf.filled().len() - before;
                    if got == 0 {
                        this.eof = true;
                        this.rewriter.finish(&mut this.out);
                        continue;
                    }
                    // The bytes landed in the caller's buffer. Those that pass as they are stay there (most
                    // reads: frames other than header blocks, and header blocks that need no change); from the
                    // first one that does not, they are taken back through the rewriter.
                    let kept = this.rewriter.pass_in_place(&buf.filled()[before..]);
                    if kept < got {
                        this.scratch.clear();
                        this.scratch
                            .extend_from_slice(&buf.filled()[before + kept..]);
                        buf.set_filled(before + kept);
                        this.rewriter.push(&this.scratch, &mut this.out);
                    }
                    if kept > 0 && this.out.is_empty() {
                        return Poll::Ready(Ok(()));
                    }
                }
            }
        }
    }
}

crate::listener::forward_async_write!(UnixAuthority);

impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected
    for UnixAuthority<IO>
{
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::new();
        frame_header(&mut f, payload.len(), kind, flags, stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Literal with incremental indexing, static name `:authority`, raw value.
    fn authority_literal(value: &str) -> Vec<u8> {
        let mut b = vec![0x40 | 1, value.len() as u8];
        b.extend_from_slice(value.as_bytes());
        b
    }

    fn run(chunks: &[&[u8]]) -> Vec<u8> {
        let mut r = Rewriter::new();
        let mut out = Vec::new();
        for c in chunks {
            r.push(c, &mut out);
        }
        r.finish(&mut out);
        out
    }

    #[test]
    fn a_percent_encoded_socket_path_becomes_localhost_and_the_rest_is_kept() {
        // :method POST (static 3), :authority = grpcio's value, :path as a literal without indexing.
        let mut block = vec![0x83];
        block.extend(authority_literal("run%2Flmi-agent%2Fagent.sock"));
        block.extend([0x04, 5]);
        block.extend_from_slice(b"/a/bc");
        let settings = frame(0x4, 0, 0, &[]);
        let data = frame(0x0, END_STREAM, 1, b"payload");
        let mut input = PREFACE.to_vec();
        input.extend(&settings);
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        input.extend(&data);

        let mut expected_block = vec![0x83];
        expected_block.extend(authority_literal("localhost"));
        expected_block.extend([0x04, 5]);
        expected_block.extend_from_slice(b"/a/bc");
        let mut expected = PREFACE.to_vec();
        expected.extend(&settings);
        expected.extend(frame(HEADERS, END_HEADERS, 1, &expected_block));
        expected.extend(&data);

        assert_eq!(run(&[&input]), expected);
        // Byte by byte, the same result.
        let singles: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(run(&singles), expected);
    }

    #[test]
    fn valid_authorities_and_other_headers_pass_unchanged() {
        let mut block = authority_literal("localhost:50051");
        block.extend([0x00, 10]);
        block.extend_from_slice(b":authority");
        block.push(9);
        block.extend_from_slice(b"localhost");
        // A `host`-like literal whose value is a path (not :authority): untouched.
        block.extend([0x40 | 38, 4]);
        block.extend_from_slice(b"/a%b");
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 3, &block));
        assert_eq!(run(&[&input]), input);
    }

    #[test]
    fn short_paths_padding_priority_and_continuations() {
        // A 4-byte invalid value gets a 4-byte replacement; PADDED is dropped, PRIORITY kept, the block
        // split over a CONTINUATION is written whole.
        let block = authority_literal("a/b%");
        let mut payload = vec![2u8]; // pad length
        payload.extend([0, 0, 0, 0, 16]); // priority
        payload.extend(&block[..2]);
        payload.extend([0, 0]); // padding
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, PADDED | PRIORITY, 5, &payload));
        input.extend(frame(CONTINUATION, END_HEADERS, 5, &block[2..]));

        let mut expected_payload = vec![0, 0, 0, 0, 16];
        expected_payload.extend(authority_literal("loca"));
        let mut expected = PREFACE.to_vec();
        expected.extend(frame(HEADERS, PRIORITY | END_HEADERS, 5, &expected_payload));
        assert_eq!(run(&[&input]), expected);
    }

    #[test]
    fn huffman_values_get_a_replacement_no_longer_than_they_can_be() {
        // 20 Huffman-coded bytes hold at least ceil((160 - 7) / 30) = 6 characters.
        assert_eq!(replacement(true, &[0xaa; 20]), Some("localh"));
        assert_eq!(replacement(true, &[0xaa; 1]), Some("l"));
        assert_eq!(replacement(true, &[0xaa; 100]), Some("localhost"));
        assert_eq!(replacement(true, &[]), None);
        assert_eq!(replacement(false, b"localhost"), None);
        assert_eq!(replacement(false, b"/run/x.sock"), Some("localhost"));
    }

    #[test]
    fn what_it_cannot_read_passes_unchanged_and_so_does_the_rest() {
        // A block whose string runs past its end, then a valid one: both exactly as sent.
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &[0x41, 50, b'x']));
        input.extend(frame(HEADERS, END_HEADERS, 3, &authority_literal("a%2Fb")));
        let out = run(&[&input]);
        let mut expected = PREFACE.to_vec();
        expected.extend(frame(HEADERS, END_HEADERS, 1, &[0x41, 50, b'x']));
        expected.extend(frame(HEADERS, END_HEADERS, 3, &authority_literal("local")));
        assert_eq!(out, expected);
        // A CONTINUATION that belongs to no HEADERS: from there on, passthrough.
        let mut input = PREFACE.to_vec();
        input.extend(frame(CONTINUATION, END_HEADERS, 1, b"zz"));
        input.extend(frame(HEADERS, END_HEADERS, 3, &authority_literal("a%2Fb")));
        assert_eq!(run(&[&input]), input);
    }

    #[test]
    fn large_data_frames_stream_through_without_waiting_for_their_end() {
        let mut r = Rewriter::new();
        let mut out = Vec::new();
        r.push(PREFACE, &mut out);
        let mut header = Vec::new();
        frame_header(&mut header, 1 << 20, 0x0, 0, 1u32.to_be_bytes());
        r.push(&header, &mut out);
        r.push(&[7u8; 1000], &mut out);
        assert_eq!(out.len(), PREFACE.len() + header.len() + 1000);
    }

    /// A reader that hands out the given chunks, one per read (each cut to the reader's buffer).
    struct Chunks(std::collections::VecDeque<Vec<u8>>);

    impl AsyncRead for Chunks {
        fn poll_read(
            self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let chunks = &mut self.get_mut().0;
            if let Some(mut c) = chunks.pop_front() {
                let n = c.len().min(buf.remaining());
                buf.put_slice(&c[..n]);
                if n < c.len() {
                    chunks.push_front(c.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// What the server reads through [`UnixAuthority`] when the client's bytes arrive in `chunks` and the
    /// server reads with a buffer of `read_size` bytes.
    fn read_through(chunks: &[&[u8]], read_size: usize) -> Vec<u8> {
        let source = Chunks(chunks.iter().map(|c| c.to_vec()).collect());
        let mut conn = UnixAuthority::new(source);
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let mut all = Vec::new();
        let mut buf = vec![0u8; read_size];
        loop {
            let mut rb = ReadBuf::new(&mut buf);
            match Pin::new(&mut conn).poll_read(&mut cx, &mut rb) {
                Poll::Ready(Ok(())) if rb.filled().is_empty() => return all,
                Poll::Ready(Ok(())) => all.extend_from_slice(rb.filled()),
                other => panic!("unexpected read result {other:?}"),
            }
        }
    }

    #[test]
    fn reads_left_in_place_and_reads_rewritten_give_the_same_bytes() {
        // Frames that pass in place (SETTINGS, a clean HEADERS, DATA) around blocks that must be rewritten,
        // a block split by a CONTINUATION and one the rewriter cannot read, cut every way a read can cut them.
        let mut clean = vec![0x83];
        clean.extend(authority_literal("localhost"));
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]));
        input.extend(frame(HEADERS, END_HEADERS, 1, &clean));
        input.extend(frame(0x0, END_STREAM, 1, &[9u8; 40]));
        input.extend(frame(
            HEADERS,
            END_HEADERS,
            3,
            &authority_literal("run%2Fa.sock"),
        ));
        input.extend(frame(0x0, END_STREAM, 3, b"x"));
        input.extend(frame(HEADERS, 0, 5, &[0x83]));
        input.extend(frame(
            CONTINUATION,
            END_HEADERS,
            5,
            &authority_literal("/a/b"),
        ));
        input.extend(frame(HEADERS, END_HEADERS, 7, &clean));
        input.extend(frame(HEADERS, END_HEADERS, 9, &[0x41, 50, b'x']));
        input.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            11,
            &authority_literal("a%2Fb"),
        ));
        input.extend(frame(0x8, 0, 0, &[0, 0, 1, 0]));
        let expected = run(&[&input]);
        // The rewrites happened: streams 3 and 11 (and 5, whose block spans a CONTINUATION) changed.
        assert_ne!(expected, input);
        for (stream, value) in [(3, "localhost"), (11, "local")] {
            let rewritten = frame(
                HEADERS,
                END_HEADERS | (END_STREAM * u8::from(stream == 11)),
                stream,
                &authority_literal(value),
            );
            assert!(
                expected.windows(rewritten.len()).any(|w| w == rewritten),
                "stream {stream}"
            );
        }
        for chunk in [1, 2, 5, 9, 10, 17, 33, 64, input.len()] {
            let chunks: Vec<&[u8]> = input.chunks(chunk).collect();
            for read_size in [1, 7, 16, 100, 4096] {
                assert_eq!(
                    read_through(&chunks, read_size),
                    expected,
                    "chunks of {chunk}, reads of {read_size}"
                );
            }
        }
    }

    #[test]
    fn a_clean_connection_is_read_in_place_without_buffering() {
        // A client whose authority is valid: every read passes as it came; nothing is held or copied.
        let mut clean = vec![0x83];
        clean.extend(authority_literal("localhost"));
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &clean));
        input.extend(frame(0x0, END_STREAM, 1, b"payload"));
        let mut r = Rewriter::new();
        assert_eq!(r.pass_in_place(&input), input.len());
        assert!(r.input.is_empty() && r.pending.is_none() && !r.passthrough);
        // The same connection through the reader, whole and split at every byte.
        assert_eq!(read_through(&[&input], 4096), input);
        let singles: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(read_through(&singles, 4096), input);
    }
}
