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
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;

use crate::app::AppState;
use crate::relay::{self, ReplyBody};

/// Serves `listener` until `shutdown` is cancelled; then stops accepting, lets open
/// connections finish their requests (up to `grace`) and returns.
pub async fn run(
    state: AppState,
    router: Router,
    listener: TcpListener,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let state = Arc::new(state);
    let connections = TaskTracker::new();
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
                );
                connections.spawn(conn);
            }
            Err(err) => accept_failed(err).await,
        }
    }
    connections.close();
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "connections still open after {grace:?}; closing them"
        );
    }
}

async fn serve_connection(
    socket: TcpStream,
    peer: SocketAddr,
    state: Arc<AppState>,
    router: Router,
    shutdown: CancellationToken,
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
    let builder = auto::Builder::new(TokioExecutor::new());
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
