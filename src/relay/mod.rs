//! The relay, `/v1/*`: authenticate → admit → read the body → forward upstream → stream back,
//! with one call record per request whatever happens.

pub mod auth;
pub mod client_ip;
pub mod confine;
mod failover;
mod json_back;
mod json_nested;
mod json_runs;
mod json_scan;
mod json_valid;
mod models;
pub mod policy;
pub mod record;
pub mod redact;
mod routing;
mod self_service;
pub mod stream_usage;
pub mod upstream;
mod usage_json;

use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::http::{header, request::Parts};
use axum::response::IntoResponse;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response};
use tracing::Instrument;

use crate::app::AppState;
use crate::error::ApiError;
use crate::keys::Status;
use crate::policy::Policy;
use crate::tasks::log_writer::LogSink;
use crate::upstreams::spec::Kind;
use record::{CallRecord, RequestSummary};
use upstream::RecordedBody;

/// A request the relay answers itself, and the reason for its log row.
struct Refusal {
    error: ApiError,
    reason: String,
}

impl Refusal {
    /// The reason is capped like every stored error message.
    fn new(error: ApiError, reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        record::cap(&mut reason, record::ERROR_MESSAGE_MAX_BYTES);
        Refusal { error, reason }
    }
}

/// A response's body: the upstream's, recorded as it streams past, or one keygate wrote
/// (a refusal, or an admin API answer). Not boxed: one allocation less per request.
#[allow(clippy::large_enum_variant)] // the large variant is the common one
pub enum ReplyBody {
    Upstream(RecordedBody),
    Local(Body),
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl http_body::Body for ReplyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ReplyBody::Upstream(body) => Pin::new(body).poll_frame(cx),
            ReplyBody::Local(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReplyBody::Upstream(body) => body.is_end_stream(),
            ReplyBody::Local(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReplyBody::Upstream(body) => body.size_hint(),
            ReplyBody::Local(body) => body.size_hint(),
        }
    }
}

/// Answers one `/v1/*` request (the server routes them here without the axum Router), in a
/// span that names its method, route and, once it authenticates, its key id (never the key):
/// every log line of the request, its streamed answer's included, carries them. The span is
/// at INFO under the target `keygate::request`: a filter below INFO for it
/// (`RUST_LOG=…,keygate::request=off`) leaves it out at no cost per request (enabled, the
/// log subscriber formats its fields once per request, into a small allocation).
pub async fn relay(
    state: &AppState,
    peer: SocketAddr,
    request: Request<Incoming>,
) -> Response<ReplyBody> {
    let span = tracing::info_span!(
        target: "keygate::request",
        "request",
        method = %request.method(),
        route = %crate::metrics::labels::route(request.uri().path()),
        key_id = tracing::field::Empty,
    );
    if span.is_disabled() {
        // Filtered out (the usual `RUST_LOG=warn` of a busy gateway): no span to enter on
        // every poll of the request's future.
        answer(state, peer, request, false).await
    } else {
        answer(state, peer, request, true).instrument(span).await
    }
}

/// `traced`: the request's span is enabled (and current while this runs).
async fn answer(
    state: &AppState,
    peer: SocketAddr,
    request: Request<Incoming>,
    traced: bool,
) -> Response<ReplyBody> {
    let started = Instant::now();
    let kind = routing::route_kind(request.uri().path());
    // Back-pressure: while the call-log queue is at its bound, new requests wait here (their
    // time counts in response_time). A client that leaves while waiting gets no row: nothing
    // of its request was read or sent on. When the store cannot write (a full disk, a lock
    // held elsewhere) and the queue is full, requests are refused at once instead: nothing is
    // served without its row, and nobody hangs.
    if !state.logs.has_room() {
        if let Err(cause) = state.logs.wait_for_room().await {
            tracing::debug!(%cause, "refusing a request: the call log cannot be written");
            state.metrics.refused_unlogged();
            let error = ApiError::Unavailable {
                message: "keygate cannot write its call log right now (its database is full or locked); retry shortly".into(),
                retry_after: 5,
            };
            return error_response(error, kind);
        }
    }
    let (parts, body) = request.into_parts();
    let mut call = Unanswered {
        record: CallRecord {
            timestamp: state.clock.now_ms(),
            endpoint: record::capped(parts.uri.path(), record::ENDPOINT_MAX_BYTES),
            ip_address: Some(client_ip::client_ip(
                peer,
                &parts.headers,
                &state.config.trusted_proxies,
            )),
            ..CallRecord::default()
        },
        started,
        sink: &state.logs,
        armed: true,
    };
    let outcome = forward(state, kind, parts, body, &mut call.record, started, traced).await;
    // From here the record is sent by this function or (moved into it) by the response body.
    call.armed = false;
    match outcome {
        Ok(response) => response,
        Err(refusal) => {
            let mut record = std::mem::take(&mut call.record);
            record.success = false;
            record.http_status = refusal.error.status().as_u16();
            // After the failures of upstreams tried before, if any.
            record.set_error(refusal.reason);
            record.response_time = started.elapsed().as_millis() as i64;
            record.answered(started);
            state.logs.record(record);
            error_response(refusal.error, kind)
        }
    }
}

/// `http_status` of the row of a request whose client left before the upstream answered:
/// nginx's 499 "Client Closed Request" (no response was sent, so no real status exists).
pub const CLIENT_CLOSED_REQUEST: u16 = 499;
/// `error_message` of that row.
pub const CLIENT_LEFT: &str = "client disconnected before the upstream answered";

/// The call record of a request under way. hyper drops `relay()`'s future when the client
/// closes its connection (or keygate closes it at the end of the shutdown grace), and then
/// this sends the row, unless `relay()` disarmed it on handing the record over. It lives on
/// the future's stack: no allocation per request.
struct Unanswered<'a> {
    record: CallRecord,
    started: Instant,
    sink: &'a LogSink,
    armed: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut record = std::mem::take(&mut self.record);
        record.success = false;
        record.http_status = CLIENT_CLOSED_REQUEST;
        record.error_message = Some(CLIENT_LEFT.into());
        record.response_time = self.started.elapsed().as_millis() as i64;
        tracing::debug!(key_id = record.api_key_id, "{CLIENT_LEFT}");
        self.sink.record(record);
    }
}

/// Sends the row of a request keygate answered itself, successfully.
fn answered_here(state: &AppState, record: &mut CallRecord, started: Instant, status: u16) {
    let mut record = std::mem::take(record);
    record.success = true;
    record.http_status = status;
    record.response_time = started.elapsed().as_millis() as i64;
    record.answered(started);
    state.logs.record(record);
}

/// keygate's own error answer, in the envelope of the route's API.
fn error_response(error: ApiError, kind: Kind) -> Response<ReplyBody> {
    match kind {
        Kind::OpenAi => error.into_response(),
        Kind::Anthropic => error.anthropic_response(),
    }
    .map(ReplyBody::Local)
}

async fn forward(
    state: &AppState,
    kind: Kind,
    parts: Parts,
    body: Incoming,
    record: &mut CallRecord,
    started: Instant,
    traced: bool,
) -> Result<Response<ReplyBody>, Refusal> {
    let key = auth::authenticate(
        &state.pool,
        &state.keyring.cache,
        &parts.headers,
        started,
        record.timestamp,
    )
    .await
    .map_err(refuse)?;
    record.api_key_id = Some(key.id);
    if traced {
        tracing::Span::current().record("key_id", key.id);
    }
    // Before admission: a request that may not be relayed neither starts an activation-mode
    // key's clock nor counts as the key's use; its row still names the key.
    confine::check(&parts.method, parts.uri.path())
        .map_err(|why| Refusal::new(why.error(), why.reason()))?;
    // The key's restrictions that the head decides, before any byte of the body is read. A
    // key that cannot be used at all gets its 401 from `admit` instead.
    let own = self_service::serves(&parts.method, parts.uri.path());
    check_head(&key, &parts, record, !own)?;
    if !own {
        routing::permitted(&key, kind)?;
    }
    if own {
        // About the key itself: answered here, not relayed and not a use of the key (nor the
        // first use of an activation-mode key).
        if key.lifecycle.status(record.timestamp) != Status::Pending {
            policy::admit(&state.pool, &state.keyring.cache, &key, record.timestamp)
                .await
                .map_err(refuse)?;
        }
        let answer = self_service::answer(state, &key, &parts, record.timestamp)
            .await
            .map_err(|error| {
                let reason = error.to_string();
                Refusal::new(error, reason)
            })?;
        answered_here(state, record, started, answer.status().as_u16());
        return Ok(answer);
    }
    // An activation-mode key restricted to some models starts its clock only once the body
    // shows an allowed model: a refused request is not its first use.
    let model_checked_first = key.policy.as_deref().is_some_and(Policy::restricts_models)
        && key.lifecycle.status(record.timestamp) == Status::Pending;
    if !model_checked_first {
        policy::admit(&state.pool, &state.keyring.cache, &key, record.timestamp)
            .await
            .map_err(refuse)?;
        record.authenticated = true;
    }

    let body = read_body(&parts, body, state.config.max_body_bytes).await?;
    record.request_size = body.len() as i64;
    let restricted = key.policy.as_deref().filter(|p| p.restricts_models());
    // A key restricted to some models has its body read strictly, in the same pass.
    let (mut summary, sole_model) = match restricted {
        Some(_) => RequestSummary::read_checked(&body),
        None => (RequestSummary::read(&body), None),
    };
    record.model = summary.model.take();
    record.stream = summary.stream == Some(true);
    let mut list_models = None;
    if let Some(restricted) = restricted {
        let path = parts.uri.path();
        let checked = if path == "/v1/models" {
            // The list is answered, filtered to the models this key may use.
            list_models = Some(restricted);
            Ok(())
        } else if let Some(id) = path.strip_prefix("/v1/models/") {
            restricted.model(Some(id))
        } else if parts.method == Method::POST {
            // Read strictly, as the upstream will: the skim takes the last `model` of
            // any text it can walk, which a client could use to name another.
            restricted.model(sole_model.as_deref())
        } else {
            Ok(())
        };
        if let Err(refused) = checked {
            // Not relayed: not the key's use (as for the refusals before admission).
            record.authenticated = false;
            return Err(forbid(refused));
        }
    }
    if model_checked_first {
        policy::admit(&state.pool, &state.keyring.cache, &key, record.timestamp)
            .await
            .map_err(refuse)?;
        record.authenticated = true;
    }
    let table = state.upstreams.table();
    if table.routes.len() > 1 && parts.method == Method::GET && parts.uri.path() == "/v1/models" {
        // Several upstreams: keygate lists what the key can reach.
        let answer = routing::model_list(&table, &key, &parts.headers, list_models, record).await;
        answered_here(state, record, started, answer.status().as_u16());
        return Ok(answer);
    }
    // The upstreams to try, before the request counts against the key's limits.
    let plan = routing::plan(state, &table, kind, &key, parts.uri.path(), record)?;
    // The key's limits: its meter admits the request (counting it) or refuses it with a 429.
    let admitted = match &key.limits {
        None => None,
        Some(limits) => {
            let meter = meter_of(state, &key, record.timestamp).await?;
            let admitted = meter.admit(limits, record.timestamp).map_err(|exceeded| {
                // Not relayed: not the key's use.
                record.authenticated = false;
                state.keyring.webhooks.limit_reached(
                    key.id,
                    exceeded.limit,
                    exceeded.retry_after,
                    record.timestamp,
                );
                Refusal::new(exceeded.error(), exceeded.reason())
            })?;
            record.meter = Some(meter.clone());
            Some(admitted)
        }
    };
    let chunks = record.stream && stream_usage::streams_chunks(&parts.method, parts.uri.path());
    let outgoing = failover::Outgoing {
        method: parts.method,
        uri: parts.uri,
        headers: parts.headers,
        body,
        summary,
        chunks,
    };
    let answered = failover::send(state, &plan, outgoing, record, started).await?;
    let injected = answered.injected;
    let response = answered.response;
    let via = answered.route.upstream.clone();
    let (ticket, quotas) = admitted.map(|a| (a.ticket, a.quotas)).unzip();
    let response = upstream::respond(
        response,
        std::mem::take(record),
        started,
        state.logs.clone(),
        via,
        injected,
        ticket,
    );
    let mut response = match list_models {
        Some(allowed) => models::filtered(response, allowed).await,
        None => response.map(ReplyBody::Upstream),
    };
    if let Some(quotas) = &quotas {
        crate::limits::headers::apply(response.headers_mut(), quotas);
    }
    Ok(response)
}

/// The restrictions a request's head decides (IP, client and, unless `endpoint` is false,
/// endpoint), for a key that may be used now.
fn check_head(
    key: &auth::AuthedKey,
    parts: &Parts,
    record: &CallRecord,
    endpoint: bool,
) -> Result<(), Refusal> {
    let Some(restricted) = &key.policy else {
        return Ok(());
    };
    if !matches!(
        key.lifecycle.status(record.timestamp),
        Status::Active | Status::Pending
    ) {
        return Ok(());
    }
    let user_agent = parts
        .headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    restricted
        .ip(record.ip_address)
        .and_then(|()| restricted.client(user_agent))
        .and_then(|()| {
            if endpoint {
                restricted.endpoint(parts.uri.path())
            } else {
                Ok(())
            }
        })
        .map_err(forbid)
}

/// The key's meter: found once per cached key, started (from the store) once per process.
async fn meter_of<'k>(
    state: &AppState,
    key: &'k auth::AuthedKey,
    now: i64,
) -> Result<&'k std::sync::Arc<crate::limits::meter::Meter>, Refusal> {
    if let Some(meter) = key.meter.get() {
        return Ok(meter);
    }
    let meter = state
        .keyring
        .meters
        .get_or_start(key.id, &state.pool, &state.logs, now)
        .await
        .map_err(|unmetered| {
            tracing::warn!(key_id = key.id, cause = %unmetered.0, "a key's meter could not start");
            Refusal::new(
                ApiError::Unavailable {
                    message: "keygate cannot check this key's limits right now (its database is busy or full); retry shortly".into(),
                    retry_after: 5,
                },
                format!("limits unchecked: {}", unmetered.0),
            )
        })?;
    Ok(key.meter.get_or_init(|| meter))
}

/// The 403 of a request the key's restrictions refuse, naming what and what is allowed.
fn forbid(refused: crate::policy::Refused) -> Refusal {
    let message = refused.to_string();
    Refusal::new(ApiError::Forbidden(message.clone()), message)
}

/// The 401 of SPEC §3, or a 500 when the store (not the key) failed.
fn refuse(failure: auth::AuthFailure) -> Refusal {
    let error = if failure.internal {
        ApiError::Internal(anyhow::anyhow!(failure.reason))
    } else {
        ApiError::InvalidKey
    };
    Refusal::new(error, failure.reason)
}

/// The whole request body, or 413 past the limit.
async fn read_body(parts: &Parts, body: Incoming, limit: usize) -> Result<bytes::Bytes, Refusal> {
    let too_large = || {
        Refusal::new(
            ApiError::PayloadTooLarge(limit),
            format!("request body over {limit} bytes"),
        )
    };
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(declared) = declared.filter(|n| *n > limit as u64) {
        // A client waiting for `100 Continue` has sent nothing yet: answer at once.
        let waits = parts
            .headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if !waits && declared - limit as u64 <= DRAIN_MAX_BYTES {
            drain(body, declared).await;
        }
        return Err(too_large());
    }
    let mut body = body;
    match collect(&mut body, limit).await {
        Ok(whole) => Ok(whole),
        Err(Unread::TooLarge) => {
            drain(body, DRAIN_MAX_BYTES).await;
            Err(too_large())
        }
        Err(Unread::Failed(err)) => Err(Refusal::new(
            ApiError::invalid("body", "the request body could not be read; send it again"),
            format!("client request body failed: {err}"),
        )),
    }
}

/// Why a body was not read whole.
enum Unread {
    TooLarge,
    Failed(hyper::Error),
}

/// The body's data up to `limit` bytes (trailers are dropped). A body that came in one frame,
/// as most do, is that frame: no list of frames to build and copy out of.
async fn collect(body: &mut Incoming, limit: usize) -> Result<Bytes, Unread> {
    let mut first = Bytes::new();
    let mut joined: Option<bytes::BytesMut> = None;
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame.map_err(Unread::Failed)?.into_data() else {
            continue;
        };
        total += data.len();
        if total > limit {
            return Err(Unread::TooLarge);
        }
        match &mut joined {
            Some(joined) => joined.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => {
                let mut both = bytes::BytesMut::with_capacity(total);
                both.extend_from_slice(&first);
                both.extend_from_slice(&data);
                joined = Some(both);
            }
        }
    }
    Ok(joined.map_or(first, bytes::BytesMut::freeze))
}

/// Past the body limit, up to this much more of the body (for up to `DRAIN_MAX_TIME`) is read
/// and dropped before the 413, so that the client has finished sending when the answer comes:
/// an early answer ends the HTTP/2 stream with RST_STREAM(NO_ERROR), which clients such as
/// curl report as a stream error instead of the 413 (and HTTP/1.1 clients as a broken pipe).
const DRAIN_MAX_BYTES: u64 = 1 << 20;
const DRAIN_MAX_TIME: std::time::Duration = std::time::Duration::from_secs(1);

/// Reads and drops up to `budget` bytes of `body` (at most `DRAIN_MAX_TIME`).
async fn drain(mut body: Incoming, budget: u64) {
    let read = async {
        let mut left = budget;
        while let Some(Ok(frame)) = body.frame().await {
            let len = frame.data_ref().map_or(0, |data| data.len() as u64);
            match left.checked_sub(len) {
                Some(rest) => left = rest,
                None => return,
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_MAX_TIME, read).await;
}
