//! What the standard `OTEL_*` variables say about OTLP export: whether a
//! signal is exported, where to, with which headers, and the resource every
//! signal names. Read by the trace, log and metrics exporters alike.

use std::time::Duration;

use opentelemetry::KeyValue;

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.trim().is_empty())
}

/// `OTEL_SDK_DISABLED=true` turns every exporter off.
pub fn sdk_disabled() -> bool {
    std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Is an OTLP endpoint configured for `signal` (`TRACES`, `METRICS`, `LOGS`),
/// and not turned off by `OTEL_SDK_DISABLED` or `OTEL_<SIGNAL>_EXPORTER=none`?
pub fn otlp_configured(signal: &str) -> bool {
    let off = std::env::var(format!("OTEL_{signal}_EXPORTER"))
        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !sdk_disabled()
        && !off
        && (env_set("OTEL_EXPORTER_OTLP_ENDPOINT")
            || env_set(&format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")))
}

pub fn resource() -> opentelemetry_sdk::Resource {
    let mut b = opentelemetry_sdk::Resource::builder();
    if !env_set("OTEL_SERVICE_NAME") {
        b = b.with_service_name("gantry");
    }
    b.with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// The first of the named variables that is set and not blank.
pub fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .filter_map(|n| std::env::var(n).ok())
        .map(|v| v.trim().to_string())
        .find(|v| !v.is_empty())
}

pub fn env_millis(name: &str, default: u64) -> Duration {
    Duration::from_millis(
        std::env::var(name)
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|ms| *ms > 0)
            .unwrap_or(default),
    )
}

/// `OTEL_EXPORTER_OTLP_HEADERS` syntax: `k1=v1,k2=v2`, values percent-encoded.
pub fn parse_headers(text: &str) -> Vec<(String, String)> {
    text.split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let v = url::form_urlencoded::parse(format!("v={}", v.trim()).as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default();
            (k.trim().to_string(), v)
        })
        .filter(|(k, _)| !k.is_empty())
        .collect()
}

/// `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_EXPORTER_OTLP_<SIGNAL>_HEADERS`.
pub fn signal_headers(signal: &str) -> Vec<(String, String)> {
    let mut out = parse_headers(&env_first(&["OTEL_EXPORTER_OTLP_HEADERS"]).unwrap_or_default());
    // Signal-specific headers override the general ones, key by key.
    let own = format!("OTEL_EXPORTER_OTLP_{signal}_HEADERS");
    for (k, v) in parse_headers(&env_first(&[own.as_str()]).unwrap_or_default()) {
        out.retain(|(ok, _)| !ok.eq_ignore_ascii_case(&k));
        out.push((k, v));
    }
    out
}

/// Where an http/protobuf export of `signal` (`TRACES`, `METRICS`) goes,
/// given `OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT` and `OTEL_EXPORTER_OTLP_ENDPOINT`:
/// the signal's own endpoint as given, else the general one with the
/// signal's path `/v1/<signal>`, else the local default (OTLP exporter
/// specification). One that is not an http(s) URL with a host is refused,
/// naming the variable it came from, so a typo fails at start instead of at
/// every export.
pub fn http_signal_url(
    signal: &str,
    own: Option<String>,
    general: Option<String>,
) -> anyhow::Result<String> {
    let lower = signal.to_ascii_lowercase();
    let (url, from) = match (own, general) {
        (Some(s), _) => (s, format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")),
        (None, Some(g)) => (
            format!("{}/v1/{lower}", g.trim_end_matches('/')),
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
        ),
        (None, None) => (
            format!("http://localhost:4318/v1/{lower}"),
            "the default".to_string(),
        ),
    };
    match url::Url::parse(&url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.has_host() => Ok(url),
        Ok(u) => anyhow::bail!(
            "{from}: the OTLP {lower} endpoint {url:?} must be an http:// or https:// URL with \
             a host, not {:?}",
            u.scheme()
        ),
        Err(e) => anyhow::bail!("{from}: the OTLP {lower} endpoint {url:?} is not a URL: {e}"),
    }
}

/// The OTLP transports Gantry speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

/// `OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`,
/// else `http/protobuf` (the specification's default).
pub fn protocol(signal: &str) -> anyhow::Result<Protocol> {
    let own = format!("OTEL_EXPORTER_OTLP_{signal}_PROTOCOL");
    match env_first(&[own.as_str(), "OTEL_EXPORTER_OTLP_PROTOCOL"]).as_deref() {
        None | Some("http/protobuf") => Ok(Protocol::HttpProtobuf),
        Some("grpc") => Ok(Protocol::Grpc),
        Some(other) => anyhow::bail!(
            "OTEL_EXPORTER_OTLP_PROTOCOL={other:?} is not supported for {}: use \
             \"http/protobuf\" or \"grpc\"",
            signal.to_ascii_lowercase()
        ),
    }
}

/// Where a gRPC export of `signal` goes: its own endpoint, else the general
/// one, else the local default; a `host:port` with no scheme is taken as
/// `http://` unless `OTEL_EXPORTER_OTLP_INSECURE=false` asks for TLS.
pub fn grpc_endpoint(signal: &str) -> String {
    let own = format!("OTEL_EXPORTER_OTLP_{signal}_ENDPOINT");
    let endpoint = env_first(&[own.as_str(), "OTEL_EXPORTER_OTLP_ENDPOINT"])
        .unwrap_or_else(|| "http://localhost:4317".into());
    if endpoint.contains("://") {
        return endpoint;
    }
    let insecure = format!("OTEL_EXPORTER_OTLP_{signal}_INSECURE");
    let tls = env_first(&[insecure.as_str(), "OTEL_EXPORTER_OTLP_INSECURE"])
        .is_some_and(|v| v.eq_ignore_ascii_case("false"));
    format!("{}://{endpoint}", if tls { "https" } else { "http" })
}

/// The export timeout of `signal` (`OTEL_EXPORTER_OTLP[_<SIGNAL>]_TIMEOUT`,
/// milliseconds; 10 s by default).
pub fn export_timeout(signal: &str) -> Duration {
    let own = format!("OTEL_EXPORTER_OTLP_{signal}_TIMEOUT");
    env_first(&[own.as_str(), "OTEL_EXPORTER_OTLP_TIMEOUT"])
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// Makes rustls use ring in every TLS client of the process (reqwest is
/// built without a provider of its own). Idempotent.
pub fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Trust anchors added to the system's for `signal`:
/// `OTEL_EXPORTER_OTLP_<SIGNAL>_CERTIFICATE`, else
/// `OTEL_EXPORTER_OTLP_CERTIFICATE`, a PEM file of one or more CA
/// certificates. A file that cannot be read or holds no certificate is
/// refused at start, naming the variable.
fn extra_roots_pem(signal: &str) -> anyhow::Result<Option<(String, Vec<u8>)>> {
    let own = format!("OTEL_EXPORTER_OTLP_{signal}_CERTIFICATE");
    let Some((var, path)) = [own.as_str(), "OTEL_EXPORTER_OTLP_CERTIFICATE"]
        .iter()
        .find_map(|v| env_first(&[v]).map(|p| (v.to_string(), p)))
    else {
        return Ok(None);
    };
    let pem = std::fs::read(&path)
        .map_err(|e| anyhow::anyhow!("{var}: cannot read the CA certificate file {path:?}: {e}"))?;
    if !pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        anyhow::bail!("{var}: {path:?} holds no PEM certificate (-----BEGIN CERTIFICATE-----)");
    }
    Ok(Some((var, pem)))
}

fn reqwest_roots(signal: &str) -> anyhow::Result<Vec<reqwest::Certificate>> {
    match extra_roots_pem(signal)? {
        None => Ok(Vec::new()),
        Some((var, pem)) => reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| anyhow::anyhow!("{var}: not a PEM certificate bundle: {e}")),
    }
}

/// The blocking HTTP client the SDK's batch exporters (traces, logs) post
/// with: rustls, the system's roots plus the configured CA. Built on a
/// thread of its own, as reqwest's blocking client must not be made (or
/// dropped) inside the async runtime.
pub fn blocking_http_client(signal: &str) -> anyhow::Result<reqwest::blocking::Client> {
    install_tls_provider();
    let roots = reqwest_roots(signal)?;
    let timeout = export_timeout(signal);
    std::thread::spawn(move || {
        reqwest::blocking::Client::builder()
            .timeout(timeout)
            .tls_certs_merge(roots)
            .build()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("building the OTLP HTTP client panicked"))?
    .map_err(|e| anyhow::anyhow!("cannot build the OTLP HTTP client: {e}"))
}

/// The async HTTP client of the metrics push, with the same roots.
pub fn http_client(signal: &str) -> anyhow::Result<reqwest::Client> {
    install_tls_provider();
    reqwest::Client::builder()
        .timeout(export_timeout(signal))
        .tls_certs_merge(reqwest_roots(signal)?)
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the OTLP HTTP client: {e}"))
}

/// TLS for a gRPC export to `endpoint`: `None` for `http://`, else the
/// system's roots plus the configured CA.
pub fn grpc_tls(
    signal: &str,
    endpoint: &str,
) -> anyhow::Result<Option<tonic::transport::ClientTlsConfig>> {
    if !endpoint.starts_with("https://") {
        return Ok(None);
    }
    install_tls_provider();
    let mut tls = tonic::transport::ClientTlsConfig::new().with_native_roots();
    if let Some((_, pem)) = extra_roots_pem(signal)? {
        tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
    }
    Ok(Some(tls))
}
