//! HTTP/1.1 on an upstream connection: the request head, the response head, and the response
//! body read in the relaying task itself, each read's chunks forwarded as one frame.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use tokio_util::io::poll_read_buf;

use super::conn::{Conn, Pool};

/// A response head larger than this is refused.
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 128;

/// Writes `METHOD target HTTP/1.1`, Host, the headers and Content-Length into `out`.
pub fn encode_request<'a, 'p>(
    out: &mut Vec<u8>,
    method: &Method,
    target: impl Iterator<Item = &'p str>,
    host: &str,
    headers: impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)>,
    body_len: usize,
) {
    let line = |out: &mut Vec<u8>, name: &[u8], value: &[u8]| {
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    };
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    for piece in target {
        out.extend_from_slice(piece.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    line(out, b"host", host.as_bytes());
    for (name, value) in headers {
        line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    let bodiless = matches!(
        *method,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
    );
    if body_len > 0 || !bodiless {
        let mut digits = itoa::Buffer::new();
        line(out, b"content-length", digits.format(body_len).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// How the response body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

#[derive(Debug)]
pub struct Head {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request after this body.
    pub keep_alive: bool,
}

/// The header names of the last answer on a connection, in their order and as spelled on the
/// wire: an upstream answers with the same names in the same order every time (api.openai.com
/// with ~20, most of them not among the standard names), so each is taken again from here, a
/// comparison and a reference count, instead of checked, lowercased and copied into a new
/// allocation.
#[derive(Debug, Default)]
pub struct HeaderNames(Vec<(Box<[u8]>, HeaderName)>);

impl HeaderNames {
    /// Names kept at most (the first ones of an answer).
    const KEPT: usize = 64;

    /// The name at position `at` of an answer, spelled `raw` on the wire.
    fn name(&mut self, at: usize, raw: &[u8]) -> io::Result<HeaderName> {
        if let Some((spelled, known)) = self.0.get(at) {
            if **spelled == *raw {
                return Ok(known.clone());
            }
        }
        let name = HeaderName::from_bytes(raw).map_err(|_| invalid("bad header name"))?;
        let kept = (Box::from(raw), name.clone());
        if let Some(slot) = self.0.get_mut(at) {
            *slot = kept;
        } else if at == self.0.len() && at < Self::KEPT {
            self.0.push(kept);
        }
        Ok(name)
    }
}

/// Parses a final response head off the front of `buf` (skipping 1xx interim ones); `None`
/// while it is incomplete. `names` are the connection's (`HeaderNames`).
pub fn parse_head(
    buf: &mut BytesMut,
    method: &Method,
    names: &mut HeaderNames,
) -> io::Result<Option<Head>> {
    loop {
        // The first look, before anything was read: nothing to parse.
        if buf.is_empty() {
            return Ok(None);
        }
        // Uninitialised slots: zeroing 128 headers per response was measurable.
        let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut slots,
        );
        let used = match parsed {
            Ok(httparse::Status::Complete(used)) if used > MAX_HEAD => {
                return Err(invalid("response head too large"))
            }
            Ok(httparse::Status::Complete(used)) => used,
            Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
                return Err(invalid("response head too large"))
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(err) => return Err(invalid(&format!("malformed response head: {err}"))),
        };
        let code = response.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| invalid("bad status code"))?;
        if status.is_informational() && code != 101 {
            let _ = buf.split_to(used);
            continue;
        }
        // Names and values are taken from the head's bytes by offset: values are slices of
        // them rather than copies.
        let base = buf.as_ptr() as usize;
        let offset = |part: &[u8]| part.as_ptr() as usize - base;
        // Only as many ranges as there are headers (a zeroed array of `MAX_HEADERS` was 4 KiB
        // to clear per response).
        let ranges: Vec<_> = response
            .headers
            .iter()
            .map(|h| {
                let value = if h.value.is_empty() {
                    0
                } else {
                    offset(h.value)
                };
                let name = offset(h.name.as_bytes());
                (name, name + h.name.len(), value, value + h.value.len())
            })
            .collect();
        let http11 = response.version == Some(1);
        let bytes = buf.split_to(used).freeze();
        // Room for the `x-ratelimit-*` headers a metered key's answer gets: adding them to a
        // full map would rehash it into a bigger one on every such response.
        let mut headers = HeaderMap::with_capacity(ranges.len() + crate::limits::headers::ADDED);
        for (at, &(name_start, name_end, start, end)) in ranges.iter().enumerate() {
            let name = names.name(at, &bytes[name_start..name_end])?;
            // SAFETY: httparse took these bytes as a header value only if each is a tab, 0x20
            // to 0x7e or 0x80 and up, which is `HeaderValue`'s own rule (checked for every
            // byte value by `httparse_values_are_valid_header_values`).
            let value =
                unsafe { HeaderValue::from_maybe_shared_unchecked(bytes.slice(start..end)) };
            headers.append(name, value);
        }
        let framing = framing(&mut headers, status, method)?;
        let keep_alive = http11
            && reusable_after(status, method, framing)
            && !has_token(&headers, header::CONNECTION, "close");
        return Ok(Some(Head {
            status,
            headers,
            framing: framing.body,
            keep_alive,
        }));
    }
}

/// A response's framing, and whether it was trustworthy enough to reuse the connection.
#[derive(Clone, Copy)]
struct Delimited {
    body: Framing,
    /// Both Transfer-Encoding and Content-Length came: the length is dropped (RFC 9112
    /// §6.3) and the connection is not reused (it smells of response splitting).
    conflicting: bool,
}

/// Whether the connection can carry another request after this answer. Not after an answer
/// without a body (204, 304, HEAD) or a 101: bytes the upstream writes late could not be told
/// from the next request's answer. Not after a body delimited by the connection's end or
/// with conflicting framing.
fn reusable_after(status: StatusCode, method: &Method, framing: Delimited) -> bool {
    !(framing.conflicting
        || framing.body == Framing::UntilClose
        || *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status.is_informational())
}

fn framing(headers: &mut HeaderMap, status: StatusCode, method: &Method) -> io::Result<Delimited> {
    let plain = |body| {
        Ok(Delimited {
            body,
            conflicting: false,
        })
    };
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return plain(Framing::Empty);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let conflicting = headers.remove(header::CONTENT_LENGTH).is_some();
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty());
        let body = match last {
            Some(coding) if coding.eq_ignore_ascii_case("chunked") => Framing::Chunked,
            _ => Framing::UntilClose,
        };
        return Ok(Delimited { body, conflicting });
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    match lengths.next() {
        None => plain(Framing::UntilClose),
        Some(value) => {
            let n = content_length(value).ok_or_else(|| invalid("bad content-length"))?;
            if lengths.any(|other| content_length(other) != Some(n)) {
                return Err(invalid("conflicting content-length headers"));
            }
            plain(if n == 0 {
                Framing::Empty
            } else {
                Framing::Length(n)
            })
        }
    }
}

/// A Content-Length value: decimal digits only (no sign, no space, no list), as hyper takes it.
fn content_length(value: &HeaderValue) -> Option<u64> {
    let digits = value.as_bytes();
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

fn has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// Chunk extensions (ignored) and trailer fields (dropped) may take this many bytes per body,
/// each (hyper's limits).
const CHUNK_EXTENSIONS_LIMIT: usize = 16 * 1024;
const TRAILERS_LIMIT: usize = 16 * 1024;
const MAX_TRAILERS: usize = 100;

/// Where a chunked body is between bytes (RFC 9112 §7.1: lines end in CRLF, a size is hex
/// digits, optionally followed by whitespace and `;`-extensions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size; `digits` seen so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// Whitespace after the size.
    SizeSpace {
        size: u64,
    },
    /// A chunk extension, up to the line's end.
    Extension {
        size: u64,
    },
    /// The size line's CR came; its LF must follow.
    SizeLf {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer field (or of the final empty line).
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    EndLf,
    Done,
}

/// Decodes `Transfer-Encoding: chunked` incrementally, across any split of the input.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: Chunk,
    extension_bytes: usize,
    trailer_bytes: usize,
    trailers: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: Chunk::Size { size: 0, digits: 0 },
            extension_bytes: 0,
            trailer_bytes: 0,
            trailers: 0,
        }
    }
}

impl ChunkedDecoder {
    pub fn is_done(&self) -> bool {
        self.state == Chunk::Done
    }

    /// Consumes what it can of `input`, appending chunk data to `out`.
    pub fn decode(&mut self, input: &mut BytesMut, out: &mut BytesMut) -> io::Result<()> {
        let mut at = 0;
        while at < input.len() && self.state != Chunk::Done {
            if let Chunk::Data(left) = self.state {
                let take = left.min((input.len() - at) as u64) as usize;
                out.extend_from_slice(&input[at..at + take]);
                at += take;
                self.state = if left == take as u64 {
                    Chunk::DataCr
                } else {
                    Chunk::Data(left - take as u64)
                };
                continue;
            }
            let byte = input[at];
            at += 1;
            self.state = self.step(byte)?;
        }
        let _ = input.split_to(at);
        Ok(())
    }

    fn step(&mut self, byte: u8) -> io::Result<Chunk> {
        let after_size = |size: u64| {
            if size == 0 {
                Chunk::TrailerStart
            } else {
                Chunk::Data(size)
            }
        };
        Ok(match (self.state, byte) {
            (Chunk::Size { size, digits }, b) if b.is_ascii_hexdigit() => {
                let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                let size = size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(digit))
                    .ok_or_else(|| invalid("chunk size too large"))?;
                Chunk::Size {
                    size,
                    digits: digits.saturating_add(1),
                }
            }
            (Chunk::Size { digits: 0, .. }, _) => return Err(invalid("bad chunk size")),
            (Chunk::Size { size, .. } | Chunk::SizeSpace { size }, b' ' | b'\t') => {
                Chunk::SizeSpace { size }
            }
            (Chunk::Size { size, .. } | Chunk::SizeSpace { size }, b';') => {
                Chunk::Extension { size }
            }
            (
                Chunk::Size { size, .. } | Chunk::SizeSpace { size } | Chunk::Extension { size },
                b'\r',
            ) => Chunk::SizeLf { size },
            (Chunk::Size { .. } | Chunk::SizeSpace { .. }, _) => {
                return Err(invalid("bad chunk size line"))
            }
            (Chunk::Extension { .. }, b'\n') => {
                return Err(invalid("bare LF in a chunk extension"))
            }
            (Chunk::Extension { size }, _) => {
                self.extension_bytes += 1;
                if self.extension_bytes >= CHUNK_EXTENSIONS_LIMIT {
                    return Err(invalid("chunk extensions too large"));
                }
                Chunk::Extension { size }
            }
            (Chunk::SizeLf { size }, b'\n') => after_size(size),
            (Chunk::SizeLf { .. }, _) => return Err(invalid("chunk size line not ended by CRLF")),
            (Chunk::DataCr, b'\r') => Chunk::DataLf,
            (Chunk::DataLf, b'\n') => Chunk::Size { size: 0, digits: 0 },
            (Chunk::DataCr | Chunk::DataLf, _) => {
                return Err(invalid("chunk data not followed by CRLF"))
            }
            (Chunk::TrailerStart, b'\r') => Chunk::EndLf,
            (Chunk::EndLf, b'\n') => Chunk::Done,
            (Chunk::EndLf, _) => return Err(invalid("bad end of chunked body")),
            // Trailer fields are dropped, but must be well-formed fields (as hyper reads them).
            (Chunk::TrailerStart | Chunk::TrailerName | Chunk::TrailerValue, _)
                if self.count_trailer_byte() =>
            {
                return Err(invalid("trailers too large"))
            }
            (Chunk::TrailerStart | Chunk::TrailerName, b) if is_token_byte(b) => Chunk::TrailerName,
            (Chunk::TrailerName, b':') => Chunk::TrailerValue,
            (Chunk::TrailerValue, b'\r') => Chunk::TrailerLf,
            (Chunk::TrailerValue, b) if b == b'\t' || (b >= 0x20 && b != 0x7f) => {
                Chunk::TrailerValue
            }
            (Chunk::TrailerStart | Chunk::TrailerName | Chunk::TrailerValue, _) => {
                return Err(invalid("malformed trailer field"))
            }
            (Chunk::TrailerLf, b'\n') => {
                self.trailers += 1;
                if self.trailers > MAX_TRAILERS {
                    return Err(invalid("too many trailer fields"));
                }
                Chunk::TrailerStart
            }
            (Chunk::TrailerLf, _) => return Err(invalid("trailer line not ended by CRLF")),
            (Chunk::Data(_) | Chunk::Done, _) => return Err(invalid("chunked decoder misused")),
        })
    }
}

impl ChunkedDecoder {
    /// Counts one byte of trailers; true when that is past the limit.
    fn count_trailer_byte(&mut self) -> bool {
        self.trailer_bytes += 1;
        self.trailer_bytes > TRAILERS_LIMIT
    }
}

/// A `tchar` of RFC 9110 §5.6.2 (header names).
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

enum Reading {
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
    Done,
}

/// The upstream's response body, read from the connection by whoever polls it (the task
/// answering the client: no hand-off between tasks). Everything one read brings is forwarded
/// as one frame; the connection goes back to the pool when the body ends cleanly.
pub struct UpstreamBody {
    conn: Option<Conn>,
    reading: Reading,
    keep_alive: bool,
    pool: Arc<Pool>,
    /// Bytes already read off this body (to look at an error answer), given out first.
    replay: Option<Bytes>,
}

impl UpstreamBody {
    pub fn new(conn: Conn, head: &Head, pool: Arc<Pool>) -> UpstreamBody {
        let reading = match head.framing {
            Framing::Empty => Reading::Done,
            Framing::Length(n) => Reading::Length(n),
            Framing::Chunked => Reading::Chunked(ChunkedDecoder::default()),
            Framing::UntilClose => Reading::UntilClose,
        };
        let mut body = UpstreamBody {
            conn: Some(conn),
            reading,
            keep_alive: head.keep_alive,
            pool,
            replay: None,
        };
        if matches!(body.reading, Reading::Done) {
            body.finish();
        }
        body
    }

    /// Puts `data`, read off the front of this body, back: it is the next frame.
    pub fn replay(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.replay = Some(data);
        }
    }

    fn finish(&mut self) {
        self.reading = Reading::Done;
        if let Some(conn) = self.conn.take() {
            if self.keep_alive {
                self.pool.checkin(conn);
            }
        }
    }

    /// The data already buffered, as a frame; `None` when more must be read.
    fn take_buffered(&mut self) -> io::Result<Option<Bytes>> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let data = match &mut self.reading {
            Reading::Length(left) => {
                let take = (*left).min(conn.buf.len() as u64) as usize;
                *left -= take as u64;
                let data = conn.buf.split_to(take).freeze();
                if *left == 0 {
                    self.finish();
                }
                data
            }
            Reading::Chunked(decoder) => {
                let mut out = BytesMut::new();
                decoder.decode(&mut conn.buf, &mut out)?;
                if decoder.is_done() {
                    self.finish();
                }
                out.freeze()
            }
            Reading::UntilClose => conn.buf.split().freeze(),
            Reading::Done => Bytes::new(),
        };
        Ok((!data.is_empty()).then_some(data))
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let this = &mut *self;
        if let Some(data) = this.replay.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        loop {
            match this.take_buffered() {
                Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(None) => {}
                Err(err) => {
                    this.conn = None;
                    this.reading = Reading::Done;
                    return Poll::Ready(Some(Err(err)));
                }
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            conn.make_room();
            match ready!(poll_read_buf(Pin::new(&mut conn.stream), cx, &mut conn.buf)) {
                Ok(0) => {
                    this.conn = None;
                    if matches!(this.reading, Reading::UntilClose) {
                        this.reading = Reading::Done;
                        return Poll::Ready(None);
                    }
                    this.reading = Reading::Done;
                    return Poll::Ready(Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the upstream closed the connection before the end of the body",
                    ))));
                }
                Ok(_) => {}
                Err(err) => {
                    this.conn = None;
                    this.reading = Reading::Done;
                    return Poll::Ready(Some(Err(err)));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.reading, Reading::Done) && self.replay.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        let replay = self.replay.as_ref().map_or(0, |data| data.len() as u64);
        match self.reading {
            Reading::Length(n) => SizeHint::with_exact(n + replay),
            Reading::Done => SizeHint::with_exact(replay),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_in_pieces(wire: &[u8], piece: usize) -> io::Result<(Vec<u8>, bool)> {
        let mut decoder = ChunkedDecoder::default();
        let mut input = BytesMut::new();
        let mut out = BytesMut::new();
        for part in wire.chunks(piece) {
            input.extend_from_slice(part);
            decoder.decode(&mut input, &mut out)?;
        }
        Ok((out.to_vec(), decoder.is_done() && input.is_empty()))
    }

    #[test]
    fn chunked_bodies_decode_across_every_split() {
        let wire = b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\nx-trailer: 1\r\n\r\n";
        for piece in 1..=wire.len() {
            let (out, done) = decode_in_pieces(wire, piece).unwrap();
            assert_eq!(out, b"hello, world", "piece size {piece}");
            assert!(done, "piece size {piece}");
        }
    }

    #[test]
    fn chunked_decoding_stops_at_the_end_and_keeps_what_follows() {
        let mut decoder = ChunkedDecoder::default();
        let mut input = BytesMut::from(&b"A\r\n0123456789\r\n0\r\n\r\nHTTP/1.1 200"[..]);
        let mut out = BytesMut::new();
        decoder.decode(&mut input, &mut out).unwrap();
        assert!(decoder.is_done());
        assert_eq!(&out[..], b"0123456789");
        assert_eq!(&input[..], b"HTTP/1.1 200");
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for wire in [
            &b"zz\r\n"[..],
            b"5\r\nhelloXX",
            b"1ffffffffffffffff\r\n",
            b"5xyz\r\nhello\r\n", // garbage after the size, no `;`
            b"5 x\r\nhello\r\n",  // garbage after whitespace
            b"5\nhello\r\n",      // bare LF ends the size line
            b"5;a\nhello\r\n",    // bare LF in an extension
            b"0\r\n\n",           // bare LF ends the body
            b"0\r\nx-t: 1\n\r\n", // bare LF ends a trailer
        ] {
            assert!(decode_in_pieces(wire, 64).is_err(), "{wire:?}");
        }
        let mut long_extension = b"5;".to_vec();
        long_extension.extend(std::iter::repeat_n(b'e', CHUNK_EXTENSIONS_LIMIT + 1));
        assert!(decode_in_pieces(&long_extension, 4096).is_err());
        let (out, done) = decode_in_pieces(b"5 \t;name=\"v\"\r\nhello\r\n0\r\n\r\n", 1).unwrap();
        assert_eq!((out.as_slice(), done), (&b"hello"[..], true));
    }

    #[test]
    fn heads_are_checked_strictly() {
        let post = Method::POST;
        for wire in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        ] {
            let mut buf = BytesMut::from(wire);
            assert!(
                parse_head(&mut buf, &post, &mut HeaderNames::default()).is_err(),
                "{wire:?}"
            );
        }
        // A head over the limit is refused even when it arrives in one read.
        let mut huge = b"HTTP/1.1 200 OK\r\nx-big: ".to_vec();
        huge.extend(std::iter::repeat_n(b'a', 70 * 1024));
        huge.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
        assert!(parse_head(
            &mut BytesMut::from(&huge[..]),
            &post,
            &mut HeaderNames::default()
        )
        .is_err());
    }

    /// Each answer's headers, as parsed with the names of the ones before (`names`) and alone.
    fn heads_both_ways(wires: &[&[u8]]) -> Vec<Vec<(String, Vec<u8>)>> {
        let listed = |head: Head| {
            (head.headers.iter())
                .map(|(n, v)| (n.as_str().to_owned(), v.as_bytes().to_vec()))
                .collect::<Vec<_>>()
        };
        let mut names = HeaderNames::default();
        let post = Method::POST;
        wires
            .iter()
            .map(|wire| {
                let parse = |names: &mut HeaderNames| {
                    parse_head(&mut BytesMut::from(*wire), &post, names)
                        .unwrap()
                        .unwrap()
                };
                let alone = listed(parse(&mut HeaderNames::default()));
                let after = listed(parse(&mut names));
                assert_eq!(after, alone, "{:?}", String::from_utf8_lossy(wire));
                after
            })
            .collect()
    }

    #[test]
    fn header_names_are_taken_again_only_where_they_match() {
        let heads = heads_both_ways(&[
            b"HTTP/1.1 200 OK\r\nX-Request-Id: 1\r\nopenai-version: 2\r\nContent-Length: 0\r\n\r\n",
            // The same names, other capitals; one changed in the middle.
            b"HTTP/1.1 200 OK\r\nx-request-ID: 3\r\nOpenAI-Model: m\r\ncontent-length: 0\r\n\r\n",
            // Longer, then shorter, than the answer before; names moved.
            b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nx-request-id: 4\r\nopenai-model: n\r\nx-a: 5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx-a: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nX-REQUEST-ID: 7\r\n\r\n",
        ]);
        let names = |at: usize| {
            heads[at]
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(1), ["x-request-id", "openai-model", "content-length"]);
        assert_eq!(
            names(2),
            ["content-length", "x-request-id", "openai-model", "x-a"]
        );
        assert_eq!(heads[4], [("x-request-id".to_owned(), b"7".to_vec())]);
        // More headers than are kept: the rest are parsed as before.
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        for at in 0..HeaderNames::KEPT + 8 {
            many.extend_from_slice(format!("x-h{at}: {at}\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        let heads = heads_both_ways(&[&many, &many]);
        assert_eq!(heads[1].len(), HeaderNames::KEPT + 8);
    }

    /// `parse_head` builds values unchecked: whatever byte httparse lets into a header value,
    /// at any place in a short value or a long one (its vectored path), must be one that
    /// `HeaderValue` takes.
    #[test]
    fn httparse_values_are_valid_header_values() {
        let mut admitted = 0;
        for byte in 0..=255u8 {
            for (len, at) in [(5, 2), (48, 0), (48, 17), (48, 40)] {
                let mut value = vec![b'v'; len];
                value[at] = byte;
                let mut wire = b"HTTP/1.1 200 OK\r\nx-a: ".to_vec();
                wire.extend_from_slice(&value);
                wire.extend_from_slice(b"\r\ncontent-length: 0\r\n\r\n");
                let mut slots = [httparse::EMPTY_HEADER; 4];
                let mut response = httparse::Response::new(&mut slots);
                let parsed = httparse::ParserConfig::default().parse_response(&mut response, &wire);
                if let Ok(httparse::Status::Complete(_)) = parsed {
                    for header in response.headers.iter() {
                        assert!(
                            HeaderValue::from_bytes(header.value).is_ok(),
                            "byte {byte:#04x} at {at} of {len}"
                        );
                        admitted += usize::from(header.value.contains(&byte));
                    }
                }
            }
        }
        // Tab, 0x20-0x7e and 0x80-0xff, at each of the four places (not a test that passes
        // because httparse refused everything).
        assert!(admitted >= 4 * (1 + 95 + 128), "{admitted}");
    }

    #[test]
    fn answers_that_could_desync_the_connection_end_it() {
        let post = Method::POST;
        let not_reused: [(&[u8], &Method); 5] = [
            (b"HTTP/1.1 204 No Content\r\n\r\n", &post),
            (b"HTTP/1.1 304 Not Modified\r\n\r\n", &post),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                &Method::HEAD,
            ),
            (
                b"HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\n\r\n",
                &post,
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\ntransfer-encoding: chunked\r\n\r\n",
                &post,
            ),
        ];
        for (wire, method) in not_reused {
            let head = parse_head(
                &mut BytesMut::from(wire),
                method,
                &mut HeaderNames::default(),
            )
            .unwrap()
            .unwrap();
            assert!(!head.keep_alive, "{wire:?}");
        }
        let mut both = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\ntransfer-encoding: chunked\r\n\r\n"[..],
        );
        let head = parse_head(&mut both, &post, &mut HeaderNames::default())
            .unwrap()
            .unwrap();
        assert_eq!(head.framing, Framing::Chunked);
        assert!(!head.headers.contains_key(header::CONTENT_LENGTH));
    }

    #[test]
    fn requests_carry_host_headers_and_length() {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        let mut out = Vec::new();
        encode_request(
            &mut out,
            &Method::POST,
            ["/v1/chat", "?x=1"].into_iter(),
            "api.example:8443",
            headers.iter(),
            2,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /v1/chat?x=1 HTTP/1.1\r\nhost: api.example:8443\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n"
        );
    }
}
