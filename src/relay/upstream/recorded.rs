//! The client's response: the upstream's status and headers, and its body teed into the call
//! record (bytes, usage, errors, idle timeout and total deadline) as it is forwarded.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::header;
use hyper::Response;
use tokio::time::Sleep;

use super::http1::UpstreamBody;
use super::{strip_hop_by_hop, Upstream};
use crate::limits::meter::Ticket;
use crate::relay::record::{CallRecord, Usage, UsageScan};
use crate::relay::redact::{mask, redact};
use crate::relay::stream_usage::UsageStrip;
use crate::tasks::log_writer::LogSink;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An upstream error's own message is kept up to this many characters in the call log.
const UPSTREAM_DETAIL_CHARS: usize = 300;

/// The row's reason when `KEYGATE_UPSTREAM_MAX_DURATION` ends a request.
pub const MAX_DURATION_EXCEEDED: &str = "upstream exceeded KEYGATE_UPSTREAM_MAX_DURATION";

/// Builds the client's response from the upstream's, its body teed into the call record.
/// `injected`: keygate added `include_usage` to the request, so a successful event stream has
/// what that brought removed (`relay::stream_usage`). `via` gives the body its timeouts, the
/// credential its record must not keep, and the prices of its usage. `ticket`: the request's
/// slot in its key's meter, held until the body ends and given its usage then.
pub fn respond(
    upstream: Response<UpstreamBody>,
    mut record: CallRecord,
    started: Instant,
    sink: LogSink,
    via: Arc<Upstream>,
    injected: bool,
    ticket: Option<Ticket>,
) -> Response<RecordedBody> {
    let (mut parts, body) = upstream.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    // The route's kind, as its path implies it (until the relay routes by kind).
    let scan = UsageScan::for_content_type(content_type, via.kind);
    record.http_status = parts.status.as_u16();
    record.answered(started);
    record.stream = matches!(scan, UsageScan::Sse { .. });
    let strip = (injected && record.stream && parts.status.is_success()).then(|| {
        // Events are removed: the upstream's length, if it sent one, no longer holds.
        parts.headers.remove(header::CONTENT_LENGTH);
        Box::default()
    });
    let started_at = tokio::time::Instant::from_std(started);
    let mut response = Response::new(RecordedBody {
        inner: body,
        timer: None,
        last_frame: started_at,
        idle_timeout: via.timeout(),
        deadline: via.deadline(started),
        strip,
        call: Some(Box::new(PendingCall {
            record,
            started,
            scan,
            sink,
            upstream_ok: parts.status.is_success(),
            via,
            ticket,
            span: tracing::Span::current(),
        })),
    });
    *response.status_mut() = parts.status;
    strip_hop_by_hop(&mut parts.headers);
    *response.headers_mut() = parts.headers;
    response
}

struct PendingCall {
    record: CallRecord,
    started: Instant,
    scan: UsageScan,
    sink: LogSink,
    upstream_ok: bool,
    /// The upstream that answered: its credential is redacted from the record, its prices
    /// give the call's cost.
    via: Arc<Upstream>,
    ticket: Option<Ticket>,
    /// The request's span (`relay::relay`): the body outlives it, its log lines still name
    /// the key.
    span: tracing::Span,
}

/// The upstream's body, forwarded frame by frame as it arrives; it counts, scans for usage,
/// and sends the call record exactly once: at the end, on an error, or when dropped early.
pub struct RecordedBody {
    inner: UpstreamBody,
    /// The one timer: fires at the latest possible idle deadline or at the total `deadline`,
    /// whichever is first; re-armed from `last_frame` only when it fires, so a busy stream
    /// costs no timer work per frame. Armed at the first wait: a body that arrived with its
    /// head needs no timer at all.
    timer: Option<Pin<Box<Sleep>>>,
    last_frame: tokio::time::Instant,
    idle_timeout: Duration,
    /// When the whole request must be over (`KEYGATE_UPSTREAM_MAX_DURATION`), if set.
    deadline: Option<tokio::time::Instant>,
    /// Removes the usage chunk keygate asked for from a stream (None: the stream passes as it
    /// comes).
    strip: Option<Box<UsageStrip>>,
    /// Boxed: the response that carries this body is moved several times on its way to
    /// hyper, and the call is most of its size (~530 of ~760 bytes).
    call: Option<Box<PendingCall>>,
}

impl RecordedBody {
    fn finish(&mut self, failure: Option<String>) {
        let Some(mut call) = self.call.take() else {
            return;
        };
        let span = std::mem::replace(&mut call.span, tracing::Span::none());
        let _in_request = span.enter();
        let record = &mut call.record;
        // A success that is not a stream has its message read nowhere below.
        let (usage, upstream_message) = if call.upstream_ok && !record.stream {
            (call.scan.finish_usage(), None)
        } else {
            call.scan.finish()
        };
        if let Some(usage) = &usage {
            record.cost = call.via.prices.cost(record.model.as_deref(), usage);
        }
        if let Some(ticket) = call.ticket.take() {
            ticket.finish(usage.as_ref().map_or(0, Usage::tokens), record.cost);
        }
        record.usage = usage;
        record.response_time = call.started.elapsed().as_millis() as i64;
        match failure {
            Some(failure) => {
                record.success = false;
                record.set_error(failure);
            }
            // A stream answered 200, then carried an error event (Anthropic's `overloaded_error`
            // mid-stream): the call failed, whatever part of the answer came before.
            None if call.upstream_ok && record.stream => match upstream_message {
                None => record.success = true,
                Some(detail) => {
                    record.success = false;
                    record.set_error(format!(
                        "upstream stream ended with an error: {}",
                        stored_detail(&detail, call.via.secret.as_deref())
                    ));
                }
            },
            None if call.upstream_ok => record.success = true,
            None => {
                record.success = false;
                let mut message = format!("upstream returned HTTP {}", record.http_status);
                if let Some(detail) = upstream_message {
                    message.push_str(": ");
                    message.push_str(&stored_detail(&detail, call.via.secret.as_deref()));
                }
                record.set_error(message);
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

impl RecordedBody {
    /// A frame of a stream keygate asked the usage of, as the client gets it; `None` when
    /// nothing of it is to be sent now.
    fn strip_frame(&mut self, frame: Frame<Bytes>) -> Option<Frame<Bytes>> {
        let strip = self.strip.as_deref_mut()?;
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => return Some(frame),
        };
        let mut kept = strip.feed(data);
        if self.inner.is_end_stream() {
            kept = joined(kept, strip.finish());
        }
        self.count(kept.len());
        (!kept.is_empty()).then(|| Frame::data(kept))
    }

    /// Counts bytes sent to the client.
    fn count(&mut self, len: usize) {
        if let Some(call) = self.call.as_mut() {
            call.record.response_size += len as i64;
        }
    }
}

/// `a` then `b`, copying only when both have bytes.
fn joined(a: Bytes, b: Bytes) -> Bytes {
    if b.is_empty() {
        return a;
    }
    if a.is_empty() {
        return b;
    }
    let mut both = bytes::BytesMut::with_capacity(a.len() + b.len());
    both.extend_from_slice(&a);
    both.extend_from_slice(&b);
    both.freeze()
}

/// When the timer must next fire: the idle deadline, or the total one if sooner.
fn next_deadline(
    last_frame: tokio::time::Instant,
    idle_timeout: Duration,
    deadline: Option<tokio::time::Instant>,
) -> tokio::time::Instant {
    let idle = last_frame + idle_timeout;
    deadline.map_or(idle, |deadline| deadline.min(idle))
}

/// An upstream error's message as the call log keeps it: credentials redacted, then cut to
/// `UPSTREAM_DETAIL_CHARS` (redacted first, over a little more, so a secret is never cut in
/// two before it is found).
fn stored_detail(detail: &str, secret: Option<&str>) -> String {
    let window = UPSTREAM_DETAIL_CHARS + secret.map_or(0, str::len) + 64;
    let end = detail
        .char_indices()
        .nth(window)
        .map_or(detail.len(), |(at, _)| at);
    redact(&detail[..end], secret)
        .chars()
        .take(UPSTREAM_DETAIL_CHARS)
        .collect()
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
            Poll::Ready(Some(Ok(mut frame))) => {
                if let Some(call) = this.call.as_mut() {
                    if let (false, Some(secret)) = (call.upstream_ok, &call.via.secret) {
                        frame = match frame.into_data() {
                            Ok(data) => Frame::data(mask(data, secret)),
                            Err(frame) => frame,
                        };
                    }
                    if let Some(data) = frame.data_ref() {
                        call.scan.feed(data);
                        if this.strip.is_none() {
                            call.record.response_size += data.len() as i64;
                        }
                    }
                }
                if this.strip.is_some() {
                    match this.strip_frame(frame) {
                        Some(kept) => frame = kept,
                        None if this.inner.is_end_stream() => {
                            this.finish(None);
                            return Poll::Ready(None);
                        }
                        None => {
                            // All held back (an unfinished event, or the usage chunk): read on.
                            if this.timer.is_some() {
                                this.last_frame = tokio::time::Instant::now();
                            }
                            cx.waker().wake_by_ref();
                            return Poll::Pending;
                        }
                    }
                }
                if this.inner.is_end_stream() {
                    this.finish(None);
                } else if this.timer.is_some() {
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
                if let Some(rest) = this.strip.as_deref_mut().map(UsageStrip::finish) {
                    if !rest.is_empty() {
                        this.count(rest.len());
                        this.finish(None);
                        return Poll::Ready(Some(Ok(Frame::data(rest))));
                    }
                }
                this.finish(None);
                Poll::Ready(None)
            }
            Poll::Pending => {
                let timer = match &mut this.timer {
                    Some(timer) => timer,
                    None => {
                        this.last_frame = tokio::time::Instant::now();
                        let first =
                            next_deadline(this.last_frame, this.idle_timeout, this.deadline);
                        this.timer.insert(Box::pin(tokio::time::sleep_until(first)))
                    }
                };
                while this.call.is_some() && timer.as_mut().poll(cx).is_ready() {
                    let now = tokio::time::Instant::now();
                    let failure = if this.deadline.is_some_and(|deadline| deadline <= now) {
                        MAX_DURATION_EXCEEDED
                    } else if this.last_frame + this.idle_timeout <= now {
                        "upstream timed out mid-response"
                    } else {
                        let next = next_deadline(this.last_frame, this.idle_timeout, this.deadline);
                        timer.as_mut().reset(next);
                        continue;
                    };
                    this.finish(Some(failure.into()));
                    return Poll::Ready(Some(Err(failure.into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream() && !self.strip.as_ref().is_some_and(|strip| strip.holds())
    }

    fn size_hint(&self) -> SizeHint {
        match self.strip {
            None => self.inner.size_hint(),
            Some(_) => SizeHint::default(),
        }
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
