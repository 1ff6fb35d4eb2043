//! Which browsers and host names may reach the MCP port. Every request with an `Origin` must
//! come from the gateway's own host, an allowed origin, or (when the gateway listens on
//! loopback only) a page on this machine. A loopback-only gateway also refuses `Host` names
//! that are not loopback, so a DNS-rebinding page cannot reach it under a foreign name.

use std::net::{IpAddr, SocketAddr};

use http::{HeaderMap, Uri, header};

/// The checks for one listener.
#[derive(Debug, Clone)]
pub struct RequestGuard {
    loopback: bool,
    allowed_origins: Vec<String>,
    allowed_hosts: Vec<String>,
}

/// Why a request was refused; the message says which setting admits it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The `Origin` is not the gateway's host nor an allowed origin.
    Origin,
    /// A loopback-only gateway was called under a non-loopback host name.
    Host,
}

impl Refusal {
    /// What the caller reads.
    pub fn message(self) -> &'static str {
        match self {
            Self::Origin => "this Origin may not call the gateway; add it to --allowed-origins",
            Self::Host => {
                "the gateway listens on loopback and refuses this Host name (DNS rebinding protection); add it to --allowed-hosts"
            }
        }
    }
}

impl RequestGuard {
    /// Checks for a gateway listening on `listen`. Origins are compared as written
    /// (`scheme://host[:port]`), host names without their port, both case-insensitively.
    pub fn new(listen: SocketAddr, allowed_origins: &[String], allowed_hosts: &[String]) -> Self {
        let clean = |list: &[String]| {
            list.iter()
                .map(|s| s.trim().trim_end_matches('/').to_ascii_lowercase())
                .filter(|s| !s.is_empty())
                .collect()
        };
        Self {
            loopback: listen.ip().is_loopback(),
            allowed_origins: clean(allowed_origins),
            allowed_hosts: clean(allowed_hosts),
        }
    }

    /// Admits or refuses a request by its `Host` (or HTTP/2 `:authority`) and `Origin`.
    pub fn check(&self, uri: &Uri, headers: &HeaderMap) -> Result<(), Refusal> {
        let authority = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| uri.authority().map(|a| a.as_str()));
        if self.loopback
            && let Some(authority) = authority
            && !self.host_allowed(hostname(authority))
        {
            return Err(Refusal::Host);
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Ok(());
        };
        // Browsers only from here on (rare): lower-casing allocates.
        let authority = authority.map(str::to_ascii_lowercase);
        let origin = origin
            .to_str()
            .map_err(|_| Refusal::Origin)?
            .trim_end_matches('/')
            .to_ascii_lowercase();
        let origin_authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        let same_host = origin_authority.is_some() && origin_authority == authority.as_deref();
        let local_page =
            self.loopback && origin_authority.is_some_and(|a| self.host_allowed(hostname(a)));
        if same_host || local_page || self.allowed_origins.contains(&origin) {
            Ok(())
        } else {
            Err(Refusal::Origin)
        }
    }

    fn host_allowed(&self, host: &str) -> bool {
        is_loopback_name(host)
            || self
                .allowed_hosts
                .iter()
                .any(|h| h.eq_ignore_ascii_case(host))
    }
}

/// The host of `host[:port]` or `[v6]:port`, without brackets.
fn hostname(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default();
    }
    authority.split(':').next().unwrap_or_default()
}

fn is_loopback_name(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(host: Option<&str>, origin: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(host) = host {
            headers.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        }
        if let Some(origin) = origin {
            headers.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        }
        headers
    }

    fn check(
        guard: &RequestGuard,
        host: Option<&str>,
        origin: Option<&str>,
    ) -> Result<(), Refusal> {
        guard.check(&Uri::from_static("/a/mcp/b/server"), &headers(host, origin))
    }

    #[test]
    fn a_loopback_gateway_refuses_foreign_host_names() {
        let guard = RequestGuard::new("127.0.0.1:8000".parse().unwrap(), &[], &[]);
        for host in [
            "localhost:8000",
            "127.0.0.1:8000",
            "[::1]:8000",
            "LOCALHOST",
            "127.3.4.5",
        ] {
            assert_eq!(check(&guard, Some(host), None), Ok(()), "{host}");
        }
        for host in [
            "evil.example:8000",
            "localhost.evil.example",
            "10.0.0.1:8000",
            "[::2]:80",
        ] {
            assert_eq!(
                check(&guard, Some(host), None),
                Err(Refusal::Host),
                "{host}"
            );
        }
        let named = RequestGuard::new(
            "127.0.0.1:8000".parse().unwrap(),
            &[],
            &["Gateway.Internal".into()],
        );
        assert_eq!(check(&named, Some("gateway.internal:8000"), None), Ok(()));
    }

    #[test]
    fn a_loopback_gateway_admits_pages_on_this_machine_only() {
        let guard = RequestGuard::new("127.0.0.1:8000".parse().unwrap(), &[], &[]);
        let host = Some("127.0.0.1:8000");
        assert_eq!(check(&guard, host, Some("http://localhost:6274")), Ok(()));
        assert_eq!(
            check(&guard, host, Some("http://evil.example")),
            Err(Refusal::Origin)
        );
        assert_eq!(check(&guard, host, Some("null")), Err(Refusal::Origin));
    }

    #[test]
    fn a_public_gateway_admits_its_own_origin_and_the_allowed_ones() {
        let guard = RequestGuard::new(
            "0.0.0.0:8000".parse().unwrap(),
            &["https://App.Example/".into()],
            &[],
        );
        let host = Some("mcp.example.com");
        assert_eq!(check(&guard, host, None), Ok(()));
        assert_eq!(check(&guard, host, Some("https://mcp.example.com")), Ok(()));
        assert_eq!(check(&guard, host, Some("https://app.example")), Ok(()));
        assert_eq!(
            check(&guard, host, Some("https://evil.example")),
            Err(Refusal::Origin)
        );
        assert_eq!(
            check(&guard, host, Some("http://localhost:3000")),
            Err(Refusal::Origin)
        );
    }
}
