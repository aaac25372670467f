//! The accept loop: HTTP/1.1 and HTTP/2 connections, `/v1/*` handed straight to the relay,
//! everything else to the axum Router, and the graceful drain on shutdown.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::Router;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::app::AppState;
use crate::relay::{self, ReplyBody};

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
    let state = Arc::new(state);
    // Connections can be aborted at the end of the grace; HTTP/2 streams run as tasks of
    // their own, tracked to be waited for.
    let mut connections = JoinSet::new();
    let streams = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((socket, peer)) => {
                let conn = serve_connection(
                    socket,
                    peer,
                    state.clone(),
                    router.clone(),
                    shutdown.clone(),
                    TrackedExecutor(streams.clone()),
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

async fn serve_connection(
    socket: TcpStream,
    peer: SocketAddr,
    state: Arc<AppState>,
    router: Router,
    shutdown: CancellationToken,
    executor: TrackedExecutor,
) {
    // Without TCP_NODELAY each streamed chunk waits on Nagle's algorithm and delayed ACKs (~40 ms).
    if let Err(err) = socket.set_nodelay(true) {
        tracing::debug!(error = %err, "cannot set TCP_NODELAY");
    }
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let state = state.clone();
        let mut router = router.clone();
        async move {
            let response = if request.uri().path().starts_with("/v1/") {
                relay::relay(&state, peer, request).await
            } else {
                match router.call(request.map(Body::new)).await {
                    Ok(response) => response.map(ReplyBody::Local),
                    Err(never) => match never {},
                }
            };
            Ok::<Response<ReplyBody>, Infallible>(response)
        }
    });
    let builder = auto::Builder::new(executor);
    let conn = builder.serve_connection(TokioIo::new(socket), service);
    tokio::pin!(conn);
    let result = tokio::select! {
        biased;
        result = conn.as_mut() => result,
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::trace!(error = %err, %peer, "connection ended with an error");
    }
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
