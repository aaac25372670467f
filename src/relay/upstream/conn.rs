//! Connections to the upstream: where it is, connecting (TCP, TLS by rustls), the cap on how
//! many are open at once, and the pool of idle keep-alive connections handed out newest first.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use bytes::BytesMut;
use hyper::Uri;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// A connection idle longer than this is closed rather than reused (servers close theirs
/// after 60–120 s; reusing one they are closing would cost a retry).
const IDLE_TIMEOUT: Duration = Duration::from_secs(55);
/// At most this many idle connections are kept.
const MAX_IDLE: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Read buffer per connection; it grows for larger answers.
const READ_BUFFER: usize = 16 * 1024;
/// Free space asked of the read buffer before each read.
const READ_RESERVE: usize = 8 * 1024;
/// How often idle connections are looked at: one the upstream closed or wrote to while idle
/// is closed here rather than found out when reused.
const WATCH_EVERY: Duration = Duration::from_secs(1);
/// How long a request waits for a connection when all the allowed ones are busy.
pub const QUEUE_WAIT: Duration = Duration::from_secs(5);

/// The upstream's address, parsed once from KEYGATE_UPSTREAM_URL.
pub struct Target {
    host: String,
    port: u16,
    /// `Host:` header value.
    pub authority: String,
    /// The URL's path without a trailing slash, e.g. `/v1`.
    pub base_path: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Target {
    /// The target of an http(s) URL with a host (as `Config` checked it).
    pub fn new(uri: &Uri) -> anyhow::Result<Target> {
        let secure = uri.scheme_str() == Some("https");
        let authority = uri
            .authority()
            .with_context(|| format!("`{uri}` has no host"))?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority
            .port_u16()
            .unwrap_or(if secure { 443 } else { 80 });
        let tls = if secure {
            let name = ServerName::try_from(host.to_string())
                .with_context(|| format!("`{host}` is not a valid TLS server name"))?;
            Some((tls_connector()?, name))
        } else {
            None
        };
        Ok(Target {
            host: host.to_string(),
            port,
            authority: authority
                .as_str()
                .rsplit('@')
                .next()
                .unwrap_or("")
                .to_string(),
            base_path: uri.path().trim_end_matches('/').to_string(),
            tls,
        })
    }

    async fn connect(&self) -> io::Result<Stream> {
        let tcp = tokio::time::timeout(
            CONNECT_TIMEOUT,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        tcp.set_nodelay(true)?;
        match &self.tls {
            None => Ok(Stream::Plain(tcp)),
            Some((connector, name)) => {
                let tls = connector.connect(name.clone(), tcp).await?;
                Ok(Stream::Tls(Box::new(tls)))
            }
        }
    }
}

/// A TLS client with the web's root certificates (webpki-roots), for HTTP/1.1 (also used by
/// the webhook sender).
pub(crate) fn tls_connector() -> anyhow::Result<TlsConnector> {
    let roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("cannot set up TLS")?
            .with_root_certificates(roots)
            .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// A TCP or TLS byte stream.
pub enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One HTTP/1.1 connection and the bytes read from it but not yet parsed.
pub struct Conn {
    pub stream: Stream,
    pub buf: BytesMut,
    /// The names of its last answer's headers, taken again for the next.
    pub names: super::http1::HeaderNames,
    /// Its place under the cap of open connections, given back when it closes.
    _permit: OwnedSemaphorePermit,
}

impl Conn {
    /// Makes sure the read buffer has room for a read (one rule for heads and bodies).
    pub fn make_room(&mut self) {
        if self.buf.capacity() - self.buf.len() < READ_RESERVE {
            self.buf.reserve(READ_RESERVE);
        }
    }

    /// Whether an idle connection can still be used: the peer has not closed it and sent
    /// nothing unasked. Polls once without waiting (no system call unless the socket became
    /// readable while idle).
    fn still_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        let mut buf = ReadBuf::new(&mut probe);
        let mut cx = Context::from_waker(Waker::noop());
        matches!(
            Pin::new(&mut self.stream).poll_read(&mut cx, &mut buf),
            Poll::Pending
        )
    }
}

/// Why no connection could be had.
#[derive(Debug)]
pub enum CheckoutError {
    /// Every allowed connection stayed busy for `QUEUE_WAIT`.
    Busy,
    Connect(io::Error),
}

/// Idle connections to one target, reused newest first, and the cap on open ones.
pub struct Pool {
    pub target: Target,
    idle: Mutex<Vec<(Conn, Instant)>>,
    /// One permit per open connection, idle or busy.
    permits: Arc<Semaphore>,
    /// Requests waiting for a permit: a connection finishing meanwhile is closed, not
    /// parked, so that its permit goes to them.
    waiting: AtomicUsize,
    /// The cap (KEYGATE_UPSTREAM_MAX_CONNECTIONS).
    max: usize,
}

/// What the pool holds now.
#[derive(Clone, Copy, Debug)]
pub struct PoolStats {
    pub open: usize,
    pub idle: usize,
    pub max: usize,
    pub waiting: usize,
}

impl Pool {
    pub fn new(target: Target, max_connections: usize) -> Pool {
        Pool {
            target,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(max_connections)),
            waiting: AtomicUsize::new(0),
            max: max_connections,
        }
    }

    /// Closes idle connections the upstream closed or wrote to, and those idle too long,
    /// every `WATCH_EVERY` while the pool exists (as nginx's keepalive does with a read event
    /// on an idle connection). Needs a Tokio runtime; without one, checkout still checks.
    pub fn watch(pool: &Arc<Pool>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let pool: Weak<Pool> = Arc::downgrade(pool);
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(WATCH_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                pool.close_stale();
            }
        });
    }

    fn close_stale(&self) {
        let now = Instant::now();
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain_mut(|(conn, since)| {
                now.saturating_duration_since(*since) < IDLE_TIMEOUT && conn.still_open()
            });
        }
    }

    /// An idle connection that is still open, or a new one (waiting up to `QUEUE_WAIT` for
    /// room under the cap).
    pub async fn checkout(&self) -> Result<Conn, CheckoutError> {
        if let Some(conn) = self.pop_idle() {
            return Ok(conn);
        }
        self.connect().await
    }

    /// A new connection, never a pooled one.
    pub async fn connect(&self) -> Result<Conn, CheckoutError> {
        let permit = match self.permits.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => self.wait_for_permit().await?,
        };
        let stream = self
            .target
            .connect()
            .await
            .map_err(CheckoutError::Connect)?;
        Ok(Conn {
            stream,
            buf: BytesMut::with_capacity(READ_BUFFER),
            names: Default::default(),
            _permit: permit,
        })
    }

    fn pop_idle(&self) -> Option<Conn> {
        loop {
            let (mut conn, since) = self.idle.lock().ok()?.pop()?;
            if since.elapsed() < IDLE_TIMEOUT && conn.still_open() {
                return Some(conn);
            }
        }
    }

    async fn wait_for_permit(&self) -> Result<OwnedSemaphorePermit, CheckoutError> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        // Idle connections hold permits nobody will give back while we wait: close one.
        if let Some(conn) = self
            .idle
            .lock()
            .ok()
            .and_then(|mut idle| (!idle.is_empty()).then(|| idle.remove(0)))
        {
            drop(conn);
        }
        let permit = tokio::time::timeout(QUEUE_WAIT, self.permits.clone().acquire_owned()).await;
        self.waiting.fetch_sub(1, Ordering::SeqCst);
        match permit {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(CheckoutError::Busy),
        }
    }

    /// Connections open (busy or idle), idle, the cap, and requests waiting for one, for
    /// metrics (the idle list's lock is taken once, as a checkout takes it).
    pub fn stats(&self) -> PoolStats {
        let max = self.max;
        PoolStats {
            open: max.saturating_sub(self.permits.available_permits()),
            idle: self.idle.lock().map_or(0, |idle| idle.len()),
            max,
            waiting: self.waiting.load(Ordering::Relaxed),
        }
    }

    /// Parks a connection whose exchange ended cleanly, for the next request.
    pub fn checkin(&self, conn: Conn) {
        if !conn.buf.is_empty() {
            return; // bytes nobody asked for: the connection is out of step
        }
        if self.waiting.load(Ordering::Relaxed) > 0 {
            return; // closing it gives its permit to a request waiting for one
        }
        if let Ok(mut idle) = self.idle.lock() {
            // The oldest sit at the bottom, where a busy pool never reaches: close them here.
            let now = Instant::now();
            if idle
                .first()
                .is_some_and(|(_, since)| now.saturating_duration_since(*since) >= IDLE_TIMEOUT)
            {
                idle.remove(0);
            }
            if idle.len() < MAX_IDLE {
                idle.push((conn, now));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_take_host_port_and_base_path_from_the_url() {
        let plain = Target::new(&"http://127.0.0.1:9000/v1".parse().unwrap()).unwrap();
        assert_eq!((plain.host.as_str(), plain.port), ("127.0.0.1", 9000));
        assert_eq!(
            (plain.authority.as_str(), plain.base_path.as_str()),
            ("127.0.0.1:9000", "/v1")
        );
        assert!(plain.tls.is_none());

        let secure = Target::new(&"https://api.openai.com/v1".parse().unwrap()).unwrap();
        assert_eq!((secure.host.as_str(), secure.port), ("api.openai.com", 443));
        assert!(secure.tls.is_some());

        let v6 = Target::new(&"http://[::1]:8080".parse().unwrap()).unwrap();
        assert_eq!(
            (v6.host.as_str(), v6.port, v6.base_path.as_str()),
            ("::1", 8080, "")
        );
        assert_eq!(v6.authority, "[::1]:8080");
    }
}
