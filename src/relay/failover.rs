//! Sending a request to the upstreams of its plan in turn (SPEC §12): the next one only when
//! the request cannot have been served — a connect failure, all connections busy, or a
//! complete 429/500/502/503/504/529 answer before any byte reached the client. Never after a
//! timeout or a failure mid-exchange, never on another answer. Each failure counts toward the
//! upstream's cooldown.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::Body as _;
use hyper::header::{HeaderMap, RETRY_AFTER};
use hyper::{Method, Response, Uri};

use super::record::{CallRecord, RequestSummary};
use super::stream_usage;
use super::upstream::http1::UpstreamBody;
use super::upstream::{Upstream, UpstreamFailure, MAX_DURATION_EXCEEDED};
use super::Refusal;
use crate::app::AppState;
use crate::error::ApiError;
use crate::upstreams::registry::Route;

/// Statuses that say the upstream did not serve the request (429: its own limit; 529:
/// Anthropic's "overloaded").
pub fn fails_over(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 504 | 529)
}

/// The client's request, kept until the last upstream it may go to has it encoded.
pub struct Outgoing {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Where the body's `model` and `stream_options` are (the model itself is the record's).
    pub summary: RequestSummary,
    /// A stream of OpenAI chunks (its usage may be asked for).
    pub chunks: bool,
}

/// The answer that is relayed, and from where.
pub struct Answered<'t> {
    pub response: Response<UpstreamBody>,
    /// The request had `include_usage` added (its usage chunk is removed from the stream).
    pub injected: bool,
    pub route: &'t Route,
}

/// Tries the upstreams of `plan` in order; `record` gets the one that answered (or was tried
/// last), the attempts, and the failures of those before it.
pub async fn send<'t>(
    state: &AppState,
    plan: &[&'t Route],
    outgoing: Outgoing,
    record: &mut CallRecord,
    started: Instant,
) -> Result<Answered<'t>, Refusal> {
    let mut outgoing = Some(outgoing);
    let mut failures = String::new();
    let deadline = state.upstream.deadline(started);
    let asked = Instant::now();
    let last = plan.len() - 1;
    for (attempt, route) in plan.iter().copied().enumerate() {
        let upstream = &*route.upstream;
        upstream.health.attempted();
        record.upstream_id = Some(route.spec.id);
        record.attempts = (attempt + 1) as u8;
        let Some(request) = outgoing.as_ref() else {
            break;
        };
        let (sent, splice) = body_for(route, request, record.model.as_deref());
        let mut wire = upstream.encode(&request.method, &request.uri, &request.headers, &sent);
        drop(sent);
        let method = request.method.clone();
        if attempt == last {
            // Nothing of the client's request is held while the last upstream answers,
            // however long that takes.
            outgoing = None;
        }
        let sending = async {
            match &splice {
                None => upstream.send(&wire, &method).await.map(|r| (r, false)),
                Some(splice) => stream_usage::send(upstream, &mut wire, &method, splice).await,
            }
        };
        let outcome = match deadline {
            None => Ok(sending.await),
            Some(deadline) => tokio::time::timeout_at(deadline, sending).await,
        };
        record.upstream_us = Some(super::record::micros(asked.elapsed()));
        // Only a failure reads the clock (for the upstream's health).
        let now = || state.clock.now_ms();
        let failure = match outcome {
            Err(_) => {
                upstream.health.failed(
                    now(),
                    MAX_DURATION_EXCEEDED,
                    None,
                    &state.upstreams.cooldown,
                );
                return Err(refusal(
                    record,
                    failures,
                    ApiError::GatewayTimeout(
                        "The upstream did not answer in time; try again later".into(),
                    ),
                    MAX_DURATION_EXCEEDED.into(),
                ));
            }
            Ok(Err(failure)) => failure,
            Ok(Ok((response, injected))) => {
                let status = response.status().as_u16();
                if !fails_over(status) {
                    upstream.health.succeeded();
                    keep_failures(record, failures);
                    return Ok(Answered {
                        response,
                        injected,
                        route,
                    });
                }
                let retry_after = retry_after(response.headers());
                upstream.health.failed(
                    now(),
                    &format!("HTTP {status}"),
                    if status == 429 { retry_after } else { None },
                    &state.upstreams.cooldown,
                );
                if attempt == last {
                    keep_failures(record, failures);
                    return Ok(Answered {
                        response,
                        injected,
                        route,
                    });
                }
                match complete(response, upstream.timeout()).await {
                    Ok(detail) => {
                        note(&mut failures, upstream, &format!("HTTP {status}{detail}"));
                        continue;
                    }
                    // Longer than is read to look at: relayed as it is.
                    Err(Incomplete::Relay(response)) => {
                        keep_failures(record, failures);
                        return Ok(Answered {
                            response: *response,
                            injected,
                            route,
                        });
                    }
                    // It stalled or broke while being read: the exchange may still be going
                    // on, so no other upstream gets the request, and what was read of the
                    // answer is not the client's whole answer: 504 or 502.
                    Err(Incomplete::Failed(failure)) => {
                        let (error, reason) = describe(state, upstream, failure);
                        let reason = format!("HTTP {status}, then {reason}");
                        return Err(refusal(record, failures, error, reason));
                    }
                }
            }
        };
        // The request cannot have been served when no connection took it (`Connect`,
        // `Busy`); a timeout or a failure mid-exchange may have reached the upstream.
        let retryable = matches!(failure, UpstreamFailure::Connect(_) | UpstreamFailure::Busy);
        let (error, reason) = describe(state, upstream, failure);
        if !matches!(error, ApiError::Unavailable { .. }) {
            upstream
                .health
                .failed(now(), &reason, None, &state.upstreams.cooldown);
        }
        if retryable && attempt < last {
            note(&mut failures, upstream, &reason);
            continue;
        }
        return Err(refusal(record, failures, error, reason));
    }
    Err(refusal(
        record,
        failures,
        ApiError::BadGateway("No upstream could take the request; try again later".into()),
        "no upstream left to try".into(),
    ))
}

/// The request body as `route` takes it: its `model` renamed by the upstream's `model_map`,
/// and for a stream of chunks an upstream counts, `include_usage` added.
fn body_for<'a>(
    route: &Route,
    request: &'a Outgoing,
    model: Option<&str>,
) -> (Cow<'a, [u8]>, Option<stream_usage::Splice>) {
    let mut body = Cow::Borrowed(&request.body[..]);
    let mut summary = Cow::Borrowed(&request.summary);
    if let (Some(mapped), Some(at)) = (route.spec.mapped(model), request.summary.model_at.clone()) {
        let mut renamed = Vec::with_capacity(body.len() + mapped.len());
        renamed.extend_from_slice(&body[..at.start]);
        // A JSON string of the mapped name (it was validated as text).
        renamed.extend_from_slice(
            serde_json::to_string(mapped)
                .unwrap_or_else(|_| "\"\"".into())
                .as_bytes(),
        );
        renamed.extend_from_slice(&body[at.end..]);
        summary = Cow::Owned(RequestSummary::read(&renamed));
        body = Cow::Owned(renamed);
    }
    if !request.chunks || !route.upstream.takes_stream_options() {
        return (body, None);
    }
    match summary
        .end
        .and_then(|end| stream_usage::include_usage(&body, summary.stream_options.clone(), end))
    {
        Some((spliced, splice)) => (Cow::Owned(spliced), Some(splice)),
        None => (body, None),
    }
}

/// A failed answer that could not be read to its end.
enum Incomplete {
    /// Longer than `complete` reads: the answer to relay, what was read of it given back.
    Relay(Box<Response<UpstreamBody>>),
    /// It stalled (`Timeout`) or broke (`Other`) while being read.
    Failed(UpstreamFailure),
}

/// Reads the rest of a failed answer (up to a limit, within `timeout`): Ok with a short
/// detail when it was complete (so the request can go elsewhere).
async fn complete(
    response: Response<UpstreamBody>,
    timeout: Duration,
) -> Result<String, Incomplete> {
    let (parts, mut body) = response.into_parts();
    let peeked = tokio::time::timeout(timeout, stream_usage::peek(&mut body)).await;
    match peeked {
        Ok(Ok(bytes)) if body.is_end_stream() => {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(200)]);
            let text = text.trim();
            Ok(if text.is_empty() {
                String::new()
            } else {
                format!(" ({text})")
            })
        }
        Ok(Ok(bytes)) => {
            body.replay(bytes);
            Err(Incomplete::Relay(Box::new(Response::from_parts(
                parts, body,
            ))))
        }
        Ok(Err(err)) => Err(Incomplete::Failed(UpstreamFailure::Other(format!(
            "upstream connection failed mid-response: {err}"
        )))),
        Err(_) => Err(Incomplete::Failed(UpstreamFailure::Timeout)),
    }
}

/// A 429's `Retry-After` in seconds (an HTTP date is not used for cooling).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers
        .get(RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs))
}

/// The row of an answered request keeps the failures of the upstreams tried before.
fn keep_failures(record: &mut CallRecord, failures: String) {
    if !failures.is_empty() {
        record.set_error(failures);
    }
}

/// Adds an upstream's failure to those kept for the call record.
fn note(failures: &mut String, upstream: &Upstream, what: &str) {
    if !failures.is_empty() {
        failures.push_str("; ");
    }
    failures.push_str("upstream `");
    failures.push_str(&upstream.name);
    failures.push_str("` failed: ");
    failures.push_str(&upstream.redact(what));
}

/// The refusal of a request no upstream served: the error the client gets and the last
/// upstream's failure, after those of the upstreams before it in the call record.
fn refusal(record: &mut CallRecord, failures: String, error: ApiError, reason: String) -> Refusal {
    keep_failures(record, failures);
    Refusal::new(error, reason)
}

/// What the client is told, and the call record's reason, for a failure of `upstream`.
fn describe(state: &AppState, upstream: &Upstream, failure: UpstreamFailure) -> (ApiError, String) {
    match failure {
        UpstreamFailure::Connect(cause) => (
            ApiError::BadGateway("The upstream could not be reached; try again later".into()),
            upstream.redact(&format!("upstream connect failed: {cause}")),
        ),
        UpstreamFailure::Busy => (
            ApiError::Unavailable {
                message: "Too many requests are waiting for the upstream; try again in a moment"
                    .into(),
                retry_after: 1,
            },
            format!(
                "all {} upstream connections stayed busy (KEYGATE_UPSTREAM_MAX_CONNECTIONS)",
                state.config.upstream_max_connections
            ),
        ),
        UpstreamFailure::Timeout => (
            ApiError::GatewayTimeout("The upstream did not answer in time; try again later".into()),
            format!("upstream timed out after {:?}", upstream.timeout()),
        ),
        UpstreamFailure::Other(cause) => (
            ApiError::BadGateway("The upstream failed to answer; try again later".into()),
            upstream.redact(&format!("upstream request failed: {cause}")),
        ),
    }
}
