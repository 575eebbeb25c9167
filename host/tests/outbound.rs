//! `allowed_outbound_hosts`: an allowed local URL is reached; a denied one
//! fails inside the guest and opens no connection.

mod common;
use common::*;

fn manifest(allowed: &str) -> String {
    format!(
        r#"
spin_manifest_version = 2
[application]
name = "outbound"
[variables]
upstream_url = {{ required = true }}
[[trigger.http]]
route = "/hello"
component = "hello"
[component.hello]
source = "{{wasm}}/hello.wasm"
allowed_outbound_hosts = [{allowed}]
[component.hello.variables]
upstream_url = "{{{{ upstream_url }}}}"
"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn allowed_host_is_reached() {
    wasm("hello");
    let upstream = Upstream::start().await;
    let (_dir, path) = write_manifest(&manifest(&format!(
        "\"http://127.0.0.1:{}\"",
        upstream.addr.port()
    )));
    let url = format!("upstream_url={}", upstream.url());
    let g = Gantry::start(&path, &["--variable", &url]);
    let r = get(&g.url("/hello")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("answered 200"), "{}", r.text());
    assert_eq!(upstream.connection_count(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn denied_host_errors_in_guest_and_opens_no_connection() {
    wasm("hello");
    let upstream = Upstream::start().await;
    // Same host, another port: not allowed.
    let (_dir, path) = write_manifest(&manifest("\"http://127.0.0.1:1\", \"https://example.com\""));
    let url = format!("upstream_url={}", upstream.url());
    let g = Gantry::start(&path, &["--variable", &url]);
    let r = get(&g.url("/hello")).await;
    // The guest got an error and said so in its own response.
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("HttpRequestDenied"), "{}", r.text());
    assert_eq!(
        upstream.connection_count(),
        0,
        "a denied request reached the network"
    );
    assert!(g.stderr().contains("outbound request denied"));
}

#[tokio::test(flavor = "multi_thread")]
async fn no_grant_means_no_outbound_at_all() {
    wasm("hello");
    let upstream = Upstream::start().await;
    let (_dir, path) = write_manifest(&manifest(""));
    let url = format!("upstream_url={}", upstream.url());
    let g = Gantry::start(&path, &["--variable", &url]);
    let r = get(&g.url("/hello")).await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(upstream.connection_count(), 0);
}

/// A WASI 0.2 guest (`alpha`, on the engine without concurrency support)
/// calls out through `wasi:http/outgoing-handler` 0.2: an allowed host is
/// reached with the request's trace context injected, a denied one is an
/// error inside the guest and opens no connection.
#[tokio::test(flavor = "multi_thread")]
async fn a_wasi_0_2_guest_calls_out_with_the_trace_context() {
    wasm("alpha");
    let upstream = Upstream::start().await;
    let (_dir, path) = write_manifest(&format!(
        r#"spin_manifest_version = 2
[application]
name = "outbound-0-2"
[[trigger.http]]
route = "/alpha"
component = "alpha"
[component.alpha]
source = "{{wasm}}/alpha.wasm"
allowed_outbound_hosts = ["http://127.0.0.1:{}"]
"#,
        upstream.addr.port()
    ));
    let g = Gantry::start(&path, &[]);
    let components = get(&g.admin_url("/components")).await.json();
    assert_eq!(
        components["components"][0]["engine"], "plain",
        "{components}"
    );

    let r = get(&g.url(&format!("/alpha?fetch={}/x", upstream.url()))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert_eq!(j["fetched"]["status"], 200, "{j}");
    assert_eq!(upstream.connection_count(), 1);
    // The guest's own traceparent (its request's server span) and the one
    // the upstream got share the trace id; the span ids differ (the
    // upstream's parent is the client span).
    let inner = j["headers"]["traceparent"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let outer = upstream
        .last_headers
        .lock()
        .ok()
        .and_then(|h| h.clone())
        .and_then(|h| h.get("traceparent").cloned())
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default();
    let trace_id = |tp: &str| tp.split('-').nth(1).unwrap_or_default().to_string();
    assert_eq!(inner.len(), 55, "guest saw {inner:?}");
    assert_eq!(trace_id(&inner), trace_id(&outer), "{inner} -> {outer}");
    assert_ne!(inner, outer);

    // Another port of the same host is not granted.
    let r = get(&g.url("/alpha?fetch=http://127.0.0.1:1/")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let j = r.json();
    assert!(
        j["fetched"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("HttpRequestDenied")),
        "{j}"
    );
    assert_eq!(upstream.connection_count(), 1);
}
