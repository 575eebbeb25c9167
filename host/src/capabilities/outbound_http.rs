//! Outbound HTTP (`wasi:http/outgoing-handler` for 0.2, `wasi:http/client` for
//! 0.3): the component's `allowed_outbound_hosts` allow-list, in Spin's syntax,
//! enforced before any connection is opened.
//!
//! Pattern syntax: `scheme://host[:port]`, where `scheme` may be `*`, `host` may
//! be `*` or `*.example.com`, and `port` may be a number, `*` or `low..high`.
//! Without a port, the scheme's default port is meant (80 for http, 443 for
//! https). A denied request fails inside the guest with `HTTP-request-denied`.

use std::sync::Arc;

use http::uri::Scheme;
use opentelemetry::KeyValue;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::capabilities::otel::GuestTelemetry;
use crate::telemetry::trace::{end_client_span, end_failed_span};

#[derive(Debug, Clone, PartialEq, Eq)]
enum SchemePat {
    Any,
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPat {
    Any,
    /// `*.example.com`: any subdomain of the suffix (not the suffix itself).
    Subdomain(String),
    Exact(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortPat {
    Any,
    /// The scheme's default port.
    Default,
    Range(u16, u16),
}

/// One parsed `allowed_outbound_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    scheme: SchemePat,
    host: HostPat,
    port: PortPat,
    /// As written (templates expanded): the metric label of its calls.
    text: Arc<str>,
}

/// The label of calls to hosts no entry names.
pub const OTHER: &str = "_OTHER";

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

impl HostPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let hint = "expected `scheme://host[:port]`, e.g. \"https://example.com\", \"http://127.0.0.1:8080\" or \"https://*.example.com\"";
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(format!("{text:?} has no scheme; {hint}"));
        };
        let scheme = match scheme {
            "*" => SchemePat::Any,
            s if !s.is_empty()
                && s.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '+' || c == '-'
                }) =>
            {
                SchemePat::Named(s.to_string())
            }
            s => return Err(format!("{text:?}: invalid scheme {s:?}; {hint}")),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err(format!(
                "{text:?}: a path is not allowed here, only scheme, host and port; {hint}"
            ));
        }
        // Split host and port, minding bracketed IPv6 literals.
        let (host, port) = if let Some(after) = rest.strip_prefix('[') {
            let Some((h, tail)) = after.split_once(']') else {
                return Err(format!("{text:?}: unclosed '[' in IPv6 host"));
            };
            (h.to_string(), tail.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (rest.to_string(), None),
            }
        };
        let host = host.to_ascii_lowercase();
        let host = if host == "*" {
            HostPat::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.is_empty() || suffix.contains('*') {
                return Err(format!("{text:?}: invalid wildcard host; {hint}"));
            }
            HostPat::Subdomain(suffix.to_string())
        } else if host.is_empty()
            || host.contains('*')
            || !host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
        {
            return Err(format!("{text:?}: invalid host {host:?}; {hint}"));
        } else {
            HostPat::Exact(host)
        };
        let port = match port {
            None => {
                if let SchemePat::Named(s) = &scheme
                    && default_port(s).is_none()
                {
                    return Err(format!(
                        "{text:?}: scheme {s:?} has no default port; give one, e.g. \"{s}://host:1234\""
                    ));
                }
                PortPat::Default
            }
            Some("*") => PortPat::Any,
            Some(p) => {
                let parse = |s: &str| {
                    s.parse::<u16>()
                        .map_err(|_| format!("{text:?}: invalid port {p:?}; {hint}"))
                };
                match p.split_once("..") {
                    Some((lo, hi)) => {
                        let (lo, hi) = (parse(lo)?, parse(hi)?);
                        if lo > hi {
                            return Err(format!("{text:?}: empty port range {p:?}"));
                        }
                        PortPat::Range(lo, hi)
                    }
                    None => {
                        let n = parse(p)?;
                        PortPat::Range(n, n)
                    }
                }
            }
        };
        Ok(HostPattern {
            scheme,
            host,
            port,
            text: Arc::from(text),
        })
    }

    /// Whether `host` is the host this pattern names, whatever the scheme
    /// and port.
    fn names_host(&self, host: &str) -> bool {
        self.allows_host(host.trim_start_matches('[').trim_end_matches(']'))
    }

    fn allows_host(&self, host: &str) -> bool {
        match &self.host {
            HostPat::Any => true,
            HostPat::Exact(h) => h.eq_ignore_ascii_case(host),
            HostPat::Subdomain(suffix) => {
                let host = host.to_ascii_lowercase();
                host.len() > suffix.len() + 1
                    && host.ends_with(suffix.as_str())
                    && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
            }
        }
    }

    /// Does a request to `scheme://host:port` match this pattern?
    pub fn allows(&self, scheme: &str, host: &str, port: u16) -> bool {
        let scheme_ok = match &self.scheme {
            SchemePat::Any => true,
            SchemePat::Named(s) => s == scheme,
        };
        let host_ok = self.names_host(host);
        let port_ok = match &self.port {
            PortPat::Any => true,
            PortPat::Default => default_port(scheme) == Some(port),
            PortPat::Range(lo, hi) => (*lo..=*hi).contains(&port),
        };
        scheme_ok && host_ok && port_ok
    }
}

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
            return p.text.clone();
        }
        uri.host()
            .and_then(|h| self.patterns.iter().find(|p| p.names_host(h)))
            .map(|p| p.text.clone())
            .unwrap_or_else(|| Arc::from(OTHER))
    }
}

/// Denials are logged at most this often; the rest are counted in the
/// metric and summed into the next line logged.
static DENIAL_LOG: crate::telemetry::RateLimit = crate::telemetry::RateLimit::per_second(10);

/// The `wasi:http` hooks of one request's store: a client span, the
/// allow-list check, trace-context injection, then the default client.
pub struct OutboundHooks {
    pub component: Arc<str>,
    pub policy: Arc<OutboundPolicy>,
    pub propagate: bool,
    /// The request's telemetry: server span, open guest spans, metrics. Kept
    /// here because a client span's parent is the innermost open guest span.
    pub guest: GuestTelemetry,
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
        let cx = self
            .guest
            .tracing
            .client_span(&self.guest.current(), method, attrs);
        let host = self.policy.label(&uri);
        if !self.policy.allows_uri(&uri) {
            self.guest
                .metrics
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
            self.guest.tracing.inject(&cx, request.headers_mut());
        }
        let metrics = self.guest.metrics.clone();
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

    #[test]
    fn rejects_bad_patterns() {
        for bad in [
            "example.com",
            "https://example.com/path",
            "https://exa mple.com",
            "redis://cache",
            "https://example.com:port",
            "https://*",
            "https://a.*.com",
            "http://h:9..1",
        ] {
            if bad == "https://*" {
                assert!(HostPattern::parse(bad).is_ok());
                continue;
            }
            assert!(HostPattern::parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
