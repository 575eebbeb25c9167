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
