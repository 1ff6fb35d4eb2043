//! The outbound HTTP client (HTTP/1.1 and HTTP/2, TLS with the system's roots).

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
