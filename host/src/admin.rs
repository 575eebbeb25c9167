//! The admin listener: `/healthz` (the process is alive), `/readyz` (every
//! component is loaded and the host is not draining), `/metrics` (Prometheus
//! text, or OpenMetrics when the scraper asks for it). Kept apart from the
//! application listener so probes and scrapes never queue behind guests.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use wasmtime_wasi_http::WasiBody;

use crate::server::{full, plain};
use crate::telemetry::metrics::Metrics;

/// What the admin endpoints report on.
#[derive(Default)]
pub struct AdminState {
    /// All components loaded; the application listener is accepting.
    pub ready: AtomicBool,
    /// Shutting down: stop sending traffic here.
    pub draining: AtomicBool,
    pub metrics: Arc<Metrics>,
}

impl AdminState {
    fn handle(&self, req: &Request<Incoming>) -> Response<WasiBody> {
        match req.uri().path() {
            "/healthz" => plain(StatusCode::OK, "ok\n"),
            "/readyz" => {
                if self.draining.load(Ordering::Relaxed) {
                    plain(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else if self.ready.load(Ordering::Relaxed) {
                    plain(StatusCode::OK, "ready\n")
                } else {
                    plain(StatusCode::SERVICE_UNAVAILABLE, "loading\n")
                }
            }
            "/metrics" => {
                let openmetrics = req
                    .headers()
                    .get_all(http::header::ACCEPT)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .any(|v| v.contains("application/openmetrics-text"));
                let body = self.metrics.render(openmetrics);
                let mut r = Response::new(full(Bytes::from(body)));
                let ct = if openmetrics {
                    "application/openmetrics-text; version=1.0.0; charset=utf-8"
                } else {
                    "text/plain; version=0.0.4; charset=utf-8"
                };
                r.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static(ct),
                );
                r
            }
            "/" => {
                let mut r = Response::new(full(Bytes::from_static(
                    b"gantry admin: /healthz /readyz /metrics\n",
                )));
                *r.status_mut() = StatusCode::OK;
                r
            }
            _ => plain(StatusCode::NOT_FOUND, "Not Found\n"),
        }
    }
}

/// Serves the admin endpoints until the process exits.
pub async fn serve(listener: TcpListener, state: Arc<AdminState>) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!("admin accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let state = state.clone();
            async move { Ok::<_, std::convert::Infallible>(state.handle(&req)) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}

pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}")
}
