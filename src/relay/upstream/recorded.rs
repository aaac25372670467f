//! The client's response: the upstream's status and headers, and its body teed into the call
//! record (bytes, usage, errors, idle timeout) as it is forwarded.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::header;
use hyper::Response;
use tokio::time::Sleep;

use super::http1::UpstreamBody;
use super::strip_hop_by_hop;
use crate::relay::record::{CallRecord, UsageScan};
use crate::tasks::log_writer::LogSink;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Builds the client's response from the upstream's, its body teed into the call record.
pub fn respond(
    upstream: Response<UpstreamBody>,
    mut record: CallRecord,
    started: Instant,
    sink: LogSink,
    idle_timeout: Duration,
) -> Response<RecordedBody> {
    let (mut parts, body) = upstream.into_parts();
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let scan = UsageScan::for_content_type(content_type);
    record.http_status = parts.status.as_u16();
    record.stream = matches!(scan, UsageScan::Sse { .. });
    let mut response = Response::new(RecordedBody {
        inner: body,
        idle: None,
        last_frame: tokio::time::Instant::from_std(started),
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
}

/// The upstream's body, forwarded frame by frame as it arrives; it counts, scans for usage,
/// and sends the call record exactly once: at the end, on an error, or when dropped early.
pub struct RecordedBody {
    inner: UpstreamBody,
    /// Fires at the latest possible idle deadline; re-armed from `last_frame` only when it
    /// fires, so a busy stream costs no timer work per frame. Armed at the first wait: a body
    /// that arrived with its head needs no timer at all.
    idle: Option<Pin<Box<Sleep>>>,
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
                } else if this.idle.is_some() {
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
                let idle = match &mut this.idle {
                    Some(idle) => idle,
                    None => {
                        this.last_frame = tokio::time::Instant::now();
                        this.idle
                            .insert(Box::pin(tokio::time::sleep(this.idle_timeout)))
                    }
                };
                while this.call.is_some() && idle.as_mut().poll(cx).is_ready() {
                    let deadline = this.last_frame + this.idle_timeout;
                    if deadline <= tokio::time::Instant::now() {
                        this.finish(Some("upstream timed out mid-response".into()));
                        return Poll::Ready(Some(Err("upstream timed out mid-response".into())));
                    }
                    idle.as_mut().reset(deadline);
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
