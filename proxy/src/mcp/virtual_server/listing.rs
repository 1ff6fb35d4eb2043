//! Lists merged from every member (all pages), under the virtual server's names.

use futures::future::join_all;
use http::{Response, StatusCode};
use serde_json::{Map, Value, json};

use super::*;
use crate::error::{Body, json_response};
use crate::mcp::upstream::hop::{HopError, gateway_id};
use crate::outbound::OutboundError;
use crate::source::Member;

/// One list method and where its items' names live.
pub(crate) struct Listing {
    /// Key of the array in the result.
    pub(crate) key: &'static str,
    /// Field of each item that is namespaced.
    field: &'static str,
}

pub(crate) fn listing(method: &str) -> Option<Listing> {
    let (key, field) = match method {
        "tools/list" => ("tools", "name"),
        "prompts/list" => ("prompts", "name"),
        "resources/list" => ("resources", "uri"),
        "resources/templates/list" => ("resourceTemplates", "uriTemplate"),
        _ => return None,
    };
    Some(Listing { key, field })
}

/// The `_meta` key of a virtual server's list that left out members which failed: each
/// `{server, error}`.
pub const UNAVAILABLE_META: &str = "mcpgate.dev/unavailable";

impl Ctx<'_> {
    /// Every member's items, all pages, names made the virtual server's.
    pub(super) async fn list(
        &self,
        method: &str,
        listing: &Listing,
        id: Option<&Value>,
    ) -> Response<Body> {
        let lists = join_all(
            self.route
                .members
                .iter()
                .map(|member| self.list_member(member, method, listing)),
        )
        .await;
        let mut items = Vec::new();
        let mut unavailable = Vec::new();
        for (member, list) in self.route.members.iter().zip(lists) {
            let key = self.fwd.listed.key(&self.route.config.path, member, method);
            match list {
                Ok(list) => {
                    if method == "tools/list" {
                        self.fwd.listed.keep(key, &list);
                    }
                    items.extend(list);
                }
                // The caller has not connected this member yet: its tools stay listed (as
                // the member last listed them), and calling one asks them to connect. Only
                // tools: a resource or prompt list may hold another user's data.
                Err(HopError::Credential(OutboundError::AuthorizationRequired { .. }))
                    if method == "tools/list"
                        && let Some(last) = self.fwd.listed.get(&key) =>
                {
                    items.extend(last.iter().cloned());
                }
                Err(error) => {
                    tracing::warn!(server = %member.name(), %error, "{method} left out a server that failed");
                    unavailable.push(json!({"server": member.name(), "error": error.to_string()}));
                }
            }
        }
        let mut result = Map::new();
        result.insert(listing.key.into(), Value::Array(items));
        if !unavailable.is_empty() {
            // The client's user can see which part of the bundle is missing, and why.
            result.insert("_meta".into(), json!({ UNAVAILABLE_META: unavailable }));
        }
        if matches!(self.via, Via::Stateless { .. }) {
            // Per-user policy makes lists uncacheable across callers.
            result.insert("resultType".into(), "complete".into());
            result.insert("ttlMs".into(), 0.into());
            result.insert("cacheScope".into(), "private".into());
        }
        json_response(
            StatusCode::OK,
            &json!({"jsonrpc": "2.0", "id": id, "result": result}),
        )
    }

    pub(super) async fn list_member(
        &self,
        member: &Member,
        method: &str,
        listing: &Listing,
    ) -> Result<Vec<Value>, HopError> {
        let hop = self.hop(member, self.caller);
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        let pages = hop.limits.list_pages;
        for _ in 0..pages {
            let mut request =
                json!({"jsonrpc": "2.0", "id": gateway_id("list"), "method": method, "params": {}});
            if let Some(cursor) = &cursor {
                request["params"]["cursor"] = Value::String(cursor.clone());
            }
            let reply = self.call(&hop, &request).await?;
            if let Some(error) = reply.get("error") {
                return Err(HopError::Answer(
                    hop.server(),
                    format!("{method} with an error: {error}"),
                ));
            }
            if let (Some(policy), Some(tools)) = (&hop.policy, reply["result"]["tools"].as_array())
                && method == "tools/list"
            {
                policy.learn(tools);
            }
            let (page, next) = exposed_page(member, listing, &reply["result"]);
            items.extend(page);
            if items.len() > hop.limits.list_items {
                return Err(HopError::Answer(
                    hop.server(),
                    format!(
                        "more than the gateway's limit of {} items of {method}",
                        hop.limits.list_items
                    ),
                ));
            }
            match next {
                Some(next) => cursor = Some(next),
                None => return Ok(items),
            }
        }
        Err(HopError::Answer(
            hop.server(),
            format!("more than the gateway's limit of {pages} pages of {method}"),
        ))
    }
}

/// One page of a member's list `result`: the items it exposes, under the virtual server's
/// names (anything without a name of the right type left out), and the next page's cursor.
pub(crate) fn exposed_page(
    member: &Member,
    listing: &Listing,
    result: &Value,
) -> (Vec<Value>, Option<String>) {
    let items = result[listing.key].as_array().into_iter().flatten();
    let page = items
        .filter_map(|item| {
            let name = item.get(listing.field)?.as_str()?;
            let exposed = match listing.key {
                "tools" => member.exposed_tool(name)?,
                "prompts" => format!("{}_{name}", member.name()),
                _ => format!("{}+{name}", member.name()),
            };
            let mut item = item.clone();
            if let Some(fields) = item.as_object_mut() {
                fields.insert(listing.field.into(), Value::String(exposed));
            }
            Some(item)
        })
        .collect();
    let next = result["nextCursor"]
        .as_str()
        .filter(|next| !next.is_empty())
        .map(str::to_owned);
    (page, next)
}
