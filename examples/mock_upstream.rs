//! A small, fast OpenAI-compatible mock upstream for benchmarking keygate.
//!
//! ```text
//! mock_upstream --listen 127.0.0.1:PORT [--chunks N] [--chunk-delay-ms D] [--workers W]
//!               [--openai-headers]
//! ```
//!
//! * `POST /v1/chat/completions` with `"stream":true` in the body answers an SSE stream of
//!   N content chunks (each its own body frame, optionally D ms apart), a final chunk that
//!   carries `usage`, and `data: [DONE]`. Without it, answers one `chat.completion` JSON
//!   object with `usage` {5, 7, 12}.
//!   A request body may override the stream shape per request with
//!   `"mock_chunks":N` and/or `"mock_chunk_delay_ms":D` (used by the bench's pacing check).
//! * `POST /v1/messages` answers like Anthropic's Messages API: with `"stream":true` an event
//!   stream (`message_start` with the input and cache counts, N `content_block_delta` events,
//!   `message_delta` with the output count, `message_stop`), else one `message` JSON object.
//! * `GET /v1/models` answers a small model list.
//! * Anything else answers 404 `{"error":{"message":"not found"}}`.
//!
//! With `--openai-headers` every answer also carries the headers api.openai.com sends
//! (`OPENAI_HEADERS`: its organisation, version, request id and `x-ratelimit-*` headers and its
//! CDN's), so a measurement can include what a real answer's head costs to relay. The bench
//! runs without them (its history compares like with like).
//!
//! The runtime uses `--workers` threads (default 1) so it does not steal the bench's cores.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::time::{Instant, Sleep};

const CONTENT_CHUNK: &str = "data: {\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok \"},\"finish_reason\":null}]}\n\n";
const DONE_CHUNK: &str = "data: [DONE]\n\n";
const COMPLETION_JSON: &str = "{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"bench\",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Hello from the keygate bench mock.\"},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":7,\"total_tokens\":12},\"system_fingerprint\":null}";
const MODELS_JSON: &str = "{\"object\":\"list\",\"data\":[{\"id\":\"bench\",\"object\":\"model\",\"created\":1,\"owned_by\":\"keygate-bench\"},{\"id\":\"gpt-4o-mini\",\"object\":\"model\",\"created\":1,\"owned_by\":\"keygate-bench\"}]}";
const MESSAGE_START: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_bench\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"bench-claude\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":5,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}\n\nevent: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n";
const MESSAGE_DELTA_TEXT: &str = "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"tok \"}}\n\n";
const MESSAGE_STOP: &str = "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";
const MESSAGE_JSON: &str = "{\"id\":\"msg_bench\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"bench-claude\",\"content\":[{\"type\":\"text\",\"text\":\"Hello from the keygate bench mock.\"}],\"stop_reason\":\"end_turn\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":5,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":7}}";
const NOT_FOUND_JSON: &str = "{\"error\":{\"message\":\"not found\"}}";

/// The headers an answer of api.openai.com carries besides `content-type`, `content-length`
/// and `date` (as they come, in their order; the ids and cookie made up).
const OPENAI_HEADERS: [(&str, &str); 18] = [
    ("connection", "keep-alive"),
    ("access-control-expose-headers", "X-Request-ID"),
    ("openai-organization", "user-mockorganization000000"),
    ("openai-processing-ms", "362"),
    ("openai-project", "proj_mockproject000000000000"),
    ("openai-version", "2020-10-01"),
    ("x-ratelimit-limit-requests", "10000"),
    ("x-ratelimit-limit-tokens", "30000000"),
    ("x-ratelimit-remaining-requests", "9999"),
    ("x-ratelimit-remaining-tokens", "29999990"),
    ("x-ratelimit-reset-requests", "6ms"),
    ("x-ratelimit-reset-tokens", "0s"),
    ("x-request-id", "req_0123456789abcdef0123456789abcdef"),
    (
        "strict-transport-security",
        "max-age=31536000; includeSubDomains; preload",
    ),
    ("cf-cache-status", "DYNAMIC"),
    ("x-content-type-options", "nosniff"),
    ("server", "cloudflare"),
    ("cf-ray", "8d1c2f3a4b5c6d7e-SJC"),
];

struct Config {
    /// Add `OPENAI_HEADERS` to every answer.
    openai_headers: bool,
    chunks: usize,
    chunk_delay: Duration,
    content_chunk: Bytes,
    usage_chunk: Bytes,
    done_chunk: Bytes,
    /// Anthropic's `content_block_stop` and `message_delta` with the output count.
    message_end: Bytes,
}

fn usage_chunk(n: usize) -> Bytes {
    Bytes::from(format!(
        "data: {{\"id\":\"chatcmpl-bench\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"bench\",\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}],\"usage\":{{\"prompt_tokens\":5,\"completion_tokens\":{n},\"total_tokens\":{}}}}}\n\n",
        5 + n
    ))
}

/// SSE body: `chunks` content frames, one usage frame, one `[DONE]` frame, with an optional
/// delay before every frame but the first.
struct SseBody {
    /// Sent first (Anthropic's `message_start`), when there is one.
    head: Option<Bytes>,
    content_left: usize,
    stage: Stage,
    delay: Duration,
    first: bool,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
    content: Bytes,
    usage: Bytes,
    done: Bytes,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Content,
    Usage,
    Done,
    End,
}

impl Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.stage == Stage::End {
            return Poll::Ready(None);
        }
        if !this.first {
            if let Some(sleep) = this.sleep.as_mut() {
                if !this.armed {
                    sleep.as_mut().reset(Instant::now() + this.delay);
                    this.armed = true;
                }
                if sleep.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.armed = false;
            }
        }
        this.first = false;
        if let Some(head) = this.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        let data = match this.stage {
            Stage::Content => {
                this.content_left -= 1;
                if this.content_left == 0 {
                    this.stage = Stage::Usage;
                }
                this.content.clone()
            }
            Stage::Usage => {
                this.stage = Stage::Done;
                this.usage.clone()
            }
            Stage::Done => {
                this.stage = Stage::End;
                this.done.clone()
            }
            Stage::End => unreachable!(),
        };
        Poll::Ready(Some(Ok(Frame::data(data))))
    }

    fn is_end_stream(&self) -> bool {
        self.stage == Stage::End
    }
}

type RespBody = Either<Full<Bytes>, SseBody>;

fn json(status: StatusCode, body: &'static str) -> Response<RespBody> {
    let mut resp = Response::new(Either::Left(Full::new(Bytes::from_static(body.as_bytes()))));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

/// A 200 whose body is the event stream `sse`.
fn event_stream(sse: SseBody) -> Response<RespBody> {
    let mut resp = Response::new(Either::Right(sse));
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// Value of an unsigned integer JSON field `"name": 123`, found by plain text search.
fn int_field(hay: &[u8], name: &str) -> Option<u64> {
    let key = format!("\"{name}\"");
    let pos = memchr::memmem::find(hay, key.as_bytes())? + key.len();
    let rest = &hay[pos..];
    let rest = &rest[rest.iter().position(|b| !b" \t\r\n".contains(b))?..];
    let rest = rest.strip_prefix(b":")?;
    let start = rest.iter().position(|b| !b" \t\r\n".contains(b))?;
    let digits: Vec<u8> = rest[start..]
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .copied()
        .collect();
    std::str::from_utf8(&digits).ok()?.parse().ok()
}

async fn handle(
    req: Request<Incoming>,
    cfg: Arc<Config>,
) -> Result<Response<RespBody>, Infallible> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(json(
                StatusCode::BAD_REQUEST,
                "{\"error\":{\"message\":\"bad body\"}}",
            ))
        }
    };
    let resp = match (&method, path.as_str()) {
        (&Method::POST, "/v1/chat/completions") => {
            if contains(&body, b"\"stream\":true") || contains(&body, b"\"stream\": true") {
                let chunks = int_field(&body, "mock_chunks")
                    .map(|n| n.clamp(1, 100_000) as usize)
                    .unwrap_or(cfg.chunks);
                let delay = int_field(&body, "mock_chunk_delay_ms")
                    .map(Duration::from_millis)
                    .unwrap_or(cfg.chunk_delay);
                let usage = if chunks == cfg.chunks {
                    cfg.usage_chunk.clone()
                } else {
                    usage_chunk(chunks)
                };
                let sse = SseBody {
                    head: None,
                    content_left: chunks,
                    stage: Stage::Content,
                    delay,
                    first: true,
                    sleep: (!delay.is_zero()).then(|| Box::pin(tokio::time::sleep(delay))),
                    armed: false,
                    content: cfg.content_chunk.clone(),
                    usage,
                    done: cfg.done_chunk.clone(),
                };
                event_stream(sse)
            } else {
                json(StatusCode::OK, COMPLETION_JSON)
            }
        }
        (&Method::POST, "/v1/messages") => {
            if contains(&body, b"\"stream\":true") || contains(&body, b"\"stream\": true") {
                let sse = SseBody {
                    head: Some(Bytes::from_static(MESSAGE_START.as_bytes())),
                    content_left: cfg.chunks,
                    stage: Stage::Content,
                    delay: cfg.chunk_delay,
                    first: true,
                    sleep: (!cfg.chunk_delay.is_zero())
                        .then(|| Box::pin(tokio::time::sleep(cfg.chunk_delay))),
                    armed: false,
                    content: Bytes::from_static(MESSAGE_DELTA_TEXT.as_bytes()),
                    usage: cfg.message_end.clone(),
                    done: Bytes::from_static(MESSAGE_STOP.as_bytes()),
                };
                event_stream(sse)
            } else {
                json(StatusCode::OK, MESSAGE_JSON)
            }
        }
        (&Method::GET, "/v1/models") => json(StatusCode::OK, MODELS_JSON),
        _ => json(StatusCode::NOT_FOUND, NOT_FOUND_JSON),
    };
    Ok(resp)
}

fn usage() -> ! {
    eprintln!(
        "usage: mock_upstream --listen 127.0.0.1:PORT [--chunks N (20)] [--chunk-delay-ms D (0)] [--workers W (1)] [--openai-headers]"
    );
    std::process::exit(2);
}

fn main() {
    let mut listen: Option<SocketAddr> = None;
    let mut chunks: usize = 20;
    let mut delay_ms: u64 = 0;
    let mut workers: usize = 1;
    let mut openai_headers = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n.to_owned(), Some(v.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| args.next())
                .unwrap_or_else(|| usage())
        };
        match name.as_str() {
            "--listen" => listen = Some(value().parse().unwrap_or_else(|_| usage())),
            "--chunks" => chunks = value().parse().unwrap_or_else(|_| usage()),
            "--chunk-delay-ms" => delay_ms = value().parse().unwrap_or_else(|_| usage()),
            "--workers" => workers = value().parse().unwrap_or_else(|_| usage()),
            "--openai-headers" if inline.is_none() => openai_headers = true,
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    let listen = listen.unwrap_or_else(|| usage());
    if chunks == 0 || workers == 0 {
        usage();
    }

    let cfg = Arc::new(Config {
        openai_headers,
        chunks,
        chunk_delay: Duration::from_millis(delay_ms),
        content_chunk: Bytes::from_static(CONTENT_CHUNK.as_bytes()),
        usage_chunk: usage_chunk(chunks),
        done_chunk: Bytes::from_static(DONE_CHUNK.as_bytes()),
        message_end: Bytes::from(format!(
            "event: content_block_stop\ndata: {{\"type\":\"content_block_stop\",\"index\":0}}\n\nevent: message_delta\ndata: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":{chunks}}}}}\n\n"
        )),
    });

    let rt = keygate::server::runtime(workers).expect("tokio runtime");

    rt.block_on(async move {
        let listener = match TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("mock_upstream: cannot listen on {listen}: {e}");
                std::process::exit(1);
            }
        };
        eprintln!(
            "mock_upstream listening on {} (chunks={chunks}, chunk_delay_ms={delay_ms}, workers={workers})",
            listener.local_addr().map(|a| a.to_string()).unwrap_or_default()
        );
        let accept = async {
            loop {
                let (stream, _) = match listener.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        // e.g. EMFILE: back off briefly instead of spinning.
                        eprintln!("mock_upstream: accept error: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let cfg = cfg.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let cfg = cfg.clone();
                        async move {
                            let mut resp = handle(req, cfg.clone()).await?;
                            if cfg.openai_headers {
                                let headers = resp.headers_mut();
                                for (name, value) in OPENAI_HEADERS {
                                    headers.append(name, HeaderValue::from_static(value));
                                }
                            }
                            Ok::<_, Infallible>(resp)
                        }
                    });
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        };
        let shutdown = async {
            #[cfg(unix)]
            {
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            #[cfg(not(unix))]
            {
                let _ = tokio::signal::ctrl_c().await;
            }
        };
        tokio::select! {
            _ = accept => {}
            _ = shutdown => {}
        }
    });
}
