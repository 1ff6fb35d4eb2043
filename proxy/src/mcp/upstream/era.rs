//! The stateless 2026-07-28 era. A client that speaks it sends each request on its own, with
//! its protocol version, capabilities and identity in `_meta` and the method and name
//! mirrored in headers. Upstreams that speak it get the request as it is; upstreams of the
//! `initialize` era are probed once and served through a gateway-held session per upstream
//! and caller (and, on a `Passthrough` route, per forwarded token), so no session ever carries
//! two users' requests or tokens, with request ids made unique and restored on the way back.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Response, StatusCode};
use serde_json::{Value, json};

use super::hop::{Hop, HopError, gateway_id};
use crate::error::{Body, ProxyError, code};
use crate::mcp::message::Envelope;
use crate::mcp::message::{CLIENT_CAPABILITIES, LATEST_LEGACY, META_VERSION, PROTOCOL_VERSION};
use crate::mcp::relay::{self, EventIds, Rewrite};
use crate::session::UpstreamSession;

/// The stateless protocol version.
pub const MODERN: &str = "2026-07-28";
/// Versions served statelessly.
pub const MODERN_VERSIONS: [&str; 1] = [MODERN];
/// Every version a client may name in `MCP-Protocol-Version`: the `initialize` era's (a
/// server route's upstream may agree to any of them) and the stateless one.
pub const KNOWN_VERSIONS: [&str; 5] = [
    "2024-11-05",
    "2025-03-26",
    "2025-06-18",
    "2025-11-25",
    MODERN,
];
/// How long a probed era is trusted before the upstream is asked again.
const PROBE_TTL: Duration = Duration::from_secs(300);

/// Which protocol an upstream speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Era {
    /// `server/discover` and stateless requests.
    Modern,
    /// `initialize` and sessions only.
    Legacy,
}

/// Whether a request without a session is a stateless one: its version header or `_meta`
/// names a version of 2026-07-28 or later.
pub fn is_modern(headers: &HeaderMap, envelope: &Envelope) -> bool {
    let header = headers.get(PROTOCOL_VERSION).and_then(|v| v.to_str().ok());
    header
        .or(envelope.meta_version())
        .is_some_and(|v| v >= MODERN)
}

/// Checks a stateless request before the gateway acts on it, in the order the 2026-07-28
/// revision gives: its `_meta` carries the protocol version and client capabilities (else
/// -32602), its `MCP-Protocol-Version`, `Mcp-Method` and (for named methods) `Mcp-Name`
/// headers say what its body says (else -32020), and the version is one the gateway serves
/// (else -32022); all 400.
pub fn check(headers: &HeaderMap, envelope: &Envelope) -> Result<(), ProxyError> {
    let id = envelope.id.as_ref();
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let Some(meta) = envelope.params.as_ref().and_then(|p| p.meta.as_ref()) else {
        let message = format!(
            "params._meta must be an object carrying the required {META_VERSION:?} and {CLIENT_CAPABILITIES:?} envelope keys"
        );
        return Err(error(id, code::INVALID_PARAMS, message, None));
    };
    let missing: Vec<&str> = [
        (META_VERSION, meta.protocol_version.is_some()),
        (CLIENT_CAPABILITIES, meta.client_capabilities.is_some()),
    ]
    .into_iter()
    .filter_map(|(key, present)| (!present).then_some(key))
    .collect();
    if !missing.is_empty() {
        let message = format!(
            "params._meta is missing the required envelope key(s): {}",
            missing.join(", ")
        );
        return Err(error(id, code::INVALID_PARAMS, message, None));
    }
    let version = meta.protocol_version.as_deref().unwrap_or_default();
    let method = envelope.method();
    let params = envelope.params.as_ref();
    let name = match method {
        "tools/call" | "prompts/get" => params.and_then(|p| p.name.as_deref()),
        "resources/read" => params.and_then(|p| p.uri.as_deref()),
        _ => None,
    };
    let headers_say = [
        ("MCP-Protocol-Version", Some(version)),
        ("Mcp-Method", Some(method)),
        ("Mcp-Name", name),
    ];
    for (name, body) in headers_say {
        let Some(body) = body else { continue };
        match header(name) {
            Some(h) if h == body || decode_header(h).as_deref() == Some(body) => {}
            h => return Err(mismatch(id, name, h.unwrap_or("(none)"), body)),
        }
    }
    if !MODERN_VERSIONS.contains(&version) {
        return Err(unsupported(id, version));
    }
    Ok(())
}

/// Checks the `MCP-Protocol-Version` header of any request: absent, or a version the gateway
/// knows. Anything else is answered like a stateless request naming a version the gateway does
/// not serve (400, -32022, the stateless versions as the ones to use), as the reference SDK does.
pub fn check_version_header(headers: &HeaderMap, id: Option<&Value>) -> Result<(), ProxyError> {
    let Some(value) = headers.get(PROTOCOL_VERSION) else {
        return Ok(());
    };
    let version = String::from_utf8_lossy(value.as_bytes());
    if KNOWN_VERSIONS.contains(&&*version) {
        return Ok(());
    }
    Err(unsupported(id, &version))
}

fn unsupported(id: Option<&Value>, version: &str) -> ProxyError {
    error(
        id,
        code::UNSUPPORTED_VERSION,
        format!("protocol version {version} is not supported"),
        Some(json!({"supported": MODERN_VERSIONS, "requested": version})),
    )
}

/// `=?base64?...?=` header values, decoded.
fn decode_header(value: &str) -> Option<String> {
    use base64::Engine;
    let inner = value.strip_prefix("=?base64?")?.strip_suffix("?=")?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(inner)
        .ok()?;
    String::from_utf8(bytes).ok()
}

fn mismatch(id: Option<&Value>, name: &str, header: &str, body: &str) -> ProxyError {
    error(
        id,
        code::HEADER_MISMATCH,
        format!("the {name} header ({header:?}) does not match the request body ({body:?})"),
        None,
    )
}

fn error(id: Option<&Value>, code: i64, message: String, data: Option<Value>) -> ProxyError {
    ProxyError::Protocol {
        id: id.cloned(),
        code,
        message,
        data,
    }
}

/// Gateway-held upstream sessions kept at most (the least used go first; one forgotten only
/// costs a new `initialize`).
const POOLED_CAPACITY: u64 = 10_000;
/// A gateway-held upstream session unused this long is forgotten.
const POOLED_IDLE: Duration = Duration::from_secs(3600);

/// Probed eras and gateway-held sessions, per upstream, for this replica.
#[derive(Debug)]
pub struct Eras {
    /// By route path, for [`PROBE_TTL`]; one probe at a time per route (callers arriving
    /// while it runs wait for its answer).
    probed: moka::future::Cache<String, Era>,
    /// By route path and [`Hop::credential_identity`].
    pooled: moka::sync::Cache<(String, [u8; 32]), UpstreamSession>,
}

impl Default for Eras {
    fn default() -> Self {
        Self {
            probed: moka::future::Cache::builder()
                .max_capacity(POOLED_CAPACITY)
                .time_to_live(PROBE_TTL)
                .build(),
            pooled: moka::sync::Cache::builder()
                .max_capacity(POOLED_CAPACITY)
                .time_to_idle(POOLED_IDLE)
                .build(),
        }
    }
}

/// The `_meta` of a stateless request the gateway makes on its own behalf.
pub fn gateway_meta() -> Value {
    json!({
        META_VERSION: MODERN,
        CLIENT_CAPABILITIES: {},
        "io.modelcontextprotocol/clientInfo": {"name": "mcpgate", "version": env!("CARGO_PKG_VERSION")},
    })
}

impl Eras {
    /// The era `hop`'s upstream speaks, probed with `server/discover` when not known.
    pub async fn era(&self, hop: &Hop<'_>) -> Era {
        let key = &hop.route.config.path;
        if let Some(era) = self.probed.get(key).await {
            return era;
        }
        let probe = async {
            let discover = json!({
                "jsonrpc": "2.0", "id": "mcpgate-discover", "method": "server/discover",
                "params": {"_meta": gateway_meta()},
            });
            let era = match hop.call(None, &discover).await {
                Ok((_, reply))
                    if reply["result"]["supportedVersions"]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|v| v == MODERN)) =>
                {
                    Era::Modern
                }
                Ok(_) | Err(HopError::Answer(..)) => Era::Legacy,
                // Unreachable now: do not remember anything.
                Err(_) => return Err(()),
            };
            tracing::debug!(server = %hop.server(), ?era, "probed upstream era");
            Ok(era)
        };
        self.probed
            .try_get_with(key.clone(), probe)
            .await
            .unwrap_or(Era::Legacy)
    }

    /// Sends a stateless client's request (names already the upstream's) in the era the
    /// upstream speaks; the answer comes back through `rewrite`.
    pub async fn send(
        &self,
        hop: &Hop<'_>,
        mut request: Value,
        rewrite: impl Rewrite,
    ) -> Result<Response<Body>, HopError> {
        if self.era(hop).await == Era::Modern {
            let response = hop
                .send(hop.request(Method::POST, None, Bytes::from(request.to_string()))?)
                .await?;
            return Ok(relay::response(response, rewrite, EventIds::Dropped, hop).await);
        }
        let cached = matches!(
            request["method"].as_str(),
            Some(
                "tools/list"
                    | "prompts/list"
                    | "resources/list"
                    | "resources/templates/list"
                    | "resources/read"
            )
        );
        let original = request.get_mut("id").map(Value::take).unwrap_or_default();
        let ours = gateway_id("call");
        if let Some(fields) = request.as_object_mut() {
            fields.insert("id".into(), ours.clone());
        }
        let bytes = Bytes::from(request.to_string());
        let mut session = self.pooled(hop, false).await?;
        let mut response = hop
            .send(hop.request(Method::POST, Some(&session), bytes.clone())?)
            .await?;
        if response.status() == StatusCode::NOT_FOUND {
            session = self.pooled(hop, true).await?;
            response = hop
                .send(hop.request(Method::POST, Some(&session), bytes)?)
                .await?;
        }
        let restore = restored(ours, original, cached, rewrite);
        Ok(relay::response(response, restore, EventIds::Dropped, hop).await)
    }

    /// A `subscriptions/listen` stream from `hop`'s upstream, every message through
    /// `rewrite`; None when the upstream speaks only the `initialize` era or refuses.
    pub async fn listen(
        &self,
        hop: &Hop<'_>,
        request: &Value,
        rewrite: impl Rewrite,
    ) -> Result<Option<relay::Chunks>, HopError> {
        if self.era(hop).await != Era::Modern {
            return Ok(None);
        }
        let response = hop
            .send(hop.request(Method::POST, None, Bytes::from(request.to_string()))?)
            .await?;
        if !response.status().is_success() || !crate::mcp::sse::is_event_stream(response.headers())
        {
            return Ok(None);
        }
        Ok(Some(relay::sse(
            response.into_body(),
            rewrite,
            EventIds::Dropped,
            hop.limits.event_bytes,
        )))
    }

    /// One request the gateway makes for a stateless client (`_meta` already the client's);
    /// its response.
    pub async fn call(&self, hop: &Hop<'_>, request: &Value) -> Result<Value, HopError> {
        if self.era(hop).await == Era::Modern {
            return hop.call(None, request).await.map(|(_, reply)| reply);
        }
        let session = self.pooled(hop, false).await?;
        match hop.call(Some(&session), request).await {
            Err(HopError::Status(_, 404, _)) => {
                let session = self.pooled(hop, true).await?;
                hop.call(Some(&session), request)
                    .await
                    .map(|(_, reply)| reply)
            }
            other => other.map(|(_, reply)| reply),
        }
    }

    /// The gateway's session with an `initialize`-era upstream; a new one when `fresh`.
    async fn pooled(&self, hop: &Hop<'_>, fresh: bool) -> Result<UpstreamSession, HopError> {
        let key = (hop.route.config.path.clone(), hop.credential_identity());
        if !fresh && let Some(session) = self.pooled.get(&key) {
            return Ok(session);
        }
        let info = json!({"name": "mcpgate", "version": env!("CARGO_PKG_VERSION")});
        let (session, _) = hop.initialize(LATEST_LEGACY, &json!({}), &info).await?;
        self.pooled.insert(key, session.clone());
        Ok(session)
    }
}

/// What an `initialize`-era upstream answers a stateless client with, on its way back: the
/// response to the gateway's id `ours` gets the client's `original` id and the result fields
/// the stateless era requires (cache hints too when `cached`); requests for the client are
/// dropped (a stateless client has no way to answer them on this stream); then `rewrite`.
pub(crate) fn restored(
    ours: Value,
    original: Value,
    cached: bool,
    mut rewrite: impl Rewrite,
) -> impl Rewrite {
    move |message: &mut Value| {
        if message.get("method").is_some() && message.get("id").is_some() {
            return false;
        }
        if let Some(id) = message.get_mut("id").filter(|id| **id == ours) {
            *id = original.clone();
            if let Some(result) = message.get_mut("result").and_then(Value::as_object_mut) {
                result
                    .entry("resultType")
                    .or_insert_with(|| "complete".into());
                if cached {
                    // The stateless era requires cache hints on these results; per-user
                    // policy makes them uncacheable across callers.
                    result.entry("ttlMs").or_insert_with(|| 0.into());
                    result
                        .entry("cacheScope")
                        .or_insert_with(|| "private".into());
                }
            }
        }
        rewrite(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope(body: &str) -> Envelope {
        Envelope::parse(body.as_bytes()).unwrap()
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| (http::HeaderName::from_static(k), v.parse().unwrap()))
            .collect()
    }

    const CALL: &str = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"gh_search","_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}"#;

    #[test]
    fn stateless_requests_are_told_apart() {
        assert!(is_modern(&HeaderMap::new(), &envelope(CALL)));
        assert!(is_modern(
            &headers(&[("mcp-protocol-version", "2026-07-28")]),
            &envelope(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        ));
        assert!(!is_modern(
            &headers(&[("mcp-protocol-version", "2025-11-25")]),
            &envelope(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        ));
        assert!(!is_modern(
            &HeaderMap::new(),
            &envelope(r#"{"jsonrpc":"2.0","id":1,"method":"initialize"}"#)
        ));
    }

    /// (status, error code) of `check`'s refusal; (200, 0) when it lets the request in.
    fn checked(pairs: &[(&'static str, &str)], body: &str) -> (StatusCode, i64) {
        match check(&headers(pairs), &envelope(body)) {
            Ok(()) => (StatusCode::OK, 0),
            Err(error) => {
                let response = error.respond();
                let status = response.status();
                let body = futures::executor::block_on(http_body_util::BodyExt::collect(
                    response.into_body(),
                ))
                .unwrap()
                .to_bytes();
                let body: Value = serde_json::from_slice(&body).unwrap();
                (status, body["error"]["code"].as_i64().unwrap())
            }
        }
    }

    #[test]
    fn stateless_requests_carry_their_envelope_and_headers_say_what_the_body_says() {
        let all = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "gh_search"),
        ];
        assert_eq!(checked(&all, CALL), (StatusCode::OK, 0));
        let encoded = [all[0], all[1], ("mcp-name", "=?base64?Z2hfc2VhcmNo?=")];
        assert_eq!(checked(&encoded, CALL), (StatusCode::OK, 0));
        let mismatch = (StatusCode::BAD_REQUEST, code::HEADER_MISMATCH);
        for bad in [
            vec![all[1], all[2]],
            vec![all[0], all[2]],
            vec![all[0], all[1]],
            vec![all[0], ("mcp-method", "tools/list"), all[2]],
            vec![all[0], all[1], ("mcp-name", "other")],
            vec![("mcp-protocol-version", "2025-11-25"), all[1], all[2]],
        ] {
            assert_eq!(checked(&bad, CALL), mismatch, "{bad:?}");
        }
        let invalid = (StatusCode::BAD_REQUEST, code::INVALID_PARAMS);
        let list = |meta: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":1,"method":"tools/list","params":{{"_meta":{meta}}}}}"#
            )
        };
        let listing = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/list"),
        ];
        assert_eq!(
            checked(
                &listing,
                r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#
            ),
            invalid
        );
        assert_eq!(
            checked(
                &listing,
                &list(r#"{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}"#)
            ),
            invalid
        );
        let future = list(
            r#"{"io.modelcontextprotocol/protocolVersion":"2099-01-01","io.modelcontextprotocol/clientCapabilities":{}}"#,
        );
        let version = [
            ("mcp-protocol-version", "2099-01-01"),
            ("mcp-method", "tools/list"),
        ];
        assert_eq!(
            checked(&version, &future),
            (StatusCode::BAD_REQUEST, code::UNSUPPORTED_VERSION)
        );
    }
}
