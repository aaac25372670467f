//! The upstream hop: build the request, swap credentials, and exchange it over a pooled
//! keep-alive HTTP/1.1 connection driven by the relaying task itself.

mod conn;
pub mod http1;
pub mod recorded;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Response, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Config;
use conn::{CheckoutError, Conn, Pool, Target};
use http1::{Head, UpstreamBody};
pub use recorded::{respond, RecordedBody};

/// Why the upstream gave no response.
#[derive(Debug)]
pub enum UpstreamFailure {
    Connect(String),
    /// Every allowed upstream connection stayed busy while the request waited for one.
    Busy,
    Timeout,
    Other(String),
}

/// The upstream: its pooled connections, its credential, and how long it may take to answer.
pub struct Upstream {
    pool: Arc<Pool>,
    credential: Option<HeaderValue>,
    timeout: Duration,
}

/// Request headers never forwarded: the client's credentials and cookies, headers this hop
/// rewrites, and accept-encoding (so the answer arrives readable for its usage).
fn is_dropped_request_header(name: &str) -> bool {
    matches!(
        name,
        "host"
            | "authorization"
            | "x-api-key"
            | "cookie"
            | "content-length"
            | "accept-encoding"
            | "forwarded"
            | "x-forwarded-for"
            | "x-real-ip"
            | "expect"
    )
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), dropped in both directions.
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
    pub fn new(config: &Config) -> anyhow::Result<Self> {
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
        let pool = Arc::new(Pool::new(
            Target::new(&config.upstream_url)?,
            config.upstream_max_connections,
        ));
        Pool::watch(&pool);
        Ok(Upstream {
            pool,
            credential,
            timeout: config.upstream_timeout,
        })
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The wire form of `/v1{rest}?{query}` for `{upstream}{rest}?{query}`, with the
    /// upstream's credential in place of the client's. Encoded before anything is awaited, so
    /// the caller can drop the client's head (and the server's read buffer it pins) meanwhile.
    pub fn encode(&self, method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Vec<u8> {
        let target = &self.pool.target;
        let rest = uri.path().strip_prefix("/v1").unwrap_or(uri.path());
        let credential = self
            .credential
            .as_ref()
            .map(|value| (&header::AUTHORIZATION, value));
        let forwarded = end_to_end(headers, is_dropped_request_header).chain(credential);
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
        match http1::parse_head(&mut conn.buf, method) {
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

/// The end-to-end headers: all but hop-by-hop ones, those named in `Connection`, and those
/// `dropped` says no to.
fn end_to_end<'a>(
    headers: &'a HeaderMap,
    dropped: fn(&str) -> bool,
) -> impl Iterator<Item = (&'a HeaderName, &'a HeaderValue)> + 'a {
    let named = named_by_connection(headers);
    headers.iter().filter(move |(name, _)| {
        let text = name.as_str();
        !(is_hop_by_hop(text) || dropped(text) || named.contains(name))
    })
}

/// Removes hop-by-hop headers and those named in `Connection`, in place (one pass to find
/// them: usually there are none).
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named = named_by_connection(headers);
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name.as_str()) || named.contains(name))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}
