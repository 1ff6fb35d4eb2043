//! `x-mcp-headers`: a caller's per-request headers for upstreams. The request header holds a
//! JSON object keyed by McpServer name (a server route's own name, or a virtual server's
//! member); each value is an object of header names to values, sent to that upstream only,
//! overriding the credentials the gateway would inject. Names that would change how the
//! request travels (hop-by-hop, `Host`, framing, MCP's own session and version headers) are
//! refused, as is a header over [`MAX_BYTES`]. The values are credentials: never logged,
//! never audited, marked sensitive.

use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

/// The request header.
pub const HEADER: &str = "x-mcp-headers";
/// Largest `x-mcp-headers` value accepted.
pub const MAX_BYTES: usize = 16 * 1024;

/// Header names a caller may not set for an upstream.
const REFUSED: [&str; 15] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "content-type",
    "mcp-session-id",
    "mcp-protocol-version",
    HEADER,
];

/// Validated per-server headers.
#[derive(Debug, Default)]
pub struct ExtraHeaders(Vec<(String, Vec<(HeaderName, HeaderValue)>)>);

impl ExtraHeaders {
    /// The caller's `x-mcp-headers`, validated; `Ok(None)` when absent. The error says what to
    /// fix, without repeating any value.
    pub fn parse(headers: &HeaderMap) -> Result<Option<Self>, String> {
        let mut values = headers.get_all(HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(format!("send one {HEADER} header, not several"));
        }
        if value.len() > MAX_BYTES {
            return Err(format!("{HEADER} is over {MAX_BYTES} bytes"));
        }
        let parsed: Value = serde_json::from_slice(value.as_bytes()).map_err(|_| {
            format!(
                "{HEADER} must be a JSON object: {{\"<server>\": {{\"<header>\": \"<value>\"}}}}"
            )
        })?;
        let Value::Object(servers) = parsed else {
            return Err(format!(
                "{HEADER} must be a JSON object keyed by server name"
            ));
        };
        let mut all = Vec::with_capacity(servers.len());
        for (server, fields) in servers {
            let Value::Object(fields) = fields else {
                return Err(format!(
                    "{HEADER}: the value for server {server:?} must be an object of header names to strings"
                ));
            };
            let mut headers = Vec::with_capacity(fields.len());
            for (name, value) in fields {
                let header = HeaderName::try_from(name.as_str())
                    .map_err(|_| format!("{HEADER}: {name:?} is not a header name"))?;
                if REFUSED.contains(&header.as_str()) {
                    return Err(format!(
                        "{HEADER}: the {header} header may not be set for an upstream"
                    ));
                }
                let mut value = value
                    .as_str()
                    .and_then(|v| HeaderValue::try_from(v).ok())
                    .ok_or_else(|| {
                        format!("{HEADER}: the value of {name} for server {server:?} must be a string a header can carry")
                    })?;
                value.set_sensitive(true);
                headers.push((header, value));
            }
            all.push((server, headers));
        }
        Ok(Some(Self(all)))
    }

    /// The headers for McpServer `server`.
    pub fn for_server(&self, server: &str) -> &[(HeaderName, HeaderValue)] {
        self.0
            .iter()
            .find(|(name, _)| name == server)
            .map_or(&[], |(_, headers)| headers.as_slice())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, HeaderValue::try_from(value).unwrap());
        headers
    }

    #[test]
    fn headers_are_kept_per_server() {
        let extra = ExtraHeaders::parse(&with(
            r#"{"github": {"Authorization": "Bearer g", "X-Team": "a"}, "jira": {"X-Key": "j"}}"#,
        ))
        .unwrap()
        .unwrap();
        let github = extra.for_server("github");
        assert_eq!(github.len(), 2);
        assert_eq!(github[0].0, "authorization");
        assert_eq!(github[0].1, "Bearer g");
        assert!(github[0].1.is_sensitive());
        assert_eq!(extra.for_server("jira")[0].1, "j");
        assert!(extra.for_server("other").is_empty());
        assert!(ExtraHeaders::parse(&HeaderMap::new()).unwrap().is_none());
    }

    #[test]
    fn what_would_change_how_a_request_travels_is_refused_without_echoing_values() {
        for (value, says) in [
            ("not json", "must be a JSON object"),
            ("[1]", "keyed by server name"),
            (r#"{"s": "x"}"#, "must be an object"),
            (r#"{"s": {"Host": "evil"}}"#, "host header may not"),
            (
                r#"{"s": {"Transfer-Encoding": "chunked"}}"#,
                "transfer-encoding",
            ),
            (r#"{"s": {"Mcp-Session-Id": "x"}}"#, "mcp-session-id"),
            (r#"{"s": {"bad name": "x"}}"#, "not a header name"),
            (r#"{"s": {"X-A": 1}}"#, "must be a string"),
            (r#"{"s": {"X-A": "secret\u0000"}}"#, "must be a string"),
        ] {
            let error = ExtraHeaders::parse(&with(value)).unwrap_err();
            assert!(error.contains(says), "{value}: {error}");
            assert!(
                !error.contains("secret") && !error.contains("evil"),
                "{error}"
            );
        }
        let big = format!(r#"{{"s": {{"X-A": "{}"}}}}"#, "x".repeat(MAX_BYTES));
        assert!(
            ExtraHeaders::parse(&with(&big))
                .unwrap_err()
                .contains("over")
        );
        let mut twice = with("{}");
        twice.append(HEADER, HeaderValue::from_static("{}"));
        assert!(ExtraHeaders::parse(&twice).unwrap_err().contains("one"));
    }
}
