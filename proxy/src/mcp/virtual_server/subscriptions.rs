//! 2026-07-28 `subscriptions/listen`: every member's stream for the client's filter, and
//! the gateway's own list changes, tagged with the subscription.

use bytes::Bytes;
use futures::StreamExt;
use futures::future::join_all;
use http::{Response, StatusCode};
use serde_json::{Map, Value, json};

use super::*;
use crate::error::{Body, ProxyError};
use crate::mcp::relay::{self};
use crate::mcp::sse::message_event;
use crate::source::Current;

/// Where listen-stream notifications name their subscription.
pub(super) const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// A list a client can be told has changed.
pub(super) struct ListKind {
    /// Its flag in a `subscriptions/listen` filter.
    pub(super) filter: &'static str,
    /// Its notification.
    pub(super) method: &'static str,
}

pub(super) const LIST_CHANGED: [ListKind; 3] = [
    ListKind {
        filter: "toolsListChanged",
        method: "notifications/tools/list_changed",
    },
    ListKind {
        filter: "promptsListChanged",
        method: "notifications/prompts/list_changed",
    },
    ListKind {
        filter: "resourcesListChanged",
        method: "notifications/resources/list_changed",
    },
];

impl Ctx<'_> {
    /// A 2026-07-28 `subscriptions/listen` stream: acknowledged first, then what every
    /// member streams for the filter the client asked for (its resource URIs sent to the
    /// member that owns them), and the gateway's own list changes when the configuration
    /// changes the route; every notification tagged with the listen request's id.
    pub(super) async fn listen(
        &self,
        request: &Value,
        id: Option<&Value>,
    ) -> Result<Response<Body>, ProxyError> {
        let Via::Stateless { meta } = &self.via else {
            return Err(ProxyError::MethodNotFound {
                id: id.cloned(),
                message: "subscriptions/listen is a 2026-07-28 method; initialized sessions receive notifications on their GET stream".into(),
                status: StatusCode::OK,
            });
        };
        let subscription = id.cloned().unwrap_or(Value::Null);
        let wanted = &request["params"]["notifications"];
        let mut honored = Map::new();
        for kind in LIST_CHANGED {
            if wanted[kind.filter] == true {
                honored.insert(kind.filter.into(), true.into());
            }
        }
        let uris: Vec<&str> = wanted["resourceSubscriptions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .filter(|uri| self.by_prefix(uri, '+').is_some())
            .collect();
        if !uris.is_empty() {
            honored.insert("resourceSubscriptions".into(), json!(uris));
        }
        let opened = join_all(self.route.members.iter().map(|member| {
            let (honored, subscription) = (&honored, &subscription);
            let uris = &uris;
            async move {
                let mut filter = honored.clone();
                let prefix = format!("{}+", member.name());
                let own: Vec<&str> = uris
                    .iter()
                    .filter_map(|u| u.strip_prefix(&prefix))
                    .collect();
                filter.remove("resourceSubscriptions");
                if !own.is_empty() {
                    filter.insert("resourceSubscriptions".into(), json!(own));
                }
                let listen = json!({
                    "jsonrpc": "2.0", "id": subscription, "method": "subscriptions/listen",
                    "params": {"notifications": filter, "_meta": meta},
                });
                let rewrite = tagged(member.name().to_owned(), subscription.clone());
                let hop = self.hop(member, self.caller);
                match self.fwd.eras.listen(&hop, &listen, rewrite).await {
                    Ok(stream) => stream,
                    Err(error) => {
                        tracing::debug!(%error, "a member has no listen stream");
                        None
                    }
                }
            }
        }))
        .await;
        let ack = json!({
            "jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
            "params": {"notifications": honored, "_meta": {SUBSCRIPTION_ID: subscription}},
        });
        let first = futures::stream::iter([Ok(message_event(&ack))]).boxed();
        let kinds = LIST_CHANGED
            .iter()
            .filter(|k| honored.contains_key(k.filter));
        let changes = list_changes(
            self.fwd.current.clone(),
            self.route.config.path.clone(),
            kinds.map(|k| k.method),
            Some(&subscription),
        );
        let streams = opened.into_iter().flatten().chain([changes, keep_alive()]);
        let merged = first.chain(futures::stream::select_all(streams));
        Ok(event_stream(self.fwd, None, merged))
    }
}

/// The `notifications/<x>/list_changed` notifications each time the configuration in service
/// changes what the route at `path` offers (`methods` of them, tagged with `subscription`
/// when set); ends when the route is gone.
pub(super) fn list_changes<'a>(
    current: std::sync::Arc<Current>,
    path: String,
    methods: impl Iterator<Item = &'a str>,
    subscription: Option<&Value>,
) -> relay::Chunks {
    let mut events = Vec::new();
    for method in methods {
        let mut message = json!({"jsonrpc": "2.0", "method": method});
        if let Some(id) = subscription {
            message["params"] = json!({"_meta": {SUBSCRIPTION_ID: id}});
        }
        events.extend_from_slice(&message_event(&message));
    }
    if events.is_empty() {
        return futures::stream::empty().boxed();
    }
    let changed = Bytes::from(events);
    let stored = current.subscribe();
    let last = current.load().and_then(|s| s.surface(&path));
    futures::stream::unfold(
        (stored, last, current, path),
        move |(mut stored, mut last, current, path)| {
            let changed = changed.clone();
            async move {
                loop {
                    stored.changed().await.ok()?;
                    let now = current.load().and_then(|s| s.surface(&path));
                    now.as_ref()?;
                    if now != last {
                        last = now;
                        let event = Ok(changed.clone());
                        return Some((event, (stored, last, current, path)));
                    }
                }
            }
        },
    )
    .boxed()
}
