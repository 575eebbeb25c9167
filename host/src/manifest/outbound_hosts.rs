//! The syntax of `allowed_outbound_hosts` entries (Spin's): `scheme://host[:port]`,
//! where `scheme` may be `*`, `host` may be `*` or `*.example.com`, and `port`
//! may be a number, `*` or `low..high`. Without a port, the scheme's default
//! port is meant (80 for http, 443 for https, 6379 for redis, 5432 for
//! postgres, 3306 for mysql, 1883 for mqtt).

use std::sync::Arc;

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

/// The port a URL of `scheme` means when it names none.
pub fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        "redis" | "rediss" => Some(6379),
        "postgres" | "postgresql" => Some(5432),
        "mysql" => Some(3306),
        "mqtt" => Some(1883),
        "mqtts" => Some(8883),
        _ => None,
    }
}

impl HostPattern {
    /// The entry as written (templates expanded).
    pub fn text(&self) -> &Arc<str> {
        &self.text
    }

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
    pub fn names_host(&self, host: &str) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_schemes_have_their_default_ports() {
        for (text, port) in [
            ("redis://cache", 6379),
            ("postgres://db", 5432),
            ("mysql://db", 3306),
            ("mqtt://broker", 1883),
        ] {
            let p = HostPattern::parse(text).expect(text);
            let (scheme, host) = text.split_once("://").expect("scheme");
            assert!(p.allows(scheme, host, port), "{text}");
            assert!(!p.allows(scheme, host, port + 1), "{text}");
        }
    }

    #[test]
    fn rejects_bad_patterns() {
        for bad in [
            "example.com",
            "https://example.com/path",
            "https://exa mple.com",
            "ftp://cache",
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
