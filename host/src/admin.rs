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
use crate::swap::{SwapError, Swapper};
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
    /// Component swaps and rollbacks, once the application serves.
    pub swapper: std::sync::OnceLock<Arc<Swapper>>,
    /// Bearer token that mutating calls must carry; without one they are
    /// only possible because the listener is on loopback.
    pub token: Option<String>,
    /// Mutating calls are off altogether.
    pub read_only: bool,
    /// Held while a component upload is read.
    pub uploads: tokio::sync::Mutex<()>,
}

/// Largest component a `PUT /components/{id}` takes.
const MAX_UPLOAD: usize = 256 << 20;

impl AdminState {
    /// Routes the calls that change or list components; the rest are
    /// answered by [`AdminState::handle_read`].
    async fn handle(self: Arc<Self>, req: Request<Incoming>) -> Response<WasiBody> {
        let path = req.uri().path().to_string();
        if path != "/components" && !path.starts_with("/components/") {
            return self.handle_read(&req);
        }
        let Some(swapper) = self.swapper.get().cloned() else {
            return plain(StatusCode::SERVICE_UNAVAILABLE, "loading\n");
        };
        let rest: Vec<&str> = path
            .trim_start_matches("/components")
            .split('/')
            .filter(|s| !s.is_empty())
            .collect();
        let method = req.method().clone();
        match (&method, rest.as_slice()) {
            (&http::Method::GET, []) => json_response(components_json(&swapper).to_string()),
            (&http::Method::PUT, [id]) | (&http::Method::POST, [id, "rollback"]) => {
                if let Some(denied) = self.authorize(&req) {
                    return denied;
                }
                let id = id.to_string();
                let result = if method == http::Method::PUT {
                    // One upload at a time: each may hold up to MAX_UPLOAD.
                    let Ok(_uploading) = self.uploads.try_lock() else {
                        let mut r = plain(
                            StatusCode::TOO_MANY_REQUESTS,
                            "Too Many Requests: another component upload is in progress\n",
                        );
                        r.headers_mut().insert(
                            http::header::RETRY_AFTER,
                            http::HeaderValue::from_static("1"),
                        );
                        return r;
                    };
                    match read_limited(req.into_body(), MAX_UPLOAD).await {
                        Some(bytes) => swapper.replace(&id, bytes, "admin").await,
                        None => {
                            return plain(
                                StatusCode::PAYLOAD_TOO_LARGE,
                                "Payload Too Large: a component is at most 256 MiB\n",
                            );
                        }
                    }
                } else {
                    swapper.rollback(&id).await
                };
                match result {
                    Ok(s) => json_response(serde_json::to_string(&s).unwrap_or_default()),
                    Err(e) => {
                        let status = match e {
                            SwapError::UnknownComponent(_) => StatusCode::NOT_FOUND,
                            SwapError::NoPrevious(_) => StatusCode::CONFLICT,
                            _ => StatusCode::UNPROCESSABLE_ENTITY,
                        };
                        let mut r = json_response(
                            serde_json::json!({ "error": e.to_string() }).to_string(),
                        );
                        *r.status_mut() = status;
                        r
                    }
                }
            }
            _ => plain(StatusCode::NOT_FOUND, "Not Found\n"),
        }
    }

    /// `None` when the call may go ahead; the 401 otherwise.
    fn authorize(&self, req: &Request<Incoming>) -> Option<Response<WasiBody>> {
        if self.read_only {
            return Some(plain(
                StatusCode::FORBIDDEN,
                "Forbidden: this admin listener is read-only (--admin-read-only)\n",
            ));
        }
        // An empty token is refused at start; were one set anyway, nothing
        // would match it.
        let token = self.token.as_deref()?;
        if token.trim().is_empty() {
            return Some(plain(
                StatusCode::UNAUTHORIZED,
                "Unauthorized: no usable admin token is configured\n",
            ));
        }
        let given = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return None;
        }
        let mut r = plain(
            StatusCode::UNAUTHORIZED,
            "Unauthorized: a bearer token is required\n",
        );
        r.headers_mut().insert(
            http::header::WWW_AUTHENTICATE,
            http::HeaderValue::from_static("Bearer"),
        );
        Some(r)
    }

    fn handle_read(&self, req: &Request<Incoming>) -> Response<WasiBody> {
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
                    b"gantry admin: /healthz /readyz /metrics /components /gpio /gpio/events\n",
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

/// What is serving: every component with its version and swap history.
fn components_json(swapper: &Swapper) -> serde_json::Value {
    let live = swapper.live();
    let list: Vec<serde_json::Value> = live
        .slots
        .iter()
        .map(|slot| {
            let v = slot.current.load();
            let loaded_at = v
                .loaded
                .loaded_at
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            serde_json::json!({
                "id": &*slot.id,
                "source": v.loaded.source.display().to_string(),
                "digest": &*v.loaded.digest,
                "wasi_http": v.loaded.world.to_string(),
                // Which engine it runs on: `concurrent` (WASI 0.3 support)
                // or `plain` (0.2 only, cheaper instances).
                "engine": crate::runtime::engine_name(v.loaded.handler.on_concurrent_engine()),
                "size": v.loaded.size,
                "loaded_at": loaded_at,
                "swaps": slot.swaps.load(Ordering::Relaxed),
                "previous_digest": slot.previous.load().as_ref().map(|p| p.loaded.digest.to_string()),
                "last_error": slot.error(),
            })
        })
        .collect();
    serde_json::json!({ "components": list })
}

/// The body, or `None` past `limit` bytes (or when the client broke off).
/// The body, read into one buffer (never copied again), or `None` past
/// `limit` bytes.
async fn read_limited(mut body: Incoming, limit: usize) -> Option<Vec<u8>> {
    use http_body::Body as _;
    use http_body_util::BodyExt;
    let hint = usize::try_from(body.size_hint().lower()).unwrap_or(limit);
    let mut out = Vec::with_capacity(hint.min(limit));
    while let Some(frame) = body.frame().await {
        let frame = frame.ok()?;
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > limit {
                return None;
            }
            out.extend_from_slice(data);
        }
    }
    Some(out)
}

/// Equal, in a time that tells nothing of where they differ or of their
/// lengths: both sides are hashed first, and the digests compared whole.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
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
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Probes and scrapers send their heads at once; a slow one is dropped.
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_TIMEOUT);
    // Few clients: a bound on them keeps descriptors for the application.
    let places = Arc::new(tokio::sync::Semaphore::new(ADMIN_CONNECTIONS));
    loop {
        let Ok(place) = places.clone().acquire_owned().await else {
            return;
        };
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
            async move { Ok::<_, std::convert::Infallible>(state.handle(req).await) }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(async move {
            let _place = place;
            let _ = conn.await;
        });
    }
}

const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Admin connections at once (probes, scrapes, event streams, uploads).
const ADMIN_CONNECTIONS: usize = 256;

pub fn describe(addr: SocketAddr) -> String {
    format!("http://{addr}")
}
