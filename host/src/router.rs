//! Request path -> component, with Spin's matching rules, and the `spin-*`
//! headers Spin gives the component it picks.
//!
//! Rules (Spin's, which follow its `routefinder`-based router):
//! - `/cart` is exact; a trailing slash on route or path is not significant.
//! - `/cart/...` matches `/cart` and everything below it; `/...` matches all.
//! - `:name` matches one segment and is passed as `spin-path-match-name`
//!   (underscores become hyphens, as in Spin).
//! - Where several match, the most specific wins, segment by segment from the
//!   left: a literal beats `:name`, which beats a trailing wildcard; an exact
//!   end beats a wildcard that matches nothing.
//! - Private components are never routed. No match is a 404.
//!
//! Lookup walks a segment trie, so its cost depends on the path's depth, not on
//! how many routes the application has.

use std::collections::HashMap;
use std::sync::Arc;

use http::header::InvalidHeaderValue;
use http::{HeaderMap, HeaderName, HeaderValue};

/// A route's `static_response`: the status (200 unless given), headers and
/// body the host answers with, no component involved.
#[derive(Debug)]
pub struct StaticResponse {
    pub status: http::StatusCode,
    pub headers: Vec<(http::HeaderName, http::HeaderValue)>,
    pub body: bytes::Bytes,
}

/// One routable entry.
#[derive(Debug, Clone)]
pub struct RouteEntry {
    /// The route as written in the manifest, e.g. `/api/...`; shared, so
    /// span attributes take it without a copy.
    pub raw: Arc<str>,
    /// The route without trailing slash (Spin's "based" route with base `/`).
    pub based: String,
    pub component: Arc<str>,
    /// Index of the component in the app's component table.
    pub component_index: usize,
    /// The host's own answer, when the route has a `static_response`
    /// instead of a component (`component` is then empty).
    pub static_response: Option<Arc<StaticResponse>>,
    wildcard: bool,
    /// The route's own `spin-*` header values, made once when the table is
    /// built rather than on every request (routes are validated ASCII).
    route_headers: Option<RouteHeaders>,
}

#[derive(Debug, Clone)]
struct RouteHeaders {
    matched: HeaderValue,
    raw: HeaderValue,
    component_route: HeaderValue,
}

impl RouteEntry {
    fn new(raw: &str, component: &str, component_index: usize) -> RouteEntry {
        let wildcard = split_wildcard(raw).1;
        // Spin strips one trailing slash from a non-wildcard route, so the
        // root route `/` is reported as the empty string.
        let based = if wildcard {
            raw.to_string()
        } else {
            raw.strip_suffix('/').unwrap_or(raw).to_string()
        };
        let prefix = raw.strip_suffix("/...").unwrap_or(raw);
        let route_headers = match (
            HeaderValue::from_str(&based),
            HeaderValue::from_str(raw),
            HeaderValue::from_str(prefix),
        ) {
            (Ok(matched), Ok(raw), Ok(component_route)) => Some(RouteHeaders {
                matched,
                raw,
                component_route,
            }),
            _ => None,
        };
        RouteEntry {
            raw: Arc::from(raw),
            based,
            component: Arc::from(component),
            component_index,
            static_response: None,
            wildcard,
            route_headers,
        }
    }

    /// The entry a chained request (`http://<id>.spin.internal`) reaches its
    /// component through, whatever its routes (or none, if it is private):
    /// `/...`, so `spin-path-info` is the whole path, as in Spin.
    pub fn chained(component: &str, component_index: usize) -> RouteEntry {
        RouteEntry::new("/...", component, component_index)
    }

    /// A chained request's match: the whole path is the path info.
    pub fn matching(&self, path: &str) -> RouteMatch<'_> {
        RouteMatch {
            entry: self,
            path_info: path.to_string(),
            params: Vec::new(),
        }
    }

    /// The route without its trailing wildcard (`spin-component-route`).
    pub fn prefix(&self) -> &str {
        self.raw.strip_suffix("/...").unwrap_or(&self.raw)
    }
    pub fn is_wildcard(&self) -> bool {
        self.wildcard
    }
}

#[derive(Default, Debug)]
struct Node {
    literal: HashMap<String, Node>,
    param: Option<(String, Box<Node>)>,
    /// Route ending exactly here.
    exact: Option<usize>,
    /// Route with a trailing wildcard here.
    wildcard: Option<usize>,
}

/// The routing table of one application version.
#[derive(Debug, Default)]
pub struct Router {
    root: Node,
    entries: Vec<RouteEntry>,
}

/// The result of routing one path.
#[derive(Debug)]
pub struct RouteMatch<'r> {
    pub entry: &'r RouteEntry,
    /// `spin-path-info`: the part of the path the wildcard matched.
    pub path_info: String,
    /// `:name` captures, in route order.
    pub params: Vec<(String, String)>,
}

/// Checks a route string's syntax; the error says what is wrong.
pub fn validate_route(route: &str) -> Result<(), String> {
    if !route.starts_with('/') {
        return Err(format!("route {route:?} must start with '/'"));
    }
    let segments = split(route.strip_suffix("/...").unwrap_or(route));
    for (i, seg) in segments.iter().enumerate() {
        if seg.contains("...") {
            return Err(format!(
                "route {route:?}: `...` is only allowed as the last segment (`/prefix/...`)"
            ));
        }
        if seg.contains('*') && !(*seg == "*" && i == segments.len() - 1) {
            return Err(format!(
                "route {route:?}: `*` is only allowed as the last segment"
            ));
        }
        if let Some(name) = seg.strip_prefix(':')
            && (name.is_empty()
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        {
            return Err(format!(
                "route {route:?}: `:{name}` is not a valid parameter name"
            ));
        }
        if seg.contains('?') || seg.contains('#') {
            return Err(format!(
                "route {route:?}: a route cannot contain '?' or '#'"
            ));
        }
    }
    Ok(())
}

/// The canonical form of a route, for duplicate detection.
pub fn normalize_route(route: &str) -> String {
    let (body, wild) = split_wildcard(route);
    let mut s = String::from("/");
    s.push_str(&split(body).join("/"));
    if wild {
        s.push_str(if s.ends_with('/') { "..." } else { "/..." });
    }
    s
}

fn split_wildcard(route: &str) -> (&str, bool) {
    if route == "/..." {
        return ("/", true);
    }
    if let Some(p) = route.strip_suffix("/...") {
        return (p, true);
    }
    if let Some(p) = route.strip_suffix("/*") {
        return (p, true);
    }
    (route, false)
}

/// Path segments without empty ones at the ends (`/a/b/` -> `[a, b]`).
fn split(path: &str) -> Vec<&str> {
    let trimmed = path.trim_start_matches('/').trim_end_matches('/');
    if trimmed.is_empty() {
        Vec::new()
    } else {
        trimmed.split('/').collect()
    }
}

impl Router {
    /// Builds a table from `(route, component id, component index)`. Routes must
    /// have been validated ([`validate_route`]); a later duplicate replaces an
    /// earlier one, as in Spin (the manifest loader refuses duplicates first).
    pub fn build<'a>(routes: impl IntoIterator<Item = (&'a str, &'a str, usize)>) -> Router {
        let mut router = Router::default();
        for (raw, component, index) in routes {
            router.add_component(raw, component, index);
        }
        router
    }

    /// Routes `raw` to the component `component` (index `index`).
    pub fn add_component(&mut self, raw: &str, component: &str, index: usize) {
        self.add(RouteEntry::new(raw, component, index));
    }

    /// Routes `raw` to the host's own `response` (`static_response`).
    pub fn add_static(&mut self, raw: &str, response: Arc<StaticResponse>) {
        let mut entry = RouteEntry::new(raw, "", usize::MAX);
        entry.static_response = Some(response);
        self.add(entry);
    }

    fn add(&mut self, entry: RouteEntry) {
        let (body, wildcard) = split_wildcard(&entry.raw);
        let segments: Vec<String> = split(body).into_iter().map(str::to_string).collect();
        let id = self.entries.len();
        self.entries.push(entry);
        let mut node = &mut self.root;
        for seg in segments {
            node = if let Some(name) = seg.strip_prefix(':') {
                let slot = node
                    .param
                    .get_or_insert_with(|| (name.to_string(), Box::default()));
                &mut slot.1
            } else {
                node.literal.entry(seg).or_default()
            };
        }
        if wildcard {
            node.wildcard = Some(id);
        } else {
            node.exact = Some(id);
        }
    }

    pub fn entries(&self) -> &[RouteEntry] {
        &self.entries
    }

    /// Finds the most specific route for `path` (no query string).
    pub fn route(&self, path: &str) -> Option<RouteMatch<'_>> {
        let segments = split(path);
        let mut params = Vec::new();
        let (id, consumed) = Self::find(&self.root, &segments, 0, &mut params)?;
        let entry = &self.entries[id];
        let path_info = if entry.wildcard {
            let rest = segments[consumed..].join("/");
            match (rest.is_empty(), path.ends_with('/')) {
                (true, false) => String::new(),
                (true, true) => "/".to_string(),
                (false, false) => format!("/{rest}"),
                (false, true) => format!("/{rest}/"),
            }
        } else {
            String::new()
        };
        Some(RouteMatch {
            entry,
            path_info,
            params,
        })
    }

    /// Depth-first in order of precedence, so the first match is the best one.
    fn find(
        node: &Node,
        segs: &[&str],
        depth: usize,
        params: &mut Vec<(String, String)>,
    ) -> Option<(usize, usize)> {
        if depth == segs.len() {
            if let Some(id) = node.exact {
                return Some((id, depth));
            }
            return node.wildcard.map(|id| (id, depth));
        }
        if let Some(child) = node.literal.get(segs[depth])
            && let Some(found) = Self::find(child, segs, depth + 1, params)
        {
            return Some(found);
        }
        if let Some((name, child)) = &node.param {
            params.push((name.clone(), segs[depth].to_string()));
            if let Some(found) = Self::find(child, segs, depth + 1, params) {
                return Some(found);
            }
            params.pop();
        }
        node.wildcard.map(|id| (id, depth))
    }
}

const SPIN_FULL_URL: HeaderName = HeaderName::from_static("spin-full-url");
const SPIN_PATH_INFO: HeaderName = HeaderName::from_static("spin-path-info");
const SPIN_BASE_PATH: HeaderName = HeaderName::from_static("spin-base-path");
const SPIN_CLIENT_ADDR: HeaderName = HeaderName::from_static("spin-client-addr");
const SPIN_MATCHED_ROUTE: HeaderName = HeaderName::from_static("spin-matched-route");
const SPIN_RAW_COMPONENT_ROUTE: HeaderName = HeaderName::from_static("spin-raw-component-route");
const SPIN_COMPONENT_ROUTE: HeaderName = HeaderName::from_static("spin-component-route");

/// Sets the `spin-*` headers Spin gives a component on `headers`, replacing
/// any a client sent. Values that are not valid header values (a full URL
/// can carry anything the client wrote) are left out rather than mangled.
pub fn insert_spin_headers(
    headers: &mut HeaderMap,
    m: &RouteMatch<'_>,
    full_url: &str,
    client_addr: &HeaderValue,
) {
    fn set(
        headers: &mut HeaderMap,
        name: HeaderName,
        value: Result<HeaderValue, InvalidHeaderValue>,
    ) {
        if let Ok(v) = value {
            headers.insert(name, v);
        }
    }
    // Room for the spin-* headers without growing the map one by one.
    headers.reserve(7 + m.params.len());
    set(headers, SPIN_FULL_URL, HeaderValue::from_str(full_url));
    set(headers, SPIN_PATH_INFO, HeaderValue::from_str(&m.path_info));
    set(headers, SPIN_BASE_PATH, Ok(HeaderValue::from_static("/")));
    headers.insert(SPIN_CLIENT_ADDR, client_addr.clone());
    match &m.entry.route_headers {
        Some(r) => {
            set(headers, SPIN_MATCHED_ROUTE, Ok(r.matched.clone()));
            set(headers, SPIN_RAW_COMPONENT_ROUTE, Ok(r.raw.clone()));
            set(headers, SPIN_COMPONENT_ROUTE, Ok(r.component_route.clone()));
        }
        None => {
            set(
                headers,
                SPIN_MATCHED_ROUTE,
                HeaderValue::from_str(&m.entry.based),
            );
            set(
                headers,
                SPIN_RAW_COMPONENT_ROUTE,
                HeaderValue::from_str(&m.entry.raw),
            );
            set(
                headers,
                SPIN_COMPONENT_ROUTE,
                HeaderValue::from_str(m.entry.prefix()),
            );
        }
    }
    for (name, value) in &m.params {
        // As Spin forms it: `:path_segment` arrives as
        // `spin-path-match-path-segment`.
        let name = format!(
            "spin-path-match-{}",
            name.to_ascii_lowercase().replace('_', "-")
        );
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(&str, &str)]) -> Router {
        Router::build(routes.iter().enumerate().map(|(i, (r, c))| (*r, *c, i)))
    }

    fn hit(r: &Router, path: &str) -> Option<String> {
        r.route(path).map(|m| m.entry.component.to_string())
    }

    #[test]
    fn exact_routes() {
        let r = router(&[("/foo", "foo"), ("/foo/bar", "foobar")]);
        assert_eq!(hit(&r, "/foo").as_deref(), Some("foo"));
        assert_eq!(hit(&r, "/foo/bar").as_deref(), Some("foobar"));
        assert_eq!(hit(&r, "/foo/baz"), None);
        assert_eq!(hit(&r, "/"), None);
        // Trailing slash is not significant.
        assert_eq!(hit(&r, "/foo/").as_deref(), Some("foo"));
    }

    #[test]
    fn wildcard_and_specificity() {
        let r = router(&[
            ("/...", "all"),
            ("/one", "one-exact"),
            ("/one/...", "one"),
            ("/one/two/...", "onetwo"),
            ("/one/:id", "one-param"),
        ]);
        assert_eq!(hit(&r, "/one").as_deref(), Some("one-exact"));
        assert_eq!(hit(&r, "/one/two/three").as_deref(), Some("onetwo"));
        assert_eq!(hit(&r, "/one/two").as_deref(), Some("onetwo"));
        assert_eq!(hit(&r, "/one/x").as_deref(), Some("one-param"));
        assert_eq!(hit(&r, "/one/x/y").as_deref(), Some("one"));
        assert_eq!(hit(&r, "/other").as_deref(), Some("all"));
        assert_eq!(hit(&r, "/").as_deref(), Some("all"));
    }

    #[test]
    fn order_does_not_matter() {
        let a = router(&[("/a/...", "short"), ("/a/b/...", "long")]);
        let b = router(&[("/a/b/...", "long"), ("/a/...", "short")]);
        assert_eq!(hit(&a, "/a/b/c"), hit(&b, "/a/b/c"));
        assert_eq!(hit(&a, "/a/b/c").as_deref(), Some("long"));
    }

    #[test]
    fn path_info_like_spin() {
        let r = router(&[("/test/...", "t")]);
        let pi = |p: &str| r.route(p).unwrap().path_info;
        assert_eq!(pi("/test"), "");
        assert_eq!(pi("/test/"), "/");
        assert_eq!(pi("/test/hello"), "/hello");
        assert_eq!(pi("/test/hello/"), "/hello/");
        let all = router(&[("/...", "all")]);
        assert_eq!(all.route("/1/2/3").unwrap().path_info, "/1/2/3");
    }

    fn headers(m: &RouteMatch<'_>, url: &str, client: &str) -> HashMap<String, String> {
        let mut h = HeaderMap::new();
        // A client's forged value is replaced.
        h.insert("spin-path-info", HeaderValue::from_static("/forged"));
        let client = HeaderValue::from_str(client).unwrap();
        insert_spin_headers(&mut h, m, url, &client);
        h.iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect()
    }

    #[test]
    fn headers_like_spin() {
        let r = router(&[
            ("/api/...", "api"),
            ("/users/:id", "users"),
            ("/posts/:post_id/:Path_Segment", "posts"),
        ]);
        let m = r.route("/api/v1/x").unwrap();
        let h = headers(&m, "http://h:3000/api/v1/x?q=1", "127.0.0.1:5");
        assert_eq!(h["spin-full-url"], "http://h:3000/api/v1/x?q=1");
        assert_eq!(h["spin-path-info"], "/v1/x");
        assert_eq!(h["spin-matched-route"], "/api/...");
        assert_eq!(h["spin-raw-component-route"], "/api/...");
        assert_eq!(h["spin-component-route"], "/api");
        assert_eq!(h["spin-base-path"], "/");
        assert_eq!(h["spin-client-addr"], "127.0.0.1:5");
        let m = r.route("/users/42").unwrap();
        let h = headers(&m, "u", "c");
        assert_eq!(h["spin-path-match-id"], "42");
        assert_eq!(h["spin-path-info"], "");
        assert_eq!(h["spin-component-route"], "/users/:id");
        let m = r.route("/posts/7/intro").unwrap();
        let h = headers(&m, "u", "c");
        assert_eq!(h["spin-path-match-post-id"], "7");
        assert_eq!(h["spin-path-match-path-segment"], "intro");
        assert!(!h.contains_key("spin-path-match-post_id"));
    }

    #[test]
    fn validation() {
        assert!(validate_route("/a/...").is_ok());
        assert!(validate_route("/a/:id/b").is_ok());
        assert!(validate_route("a").is_err());
        assert!(validate_route("/a/.../b").is_err());
        assert!(validate_route("/a/:").is_err());
        assert!(validate_route("/a?b").is_err());
        assert_eq!(normalize_route("/a/"), "/a");
        assert_eq!(normalize_route("/a/..."), "/a/...");
        assert_eq!(normalize_route("/..."), "/...");
    }
}
