//! The admin listener: `/healthz` (the process is alive), `/readyz` (every
//! component is loaded and the host is not draining), `/metrics` (Prometheus
//! text, or OpenMetrics when the scraper asks for it), `/gpio` (the simulated
//! board's pins and recent changes, JSON) and `/gpio/events` (its changes as
//! they happen, server-sent events). Kept apart from the application listener
//! so probes and scrapes never queue behind guests.

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

use crate::gpio::Board;
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
    /// The GPIO board, when one is open.
    pub board: Option<Arc<dyn Board>>,
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
            "/gpio" => self.gpio_view(),
            "/gpio/events" => self.gpio_events(),
            "/" => {
                let mut r = Response::new(full(Bytes::from_static(
                    b"gantry admin: /healthz /readyz /metrics /gpio /gpio/events\n",
                )));
                *r.status_mut() = StatusCode::OK;
                r
            }
            _ => plain(StatusCode::NOT_FOUND, "Not Found\n"),
        }
    }
}

impl AdminState {
    fn sim(&self) -> Option<&crate::gpio::sim::SimBoard> {
        self.board.as_deref().and_then(|b| b.observe())
    }

    fn gpio_view(&self) -> Response<WasiBody> {
        let body = match (&self.board, self.sim()) {
            (_, Some(sim)) => serde_json::json!({
                "backend": "sim",
                "pins": sim.pins(),
                "events": sim.history(),
            }),
            (Some(b), None) => serde_json::json!({
                "backend": b.name(),
                "observable": false,
            }),
            (None, None) => return plain(StatusCode::NOT_FOUND, "no GPIO board\n"),
        };
        json_response(body.to_string())
    }

    /// Every pin change as a server-sent event; the first event is the
    /// current state of every pin.
    fn gpio_events(&self) -> Response<WasiBody> {
        let Some(sim) = self.sim() else {
            return plain(StatusCode::NOT_FOUND, "the GPIO board is not observable\n");
        };
        use futures::StreamExt as _;
        let rx = sim.subscribe();
        let first = format!(
            "event: pins\ndata: {}\n\n",
            serde_json::to_string(&sim.pins()).unwrap_or_default()
        );
        let first = futures::stream::once(async move { Bytes::from(first) });
        let changes = futures::stream::unfold(rx, |mut rx| async move {
            use tokio::sync::broadcast::error::RecvError;
            let text = match rx.recv().await {
                Ok(ev) => format!(
                    "event: change\ndata: {}\n\n",
                    serde_json::to_string(&ev).unwrap_or_default()
                ),
                // A slow watcher misses changes, and is told how many.
                Err(RecvError::Lagged(n)) => format!("event: lagged\ndata: {n}\n\n"),
                Err(RecvError::Closed) => return None,
            };
            Some((Bytes::from(text), rx))
        });
        let frames = first
            .chain(changes)
            .map(|b| Ok::<_, wasmtime_wasi_http::Error>(http_body::Frame::data(b)));
        let body = http_body_util::BodyExt::boxed_unsync(http_body_util::StreamBody::new(frames));
        let mut r = Response::new(body);
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("text/event-stream"),
        );
        r.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-cache"),
        );
        r
    }
}

fn json_response(body: String) -> Response<WasiBody> {
    let mut r = Response::new(full(Bytes::from(body)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
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
