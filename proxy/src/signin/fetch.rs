//! Fetching documents at URLs a client names (client metadata documents), without letting
//! the client aim the gateway at its own network: https only; an address in the URL must be
//! public, and a host name is resolved by the connector's own resolver, which refuses loopback, private, link-local and other
//! non-public addresses, so the address checked is the address connected to (no window for
//! DNS rebinding); no redirects; at most [`MAX_DOCUMENT`] bytes within [`FETCH_TIMEOUT`].
//! A test setting allows private addresses and plain http.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use url::Url;

use crate::error::{Body, full};

/// Largest document read.
pub const MAX_DOCUMENT: usize = 64 * 1024;
/// How long a fetch may take, start to end.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Resolves host names, refusing non-public addresses unless allowed.
#[derive(Clone)]
struct GuardedResolver {
    allow_private: bool,
}

impl tower_service::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let allow_private = self.allow_private;
        Box::pin(async move {
            let addresses: Vec<SocketAddr> =
                tokio::net::lookup_host((name.as_str(), 0)).await?.collect();
            if addresses.is_empty() {
                return Err(std::io::Error::other("the host name has no address"));
            }
            if !allow_private && let Some(bad) = addresses.iter().find(|a| !is_public(a.ip())) {
                return Err(std::io::Error::other(format!(
                    "the host name resolves to {}, which is not a public address",
                    bad.ip()
                )));
            }
            Ok(addresses.into_iter())
        })
    }
}

/// Whether `ip` is an address on the public internet: not loopback, private (RFC 1918,
/// unique local), link-local, shared (CGNAT), unspecified, multicast, broadcast,
/// documentation or benchmarking ranges, NAT64 and site-local, nor an IPv4 one of those
/// inside IPv6 (mapped, compatible or 6to4).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let segments = v6.segments();
            let first = segments[0];
            // 6to4 (2002::/16) carries an IPv4 address in its next 32 bits; IPv4-compatible
            // (::a.b.c.d, deprecated) in its last.
            if first == 0x2002 {
                let [a, b] = segments[1].to_be_bytes();
                let [c, d] = segments[2].to_be_bytes();
                return is_public(IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d)));
            }
            if segments[..6].iter().all(|s| *s == 0) {
                return false;
            }
            !(v6.is_loopback()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80
                || (first & 0xffc0) == 0xfec0
                || first == 0x2001 && segments[1] == 0xdb8
                || first == 0x64 && segments[1] == 0xff9b)
        }
    }
}

/// Why a document could not be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// It could not be reached (refused address, DNS, TLS, timeout, status): the detail is for
    /// the log only, since it would tell whoever chose the URL about the gateway's network.
    Unreachable(String),
    /// It was reached and is not acceptable: the message is fine to show.
    Refused(String),
}

impl FetchError {
    /// What the person at the browser may read.
    pub fn public(&self, url: &str) -> String {
        match self {
            Self::Unreachable(_) => format!(
                "{url} could not be fetched: it must be an https URL on a public address that answers 200 with at most {MAX_DOCUMENT} bytes of JSON within {} s",
                FETCH_TIMEOUT.as_secs()
            ),
            Self::Refused(message) => message.clone(),
        }
    }

    /// The whole story, for the log.
    pub fn detail(&self) -> &str {
        match self {
            Self::Unreachable(detail) | Self::Refused(detail) => detail,
        }
    }
}

/// Fetches JSON documents at client-chosen URLs.
pub struct Fetcher {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector<GuardedResolver>>, Body>,
    allow_private: bool,
}

impl Fetcher {
    /// A fetcher; `allow_private` lets it reach private addresses and plain http (tests).
    pub fn new(allow_private: bool) -> std::io::Result<Self> {
        let mut http = HttpConnector::new_with_resolver(GuardedResolver { allow_private });
        http.enforce_http(false);
        http.set_connect_timeout(Some(FETCH_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Self {
            client: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build(https),
            allow_private,
        })
    }

    /// The JSON object at `url`, or why not.
    pub async fn get_json(&self, url: &Url) -> Result<Value, FetchError> {
        use FetchError::{Refused, Unreachable};
        match url.scheme() {
            "https" => {}
            "http" if self.allow_private => {}
            _ => return Err(Refused(format!("{url} must be an https URL"))),
        }
        // The connector resolves names only: an address in the URL is checked here.
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal.filter(|ip| !self.allow_private && !is_public(*ip)) {
            return Err(Refused(format!("{url}: {ip} is not a public address")));
        }
        let request = Request::get(url.as_str())
            .header(header::ACCEPT, "application/json")
            .body(full(Bytes::new()))
            .map_err(|e| Refused(format!("{url}: {e}")))?;
        let fetch = async {
            let response = self.client.request(request).await.map_err(|e| {
                // The innermost cause says what happened (the resolver's refusal, say).
                let mut cause: &dyn std::error::Error = &e;
                while let Some(source) = cause.source() {
                    cause = source;
                }
                Unreachable(format!("fetching {url}: {cause}"))
            })?;
            if response.status() != StatusCode::OK {
                return Err(Unreachable(format!(
                    "fetching {url}: HTTP {} (redirects are not followed)",
                    response.status().as_u16()
                )));
            }
            if let Some(length) = response
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
                && length > MAX_DOCUMENT
            {
                return Err(Refused(format!(
                    "{url} is {length} bytes; documents over {MAX_DOCUMENT} bytes are refused"
                )));
            }
            let body = Limited::new(response.into_body(), MAX_DOCUMENT)
                .collect()
                .await
                .map_err(|_| {
                    Refused(format!(
                        "{url} is over {MAX_DOCUMENT} bytes (or the connection broke)"
                    ))
                })?
                .to_bytes();
            let document: Value = serde_json::from_slice(&body)
                .map_err(|e| Refused(format!("{url} is not a JSON document: {e}")))?;
            if !document.is_object() {
                return Err(Refused(format!("{url} is not a JSON object")));
            }
            Ok(document)
        };
        tokio::time::timeout(FETCH_TIMEOUT, fetch)
            .await
            .unwrap_or_else(|_| {
                Err(Unreachable(format!(
                    "{url} did not answer within {FETCH_TIMEOUT:?}"
                )))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "192.0.2.1",
            "198.18.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "2001:db8::1",
            "64:ff9b::a00:1",
            "64:ff9b:1::1",
            "fec0::1",
            "::127.0.0.1",
            "::8.8.8.8",
            "2002:7f00:1::1",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "93.184.216.34",
            "8.8.8.8",
            "2606:4700::1111",
            "2002:808:808::1",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
    }

    /// A loopback server answering every connection with `response`; its URL.
    async fn serve(response: Vec<u8>) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for _ in 0..4 {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let mut buffer = [0u8; 4096];
                let _ = stream.read(&mut buffer).await;
                let _ = stream.write_all(&response).await;
                let _ = stream.shutdown().await;
            }
        });
        format!("http://{address}/client.json")
    }

    fn answer(status: &str, body: &[u8]) -> Vec<u8> {
        let mut response = format!(
            "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        response.extend_from_slice(body);
        response
    }

    #[tokio::test]
    async fn loopback_and_plain_http_are_refused_unless_allowed() {
        let url = Url::parse(&serve(answer("200 OK", b"{\"a\":1}")).await).unwrap();
        let guarded = Fetcher::new(false).unwrap();
        let error = guarded.get_json(&url).await.unwrap_err();
        assert!(error.detail().contains("must be an https URL"), "{error:?}");
        let mut https = url.clone();
        https.set_scheme("https").unwrap();
        let error = guarded.get_json(&https).await.unwrap_err();
        assert!(error.detail().contains("not a public address"), "{error:?}");
        let by_name = Url::parse(&format!(
            "https://localhost:{}/client.json",
            url.port().unwrap()
        ))
        .unwrap();
        let error = guarded.get_json(&by_name).await.unwrap_err();
        assert!(error.detail().contains("not a public address"), "{error:?}");
        let shown = error.public("https://localhost/client.json");
        assert!(
            !shown.contains("127.0.0.1") && !shown.contains("resolves"),
            "the browser learns nothing about the gateway's network: {shown}"
        );
        let allowed = Fetcher::new(true).unwrap();
        assert_eq!(allowed.get_json(&url).await.unwrap()["a"], 1);
    }

    #[tokio::test]
    async fn large_redirecting_and_non_json_documents_are_refused() {
        let allowed = Fetcher::new(true).unwrap();
        let big = vec![b' '; MAX_DOCUMENT + 1];
        let url = Url::parse(&serve(answer("200 OK", &big)).await).unwrap();
        let error = allowed.get_json(&url).await.unwrap_err();
        assert!(error.detail().contains("are refused"), "{error:?}");
        let redirect =
            b"HTTP/1.1 302 Found\r\nlocation: http://127.0.0.1:1/\r\ncontent-length: 0\r\n\r\n"
                .to_vec();
        let url = Url::parse(&serve(redirect).await).unwrap();
        let error = allowed.get_json(&url).await.unwrap_err();
        assert!(
            error.detail().contains("redirects are not followed"),
            "{error:?}"
        );
        let url = Url::parse(&serve(answer("200 OK", b"[1]")).await).unwrap();
        let error = allowed.get_json(&url).await.unwrap_err();
        assert!(error.detail().contains("not a JSON object"), "{error:?}");
    }
}
