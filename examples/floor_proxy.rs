//! The cheapest relay keygate's stack can be: a bench yardstick, not a product. hyper's HTTP/1.1
//! server on tokio's single-threaded runtime (as keygate's), each client connection with its own
//! keep-alive upstream connection, the request body forwarded as it came and the answer read by
//! its `Content-Length` — no keys, limits, usage, call log, timeouts or streaming.
//!
//! ```text
//! floor_proxy --listen 127.0.0.1:PORT --upstream 127.0.0.1:PORT
//! ```
//!
//! `bench/run.sh` runs it (target `floor`) beside nginx and keygate, to tell what of keygate's CPU
//! per request is the stack's (this) and what is keygate's own work. It relays only answers with
//! a `Content-Length` (the bench's chat loads), not streams.
//!
//! `FLOOR_SPIN_NS=N` busy-waits N ns in each request: a proxy made slower by user-space work
//! alone, to measure how the kernel's and the upstream's CPU per request grow with it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;

fn main() {
    let mut args = std::env::args().skip(1);
    let (mut listen, mut upstream): (Option<SocketAddr>, Option<SocketAddr>) = (None, None);
    while let Some(arg) = args.next() {
        let value = args.next().and_then(|v| v.parse().ok());
        match arg.as_str() {
            "--listen" => listen = value,
            "--upstream" => upstream = value,
            _ => usage(),
        }
    }
    let (Some(listen), Some(upstream)) = (listen, upstream) else {
        usage()
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(serve(listen, upstream));
}

fn usage() -> ! {
    eprintln!("usage: floor_proxy --listen ADDR --upstream ADDR");
    std::process::exit(2);
}

async fn serve(listen: SocketAddr, upstream: SocketAddr) {
    let listener = TcpListener::bind(listen).await.expect("bind");
    loop {
        let Ok((socket, _)) = listener.accept().await else {
            continue;
        };
        let _ = socket.set_nodelay(true);
        tokio::spawn(async move {
            let conn = Arc::new(Mutex::new(None::<Upstream>));
            let service = service_fn(move |request: Request<Incoming>| {
                let conn = conn.clone();
                async move {
                    let mut conn = conn.lock().await;
                    let answer = relay(&mut conn, upstream, request).await;
                    Ok::<_, Infallible>(answer.unwrap_or_else(|_| {
                        let mut bad = Response::new(Full::new(Bytes::new()));
                        *bad.status_mut() = StatusCode::BAD_GATEWAY;
                        bad
                    }))
                }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(socket), service)
                .await;
        });
    }
}

/// `FLOOR_SPIN_NS`, or 0.
static SPIN: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
    std::env::var("FLOOR_SPIN_NS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
});

struct Upstream {
    stream: TcpStream,
    buf: BytesMut,
}

async fn relay(
    conn: &mut Option<Upstream>,
    addr: SocketAddr,
    request: Request<Incoming>,
) -> std::io::Result<Response<Full<Bytes>>> {
    let (parts, body) = request.into_parts();
    let spin = *SPIN;
    if spin > 0 {
        let until = std::time::Instant::now() + std::time::Duration::from_nanos(spin);
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
    }
    let body = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    if conn.is_none() {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        *conn = Some(Upstream {
            stream,
            buf: BytesMut::with_capacity(8192),
        });
    }
    let up = conn.as_mut().expect("connected");
    let mut out = Vec::with_capacity(256 + body.len());
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.uri.path().as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\nhost: upstream\r\nauthorization: Bearer sk-floor\r\ncontent-type: application/json\r\ncontent-length: ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n\r\n");
    out.extend_from_slice(&body);
    if let Err(err) = up.stream.write_all(&out).await {
        *conn = None;
        return Err(err);
    }
    let answer = read_answer(up).await;
    if answer.is_err() {
        *conn = None;
    }
    answer
}

/// One answer with a `Content-Length` body, from the connection's buffer and socket.
async fn read_answer(up: &mut Upstream) -> std::io::Result<Response<Full<Bytes>>> {
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut head = httparse::Response::new(&mut headers);
        if let httparse::Status::Complete(head_len) =
            head.parse(&up.buf).map_err(std::io::Error::other)?
        {
            let status = head.code.unwrap_or(502);
            let mut length = None;
            let mut content_type = None;
            for header in head.headers.iter() {
                if header.name.eq_ignore_ascii_case("content-length") {
                    length = std::str::from_utf8(header.value)
                        .ok()
                        .and_then(|v| v.parse::<usize>().ok());
                } else if header.name.eq_ignore_ascii_case("content-type") {
                    content_type = HeaderValue::from_bytes(header.value).ok();
                }
            }
            // Anything else (a chunked stream) would leave the connection out of step: refused.
            let length = length.ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "floor_proxy relays only answers with a Content-Length",
                )
            })?;
            while up.buf.len() < head_len + length {
                if up.stream.read_buf(&mut up.buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
            let _ = up.buf.split_to(head_len);
            let body = up.buf.split_to(length).freeze();
            let mut response = Response::new(Full::new(body));
            *response.status_mut() =
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
            if let Some(content_type) = content_type {
                response.headers_mut().insert(CONTENT_TYPE, content_type);
            }
            return Ok(response);
        }
        up.buf.reserve(4096);
        if up.stream.read_buf(&mut up.buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}
