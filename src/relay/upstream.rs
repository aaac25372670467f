//! The upstream hop: build the request, swap credentials, send it on pooled connections, and
//! stream the answer back through a tee that completes the call record.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::time::Sleep;

use super::record::{CallRecord, UsageScan};
use crate::config::Config;
use crate::tasks::log_writer::LogSink;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why the upstream gave no response.
#[derive(Debug)]
pub enum UpstreamFailure {
    Connect(String),
    Timeout,
    Other(String),
}

/// The upstream: its base URL, its credential, and a pooled keep-alive client.
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    base: String,
    credential: Option<HeaderValue>,
    timeout: Duration,
}

/// Request headers never forwarded: hop-by-hop, the client's credentials and cookies, and
/// accept-encoding (so the answer arrives readable for its usage).
const DROPPED_REQUEST_HEADERS: &[&str] = &[
    "host",
    "authorization",
    "x-api-key",
    "cookie",
    "content-length",
    "accept-encoding",
    "forwarded",
    "x-forwarded-for",
    "x-real-ip",
];

/// Hop-by-hop headers (RFC 9110 §7.6.1), dropped in both directions.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

impl Upstream {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .build(https);
        let credential = config
            .upstream_api_key
            .as_ref()
            .map(|key| {
                let mut value = HeaderValue::from_str(&format!("Bearer {key}")).context(
                    "KEYGATE_UPSTREAM_API_KEY: contains characters not allowed in a header",
                )?;
                value.set_sensitive(true);
                anyhow::Ok(value)
            })
            .transpose()?;
        Ok(Upstream {
            client,
            base: config.upstream_url.clone(),
            credential,
            timeout: config.upstream_timeout,
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `/v1{rest}?{query}` to `{upstream}{rest}?{query}` with the upstream's credential.
    pub async fn send(
        &self,
        method: Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response<Incoming>, UpstreamFailure> {
        let rest = uri.path().strip_prefix("/v1").unwrap_or(uri.path());
        let target = match uri.query() {
            Some(query) => format!("{}{rest}?{query}", self.base),
            None => format!("{}{rest}", self.base),
        };
        let mut request = Request::builder()
            .method(method)
            .uri(target)
            .body(Full::new(body))
            .map_err(|e| {
                UpstreamFailure::Other(format!("cannot build the upstream request: {e}"))
            })?;
        copy_headers(headers, request.headers_mut(), DROPPED_REQUEST_HEADERS);
        if let Some(credential) = &self.credential {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, credential.clone());
        }
        match tokio::time::timeout(self.timeout, self.client.request(request)).await {
            Err(_) => Err(UpstreamFailure::Timeout),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(err)) if err.is_connect() => Err(UpstreamFailure::Connect(describe(&err))),
            Ok(Err(err)) => Err(UpstreamFailure::Other(describe(&err))),
        }
    }
}

/// The error and its causes on one line, e.g. "client error (Connect): Connection refused".
fn describe(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Copies end-to-end headers, leaving out hop-by-hop ones, those named in `Connection`, and `extra`.
pub fn copy_headers(from: &HeaderMap, to: &mut HeaderMap, extra: &[&str]) {
    let named_by_connection: Vec<HeaderName> = from
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for (name, value) in from {
        let text = name.as_str();
        if HOP_BY_HOP.contains(&text) || extra.contains(&text) || named_by_connection.contains(name)
        {
            continue;
        }
        to.append(name.clone(), value.clone());
    }
}

/// Builds the client's response from the upstream's, its body teed into the call record.
pub fn respond(
    upstream: Response<Incoming>,
    mut record: CallRecord,
    started: Instant,
    sink: LogSink,
    idle_timeout: Duration,
) -> Response<RecordedBody> {
    let (parts, body) = upstream.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let scan = UsageScan::for_content_type(content_type);
    record.http_status = parts.status.as_u16();
    record.stream = matches!(scan, UsageScan::Sse { .. });
    let mut response = Response::new(RecordedBody {
        inner: body,
        idle: Box::pin(tokio::time::sleep(idle_timeout)),
        last_frame: tokio::time::Instant::now(),
        idle_timeout,
        call: Some(PendingCall {
            record,
            started,
            scan,
            sink,
            upstream_ok: parts.status.is_success(),
        }),
    });
    *response.status_mut() = parts.status;
    copy_headers(&parts.headers, response.headers_mut(), &[]);
    response
}

struct PendingCall {
    record: CallRecord,
    started: Instant,
    scan: UsageScan,
    sink: LogSink,
    upstream_ok: bool,
}

/// The upstream's body, forwarded frame by frame as it arrives; it counts, scans for usage,
/// and sends the call record exactly once: at the end, on an error, or when dropped early.
pub struct RecordedBody {
    inner: Incoming,
    /// Fires at the latest possible idle deadline; re-armed from `last_frame` only when it
    /// fires, so a busy stream costs no timer work per frame.
    idle: Pin<Box<Sleep>>,
    last_frame: tokio::time::Instant,
    idle_timeout: Duration,
    call: Option<PendingCall>,
}

impl RecordedBody {
    fn finish(&mut self, failure: Option<String>) {
        let Some(mut call) = self.call.take() else {
            return;
        };
        let (usage, upstream_message) = call.scan.finish();
        let record = &mut call.record;
        record.usage = usage;
        record.response_time = call.started.elapsed().as_millis() as i64;
        match failure {
            Some(failure) => {
                record.success = false;
                record.error_message = Some(failure);
            }
            None if call.upstream_ok => record.success = true,
            None => {
                record.success = false;
                let mut message = format!("upstream returned HTTP {}", record.http_status);
                if let Some(detail) = upstream_message {
                    message.push_str(": ");
                    message.extend(detail.chars().take(300));
                }
                record.error_message = Some(message);
            }
        }
        tracing::debug!(
            key_id = record.api_key_id,
            status = record.http_status,
            "relayed"
        );
        call.sink.record(call.record);
    }
}

impl Body for RecordedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(call)) = (frame.data_ref(), this.call.as_mut()) {
                    call.record.response_size += data.len() as i64;
                    call.scan.feed(data);
                }
                if this.inner.is_end_stream() {
                    this.finish(None);
                } else {
                    this.last_frame = tokio::time::Instant::now();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(err))) => {
                this.finish(Some(format!(
                    "upstream connection failed mid-response: {err}"
                )));
                Poll::Ready(Some(Err(err.into())))
            }
            Poll::Ready(None) => {
                this.finish(None);
                Poll::Ready(None)
            }
            Poll::Pending => {
                while this.call.is_some() && this.idle.as_mut().poll(cx).is_ready() {
                    let deadline = this.last_frame + this.idle_timeout;
                    if deadline <= tokio::time::Instant::now() {
                        this.finish(Some("upstream timed out mid-response".into()));
                        return Poll::Ready(Some(Err("upstream timed out mid-response".into())));
                    }
                    this.idle.as_mut().reset(deadline);
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for RecordedBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.finish(None);
        } else {
            self.finish(Some(
                "client disconnected before the response was complete".into(),
            ));
        }
    }
}
