//! What members' messages need on their way to a client of the virtual server.

use serde_json::Value;

use super::*;
use crate::mcp::message::{child_object, params_mut};
use crate::mcp::relay::Rewrite;

/// Server-to-client request ids are rewritten to `mcpgate:<server>:<original id as JSON>`.
pub(super) const RELAY_ID: &str = "mcpgate:";

/// What a member's messages need on their way to a client of the virtual server: its own
/// requests get ids that route the client's answer back, resource URIs get its prefix.
pub(crate) fn from_member(server: String) -> impl Rewrite {
    move |message: &mut Value| {
        if message.get("method").is_some()
            && let Some(id) = message.get_mut("id")
        {
            *id = Value::String(format!("{RELAY_ID}{server}:{id}"));
        }
        if message["method"] == "notifications/resources/updated"
            && let Some(uri) = message.pointer_mut("/params/uri")
            && let Some(text) = uri.as_str()
        {
            *uri = Value::String(format!("{server}+{text}"));
        }
        true
    }
}

/// What a member's `subscriptions/listen` stream needs on its way to the client: its own
/// acknowledgement dropped (the gateway acknowledged already), every notification tagged
/// with the client's `subscription` id, then [`from_member`]. A notification whose `params`
/// or `params._meta` is not an object cannot carry the tag: it is dropped, and logged.
pub(crate) fn tagged(server: String, subscription: Value) -> impl Rewrite {
    let mut from = from_member(server.clone());
    move |message: &mut Value| {
        if message["method"] == "notifications/subscriptions/acknowledged" {
            return false;
        }
        if message.get("method").is_some() && message.get("id").is_none() {
            let Some(meta) = params_mut(message).and_then(|p| child_object(p, "_meta")) else {
                tracing::warn!(
                    %server,
                    method = %message["method"],
                    "dropped a notification from a member's listen stream: its params or params._meta is not an object"
                );
                return false;
            };
            meta.insert(SUBSCRIPTION_ID.into(), subscription.clone());
        }
        from(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn through(server: &str, message: Value) -> Value {
        let mut message = message;
        assert!(from_member(server.to_owned())(&mut message));
        message
    }

    #[test]
    fn member_requests_get_routable_ids_and_notifications_pass() {
        let request = through(
            "github",
            json!({"jsonrpc": "2.0", "id": 0, "method": "elicitation/create", "params": {}}),
        );
        assert_eq!(request["id"], "mcpgate:github:0");
        let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": 1, "progress": 1}});
        assert_eq!(through("github", progress.clone()), progress);
        let updated = through(
            "fs",
            json!({"jsonrpc": "2.0", "method": "notifications/resources/updated", "params": {"uri": "file:///a"}}),
        );
        assert_eq!(updated["params"]["uri"], "fs+file:///a");
        let response = json!({"jsonrpc": "2.0", "id": 3, "result": {}});
        assert_eq!(
            through("fs", response.clone()),
            response,
            "responses keep the client's id"
        );
    }

    #[test]
    fn string_ids_survive_the_round_trip() {
        let request = through(
            "s",
            json!({"jsonrpc": "2.0", "id": "a:b", "method": "roots/list"}),
        );
        let id = request["id"].as_str().unwrap();
        let (server, original) = id.strip_prefix(RELAY_ID).unwrap().split_once(':').unwrap();
        assert_eq!(
            (server, serde_json::from_str::<Value>(original).unwrap()),
            ("s", json!("a:b"))
        );
    }
}
