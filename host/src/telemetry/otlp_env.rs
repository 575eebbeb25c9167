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
