//! The upstream hop: build the request, swap credentials, and exchange it over a pooled
//! keep-alive HTTP/1.1 connection driven by the relaying task itself.

mod conn;
pub(crate) use conn::tls_connector;
pub mod http1;
pub mod recorded;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Response, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::{Config, StreamUsage};
use crate::upstreams::health::HealthState;
use crate::upstreams::models::ListCache;
use crate::upstreams::spec::{AuthHeader, Kind, UpstreamSpec, DEFAULT_ID, DEFAULT_NAME};
pub use conn::PoolStats;
use conn::{CheckoutError, Conn, Pool, Target};
use http1::{Head, UpstreamBody};
pub use recorded::{respond, RecordedBody, MAX_DURATION_EXCEEDED};

static ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");
/// Sent to Anthropic upstreams when the client sends no `anthropic-version`.
static DEFAULT_ANTHROPIC_VERSION: HeaderValue = HeaderValue::from_static("2023-06-01");

/// Why the upstream gave no response.
#[derive(Debug)]
pub enum UpstreamFailure {
    Connect(String),
    /// Every allowed upstream connection stayed busy while the request waited for one.
    Busy,
    Timeout,
    Other(String),
}

/// One upstream (the built-in `default` or a configured one): its pooled connections, the
/// headers this hop adds (its credential), how long it may take to answer, and its health.
pub struct Upstream {
    /// `DEFAULT_ID` for the built-in one.
    pub id: i64,
    /// Names it in call-log errors and metrics.
    pub name: Arc<str>,
    pub kind: Kind,
    pool: Arc<Pool>,
    /// Added to every request, encoded once: the upstream's credential in its header, its
    /// extra headers (`OpenAI-Organization`, …), and `Accept-Encoding: identity` (so the
    /// answer arrives readable for its usage).
    added: Vec<(HeaderName, HeaderValue)>,
    /// The upstream's credential, redacted from the upstream errors a call record keeps.
    secret: Option<Arc<str>>,
    timeout: Duration,
    max_duration: Option<Duration>,
    /// Prices every relayed call's usage when it ends.
    prices: Arc<crate::prices::Prices>,
    /// Streamed requests may get `stream_options.include_usage` added: set by its
    /// `stream_usage`, cleared (until restart) when the upstream refuses it.
    takes_stream_options: AtomicBool,
    /// `/v1/x` goes to `{base}/v1/x` (Anthropic's base URLs), not `{base}/x` (OpenAI's).
    keeps_v1: bool,
    /// Failures, cooldown and the last error (SPEC §12).
    pub health: HealthState,
    /// Its answer to `GET /v1/models`, when asked (`upstreams::models`).
    pub models: ListCache,
}

/// What an `Upstream` is made from.
pub struct Settings<'a> {
    pub id: i64,
    pub name: &'a str,
    pub kind: Kind,
    pub url: &'a Uri,
    pub credential: Option<(AuthHeader, &'a str)>,
    pub extra_headers: Vec<(String, String)>,
    pub timeout: Duration,
    pub max_duration: Option<Duration>,
    pub max_connections: usize,
    pub prices: Arc<crate::prices::Prices>,
    pub stream_usage: StreamUsage,
}

/// The client's request headers that are forwarded upstream; all others are dropped (the
/// client's credentials and cookies, `OpenAI-Organization`/`OpenAI-Project` (set from
/// configuration only), forwarding and proxy headers, `Host`, `Content-Length`, `Expect`,
/// `Accept-Encoding`, hop-by-hop headers, anything unknown). The list: content headers, what
/// the client accepts, its user agent, the SDKs' own headers (`X-Stainless-*` telemetry,
/// `Idempotency-Key`, `X-Request-Id`), OpenAI's `OpenAI-Beta`, Anthropic's
/// `Anthropic-Version` and `Anthropic-Beta`. Names arrive lower-case.
fn is_forwarded_request_header(name: &str) -> bool {
    matches!(
        name,
        "content-type"
            | "content-encoding"
            | "accept"
            | "accept-language"
            | "user-agent"
            | "openai-beta"
            | "idempotency-key"
            | "x-request-id"
            | "anthropic-version"
            | "anthropic-beta"
    ) || name.starts_with("x-stainless-")
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), dropped from responses (requests forward only the
/// allowlist, which has none of them).
fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name,
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

impl Upstream {
    /// The built-in upstream `default`: the environment's `KEYGATE_UPSTREAM_*`.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let extra = [
            (
                "OpenAI-Organization",
                &config.upstream_organization,
                "KEYGATE_UPSTREAM_ORGANIZATION",
            ),
            (
                "OpenAI-Project",
                &config.upstream_project,
                "KEYGATE_UPSTREAM_PROJECT",
            ),
        ];
        for (_, value, variable) in &extra {
            if let Some(value) = value {
                HeaderValue::from_str(value).with_context(|| {
                    format!("{variable}: contains characters not allowed in a header")
                })?;
            }
        }
        if let Some(key) = &config.upstream_api_key {
            HeaderValue::from_str(&format!("Bearer {key}"))
                .context("KEYGATE_UPSTREAM_API_KEY: contains characters not allowed in a header")?;
        }
        Upstream::with(Settings {
            id: DEFAULT_ID,
            name: DEFAULT_NAME,
            kind: Kind::OpenAi,
            url: &config.upstream_url,
            credential: config
                .upstream_api_key
                .as_deref()
                .map(|key| (AuthHeader::Bearer, key)),
            extra_headers: extra
                .iter()
                .filter_map(|(name, value, _)| Some((name.to_string(), (*value).clone()?)))
                .collect(),
            timeout: config.upstream_timeout,
            max_duration: config.upstream_max_duration,
            max_connections: config.upstream_max_connections,
            prices: config.prices.clone(),
            stream_usage: config.stream_usage,
        })
        .context("KEYGATE_UPSTREAM_URL")
    }

    /// A configured upstream, with the environment's defaults for what it leaves unset.
    pub fn configured(spec: &UpstreamSpec, config: &Config) -> anyhow::Result<Self> {
        let url: Uri = spec
            .base_url
            .parse()
            .with_context(|| format!("upstream `{}`: base_url", spec.name))?;
        Upstream::with(Settings {
            id: spec.id,
            name: &spec.name,
            kind: spec.kind,
            url: &url,
            credential: spec.api_key.as_deref().map(|key| (spec.auth_header, key)),
            extra_headers: spec
                .extra_headers
                .iter()
                .map(|(name, value)| (name.clone(), value.clone()))
                .collect(),
            timeout: spec
                .timeout_seconds
                .map_or(config.upstream_timeout, |s| Duration::from_secs(s.into())),
            max_duration: config.upstream_max_duration,
            max_connections: config.upstream_max_connections,
            prices: config.prices.clone(),
            stream_usage: spec.stream_usage,
        })
        .with_context(|| format!("upstream `{}`", spec.name))
    }

    pub fn with(settings: Settings<'_>) -> anyhow::Result<Self> {
        let mut added = Vec::new();
        if let Some((header, key)) = settings.credential {
            let (name, value) = match header {
                AuthHeader::Bearer => (header::AUTHORIZATION, format!("Bearer {key}")),
                AuthHeader::ApiKey => (HeaderName::from_static("api-key"), key.to_owned()),
                AuthHeader::XApiKey => (HeaderName::from_static("x-api-key"), key.to_owned()),
            };
            let mut value = HeaderValue::from_str(&value)
                .context("api_key: contains characters not allowed in a header")?;
            value.set_sensitive(true);
            added.push((name, value));
        }
        for (name, value) in &settings.extra_headers {
            let name = HeaderName::from_bytes(name.as_bytes())
                .with_context(|| format!("extra_headers: `{name}` is not a header name"))?;
            let value = HeaderValue::from_str(value)
                .with_context(|| format!("extra_headers.{name}: not a header value"))?;
            added.push((name, value));
        }
        added.push((
            header::ACCEPT_ENCODING,
            HeaderValue::from_static("identity"),
        ));
        let pool = Arc::new(Pool::new(
            Target::new(settings.url)?,
            settings.max_connections,
        ));
        Pool::watch(&pool);
        Ok(Upstream {
            id: settings.id,
            name: Arc::from(settings.name),
            kind: settings.kind,
            pool,
            added,
            secret: settings.credential.map(|(_, key)| Arc::from(key)),
            timeout: settings.timeout,
            max_duration: settings.max_duration,
            prices: settings.prices,
            takes_stream_options: AtomicBool::new(settings.stream_usage == StreamUsage::Inject),
            keeps_v1: settings.kind == Kind::Anthropic,
            health: HealthState::default(),
            models: ListCache::default(),
        })
    }

    /// Whether streamed requests get `include_usage` added (see `relay::stream_usage`).
    pub fn takes_stream_options(&self) -> bool {
        self.takes_stream_options.load(Ordering::Relaxed)
    }

    /// Remembers that the upstream refused `stream_options`; true the first time.
    pub fn refuse_stream_options(&self) -> bool {
        self.takes_stream_options.swap(false, Ordering::Relaxed)
    }

    /// `GET /v1/{rest}` from this upstream, its whole answer read (up to `max_bytes`) within
    /// its timeout: for model lists and probes, never for relayed requests.
    pub async fn get(&self, rest: &str, max_bytes: usize) -> Result<(u16, Bytes), String> {
        use http_body_util::{BodyExt, Limited};
        let uri: Uri = format!("/v1/{rest}")
            .parse()
            .map_err(|_| format!("`{rest}` is not a path"))?;
        let wire = self.encode(&Method::GET, &uri, &HeaderMap::new(), b"");
        let exchange = async {
            let response =
                self.send(&wire, &Method::GET)
                    .await
                    .map_err(|failure| match failure {
                        UpstreamFailure::Connect(cause) => format!("connect failed: {cause}"),
                        UpstreamFailure::Busy => "all connections busy".to_string(),
                        UpstreamFailure::Timeout => format!("no answer within {:?}", self.timeout),
                        UpstreamFailure::Other(cause) => cause,
                    })?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), max_bytes)
                .collect()
                .await
                .map_err(|err| format!("answer unreadable: {err}"))?;
            Ok((status, body.to_bytes()))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)))
            .map_err(|err| self.redact(&err))
    }

    /// `text` with this upstream's credential masked (for what the call log keeps).
    pub fn redact(&self, text: &str) -> String {
        crate::relay::redact::redact(text, self.secret.as_deref())
    }

    /// The connection pool's state now (for metrics).
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.stats()
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// When a request that arrived at `started` must be over (`KEYGATE_UPSTREAM_MAX_DURATION`).
    pub fn deadline(&self, started: std::time::Instant) -> Option<tokio::time::Instant> {
        let started = tokio::time::Instant::from_std(started);
        self.max_duration.map(|max| started + max)
    }

    /// The wire form of `/v1{rest}?{query}` for `{upstream}{rest}?{query}`: the client's
    /// allowed headers, then the ones this hop adds (the upstream's credential in place of the
    /// client's). Encoded before anything is awaited, so the caller can drop the client's head
    /// (and the server's read buffer it pins) meanwhile.
    pub fn encode(&self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
        let target = &self.pool.target;
        let rest = if self.keeps_v1 {
            uri.path()
        } else {
            uri.path().strip_prefix("/v1").unwrap_or(uri.path())
        };
        let added = self.added.iter().map(|(name, value)| (name, value));
        // Anthropic's API requires a version: the client's, else the one its SDKs send.
        let version = (self.kind == Kind::Anthropic && !headers.contains_key(&ANTHROPIC_VERSION))
            .then_some((&ANTHROPIC_VERSION, &DEFAULT_ANTHROPIC_VERSION));
        let forwarded = end_to_end(headers).chain(added).chain(version);
        let mut wire = Vec::with_capacity(512 + body.len());
        let path = [target.base_path.as_str(), rest];
        let query = uri.query().map(|query| ["?", query]);
        let path = path.iter().chain(query.iter().flatten()).copied();
        http1::encode_request(
            &mut wire,
            method,
            path,
            &target.authority,
            forwarded,
            body.len(),
        );
        wire.extend_from_slice(body);
        wire
    }

    /// Sends an encoded request and returns once the response head has arrived (or the
    /// upstream timeout has passed).
    pub async fn send(
        &self,
        wire: &[u8],
        method: &Method,
    ) -> Result<Response<UpstreamBody>, UpstreamFailure> {
        match tokio::time::timeout(self.timeout, self.exchange(wire, method)).await {
            Err(_) => Err(UpstreamFailure::Timeout),
            Ok(result) => result,
        }
    }

    /// One exchange, sent again at most once and only when the request cannot have been
    /// served: no byte of it was written, or it is idempotent and no byte of an answer came.
    async fn exchange(
        &self,
        wire: &[u8],
        method: &Method,
    ) -> Result<Response<UpstreamBody>, UpstreamFailure> {
        let conn = self.pool.checkout().await.map_err(checkout_failure)?;
        let failed = match self.answer(conn, wire, method).await {
            Ok(response) => return Ok(response),
            Err(failed) => failed,
        };
        let resend = failed.written == 0 || (is_idempotent(method) && !failed.answered);
        if !resend {
            return Err(UpstreamFailure::Other(failed.error.to_string()));
        }
        tracing::debug!(error = %failed.error, "upstream connection failed before the request was served; sending it once more on a new connection");
        let conn = self.pool.connect().await.map_err(checkout_failure)?;
        self.answer(conn, wire, method)
            .await
            .map_err(|failed| UpstreamFailure::Other(failed.error.to_string()))
    }

    async fn answer(
        &self,
        mut conn: Conn,
        wire: &[u8],
        method: &Method,
    ) -> Result<Response<UpstreamBody>, Failed> {
        let head = round_trip(&mut conn, wire, method).await?;
        let mut response = Response::new(UpstreamBody::new(conn, &head, self.pool.clone()));
        *response.status_mut() = head.status;
        *response.headers_mut() = head.headers;
        Ok(response)
    }
}

fn checkout_failure(err: CheckoutError) -> UpstreamFailure {
    match err {
        CheckoutError::Busy => UpstreamFailure::Busy,
        CheckoutError::Connect(err) => UpstreamFailure::Connect(err.to_string()),
    }
}

/// Methods a server may receive twice with the effect of once (RFC 9110 §9.2.2), of those
/// the relay passes.
fn is_idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::DELETE)
}

/// An exchange that failed, and how far it got.
struct Failed {
    error: std::io::Error,
    /// Bytes of the request written to the connection.
    written: usize,
    /// Some byte of an answer (an interim 1xx included) arrived.
    answered: bool,
}

/// Writes the request and reads the response head.
async fn round_trip(conn: &mut Conn, wire: &[u8], method: &Method) -> Result<Head, Failed> {
    let mut written = 0;
    let fail = |error, written, answered| Failed {
        error,
        written,
        answered,
    };
    while written < wire.len() {
        match conn.stream.write(&wire[written..]).await {
            Ok(0) => {
                let closed = std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "the upstream connection took no more bytes",
                );
                return Err(fail(closed, written, false));
            }
            Ok(n) => written += n,
            Err(err) => return Err(fail(err, written, false)),
        }
    }
    if let Err(err) = conn.stream.flush().await {
        return Err(fail(err, written, false));
    }
    let mut answered = false;
    loop {
        match http1::parse_head(&mut conn.buf, method, &mut conn.names) {
            Ok(Some(head)) => return Ok(head),
            Ok(None) => {}
            Err(err) => return Err(fail(err, written, true)),
        }
        conn.make_room();
        match conn.stream.read_buf(&mut conn.buf).await {
            Ok(0) => {
                let message = if answered {
                    "the upstream closed the connection in the middle of its answer's head"
                } else {
                    "the upstream closed the connection without answering"
                };
                let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, message);
                return Err(fail(eof, written, answered));
            }
            Ok(_) => answered = true,
            Err(err) => return Err(fail(err, written, answered)),
        }
    }
}

/// Headers named in `Connection` (hop-by-hop for this message).
fn named_by_connection(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect()
}

/// The client's headers to forward: those on the allowlist, unless `Connection` names them
/// (then they are hop-by-hop for this message). Matched by name: nothing is allocated unless
/// the request has a `Connection` header.
fn end_to_end<'a>(
    headers: &'a HeaderMap,
) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> + 'a {
    let named = named_by_connection(headers);
    headers.iter().filter(move |(name, _)| {
        is_forwarded_request_header(name.as_str()) && !named.contains(name)
    })
}

/// Removes from a response the hop-by-hop headers, those named in `Connection`, and
/// `Set-Cookie` (the upstream's cookies are not the client's business), in place (one pass to
/// find them: usually there are none).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named = named_by_connection(headers);
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| {
            is_hop_by_hop(name.as_str()) || *name == header::SET_COOKIE || named.contains(name)
        })
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_cookies_and_names_in_connection_leave_answers() {
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("Connection", "keep-alive, X-Private"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authenticate", "Basic"),
            ("proxy-authorization", "x"),
            ("Proxy-Connection", "x"),
            ("TE", "trailers"),
            ("trailer", "x-t"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("set-cookie", "a=b"),
            ("x-private", "1"),
            ("content-type", "application/json"),
            ("x-request-id", "r"),
            ("keep-alive-not", "1"),
            ("x-te", "1"),
            ("connections", "1"),
        ] {
            let name = HeaderName::from_bytes(name.as_bytes()).unwrap();
            headers.append(name, HeaderValue::from_static(value));
        }
        strip_hop_by_hop(&mut headers);
        let mut left: Vec<_> = headers.keys().map(HeaderName::as_str).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            [
                "connections",
                "content-type",
                "keep-alive-not",
                "x-request-id",
                "x-te"
            ]
        );
    }
}
