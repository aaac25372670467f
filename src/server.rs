//! The accept loop: HTTP/1.1 and HTTP/2 connections, `/v1/*` handed straight to the relay,
//! everything else to the axum Router, the connection cap and timeouts, and the graceful
//! drain on shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::{Request, Version};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::app::AppState;
use crate::relay::{self, ReplyBody};

/// HTTP/2: a PING this often on a connection; no answer within the timeout closes it.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// HTTP/2: streams open at once on one connection.
const H2_MAX_CONCURRENT_STREAMS: u32 = 128;
/// File descriptors kept for everything but client connections (database, log writer, …).
const RESERVED_FILES: u64 = 64;
/// How long a connection closed for idleness may take to say goodbye (HTTP/2 GOAWAY).
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// The whole answer to a connection over the cap, written without reading its request.
const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
retry-after: 1\r\n\
connection: close\r\n\
content-length: 88\r\n\r\n\
{\"error\":\"Service Unavailable\",\"message\":\"Too many open connections; retry in a moment\"}";

/// Serves `listener` until `shutdown` is cancelled; then stops accepting, lets open
/// connections finish their requests (up to `grace`), closes those still open and waits for
/// them (and their HTTP/2 streams) to end: every call record of theirs has then been sent.
pub async fn run(
    state: AppState,
    router: Router,
    listener: TcpListener,
    shutdown: CancellationToken,
    grace: Duration,
) {
    // Connections can be aborted at the end of the grace; HTTP/2 streams run as tasks of
    // their own, tracked to be waited for.
    let mut connections = JoinSet::new();
    let streams = TaskTracker::new();
    let http = Arc::new(http_builder(TrackedExecutor(streams.clone())));
    let timeouts = Timeouts {
        head: state.config.header_timeout,
        idle: state.config.idle_timeout,
    };
    let cap = connection_cap(state.config.max_connections, file_limit());
    let open = state.metrics.client_connections.clone();
    let state = Arc::new(state);
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((socket, peer)) => {
                if open.load(Ordering::Acquire) >= cap {
                    if refused == 0 {
                        tracing::warn!(cap, "connection cap reached: refusing new connections with 503 (KEYGATE_MAX_CONNECTIONS)");
                    }
                    refused += 1;
                    state
                        .metrics
                        .connections_refused
                        .fetch_add(1, Ordering::Relaxed);
                    refuse_busy(socket);
                    continue;
                }
                if refused > 0 {
                    tracing::info!(refused, "below the connection cap again");
                    refused = 0;
                }
                let slot = Slot::take(&open);
                let conn = serve_connection(
                    socket,
                    peer,
                    state.clone(),
                    router.clone(),
                    http.clone(),
                    timeouts,
                    shutdown.clone(),
                    slot,
                );
                connections.spawn(conn);
                // Reap the connections that ended (a lock per connection, none per request).
                while connections.try_join_next().is_some() {}
            }
            Err(err) => accept_failed(err).await,
        }
    }
    drain(&mut connections, &streams, grace).await;
}

/// Lets open connections finish for `grace`, then drops the rest. Dropping a connection drops
/// its requests: each sends its call record (`relay::Unanswered`, `RecordedBody`) as it goes.
async fn drain(connections: &mut JoinSet<()>, streams: &TaskTracker, grace: Duration) {
    let finished = async { while connections.join_next().await.is_some() {} };
    if tokio::time::timeout(grace, finished).await.is_err() {
        tracing::warn!(
            open = connections.len(),
            "connections still open after {grace:?}; closing them"
        );
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    }
    // A dropped HTTP/2 connection resets its streams, which then end at once.
    streams.close();
    if tokio::time::timeout(STREAMS_END_WITHIN, streams.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = streams.len(),
            "HTTP/2 streams still running after their connections closed"
        );
    }
}

/// How long HTTP/2 streams may take to notice that their connection was closed.
const STREAMS_END_WITHIN: Duration = Duration::from_secs(5);

/// Runs hyper's HTTP/2 stream tasks on the runtime, tracked so the shutdown can wait for them.
#[derive(Clone)]
struct TrackedExecutor(TaskTracker);

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        self.0.spawn(future);
    }
}

/// HTTP/1.1 and HTTP/2 settings. The timer comes first: hyper panics on a timeout without one.
/// hyper's own header-read timeout is off: it armed a boxed timer for every request (and
/// registered it, the next head not being there yet); `serve_connection` bounds the wait for a
/// head instead, with the one timer its connection has anyway.
fn http_builder(executor: TrackedExecutor) -> auto::Builder<TrackedExecutor> {
    let mut builder = auto::Builder::new(executor);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT)
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS);
    builder
}

#[derive(Clone, Copy)]
struct Timeouts {
    /// For a request head to arrive: from the connection's start (protocol detection, the
    /// HTTP/2 preface and the first head) and, on HTTP/1.1, from the end of the previous
    /// response. A head that is half sent does not stop it.
    head: Duration,
    /// With no request open, after the first (on HTTP/1.1 when shorter than `head`).
    idle: Duration,
}

impl Timeouts {
    /// How often a connection's task looks at its deadline at the latest: never longer than
    /// a wait it bounds, so a request that ends after a look is still caught in time.
    fn period(self) -> Duration {
        self.head.min(self.idle)
    }
}

/// One of the capped connection places; given back when the connection's task ends.
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>) -> Slot {
        open.fetch_add(1, Ordering::AcqRel);
        Slot(open.clone())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Over the cap: a 503 written into the (empty) send buffer, then the socket closes. The
/// request is not read, so a client that already sent it may see a reset instead.
fn refuse_busy(socket: TcpStream) {
    let _ = socket.try_write(BUSY_RESPONSE);
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    socket: TcpStream,
    peer: SocketAddr,
    state: Arc<AppState>,
    router: Router,
    http: Arc<auto::Builder<TrackedExecutor>>,
    timeouts: Timeouts,
    shutdown: CancellationToken,
    _slot: Slot,
) {
    // Without TCP_NODELAY each streamed chunk waits on Nagle's algorithm and delayed ACKs (~40 ms).
    if let Err(err) = socket.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
    }
    let activity = Arc::new(Activity::new());
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
        let state = state.clone();
        let mut router = router.clone();
        if request.version() == Version::HTTP_2 {
            requests.http2.store(true, Ordering::Relaxed);
        }
        let open = InFlight::begin(&requests);
        async move {
            let response = if request.uri().path().starts_with("/v1/") {
                relay::relay(&state, peer, request).await
            } else {
                request.extensions_mut().insert(ConnectInfo(peer));
                match router.call(request.map(Body::new)).await {
                    Ok(response) => response.map(ReplyBody::Local),
                    Err(never) => match never {},
                }
            };
            Ok::<_, Infallible>(response.map(|body| Tracked { body, _open: open }))
        }
    });
    let conn = http.serve_connection(TokioIo::new(socket), service);
    tokio::pin!(conn);
    // The connection's task wakes for every read and write of its socket; its shutdown signal
    // and its timer are looked at only when they fired.
    let stop = shutdown.cancelled();
    tokio::pin!(stop);
    let mut stop = Gated::new(stop.as_mut());
    let timer = tokio::time::sleep(timeouts.period());
    tokio::pin!(timer);
    let mut timer = Gated::new(timer.as_mut());
    let mut closing_by: Option<Instant> = None;
    let result = loop {
        // At least once per period: a request may have ended since the last look.
        let wake = closing_by.unwrap_or_else(|| {
            activity
                .deadline(timeouts)
                .min(Instant::now() + timeouts.period())
        });
        timer.reset(wake);
        tokio::select! {
            biased;
            result = conn.as_mut() => break result,
            _ = &mut stop, if closing_by.is_none() => {
                // The drain: the grace of `run` bounds it.
                conn.as_mut().graceful_shutdown();
                break conn.await;
            }
            _ = &mut timer => {
                if closing_by.is_some() {
                    break Ok(());
                }
                if activity.idle_past(timeouts) {
                    tracing::debug!(%peer, "closing an idle connection");
                    conn.as_mut().graceful_shutdown();
                    closing_by = Some(Instant::now() + CLOSE_GRACE);
                }
            }
        }
    };
    if let Err(err) = result {
        tracing::trace!(error = %err, %peer, "connection ended with an error");
    }
}

/// What a connection is doing: requests open, and since when none has been.
struct Activity {
    started: Instant,
    /// It speaks HTTP/2 (seen on its first request): no head timeout between requests.
    http2: AtomicBool,
    /// Requests whose response has not finished (or been dropped).
    open: AtomicUsize,
    /// Milliseconds from `started` to the end of the last request; `u64::MAX` before the first.
    idle_since_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            started: Instant::now(),
            http2: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(u64::MAX),
        }
    }

    /// When the connection would be idle too long if nothing happens meanwhile (with a
    /// request open: one period from now, to look again).
    fn deadline(&self, timeouts: Timeouts) -> Instant {
        if self.open.load(Ordering::Acquire) > 0 {
            return Instant::now() + timeouts.period();
        }
        let between = if self.http2.load(Ordering::Relaxed) {
            timeouts.idle
        } else {
            timeouts.period()
        };
        match self.idle_since_ms.load(Ordering::Acquire) {
            u64::MAX => self.started + timeouts.head,
            ms => self.started + Duration::from_millis(ms) + between,
        }
    }

    fn idle_past(&self, timeouts: Timeouts) -> bool {
        self.open.load(Ordering::Acquire) == 0 && self.deadline(timeouts) <= Instant::now()
    }
}

/// Marks one request open from its head until its response body is finished or dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(activity: &Arc<Activity>) -> InFlight {
        activity.open.fetch_add(1, Ordering::AcqRel);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        let ms = activity.started.elapsed().as_millis() as u64;
        activity.idle_since_ms.store(ms, Ordering::Release);
        activity.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as open until it is done.
struct Tracked {
    body: ReplyBody,
    _open: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The soft limit of open files, after `raise_file_limit`; None if unknown.
fn file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            return Some(limit.rlim_cur);
        }
    }
    None
}

/// The async runtime for `workers` request threads. With one, tokio's single-threaded
/// scheduler rather than a multi-thread runtime with one worker and its cross-thread queues
/// (the same instructions per request under callgrind; at most ~1% less CPU per request on
/// one core in `bench/ab.sh`, at the edge of what it can tell).
pub fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    }
}

/// Raises the soft limit of open files to the hard limit; returns the limit now in force.
pub fn raise_file_limit() -> Option<u64> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read or write the struct they are given.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return None;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                    tracing::warn!(
                        soft = limit.rlim_cur,
                        hard = limit.rlim_max,
                        "cannot raise the open-file limit"
                    );
                }
            }
        }
    }
    file_limit()
}

/// The configured cap, lowered so that every connection can also hold an upstream connection
/// within the open-file limit.
fn connection_cap(configured: usize, files: Option<u64>) -> usize {
    let Some(files) = files else {
        return configured;
    };
    let fits = (files.saturating_sub(RESERVED_FILES) / 2).max(1);
    let fits = usize::try_from(fits).unwrap_or(usize::MAX);
    if fits < configured {
        tracing::warn!(
            configured,
            cap = fits,
            open_file_limit = files,
            "KEYGATE_MAX_CONNECTIONS lowered to fit the open-file limit (each connection may need an upstream one too)"
        );
        return fits;
    }
    configured
}

/// Out of file descriptors or similar: waiting beats a busy loop of failing accepts.
async fn accept_failed(err: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        err.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    ) {
        return;
    }
    tracing::error!(error = %err, "accept failed; retrying in 1 s");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// A future polled only when its own waker was woken (and on its first poll): the connection
/// task's timer and shutdown signal, which otherwise cost two polls (~90 instructions each) on
/// every wake-up of the task, three or so per request. Made once per connection.
struct Gated<F: Future + Unpin> {
    inner: F,
    gate: Arc<Gate>,
    waker: Waker,
    polled: bool,
}

/// Whether a `Gated` future's waker fired, and the task to wake then.
struct Gate {
    fired: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Gate {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: Future + Unpin> Gated<F> {
    fn new(inner: F) -> Self {
        let gate = Arc::new(Gate {
            fired: AtomicBool::new(false),
            task: AtomicWaker::new(),
        });
        Gated {
            inner,
            waker: Waker::from(gate.clone()),
            gate,
            polled: false,
        }
    }
}

impl Gated<Pin<&mut tokio::time::Sleep>> {
    /// Sets the timer to `deadline`; its next poll registers it again.
    fn reset(&mut self, deadline: Instant) {
        self.inner.as_mut().reset(deadline);
        self.polled = false;
    }
}

impl<F: Future + Unpin> Future for Gated<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        // Registered before the look: a wake-up after it still reaches the task.
        this.gate.task.register(cx.waker());
        if this.polled && !this.gate.fired.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.polled = true;
        Pin::new(&mut this.inner).poll(&mut Context::from_waker(&this.waker))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_worker_gets_the_single_threaded_scheduler() {
        use tokio::runtime::RuntimeFlavor;
        let flavor = |workers| runtime(workers).unwrap().handle().runtime_flavor();
        assert_eq!(flavor(1), RuntimeFlavor::CurrentThread);
        assert_eq!(flavor(2), RuntimeFlavor::MultiThread);
    }

    #[test]
    fn busy_response_has_the_right_length() {
        let text = std::str::from_utf8(BUSY_RESPONSE).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"], "Service Unavailable");
    }

    #[test]
    fn cap_fits_the_file_limit() {
        assert_eq!(connection_cap(10_000, Some(1024)), 480);
        assert_eq!(connection_cap(100, Some(1024)), 100);
        assert_eq!(connection_cap(100, None), 100);
        assert_eq!(connection_cap(100, Some(10)), 1);
    }
}
