//! Requests routed to the member that owns the name or URI they carry.

use futures::future::join_all;
use http::{HeaderValue, Method, Response, StatusCode};
use serde_json::{Value, json};

use super::*;
use crate::error::{Body, ProxyError, json_response};
use crate::mcp::asking::{self, Asking};
use crate::mcp::message::Kind;
use crate::mcp::relay::{self, EventIds};
use crate::mcp::shared::{hop_failure, not_a_message, unknown_tool};
use crate::mcp::upstream::hop::HopError;
use crate::outbound::OutboundError;
use crate::source::Member;
use crate::traffic::budget_key;

impl Ctx<'_> {
    pub(super) async fn post(&self, mut post: Post) -> Result<Response<Body>, ProxyError> {
        let Post { message, parsed } = &mut post;
        let envelope = &message.envelope;
        let id = envelope.id.as_ref();
        match envelope.kind() {
            Kind::Request => {}
            Kind::Notification => return Ok(self.notification(message).await),
            Kind::Response => {
                let response = super::parsed(message, parsed)?.take();
                return self.answer(message, response).await;
            }
            // `Shared::admit` refuses these before; kept for the match.
            Kind::Invalid => return Err(not_a_message(id)),
        }
        let method = envelope.method();
        let stateless = matches!(self.via, Via::Stateless { .. });
        if stateless && REMOVED_STATELESS.contains(&method) {
            return Err(method_not_found(id, method, StatusCode::NOT_FOUND));
        }
        if method == "ping" {
            return Ok(json_response(
                StatusCode::OK,
                &json!({"jsonrpc": "2.0", "id": id, "result": {}}),
            ));
        }
        if method == "server/discover" {
            return Ok(self.discover(id));
        }
        if let Some(listing) = listing::listing(method) {
            if envelope.params.as_ref().is_some_and(|p| p.cursor.is_some()) {
                return Err(ProxyError::InvalidParams {
                    id: id.cloned(),
                    message: "Invalid cursor: this server returns every item on the first page"
                        .into(),
                    data: None,
                    status: StatusCode::OK,
                });
            }
            return Ok(self.list(method, &listing, id).await);
        }
        if method == "logging/setLevel" {
            let request = super::parsed(message, parsed)?;
            return Ok(self.broadcast_request(message, request).await);
        }
        if method == "subscriptions/listen" {
            return self.listen(super::parsed(message, parsed)?, id).await;
        }
        let routed = match method {
            "tools/call" => {
                let name = envelope.name();
                match self.route.resolve_tool(name) {
                    Some((member, tool)) => Some((member, NAME, tool)),
                    None => return Err(unknown_tool(id, name)),
                }
            }
            "prompts/get" => self
                .by_prefix(envelope.name(), '_')
                .map(|(m, n)| (m, NAME, n)),
            "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
                let uri = envelope
                    .params
                    .as_ref()
                    .and_then(|p| p.uri.as_deref())
                    .unwrap_or_default();
                self.by_prefix(uri, '+').map(|(m, u)| (m, URI, u))
            }
            "completion/complete" => {
                let reference = &super::parsed(message, parsed)?["params"]["ref"];
                match reference["type"].as_str() {
                    Some("ref/prompt") => self
                        .by_prefix(reference["name"].as_str().unwrap_or_default(), '_')
                        .map(|(m, n)| (m, REF_NAME, n)),
                    Some("ref/resource") => self
                        .by_prefix(reference["uri"].as_str().unwrap_or_default(), '+')
                        .map(|(m, u)| (m, REF_URI, u)),
                    _ => None,
                }
            }
            _ => {
                // The stateless revision answers an unknown method 404.
                let status = match stateless {
                    true => StatusCode::NOT_FOUND,
                    false => StatusCode::OK,
                };
                return Err(method_not_found(id, method, status));
            }
        };
        let Some((member, path, original)) = routed else {
            // SEP-2164: a resource that is not found is named in the error.
            let data = (method == "resources/read")
                .then(|| json!({"uri": envelope.params.as_ref().and_then(|p| p.uri.as_deref())}));
            return Err(ProxyError::InvalidParams {
                id: id.cloned(),
                message: format!("{method}: no server of this virtual server has that name or URI"),
                data,
                status: StatusCode::OK,
            });
        };
        let mut caller = self.caller.clone();
        if let (Some(_), Ok(name)) = (caller.get("mcp-name"), HeaderValue::try_from(&original)) {
            caller.insert("mcp-name", name);
        }
        let asking = self.asking(method);
        let hop = self.hop(member, &caller);
        if method == "tools/call"
            && let Some(policy) = &hop.policy
        {
            policy.take_for(
                &budget_key(self.owner, self.extensions),
                &original,
                id,
                &hop.server(),
            )?;
        }
        let rewrite = from_member(member.name().to_owned());
        let response = match &self.via {
            Via::Stateless { .. } => {
                let mut request = super::parsed(message, parsed)?.take();
                if let Some(slot) = path
                    .iter()
                    .try_fold(&mut request, |v, name| v.get_mut(name))
                {
                    *slot = Value::String(original);
                }
                self.fwd.eras.send(&hop, request, rewrite).await
            }
            Via::Session { .. } => {
                let bytes = message.with_string_at(path, &original)?;
                match self.send(&hop, &Method::POST, bytes).await {
                    Ok(response) => {
                        let ids = EventIds::Member(member.name().to_owned());
                        Ok(relay::response(response, rewrite, ids, &hop).await)
                    }
                    Err(error) => Err(error),
                }
            }
        };
        match response {
            Ok(response) => Ok(response),
            Err(HopError::Credential(needed @ OutboundError::AuthorizationRequired { .. })) => {
                // One answer for everything this user still has to supply here.
                let others = self.needs(Some(member)).await;
                let needs: Vec<&OutboundError> = std::iter::once(&needed).chain(&others).collect();
                Ok(asking::answer(asking, id, &needs))
            }
            Err(error) => hop_failure(&Method::POST, id, error, asking),
        }
    }

    /// How to ask this request's client (of `method`) for an authorization.
    pub(super) fn asking(&self, method: &str) -> Asking {
        match &self.via {
            Via::Session { state, .. } => Asking::in_session(method, &state.capabilities),
            Via::Stateless { meta } => Asking::stateless(method, meta),
        }
    }

    /// What the caller still has to supply for the members (but `except`) that send each
    /// user's own credential.
    pub(super) async fn needs(&self, except: Option<&Member>) -> Vec<OutboundError> {
        let members = self.route.members.iter().filter(|m| {
            m.server.config.auth.per_user() && except.is_none_or(|e| e.name() != m.name())
        });
        join_all(members.map(|m| {
            self.fwd
                .outbound
                .resolve(&m.server, self.identity, self.caller)
        }))
        .await
        .into_iter()
        .filter_map(|resolved| match resolved {
            Err(need @ OutboundError::AuthorizationRequired { .. }) => Some(need),
            _ => None,
        })
        .collect()
    }

    /// The member named by the prefix of `name` (before `separator`), and the rest.
    pub(super) fn by_prefix(&self, name: &str, separator: char) -> Option<(&Member, String)> {
        let (server, rest) = name.split_once(separator)?;
        Some((self.route.member(server)?, rest.to_owned()))
    }
}

/// Where a routed request names what it wants (renamed to the member's own name).
const NAME: &[&str] = &["params", "name"];
const URI: &[&str] = &["params", "uri"];
const REF_NAME: &[&str] = &["params", "ref", "name"];
const REF_URI: &[&str] = &["params", "ref", "uri"];

/// Methods the stateless revision removed: a stateless client gets 404 for them.
pub(super) const REMOVED_STATELESS: [&str; 5] = [
    "initialize",
    "ping",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
];

/// -32601 for `method`, with `status` (404 for stateless clients, 200 within a session).
pub(super) fn method_not_found(id: Option<&Value>, method: &str, status: StatusCode) -> ProxyError {
    ProxyError::MethodNotFound {
        id: id.cloned(),
        message: format!("Method not found: {method}"),
        status,
    }
}
