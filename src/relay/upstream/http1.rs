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

/// Parses a final response head off the front of `buf` (skipping 1xx interim ones); `None`
/// while it is incomplete.
pub fn parse_head(buf: &mut BytesMut, method: &Method) -> io::Result<Option<Head>> {
    loop {
        // Uninitialised slots and byte ranges: zeroing 128 headers per response was measurable.
        let mut slots = [const { MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut response,
            buf,
            &mut slots,
        );
        let used = match parsed {
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
        let count = response.headers.len();
        let mut ranges = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
        for (range, h) in ranges.iter_mut().zip(response.headers.iter()) {
            let value = if h.value.is_empty() {
                0
            } else {
                offset(h.value)
            };
            let name = offset(h.name.as_bytes());
            *range = (name, name + h.name.len(), value, value + h.value.len());
        }
        let http11 = response.version == Some(1);
        let bytes = buf.split_to(used).freeze();
        let mut headers = HeaderMap::with_capacity(count);
        for &(name_start, name_end, start, end) in &ranges[..count] {
            let name = HeaderName::from_bytes(&bytes[name_start..name_end])
                .map_err(|_| invalid("bad header name"))?;
            let value = HeaderValue::from_maybe_shared(bytes.slice(start..end))
                .map_err(|_| invalid("bad header value"))?;
            headers.append(name, value);
        }
        let framing = framing(&headers, status, method)?;
        let keep_alive = http11
            && framing != Framing::UntilClose
            && !has_token(&headers, header::CONNECTION, "close");
        return Ok(Some(Head {
            status,
            headers,
            framing,
            keep_alive,
        }));
    }
}

fn framing(headers: &HeaderMap, status: StatusCode, method: &Method) -> io::Result<Framing> {
    if *method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|t| !t.is_empty());
        return Ok(match last {
            Some(coding) if coding.eq_ignore_ascii_case("chunked") => Framing::Chunked,
            _ => Framing::UntilClose,
        });
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    match lengths.next() {
        None => Ok(Framing::UntilClose),
        Some(value) => {
            let parse =
                |v: &HeaderValue| v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok());
            let n = parse(value).ok_or_else(|| invalid("bad content-length"))?;
            if lengths.any(|other| parse(other) != Some(n)) {
                return Err(invalid("conflicting content-length headers"));
            }
            Ok(if n == 0 {
                Framing::Empty
            } else {
                Framing::Length(n)
            })
        }
    }
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

/// Where a chunked body is between bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    /// Reading the hex size; `digits` seen so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: extensions up to the line's end.
    SizeLine {
        size: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    TrailerLine,
    TrailerLf,
    Done,
}

/// Decodes `Transfer-Encoding: chunked` incrementally, across any split of the input.
#[derive(Debug)]
pub struct ChunkedDecoder {
    state: Chunk,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: Chunk::Size { size: 0, digits: 0 },
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
            self.state = match (self.state, byte) {
                (Chunk::Size { size, digits }, b) if b.is_ascii_hexdigit() => {
                    if digits >= 15 {
                        return Err(invalid("chunk size too large"));
                    }
                    let digit = (b as char).to_digit(16).unwrap_or(0) as u64;
                    Chunk::Size {
                        size: size * 16 + digit,
                        digits: digits + 1,
                    }
                }
                (Chunk::Size { digits: 0, .. }, _) => return Err(invalid("bad chunk size")),
                (Chunk::Size { size, .. } | Chunk::SizeLine { size }, b'\n') => {
                    if size == 0 {
                        Chunk::TrailerStart
                    } else {
                        Chunk::Data(size)
                    }
                }
                (Chunk::Size { size, .. } | Chunk::SizeLine { size }, _) => {
                    Chunk::SizeLine { size }
                }
                (Chunk::DataCr, b'\r') => Chunk::DataLf,
                (Chunk::DataLf, b'\n') => Chunk::Size { size: 0, digits: 0 },
                (Chunk::DataCr | Chunk::DataLf, _) => {
                    return Err(invalid("chunk data not followed by CRLF"))
                }
                (Chunk::TrailerStart, b'\r') => Chunk::TrailerLf,
                (Chunk::TrailerStart | Chunk::TrailerLf, b'\n') => Chunk::Done,
                (Chunk::TrailerLine, b'\n') => Chunk::TrailerStart,
                (Chunk::TrailerLf, _) => return Err(invalid("bad end of chunked body")),
                (Chunk::TrailerStart | Chunk::TrailerLine, _) => Chunk::TrailerLine,
                (Chunk::Data(_) | Chunk::Done, _) => unreachable!("handled above"),
            };
        }
        let _ = input.split_to(at);
        Ok(())
    }
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
        };
        if matches!(body.reading, Reading::Done) {
            body.finish();
        }
        body
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
        matches!(self.reading, Reading::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.reading {
            Reading::Length(n) => SizeHint::with_exact(n),
            Reading::Done => SizeHint::with_exact(0),
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
        for wire in [&b"zz\r\n"[..], b"5\r\nhelloXX", b"ffffffffffffffff\r\n"] {
            assert!(decode_in_pieces(wire, 64).is_err(), "{wire:?}");
        }
    }

    #[test]
    fn heads_give_framing_and_keep_alive() {
        let post = Method::POST;
        let cases: [(&[u8], Framing, bool); 5] = [
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n",
                Framing::Length(12),
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                Framing::Chunked,
                true,
            ),
            (
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                Framing::Length(1),
                false,
            ),
            (b"HTTP/1.1 200 OK\r\n\r\n", Framing::UntilClose, false),
            (
                b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
                Framing::Empty,
                true,
            ),
        ];
        for (wire, framing, keep_alive) in cases {
            let mut buf = BytesMut::from(wire);
            let head = parse_head(&mut buf, &post).unwrap().unwrap();
            assert_eq!(
                (head.framing, head.keep_alive),
                (framing, keep_alive),
                "{wire:?}"
            );
            assert!(buf.is_empty());
        }
        let mut partial = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
        assert!(parse_head(&mut partial, &post).unwrap().is_none());
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
