//! Outbound HTTP (`wasi:http/outgoing-handler` for 0.2, `wasi:http/client` for
//! 0.3): the component's `allowed_outbound_hosts` allow-list (its syntax is
//! the manifest's: [`crate::manifest::HostPattern`]), enforced before any
//! connection is opened. A denied request fails inside the guest with
//! `HTTP-request-denied`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

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
        self.patterns.iter().find(|p| p.allows(scheme, host, port))
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
    type Shared = ();
    type Instance = HttpInstance;

    fn shared(_: &Settings) -> anyhow::Result<()> {
        Ok(())
    }

    fn grant(
        spec: &ComponentSpec,
        values: &BTreeMap<String, String>,
    ) -> Result<OutboundGrant, ManifestError> {
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
        Ok(OutboundGrant {
            policy: Arc::new(OutboundPolicy::new(patterns)),
            propagate: spec.gantry.propagate_trace_context.unwrap_or(true),
        })
    }

    fn instance(_: &(), grant: &OutboundGrant, request: &Request) -> HttpInstance {
        HttpInstance {
            ctx: WasiHttpCtx::new(),
            hooks: OutboundHooks {
                component: request.component.clone(),
                policy: grant.policy.clone(),
                propagate: grant.propagate,
                tracing: request.trace.tracing.clone(),
                metrics: request.trace.metrics.clone(),
                guest: request.guest.clone(),
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
        let host = self.policy.label(&uri);
        if !self.policy.allows_uri(&uri) {
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
        Box::new(async move {
            use http_body_util::BodyExt;
            let result = wasmtime_wasi_http::default_send_request(request, options).await;
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
                    Ok((
                        res.map(BodyExt::boxed_unsync),
                        Box::new(io) as Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                    ))
                }
                Err(e) => {
                    end_failed_span(&cx, "connection", format!("{e:?}"));
                    Err(e)
                }
            }
        })
    }
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
