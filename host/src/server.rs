//! The application listener and the path of one request: route, limits, a
//! fresh instance, and every failure turned into a status code in one place.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use opentelemetry::KeyValue;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use wasmtime_wasi_http::WasiBody;

use crate::capabilities::Shared;
use crate::capabilities::outbound_http::{AppDispatch, Internal, InternalRequest};
use crate::connection::{Active, ConnLimits, ConnShared, GuardedStream};
use crate::instance::{self, Admission, Call, InvokeError, TraceHandle};
use crate::router::insert_spin_headers;
use crate::runtime::{LiveApp, Runtime};
use crate::telemetry::metrics::{Gauge, Metrics};
use crate::telemetry::trace::{HexId, Tracing, end_failed_server_span, end_server_span};
use opentelemetry::trace::TraceContextExt as _;
use tracing::Instrument as _;

/// Limits applied to every request.
#[derive(Debug, Clone)]
pub struct Limits {
    pub request_timeout: Duration,
    pub max_request_body: u64,
    pub max_instance_memory: u64,
    /// How long a request waits for a free instance before its 503.
    pub queue_timeout: Duration,
    /// Connections served at once; past it new ones wait in the backlog.
    pub max_connections: usize,
    /// Concurrent HTTP/2 streams one connection may open.
    pub max_streams_per_connection: u32,
    pub conn: ConnLimits,
}

/// Shared by every connection of the application listener.
pub struct AppServer {
    pub runtime: Arc<Runtime>,
    pub tracing: Arc<Tracing>,
    pub metrics: Arc<Metrics>,
    pub live: ArcSwap<LiveApp>,
    pub limits: Limits,
    permits: Arc<Semaphore>,
    pub in_flight: AtomicU64,
    /// The capabilities' app-wide state.
    pub shared: Arc<Shared>,
}

impl AppServer {
    pub fn new(
        runtime: Arc<Runtime>,
        tracing: Arc<Tracing>,
        metrics: Arc<Metrics>,
        live: LiveApp,
        limits: Limits,
        shared: Arc<Shared>,
    ) -> Self {
        let permits = Arc::new(Semaphore::new(runtime.config().pool_size as usize));
        record_component_info(&metrics, &live);
        AppServer {
            runtime,
            tracing,
            metrics,
            live: ArcSwap::from_pointee(live),
            limits,
            permits,
            in_flight: AtomicU64::new(0),
            shared,
        }
    }

    /// Handles one request; never fails, every error becomes a response.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        client: &Peer,
        local: SocketAddr,
    ) -> Response<WasiBody> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let _guard = InFlight(&self.in_flight);
        let _active = Active::new(&client.conn);
        if let Err(why) = check_host(&req) {
            tracing::debug!(client = %client.addr, "bad request: {why}");
            return plain(StatusCode::BAD_REQUEST, why);
        }
        let live = self.live.load_full();
        let Some(m) = live.router.route(req.uri().path()) else {
            return plain(StatusCode::NOT_FOUND, "Not Found\n");
        };
        self.serve_match(req, &live, &m, client, local, None).await
    }

    /// A request to the app itself (see [`AppDispatch`]): routed by path, or
    /// given straight to a component, then served as a client's request is,
    /// with its own server span, limits and metrics, but no socket.
    async fn handle_internal(
        self: Arc<Self>,
        internal: InternalRequest,
    ) -> Result<Response<WasiBody>, wasmtime_wasi_http::Error> {
        let InternalRequest {
            to,
            request,
            hops,
            deadline,
        } = internal;
        if std::time::Instant::now() >= deadline {
            return Err(wasmtime_wasi_http::Error::ConnectionTimeout);
        }
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let _guard = InFlight(&self.in_flight);
        let live = self.live.load_full();
        let path = request.uri().path().to_string();
        let m = match &to {
            Internal::Router => match live.router.route(&path) {
                Some(m) => m,
                None => return Ok(plain(StatusCode::NOT_FOUND, "Not Found\n")),
            },
            Internal::Component(id) => match live.index.get(id.as_str()) {
                Some(&i) => live.chained[i].matching(&path),
                None => return Err(wasmtime_wasi_http::Error::DestinationNotFound),
            },
        };
        let peer = Peer::new(INTERNAL_CLIENT);
        Ok(self
            .serve_match(
                request,
                &live,
                &m,
                &peer,
                INTERNAL_CLIENT,
                Some((hops, deadline)),
            )
            .await)
    }

    /// Serves a routed request and records its duration.
    async fn serve_match<B>(
        &self,
        req: Request<B>,
        live: &LiveApp,
        m: &crate::router::RouteMatch<'_>,
        client: &Peer,
        local: SocketAddr,
        chain: Option<(u32, std::time::Instant)>,
    ) -> Response<WasiBody>
    where
        B: InBody,
    {
        if let Some(answer) = &m.entry.static_response {
            return static_response(answer);
        }
        let slot = live.slots[m.entry.component_index].clone();
        let version = slot.current.load_full();
        let component = slot.id.clone();
        let started = std::time::Instant::now();
        let active = self.metrics.active_requests.with(&[&component]);
        active.add(1);
        let _active = ActiveGuard(active);
        let route = &*m.entry.raw;
        // Clients choose methods; the label set stays the standard one.
        let method = metric_method(req.method());
        let log_span = tracing::info_span!(
            "request",
            component = %component,
            route = %route,
            trace_id = tracing::field::Empty
        );
        let response = self
            .handle_routed(req, m, &slot, &version, client, local, chain)
            .instrument(log_span)
            .await;
        let status = response.status();
        self.metrics
            .request_duration
            .with(&[&component, route, method, status.as_str()])
            .observe(
                started.elapsed().as_secs_f64(),
                response.extensions().get::<SampledTrace>().map(|t| t.0),
            );
        response
    }

    #[allow(clippy::too_many_arguments)]
    async fn handle_routed<B>(
        &self,
        req: Request<B>,
        m: &crate::router::RouteMatch<'_>,
        slot: &crate::runtime::ComponentSlot,
        version: &crate::runtime::Version,
        client: &Peer,
        local: SocketAddr,
        chain: Option<(u32, std::time::Instant)>,
    ) -> Response<WasiBody>
    where
        B: InBody,
    {
        // For the span's `url.path` and the error log, after the request has
        // gone to the guest.
        let path: Arc<str> = Arc::from(req.uri().path());
        let component = slot.id.clone();

        if let Some(len) = content_length(&req)
            && len > self.limits.max_request_body
        {
            tracing::warn!(%component, length = len, limit = self.limits.max_request_body, "request body too large");
            return plain(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large\n");
        }

        let (mut parts, body) = req.into_parts();
        // `check_host` has made sure any `Host` is one valid authority.
        let host = parts
            .uri
            .authority()
            .map(|a| Arc::from(a.as_str()))
            .or_else(|| {
                parts
                    .headers
                    .get(http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(Arc::<str>::from)
            })
            .unwrap_or_else(|| Arc::from(local.to_string()));
        let path_and_query = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        let full_url = format!("http://{host}{path_and_query}");
        match full_url.parse::<http::Uri>() {
            Ok(uri) => parts.uri = uri,
            Err(_) => return plain(StatusCode::BAD_REQUEST, "Bad Request: invalid URL\n"),
        }
        // Clients may not forge the headers the host sets.
        if parts
            .headers
            .keys()
            .any(|k| k.as_str().starts_with("spin-"))
        {
            let forged: Vec<_> = parts
                .headers
                .keys()
                .filter(|k| k.as_str().starts_with("spin-"))
                .cloned()
                .collect();
            for k in forged {
                parts.headers.remove(k);
            }
        }
        insert_spin_headers(&mut parts.headers, m, &full_url, &client.header);

        // The server span, child of the caller's trace context; the guest sees
        // a `traceparent` that names it.
        let parent = self.tracing.extract(&parts.headers);
        let route = &*m.entry.raw;
        let method = parts.method.as_str();
        // A method outside the standard set is `_OTHER` in attributes and
        // `HTTP` in the span name, as the HTTP semantic conventions say.
        let standard = metric_method(&parts.method) != OTHER_METHOD;
        let name_method = if standard { method } else { "HTTP" };
        let mut name = String::with_capacity(name_method.len() + 1 + route.len());
        name.push_str(name_method);
        name.push(' ');
        name.push_str(route);
        let span = self.tracing.server_span(&parent, name, || {
            server_span_attributes(&parts, &m.entry.raw, &path, client, &host, &version.loaded)
        });
        self.tracing.inject(&span, &mut parts.headers);
        // Every log line of this request carries its trace id.
        tracing::Span::current().record(
            "trace_id",
            tracing::field::display(HexId(span.span().span_context().trace_id().to_bytes())),
        );

        let overflow = Arc::new(AtomicBool::new(false));
        let body = limited(body, self.limits.max_request_body, overflow.clone());
        let request = Request::from_parts(parts, body);

        let permit = match self.admit(slot).await {
            Ok(p) => p,
            Err(full) => {
                match full {
                    NoRoom::Pool => tracing::warn!(
                        %component,
                        "no free instance: all {} slots busy",
                        self.runtime.config().pool_size
                    ),
                    NoRoom::Share(n) => tracing::warn!(
                        %component,
                        "no free instance: the component has all {n} of its share of the pool"
                    ),
                }
                return self.fail(&component, &InvokeError::Exhausted, &span);
            }
        };
        let timeout = version.caps.timeout.unwrap_or(self.limits.request_timeout);
        let call = Call {
            loaded: version.loaded.clone(),
            caps: version.caps.clone(),
            timeout,
            max_memory: self.limits.max_instance_memory,
            permit,
            watch: client.conn.bodies.clone(),
            trace: TraceHandle {
                tracing: self.tracing.clone(),
                metrics: self.metrics.clone(),
                cx: span.clone(),
            },
            shared: self.shared.clone(),
            chain,
        };
        let result = instance::invoke(call, request).await;
        if overflow.load(Ordering::Relaxed) {
            tracing::warn!(%component, limit = self.limits.max_request_body, "request body too large");
            end_server_span(&span, 413);
            return plain(StatusCode::PAYLOAD_TOO_LARGE, "Payload Too Large\n");
        }
        let sc = span.span().span_context().clone();
        let sampled = sc.is_sampled().then(|| SampledTrace(sc.trace_id()));
        let mut resp = match result {
            Ok(resp) => {
                end_server_span(&span, resp.status().as_u16());
                resp
            }
            Err(e) => self.error_response(&component, &path, e, span),
        };
        if let Some(s) = sampled {
            resp.extensions_mut().insert(s);
        }
        resp
    }

    /// A place in the component's share of the pool, then a free instance
    /// slot, waiting at most `queue_timeout` for both. The wait also covers
    /// the short gap between a response's last byte and its instance being
    /// torn down, which a client can otherwise observe.
    async fn admit(&self, slot: &crate::runtime::ComponentSlot) -> Result<Admission, NoRoom> {
        let wait_until = tokio::time::Instant::now() + self.limits.queue_timeout;
        let share = acquire(&slot.share, wait_until)
            .await
            .ok_or(NoRoom::Share(slot.share_size))?;
        let pool = acquire(&self.permits, wait_until)
            .await
            .ok_or(NoRoom::Pool)?;
        Ok(Admission::new(
            pool,
            share,
            self.metrics.instances.with(&[&slot.id]),
        ))
    }

    /// Counts a failed request in `gantry_guest_failures`, logs it and
    /// answers it.
    fn error_response(
        &self,
        component: &str,
        path: &str,
        e: InvokeError,
        span: opentelemetry::Context,
    ) -> Response<WasiBody> {
        log_failure(component, path, &e);
        self.fail(component, &e, &span)
    }

    fn fail(
        &self,
        component: &str,
        e: &InvokeError,
        span: &opentelemetry::Context,
    ) -> Response<WasiBody> {
        self.metrics
            .guest_failures
            .with(&[component, e.label()])
            .inc();
        failure_response(e, span)
    }
}

/// Which bound refused an instance.
enum NoRoom {
    Pool,
    /// The component's share, of this size.
    Share(u32),
}

/// A permit of `sem`, waiting until `until` at most.
async fn acquire(
    sem: &Arc<Semaphore>,
    until: tokio::time::Instant,
) -> Option<tokio::sync::OwnedSemaphorePermit> {
    if let Ok(p) = sem.clone().try_acquire_owned() {
        return Some(p);
    }
    tokio::time::timeout_at(until, sem.clone().acquire_owned())
        .await
        .ok()?
        .ok()
}

/// `_OTHER` for a method outside the standard set.
const OTHER_METHOD: &str = "_OTHER";

/// The method as the request metrics label it: one of the standard methods,
/// else `_OTHER`, so that clients cannot grow the label set.
fn metric_method(m: &http::Method) -> &'static str {
    use http::Method;
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => OTHER_METHOD,
    }
}

/// An HTTP/1.1 request has exactly one `Host`, and any `Host` is a valid
/// authority (RFC 9112, 3.2): it is copied into `spin-full-url`.
fn check_host<B>(req: &Request<B>) -> Result<(), &'static str> {
    let mut hosts = req.headers().get_all(http::header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err("Bad Request: more than one Host header\n");
    }
    match first {
        None if req.version() == http::Version::HTTP_11 => {
            Err("Bad Request: an HTTP/1.1 request needs a Host header\n")
        }
        None => Ok(()),
        Some(h) => {
            let valid = h
                .to_str()
                .ok()
                .filter(|s| !s.is_empty() && !s.contains('@'))
                .and_then(|s| s.parse::<http::uri::Authority>().ok())
                .is_some();
            if valid {
                Ok(())
            } else {
                Err("Bad Request: the Host header is not a valid host[:port]\n")
            }
        }
    }
}

/// A route's `static_response`, as the manifest gives it.
fn static_response(answer: &crate::manifest::StaticResponse) -> Response<WasiBody> {
    let mut response = Response::new(full(answer.body.clone()));
    *response.status_mut() = answer.status;
    let headers = response.headers_mut();
    for (name, value) in &answer.headers {
        headers.append(name.clone(), value.clone());
    }
    response
}

/// The client address a request to the app itself carries.
const INTERNAL_CLIENT: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

impl AppDispatch for AppServer {
    fn dispatch(
        self: Arc<Self>,
        request: InternalRequest,
    ) -> std::pin::Pin<
        Box<dyn Future<Output = Result<Response<WasiBody>, wasmtime_wasi_http::Error>> + Send>,
    > {
        Box::pin(self.handle_internal(request))
    }
}

/// The client of one connection, written out once for all the requests it
/// sends: as `spin-client-addr` carries it and as its server spans'
/// `client.address` and `client.port`.
pub struct Peer {
    addr: SocketAddr,
    /// What the socket guard and the requests of this connection share.
    pub conn: Arc<ConnShared>,
    header: HeaderValue,
}

impl Peer {
    pub fn new(addr: SocketAddr) -> Peer {
        Peer {
            addr,
            conn: Arc::new(ConnShared::default()),
            // Digits, dots, colons and brackets: always a valid value.
            header: HeaderValue::from_str(&addr.to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("")),
        }
    }
}

/// The trace id of a sampled request, for the duration histogram's exemplar.
#[derive(Clone)]
struct SampledTrace(opentelemetry::trace::TraceId);

struct ActiveGuard(Arc<Gauge>);
impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.add(-1);
    }
}

/// Publishes `gantry_component_info` and the load time of every component.
pub fn record_component_info(metrics: &Metrics, live: &LiveApp) {
    for slot in &live.slots {
        let v = slot.current.load();
        let world = match v.loaded.world {
            crate::runtime::HttpWorld::P2 => "0.2",
            crate::runtime::HttpWorld::P3 => "0.3",
        };
        metrics.component_info.remove_first_label(&slot.id);
        metrics
            .component_info
            .with(&[&slot.id, &v.loaded.digest, world])
            .set(1);
        let loaded = v
            .loaded
            .loaded_at
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        metrics.component_loaded.with(&[&slot.id]).set(loaded);
    }
}

struct InFlight<'a>(&'a AtomicU64);
impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A server span's attributes (HTTP semantic conventions, and the
/// component's id and digest).
fn server_span_attributes(
    parts: &http::request::Parts,
    route: &Arc<str>,
    path: &str,
    client: &Peer,
    host: &str,
    loaded: &crate::runtime::LoadedComponent,
) -> Vec<KeyValue> {
    let method = parts.method.as_str();
    let mut a = Vec::with_capacity(14);
    if metric_method(&parts.method) != OTHER_METHOD {
        a.push(KeyValue::new("http.request.method", method.to_string()));
    } else {
        a.push(KeyValue::new("http.request.method", OTHER_METHOD));
        a.push(KeyValue::new(
            "http.request.method_original",
            method.to_string(),
        ));
    }
    a.push(KeyValue::new(
        "network.protocol.version",
        protocol_version(parts.version),
    ));
    a.push(KeyValue::new("http.route", route.clone()));
    a.push(KeyValue::new("url.scheme", "http"));
    a.push(KeyValue::new("url.path", path.to_string()));
    a.push(KeyValue::new(
        "client.address",
        client.addr.ip().to_string(),
    ));
    a.push(KeyValue::new("client.port", i64::from(client.addr.port())));
    a.push(KeyValue::new("server.address", host.to_string()));
    a.push(KeyValue::new("gantry.component.id", loaded.id.clone()));
    a.push(KeyValue::new(
        "gantry.component.digest",
        loaded.digest.clone(),
    ));
    if let Some(q) = parts.uri.query() {
        a.push(KeyValue::new("url.query", q.to_string()));
    }
    if let Some(ua) = parts
        .headers
        .get(http::header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
    {
        a.push(KeyValue::new("user_agent.original", ua.to_string()));
    }
    a
}

fn protocol_version(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "0.9",
        http::Version::HTTP_10 => "1.0",
        http::Version::HTTP_2 => "2",
        http::Version::HTTP_3 => "3",
        _ => "1.1",
    }
}

/// The response to a failed request, after its log line: the failure's
/// status (503 with `Retry-After`), and its server span ended with it.
fn failure_response(e: &InvokeError, span: &opentelemetry::Context) -> Response<WasiBody> {
    let status = e.status();
    end_failed_server_span(span, status.as_u16(), e.label(), e.to_string());
    match e {
        InvokeError::Timeout(_) => plain(status, "Gateway Timeout\n"),
        InvokeError::Exhausted => {
            let mut r = plain(status, "Service Unavailable: no free instance\n");
            r.headers_mut()
                .insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
            r
        }
        _ => plain(status, "Internal Server Error\n"),
    }
}

/// Logs a failed request.
fn log_failure(component: &str, path: &str, e: &InvokeError) {
    match e {
        InvokeError::Timeout(after) => {
            tracing::warn!(%component, %path, ?after, "request timed out")
        }
        InvokeError::Exhausted => tracing::warn!(%component, %path, "no free instance"),
        InvokeError::Trap(msg) => tracing::error!(%component, %path, "guest trapped: {msg}"),
        InvokeError::Instantiate(msg) => {
            tracing::error!(%component, %path, "instantiation failed: {msg}")
        }
        InvokeError::Guest(msg) => tracing::error!(%component, %path, "handler failed: {msg}"),
    }
}

pub fn plain(status: StatusCode, text: &'static str) -> Response<WasiBody> {
    let mut r = Response::new(full(Bytes::from_static(text.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

pub fn full(bytes: Bytes) -> WasiBody {
    Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    req.headers()
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// A request body the server hands to a component: a client's (hyper's
/// `Incoming`) or one another component sent to the app.
pub trait InBody:
    hyper::body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
    + Send
    + 'static
{
}

impl<B> InBody for B
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
}

/// The request body as the guest sees it: at most `limit` bytes
/// (`http_body_util::Limited`); past that it ends with
/// `HTTP-request-body-size`, `overflow` is set and the host answers 413.
fn limited<B: InBody>(body: B, limit: u64, overflow: Arc<AtomicBool>) -> WasiBody {
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    http_body_util::Limited::new(body, cap)
        .map_err(
            move |e| match e.downcast::<http_body_util::LengthLimitError>() {
                Ok(_) => {
                    overflow.store(true, Ordering::Relaxed);
                    wasmtime_wasi_http::Error::HttpRequestBodySize(Some(limit))
                }
                Err(e) => match e.downcast::<hyper::Error>() {
                    Ok(e) => (*e).into(),
                    Err(e) => match e.downcast::<wasmtime_wasi_http::Error>() {
                        Ok(e) => *e,
                        Err(e) => wasmtime_wasi_http::Error::InternalError(Some(e.to_string())),
                    },
                },
            },
        )
        .boxed_unsync()
}

/// Accepts connections until `shutdown` resolves, then lets in-flight
/// requests finish for up to `drain` before returning. At most
/// `max_connections` are served at once; more wait in the listen backlog.
pub async fn serve(
    listener: TcpListener,
    server: Arc<AppServer>,
    shutdown: impl Future<Output = ()>,
    drain: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        // The socket guard bounds the head (from its first byte) and the
        // idle time apart; hyper's own timer would count idle time as head.
        .header_read_timeout(None);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(server.limits.max_streams_per_connection);
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let connections = Arc::new(Semaphore::new(server.limits.max_connections));
    let (drain_tx, drain_rx) = tokio::sync::watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A place first: past the limit, connections wait in the backlog
        // instead of taking descriptors.
        let place = tokio::select! {
            p = connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = &mut shutdown => break,
        };
        let (stream, client) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Without it small responses wait ~40 ms for delayed ACKs.
        let _ = stream.set_nodelay(true);
        let server = server.clone();
        let peer = Arc::new(Peer::new(client));
        let shared = peer.conn.clone();
        let io = GuardedStream::new(stream, shared.clone(), server.limits.conn);
        let service = hyper::service::service_fn(move |req| {
            let server = server.clone();
            let peer = peer.clone();
            async move { Ok::<_, std::convert::Infallible>(server.handle(req, &peer, local).await) }
        });
        let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        let conn = graceful.watch(conn.into_owned());
        let mut drain_rx = drain_rx.clone();
        tokio::spawn(async move {
            let _place = place;
            let mut conn = std::pin::pin!(conn);
            let watch = shared.bodies.run();
            let mut watch = std::pin::pin!(watch);
            let mut drained = false;
            loop {
                tokio::select! {
                    ended = &mut conn => {
                        if let Err(e) = ended {
                            tracing::debug!(%client, "connection ended with error: {e}");
                        }
                        break;
                    }
                    () = &mut watch => {}
                    changed = drain_rx.changed(), if !drained => {
                        if changed.is_err() || *drain_rx.borrow() {
                            drained = true;
                            shared.draining.store(true, Ordering::Release);
                            // Nothing in flight (at most a half-sent head):
                            // close now rather than wait for the rest.
                            if !shared.busy() {
                                break;
                            }
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = drain_tx.send(true);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(drain) => {
            tracing::warn!("shutdown timeout of {drain:?} passed with requests still in flight");
        }
    }
}
