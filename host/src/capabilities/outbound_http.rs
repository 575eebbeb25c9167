//! Outbound HTTP (`wasi:http/outgoing-handler` for 0.2, `wasi:http/client` for
//! 0.3): the component's `allowed_outbound_hosts` allow-list (its syntax is
//! the manifest's: [`crate::manifest::HostPattern`]), enforced before any
//! connection is opened. A denied request fails inside the guest with
//! `HTTP-request-denied`.
//!
//! Requests to the app itself never touch a socket: `http://self`,
//! `http://self.alt` and a relative URL (which Spin's SDKs send with the
//! authority `:80`) go through the app's router, `http://<id>.spin.internal`
//! straight to component `<id>` (service chaining), each granted like any
//! other host and carrying the trace context. A chain is at most
//! [`MAX_HOPS`] requests deep and never outlives the request that began it.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use http::uri::Scheme;
use opentelemetry::KeyValue;
use wasmtime::component::Linker;
use wasmtime_wasi_http::{
    Error as HttpError, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks,
    WasiHttpView,
};

use super::otel::GuestTelemetry;
use super::{Capability, HostState, Request, Settings};
pub use crate::manifest::OTHER;
use crate::manifest::{ComponentSpec, HostPattern, ManifestError, default_port};
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace::Tracing;
use crate::telemetry::trace::{end_client_span, end_failed_span};

/// A component's resolved allow-list.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    patterns: Vec<HostPattern>,
}

impl OutboundPolicy {
    pub fn new(patterns: Vec<HostPattern>) -> Self {
        OutboundPolicy { patterns }
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn allows_uri(&self, uri: &http::Uri) -> bool {
        self.granting(uri).is_some()
    }

    /// The entry that grants a call to `uri`, if one does.
    pub fn granting(&self, uri: &http::Uri) -> Option<&HostPattern> {
        let scheme = uri.scheme_str().unwrap_or("https");
        let host = uri.host()?;
        let port = uri.port_u16().or_else(|| default_port(scheme))?;
        self.granting_address(scheme, host, port)
    }

    /// The entry that grants a connection to `scheme://host:port`, if one
    /// does (what Redis, PostgreSQL, MySQL and MQTT check).
    pub fn granting_address(&self, scheme: &str, host: &str, port: u16) -> Option<&HostPattern> {
        self.patterns.iter().find(|p| p.allows(scheme, host, port))
    }

    /// The metric label of a connection to `host`: the granting entry, else
    /// the first entry naming the host, else `_OTHER` (see [`Self::label`]).
    pub fn label_address(&self, scheme: &str, host: &str, port: u16) -> Arc<str> {
        if let Some(p) = self.granting_address(scheme, host, port) {
            return p.text().clone();
        }
        self.patterns
            .iter()
            .find(|p| p.names_host(host))
            .map(|p| p.text().clone())
            .unwrap_or_else(|| Arc::from(OTHER))
    }

    /// `spec`'s `allowed_outbound_hosts`, its templates rendered with the
    /// app's variable `values`; errors name the file, line and field.
    pub fn of(
        spec: &ComponentSpec,
        values: &BTreeMap<String, String>,
    ) -> Result<OutboundPolicy, ManifestError> {
        let mut patterns = Vec::new();
        for rule in &spec.allowed_outbound_hosts {
            let text = rule
                .template
                .render(values)
                .map_err(|message| ManifestError {
                    location: rule.location.clone(),
                    message,
                })?;
            let pattern = HostPattern::parse(&text).map_err(|message| ManifestError {
                location: rule.location.clone(),
                message: if text == rule.raw {
                    message
                } else {
                    format!("{} expands to {text:?}: {message}", rule.raw)
                },
            })?;
            patterns.push(pattern);
        }
        Ok(OutboundPolicy::new(patterns))
    }

    /// The metric label of a call to `uri`: the entry that grants it, else
    /// the first entry naming its host (another port or scheme), else
    /// `_OTHER`. Guests choose hosts; the label set stays the manifest's.
    pub fn label(&self, uri: &http::Uri) -> Arc<str> {
        if let Some(p) = self.granting(uri) {
            return p.text().clone();
        }
        uri.host()
            .and_then(|h| self.patterns.iter().find(|p| p.names_host(h)))
            .map(|p| p.text().clone())
            .unwrap_or_else(|| Arc::from(OTHER))
    }
}

/// Denials are logged at most this often; the rest are counted in the
/// metric and summed into the next line logged.
static DENIAL_LOG: crate::telemetry::RateLimit = crate::telemetry::RateLimit::per_second(10);

/// The `wasi:http` capability: its types (which the incoming request uses
/// too) and outbound calls.
pub struct OutboundHttp;

/// How deep a chain of requests to the app itself may go: a component that
/// calls itself without end gets `loop-detected`, not the whole pool.
pub const MAX_HOPS: u32 = 8;

/// Where a request to the app itself goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Internal {
    /// `http://self`, `http://self.alt`, a relative URL: routed by path.
    Router,
    /// `http://<id>.spin.internal`: component `<id>`, whatever its routes.
    Component(String),
}

impl Internal {
    /// The internal destination `uri` names, if it names one.
    pub fn of(uri: &http::Uri) -> Option<Internal> {
        let host = uri.host().unwrap_or("").to_ascii_lowercase();
        match host.as_str() {
            "" | "self" | "self.alt" => Some(Internal::Router),
            h => h
                .strip_suffix(".spin.internal")
                .filter(|id| !id.is_empty() && !id.contains('.'))
                .map(|id| Internal::Component(id.to_string())),
        }
    }
}

/// A request to the app itself, as the outbound hook hands it over.
pub struct InternalRequest {
    pub to: Internal,
    pub request: http::Request<WasiBody>,
    /// How many requests deep the chain is, this one included.
    pub hops: u32,
    /// The deadline of the request that began the chain.
    pub deadline: Instant,
}

/// What answers requests to the app itself: the app's server.
pub trait AppDispatch: Send + Sync {
    fn dispatch(
        self: Arc<Self>,
        request: InternalRequest,
    ) -> Pin<Box<dyn Future<Output = Result<http::Response<WasiBody>, HttpError>> + Send>>;
}

/// The app-wide state: the server that answers requests to the app itself,
/// set once it exists (it holds this state, so it comes after it).
#[derive(Default)]
pub struct SelfApp(OnceLock<Weak<dyn AppDispatch>>);

impl SelfApp {
    pub fn set(&self, app: Weak<dyn AppDispatch>) {
        let _ = self.0.set(app);
    }
}

/// What a component may call: its allow-list, and whether its calls carry
/// the request's trace context (`tool.gantry.propagate_trace_context`).
pub struct OutboundGrant {
    pub policy: Arc<OutboundPolicy>,
    pub propagate: bool,
}

/// One instance's `wasi:http` state.
pub struct HttpInstance {
    ctx: WasiHttpCtx,
    hooks: OutboundHooks,
}

impl Capability for OutboundHttp {
    type Grant = OutboundGrant;
    type Shared = SelfApp;
    type Instance = HttpInstance;

    fn shared(_: &Settings) -> anyhow::Result<SelfApp> {
        Ok(SelfApp::default())
    }

    fn grant(
        spec: &ComponentSpec,
        values: &BTreeMap<String, String>,
    ) -> Result<OutboundGrant, ManifestError> {
        Ok(OutboundGrant {
            policy: Arc::new(OutboundPolicy::of(spec, values)?),
            propagate: spec.gantry.propagate_trace_context.unwrap_or(true),
        })
    }

    fn instance(app: &SelfApp, grant: &OutboundGrant, request: &Request) -> HttpInstance {
        HttpInstance {
            ctx: WasiHttpCtx::new(),
            hooks: OutboundHooks {
                component: request.component.clone(),
                policy: grant.policy.clone(),
                propagate: grant.propagate,
                tracing: request.trace.tracing.clone(),
                metrics: request.trace.metrics.clone(),
                guest: request.guest.clone(),
                app: app.0.get().cloned(),
                hops: request.hops,
                deadline: request.deadline,
            },
        }
    }

    fn add_to_linker(linker: &mut Linker<HostState>, concurrent: bool) -> anyhow::Result<()> {
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
        if concurrent {
            wasmtime_wasi_http::p3::add_to_linker(linker)?;
        }
        Ok(())
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.caps.http.ctx,
            table: &mut self.table,
            hooks: &mut self.caps.http.hooks,
        }
    }
}

/// The `wasi:http` hooks of one request's store: a client span, the
/// allow-list check, trace-context injection, then the default client.
pub struct OutboundHooks {
    component: Arc<str>,
    policy: Arc<OutboundPolicy>,
    propagate: bool,
    tracing: Arc<Tracing>,
    metrics: Arc<Metrics>,
    /// The guest's open spans: a client span's parent is the innermost one.
    guest: Arc<Mutex<GuestTelemetry>>,
    /// The app, for requests to itself.
    app: Option<Weak<dyn AppDispatch>>,
    /// How many requests to the app itself led to this one.
    hops: u32,
    deadline: Instant,
}

impl OutboundHooks {
    /// The context a call's client span is a child of.
    fn parent(&self) -> opentelemetry::Context {
        self.guest
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .current()
    }
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for OutboundHooks {
    fn is_supported_scheme(&mut self, scheme: &Scheme) -> bool {
        *scheme == Scheme::HTTP || *scheme == Scheme::HTTPS
    }

    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        drop(fut);
        let mut request = request;
        let uri = request.uri().clone();
        let method = request.method().as_str().to_string();
        let mut attrs = vec![
            KeyValue::new("http.request.method", method.clone()),
            KeyValue::new("url.full", uri.to_string()),
            KeyValue::new("gantry.component.id", self.component.to_string()),
        ];
        if let Some(host) = uri.host() {
            attrs.push(KeyValue::new("server.address", host.to_string()));
        }
        if let Some(port) = uri
            .port_u16()
            .or_else(|| uri.scheme_str().and_then(default_port))
        {
            attrs.push(KeyValue::new("server.port", i64::from(port)));
        }
        let cx = self.tracing.client_span(&self.parent(), method, attrs);
        let internal = Internal::of(&uri);
        // A relative URL is a request to `http://self`.
        let checked = match (&internal, uri.host()) {
            (Some(Internal::Router), Some("") | None) => self_uri(&uri),
            _ => uri.clone(),
        };
        // `http://self` grants `http://self.alt` too.
        let granting = if internal == Some(Internal::Router) && !self.policy.allows_uri(&checked) {
            self_uri(&uri)
        } else {
            checked.clone()
        };
        let host = self.policy.label(&granting);
        let granted = self.policy.allows_uri(&granting);
        if !granted {
            self.metrics
                .outbound_denied
                .with(&[&self.component, &host])
                .inc();
            if let Some(suppressed) = DENIAL_LOG.admit() {
                tracing::warn!(
                    component = %self.component,
                    %uri,
                    suppressed,
                    "outbound request denied: not in allowed_outbound_hosts"
                );
            }
            end_failed_span(
                &cx,
                "HTTP-request-denied",
                "not in allowed_outbound_hosts".into(),
            );
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        if self.propagate {
            self.tracing.inject(&cx, request.headers_mut());
        }
        let metrics = self.metrics.clone();
        let component = self.component.clone();
        let started = std::time::Instant::now();
        let app = match &internal {
            Some(_) if self.hops >= MAX_HOPS => {
                end_failed_span(
                    &cx,
                    "loop-detected",
                    format!("more than {MAX_HOPS} requests to the app in one chain"),
                );
                return Box::new(async { Err(HttpError::LoopDetected) });
            }
            Some(_) => self.app.as_ref().and_then(Weak::upgrade),
            None => None,
        };
        let (hops, deadline) = (self.hops + 1, self.deadline);
        Box::new(async move {
            use http_body_util::BodyExt;
            let result = match (internal, app) {
                (Some(to), Some(app)) => {
                    let mut request = request;
                    if checked != uri {
                        *request.uri_mut() = checked;
                    }
                    app.dispatch(InternalRequest {
                        to,
                        request,
                        hops,
                        deadline,
                    })
                    .await
                    .map(|res| {
                        let io: Box<dyn Future<Output = Result<(), HttpError>> + Send> =
                            Box::new(async { Ok(()) });
                        (res, io)
                    })
                }
                // The app is gone: the host is shutting down.
                (Some(_), None) => Err(HttpError::ConnectionRefused),
                (None, _) => wasmtime_wasi_http::default_send_request(request, options)
                    .await
                    .map(|(res, io)| {
                        let io: Box<dyn Future<Output = Result<(), HttpError>> + Send> =
                            Box::new(io);
                        (res.map(BodyExt::boxed_unsync), io)
                    }),
            };
            let status = match &result {
                Ok((res, _)) => res.status().as_str().to_string(),
                Err(_) => "error".to_string(),
            };
            metrics
                .outbound_duration
                .with(&[&component, &host, &status])
                .observe(started.elapsed().as_secs_f64(), None);
            match result {
                Ok((res, io)) => {
                    end_client_span(&cx, res.status().as_u16());
                    Ok((res, io))
                }
                Err(e) => {
                    end_failed_span(&cx, "connection", format!("{e:?}"));
                    Err(e)
                }
            }
        })
    }
}

/// `uri` with the host `self`: how a relative URL is granted and routed.
fn self_uri(uri: &http::Uri) -> http::Uri {
    let mut parts = uri.clone().into_parts();
    parts.authority = Some(http::uri::Authority::from_static("self"));
    http::Uri::from_parts(parts).unwrap_or_else(|_| uri.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allows(pat: &str, url: &str) -> bool {
        let uri: http::Uri = url.parse().unwrap();
        OutboundPolicy::new(vec![HostPattern::parse(pat).unwrap()]).allows_uri(&uri)
    }

    #[test]
    fn spin_syntax() {
        assert!(allows("https://example.com", "https://example.com/x"));
        assert!(!allows("https://example.com", "http://example.com/x"));
        assert!(!allows("https://example.com", "https://example.com:8443/x"));
        assert!(allows("http://127.0.0.1:8080", "http://127.0.0.1:8080/"));
        assert!(!allows("http://127.0.0.1:8080", "http://127.0.0.1:8081/"));
        assert!(allows("*://example.com", "http://example.com/"));
        assert!(allows("*://example.com", "https://example.com/"));
        assert!(allows("https://*.example.com", "https://api.example.com/"));
        assert!(!allows("https://*.example.com", "https://example.com/"));
        assert!(!allows("https://*.example.com", "https://badexample.com/"));
        assert!(allows("http://localhost:*", "http://localhost:1234/"));
        assert!(allows(
            "http://localhost:8000..9000",
            "http://localhost:8500/"
        ));
        assert!(!allows(
            "http://localhost:8000..9000",
            "http://localhost:9001/"
        ));
        assert!(allows("*://*:*", "http://anything:1/"));
        assert!(allows("http://[::1]:80", "http://[::1]/"));
    }
}
