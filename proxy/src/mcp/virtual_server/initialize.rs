//! `initialize` answered by the gateway: every member's session opened, capabilities and
//! instructions merged; and what the gateway says about the route (`server/discover`).

use futures::future::join_all;
use http::{HeaderMap, HeaderValue, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::*;
use crate::auth::Identity;
use crate::error::{Body, ProxyError, json_response};
use crate::mcp::message::{LATEST_LEGACY, SESSION_ID};
use crate::mcp::shared::Shared;
use crate::mcp::upstream::era;
use crate::mcp::upstream::hop::HopError;
use crate::outbound::OutboundError;
use crate::session::{SessionState, UpstreamSession};
use crate::source::VirtualRoute;

/// Versions of the `initialize` era the gateway speaks downstream.
pub(super) const LEGACY_VERSIONS: [&str; 3] = ["2025-11-25", "2025-06-18", "2025-03-26"];

/// Opens every member's upstream session, merges what they say, and mints the client's
/// session id.
pub(super) async fn initialize(
    fwd: &Shared,
    caller: &HeaderMap,
    route: &VirtualRoute,
    request: &Value,
    id: Option<&Value>,
    owner: Option<String>,
    identity: Option<&Identity>,
) -> Result<Response<Body>, ProxyError> {
    let params = &request["params"];
    let asked = params["protocolVersion"].as_str().unwrap_or_default();
    let version = if LEGACY_VERSIONS.contains(&asked) {
        asked
    } else {
        LATEST_LEGACY
    };
    let capabilities = params
        .get("capabilities")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let client_info = params
        .get("clientInfo")
        .cloned()
        .unwrap_or_else(|| json!({}));
    let opened = join_all(route.members.iter().map(|member| {
        let (capabilities, client_info, owner) = (&capabilities, &client_info, &owner);
        async move {
            let hop = fwd.hop(&member.server, caller, owner.as_deref(), identity);
            match hop.initialize(version, capabilities, client_info).await {
                Ok((session, result)) => (session, Some(result)),
                Err(error) => {
                    if matches!(error, HopError::Credential(OutboundError::AuthorizationRequired { .. })) {
                        tracing::debug!(%error, "a member waits for the caller's own credential");
                    } else {
                        tracing::warn!(%error, "a member did not initialize; it is opened again when used");
                    }
                    let session = UpstreamSession { server: member.name().to_owned(), id: None, version: String::new() };
                    (session, None)
                }
            }
        }
    }))
    .await;

    let mut instructions: Vec<String> = route.config.instructions.iter().cloned().collect();
    let has = |capability: &str| {
        opened.iter().any(|(_, r)| {
            r.as_ref()
                .is_some_and(|r| r["capabilities"].get(capability).is_some())
        })
    };
    let mut merged = Map::new();
    merged.insert("tools".into(), json!({"listChanged": true}));
    if has("prompts") {
        merged.insert("prompts".into(), json!({"listChanged": true}));
    }
    if has("resources") {
        merged.insert(
            "resources".into(),
            json!({"listChanged": true, "subscribe": true}),
        );
    }
    for capability in ["logging", "completions"] {
        if has(capability) {
            merged.insert(capability.into(), json!({}));
        }
    }
    for (session, result) in &opened {
        if let Some(text) = result
            .as_ref()
            .and_then(|r| r["instructions"].as_str())
            .filter(|t| !t.is_empty())
        {
            instructions.push(format!(
                "Tools prefixed `{}_` come from a server that says: {text}",
                session.server
            ));
        }
    }
    let state = SessionState {
        route: route.config.path.clone(),
        version: version.to_owned(),
        capabilities,
        client_info,
        upstreams: opened.into_iter().map(|(s, _)| s).collect(),
        owner,
        issued: 0,
    };
    let sid = match fwd.sessions.mint(&state).map(HeaderValue::try_from) {
        Ok(Ok(sid)) => sid,
        _ => {
            return Err(ProxyError::Internal {
                id: id.cloned(),
                message: "could not seal the session".into(),
            });
        }
    };
    let mut result = json!({
        "protocolVersion": version,
        "capabilities": merged,
        "serverInfo": server_info(route),
    });
    if !instructions.is_empty() {
        result["instructions"] = Value::String(instructions.join("\n\n"));
    }
    let mut response = json_response(
        StatusCode::OK,
        &json!({"jsonrpc": "2.0", "id": id, "result": result}),
    );
    response.headers_mut().insert(SESSION_ID, sid);
    Ok(response)
}

impl Ctx<'_> {
    /// Client notifications: `initialized` was sent upstream at initialize; the others
    /// (cancellation, roots changes, progress of answers) go to every member.
    /// `server/discover`: what the gateway serves on this route.
    pub(super) fn discover(&self, id: Option<&Value>) -> Response<Body> {
        let mut result = json!({
            "supportedVersions": era::MODERN_VERSIONS,
            "capabilities": {
                "tools": {"listChanged": true},
                "prompts": {"listChanged": true},
                "resources": {"listChanged": true, "subscribe": true},
                "completions": {},
            },
            "resultType": "complete",
            "ttlMs": 0,
            "cacheScope": "private",
            "_meta": {"io.modelcontextprotocol/serverInfo": self.server_info()},
        });
        if let Some(instructions) = &self.route.config.instructions {
            result["instructions"] = Value::String(instructions.clone());
        }
        json_response(
            StatusCode::OK,
            &json!({"jsonrpc": "2.0", "id": id, "result": result}),
        )
    }

    pub(super) fn server_info(&self) -> Value {
        server_info(self.route)
    }
}

pub(super) fn server_info(route: &VirtualRoute) -> Value {
    json!({
        "name": format!("{}/{}", route.config.namespace, route.config.name),
        "version": env!("CARGO_PKG_VERSION"),
    })
}
