//! Usage for every streamed call: `stream_options.include_usage` added to the upstream
//! request, what it brings removed from the client's stream, and the fallback for upstreams
//! that refuse `stream_options` (SPEC §10).

mod filter;
mod splice;

use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use http_body_util::BodyExt;
use hyper::{Method, Response};

use super::upstream::http1::UpstreamBody;
use super::upstream::{Upstream, UpstreamFailure};
pub use filter::UsageStrip;
pub use splice::{include_usage, Splice};

/// Endpoints whose streams are OpenAI's chunk streams (`/v1/responses` streams its own events,
/// with usage always in its last one).
pub fn streams_chunks(method: &Method, path: &str) -> bool {
    *method == Method::POST && matches!(path, "/v1/chat/completions" | "/v1/completions")
}

/// An error answer is read up to this much to see whether it refuses `stream_options`.
pub(crate) const REFUSAL_PEEK_LIMIT: usize = 64 * 1024;

/// Sends `wire`, a request keygate added `include_usage` to (`splice`). When the upstream
/// refuses it with 400 or 422 naming `stream_options`, sends the client's own request once
/// more (the first was refused, not served) and, if that one is served, remembers that this
/// upstream does not take `stream_options`. Returns the answer and whether it answers the
/// spliced request (so its usage chunk is to be removed).
pub async fn send(
    upstream: &Upstream,
    wire: &mut Vec<u8>,
    method: &Method,
    splice: &Splice,
) -> Result<(Response<UpstreamBody>, bool), UpstreamFailure> {
    let response = upstream.send(wire, method).await?;
    if !matches!(response.status().as_u16(), 400 | 422) {
        return Ok((response, true));
    }
    let (parts, mut body) = response.into_parts();
    let peeked = match tokio::time::timeout(upstream.timeout(), peek(&mut body)).await {
        Err(_) => return Err(UpstreamFailure::Timeout),
        Ok(Err(err)) => {
            return Err(UpstreamFailure::Other(format!(
                "upstream connection failed mid-response: {err}"
            )))
        }
        Ok(Ok(peeked)) => peeked,
    };
    let refused =
        body.is_end_stream() && memchr::memmem::find(&peeked, b"stream_options").is_some();
    if !refused || !splice.undo(wire) {
        body.replay(peeked);
        return Ok((Response::from_parts(parts, body), true));
    }
    drop(body);
    tracing::debug!(
        status = parts.status.as_u16(),
        "the upstream refused stream_options; sending the request as the client sent it"
    );
    let response = upstream.send(wire, method).await?;
    if response.status().is_success() && upstream.refuse_stream_options() {
        tracing::warn!(
            "the upstream refuses stream_options (HTTP {}): streams go to it without \
             include_usage until keygate restarts, and their tokens are recorded as unknown \
             unless it reports them (KEYGATE_STREAM_USAGE=off says so up front)",
            parts.status.as_u16()
        );
    }
    Ok((response, false))
}

/// Reads `body` up to `REFUSAL_PEEK_LIMIT` (a little more: whole frames).
pub(crate) async fn peek(body: &mut UpstreamBody) -> std::io::Result<Bytes> {
    let mut kept = BytesMut::new();
    while kept.len() < REFUSAL_PEEK_LIMIT {
        match body.frame().await {
            None => break,
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    kept.extend_from_slice(&data);
                }
            }
        }
    }
    Ok(kept.freeze())
}
