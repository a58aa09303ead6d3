//! The server loop: HTTP/1.1 over TCP, one task per connection, graceful shutdown.
//!
//! `axum::serve` speaks HTTP/1 and HTTP/2 on every connection, so each connection task carries
//! both protocols' state; with thousands of long-polls open that is most of the API's memory
//! after hyper's own buffers. orderflow speaks HTTP/1.1 (TLS and HTTP/2 belong to the proxy in
//! front), which keeps a connection's task small. TCP_NODELAY on every connection; idle
//! keep-alive connections stay open until the client closes them, as with `axum::serve`.

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use orderflow_runtime::shutdown::CancellationToken;
use std::io;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// How long a stop waits for the connections still serving a request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

/// Serves `app` on `listener` until `shutdown` fires; then stops accepting, closes idle
/// connections, lets every other connection finish the request it is serving (long-polls and
/// live feeds end on the same signal) and returns once all are closed, or after
/// [`SHUTDOWN_GRACE`] (a client that never finishes sending a request must not hold a stop up).
pub async fn serve(listener: TcpListener, app: Router, shutdown: CancellationToken) {
    let http = http1::Builder::new();
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                // The peer gave up before we got to it: nothing to serve.
                Err(e) if is_connection_error(&e) => continue,
                // Out of file descriptors, most likely: wait for some to be freed.
                Err(e) => {
                    tracing::error!(error = %e, "accepting a connection failed; retrying in a second");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            },
            _ = shutdown.cancelled() => break,
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
        // A `Router` clone shares its routes; the per-request state is already applied. Each
        // request learns the peer's address (`ConnectInfo`: sign-in throttling per address).
        let service =
            app.clone()
                .map_request(move |mut request: hyper::Request<hyper::body::Incoming>| {
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    request
                });
        let connection =
            http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(service));
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                _ = shutdown.cancelled() => {
                    // Closes at once if idle (or if no request has started on it yet);
                    // otherwise finishes the request in flight first.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(e) = result {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "connections still open {SHUTDOWN_GRACE:?} after the stop; closing them"
        );
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}
