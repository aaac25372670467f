//! Differential test of the upstream HTTP/1.1 response parser (head and chunked decoder)
//! against hyper's client: on generated and mutated responses, split at random points,
//! keygate must never accept what hyper rejects, and must read the same body when both accept.
//! Bounded: a fixed number of cases per property, a few seconds in all.

use bytes::BytesMut;
use http_body_util::{BodyExt, Empty};
use hyper::Method;
use hyper_util::rt::TokioIo;
use std::cell::RefCell;

use keygate::relay::upstream::http1::{parse_head, ChunkedDecoder, Framing, HeaderNames};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

thread_local! {
    /// Header names kept from case to case, as a connection keeps them from answer to answer.
    static NAMES: RefCell<HeaderNames> = RefCell::default();
}

/// The body keygate reads from `wire` fed in `piece`-byte reads; Err when it refuses it or the
/// connection ends early. Each look at the head is also taken with the names of earlier cases,
/// and must come out the same.
fn keygate_body(wire: &[u8], piece: usize) -> Result<Vec<u8>, String> {
    let mut pieces = wire.chunks(piece.max(1));
    let mut buf = BytesMut::new();
    let head = loop {
        let mut again = buf.clone();
        let kept =
            NAMES.with(|names| parse_head(&mut again, &Method::GET, &mut names.borrow_mut()));
        let parsed = parse_head(&mut buf, &Method::GET, &mut HeaderNames::default());
        assert_eq!(
            format!("{kept:?}"),
            format!("{parsed:?}"),
            "{:?}",
            String::from_utf8_lossy(wire)
        );
        if let Some(head) = parsed.map_err(|e| e.to_string())? {
            break head;
        }
        buf.extend_from_slice(pieces.next().ok_or("ended in the head")?);
    };
    let mut out = BytesMut::new();
    match head.framing {
        Framing::Empty => Ok(Vec::new()),
        Framing::Length(n) => {
            while (buf.len() as u64) < n {
                buf.extend_from_slice(pieces.next().ok_or("ended in the body")?);
            }
            Ok(buf[..n as usize].to_vec())
        }
        Framing::UntilClose => {
            pieces.for_each(|p| buf.extend_from_slice(p));
            Ok(buf.to_vec())
        }
        Framing::Chunked => {
            let mut decoder = ChunkedDecoder::default();
            loop {
                decoder
                    .decode(&mut buf, &mut out)
                    .map_err(|e| e.to_string())?;
                if decoder.is_done() {
                    return Ok(out.to_vec());
                }
                buf.extend_from_slice(pieces.next().ok_or("ended in the chunked body")?);
            }
        }
    }
}

/// The body hyper's HTTP/1.1 client reads from `wire` (then the connection's end).
fn hyper_body(wire: &[u8]) -> Result<Vec<u8>, String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let wire = wire.to_vec();
    runtime.block_on(async move {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(client))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut chunk = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                match server.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&chunk[..n]),
                }
            }
            let _ = server.write_all(&wire).await;
            let _ = server.shutdown().await;
            // Keep reading so the client side never sees a reset.
            while matches!(server.read(&mut chunk).await, Ok(n) if n > 0) {}
        });
        let request = hyper::Request::get("/")
            .header("host", "upstream")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap();
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        Ok(body.to_bytes().to_vec())
    })
}

/// One chunk as an upstream might write it: the size in any case with leading zeros,
/// optional whitespace and extensions.
fn chunk() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(any::<u8>(), 1..40),
        0usize..3,
        any::<bool>(),
        prop_oneof![Just(""), Just(";a=b"), Just(" ;x"), Just("\t; q=\"v\"")],
    )
        .prop_map(|(data, zeros, upper, ext)| {
            let size = if upper {
                format!("{:X}", data.len())
            } else {
                format!("{:x}", data.len())
            };
            let mut out = format!("{}{size}{ext}\r\n", "0".repeat(zeros)).into_bytes();
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\r\n");
            out
        })
}

fn chunked_response() -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(chunk(), 0..6),
        prop_oneof![Just(""), Just("x-trailer: 1\r\n"), Just("a: b\r\nc: d\r\n")],
    )
        .prop_map(|(chunks, trailers)| {
            let mut wire = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
            chunks.iter().for_each(|c| wire.extend_from_slice(c));
            wire.extend_from_slice(format!("0\r\n{trailers}\r\n").as_bytes());
            wire
        })
}

/// A byte replaced, inserted or removed somewhere in the body part of the response.
#[derive(Clone, Debug)]
enum Mutation {
    Replace(usize, u8),
    Insert(usize, u8),
    Remove(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let byte = prop_oneof![
        Just(b'\r'),
        Just(b'\n'),
        Just(b';'),
        Just(b' '),
        Just(b'0'),
        Just(b'f'),
        Just(b'x'),
        any::<u8>()
    ];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(at, b)| Mutation::Replace(at, b)),
        (any::<usize>(), byte).prop_map(|(at, b)| Mutation::Insert(at, b)),
        any::<usize>().prop_map(Mutation::Remove),
    ]
}

fn mutate(mut wire: Vec<u8>, mutation: &Mutation) -> Vec<u8> {
    let head = wire.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body = wire.len() - head;
    match *mutation {
        Mutation::Replace(at, b) => wire[head + at % body] = b,
        Mutation::Insert(at, b) => wire.insert(head + at % (body + 1), b),
        Mutation::Remove(at) => {
            wire.remove(head + at % body);
        }
    }
    wire
}

/// A response head with framing headers in forms upstreams (or attackers) send.
fn framed_response() -> impl Strategy<Value = Vec<u8>> {
    let length = prop_oneof![
        Just("5"),
        Just("+5"),
        Just("05"),
        Just("5, 5"),
        Just("5,6"),
        Just("-1"),
        Just("0x5"),
        Just("99999999999999999999"),
        Just(""),
        Just("3"),
    ];
    let coding = prop_oneof![
        Just("chunked"),
        Just("Chunked"),
        Just("gzip, chunked"),
        Just("chunked, gzip"),
        Just("identity"),
    ];
    (
        proptest::option::of(length.clone()),
        proptest::option::of(length),
        proptest::option::of(coding),
    )
        .prop_map(|(first, second, coding)| {
            let mut wire = b"HTTP/1.1 200 OK\r\n".to_vec();
            for value in [first, second].into_iter().flatten() {
                wire.extend_from_slice(format!("content-length: {value}\r\n").as_bytes());
            }
            if let Some(coding) = coding {
                wire.extend_from_slice(format!("transfer-encoding: {coding}\r\n").as_bytes());
            }
            wire.extend_from_slice(b"\r\n5\r\nhello\r\n0\r\n\r\n");
            wire
        })
}

/// keygate accepts only what hyper accepts, and reads the same body from it.
fn agrees_with_hyper(wire: &[u8], piece: usize) -> Result<(), TestCaseError> {
    let ours = keygate_body(wire, piece);
    let theirs = hyper_body(wire);
    if let Ok(body) = &ours {
        prop_assert_eq!(
            Ok(body.clone()),
            theirs,
            "keygate accepted {:?}",
            String::from_utf8_lossy(wire)
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn well_formed_chunked_bodies_are_read_like_hyper(wire in chunked_response(), piece in 1usize..64) {
        let ours = keygate_body(&wire, piece);
        prop_assert!(ours.is_ok(), "{:?}: {:?}", String::from_utf8_lossy(&wire), ours);
        agrees_with_hyper(&wire, piece)?;
    }

    #[test]
    fn mutated_chunked_bodies_are_never_accepted_where_hyper_refuses(
        wire in chunked_response(), change in mutation(), piece in 1usize..64,
    ) {
        agrees_with_hyper(&mutate(wire, &change), piece)?;
    }

    #[test]
    fn framing_headers_are_read_like_hyper(wire in framed_response(), piece in 1usize..64) {
        agrees_with_hyper(&wire, piece)?;
    }
}
