//! The outbound HTTP client (HTTP/1.1 and HTTP/2, TLS with the system's roots), and the
//! bounded JSON fetch every metadata document the gateway reads goes through.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, header};
use http_body_util::{BodyExt, Limited};
use serde_json::Value;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The client every upstream request goes through.
pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, crate::error::Body>;

/// Builds the client; fails only when the system's certificate store cannot be read.
pub fn client() -> std::io::Result<HttpClient> {
    let mut http = HttpConnector::new();
    // MCP messages are small request/response pairs: never wait to coalesce them.
    http.set_nodelay(true);
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(std::time::Duration::from_secs(90))
        .build(https))
}

/// GETs the JSON document at `url` (a 2xx answer of at most `max` bytes within `timeout`);
/// `Err` names the URL and what went wrong.
pub async fn get_json(
    client: &HttpClient,
    url: &str,
    max: usize,
    timeout: Duration,
) -> Result<Value, String> {
    let request = Request::get(url)
        .header(header::ACCEPT, "application/json")
        .body(crate::error::full(Bytes::new()))
        .map_err(|e| format!("{url}: {e}"))?;
    let fetch = async {
        let response = client
            .request(request)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url}: HTTP {}", response.status().as_u16()));
        }
        let body = Limited::new(response.into_body(), max)
            .collect()
            .await
            .map_err(|e| format!("{url}: {e}"))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))
    };
    tokio::time::timeout(timeout, fetch)
        .await
        .unwrap_or_else(|_| Err(format!("{url}: no answer in time")))
}
