//! The HTTP endpoint for Prometheus metrics and the health probes: `/metrics` in the
//! OpenMetrics text format, `/healthz` (the process answers) and `/readyz` (it is ready to do
//! its job).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::get;

/// What the endpoint serves.
pub trait Exposition: Send + Sync + 'static {
    /// The metrics in the OpenMetrics text format.
    fn encode(&self) -> String;
    /// Whether `/readyz` answers 200.
    fn ready(&self) -> bool {
        true
    }
}

/// The endpoint failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address could not be bound.
    #[error("failed to bind the metrics address {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The server stopped with an error.
    #[error("metrics server failed: {0}")]
    Serve(std::io::Error),
}

/// Binds the endpoint's address, so that a taken port fails the start rather than a task.
///
/// # Errors
/// [`Error::Bind`] when the address cannot be bound.
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` resolves.
///
/// # Errors
/// [`Error::Serve`] when serving fails.
pub async fn serve_metrics(
    listener: tokio::net::TcpListener,
    exposition: Arc<dyn Exposition>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    let metrics = Arc::clone(&exposition);
    let ready = exposition;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let metrics = Arc::clone(&metrics);
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        metrics.encode(),
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = Arc::clone(&ready);
                async move {
                    if ready.ready() {
                        (StatusCode::OK, "ok\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        );
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving metrics and probes");
    }
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(Error::Serve)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    struct Fixed(AtomicBool);

    impl Exposition for Fixed {
        fn encode(&self) -> String {
            "# EOF\n".into()
        }
        fn ready(&self) -> bool {
            self.0.load(Ordering::Relaxed)
        }
    }

    async fn get_status(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        response.lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn metrics_health_and_readiness_answer_on_their_paths() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let taken = bind(addr).await.unwrap_err().to_string();
        assert!(
            taken.starts_with("failed to bind the metrics address"),
            "{taken}"
        );
        let exposition = Arc::new(Fixed(AtomicBool::new(false)));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_metrics(listener, exposition.clone(), async {
            let _ = stopped.await;
        }));
        assert!(get_status(addr, "/metrics").await.contains("200"));
        assert!(get_status(addr, "/healthz").await.contains("200"));
        assert!(get_status(addr, "/readyz").await.contains("503"));
        exposition.0.store(true, Ordering::Relaxed);
        assert!(get_status(addr, "/readyz").await.contains("200"));
        assert!(get_status(addr, "/nope").await.contains("404"));
        let _ = stop.send(());
        server.await.unwrap().unwrap();
    }
}
