//! Tool allow/deny lists on the way back: `tools/list` results lose the tools a route does
//! not expose, whether the upstream answered with JSON or with an SSE stream. Everything
//! else in the message is kept as it was (field order included).

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use mcpgate_crds::gateway_config::ToolFilter;
use serde_json::Value;

use super::sse::{Event, events};
use crate::error::Body;
use crate::traffic::Policy;
use std::sync::Arc;

/// Removes unexposed tools from one JSON-RPC message; None when it is not a tools list.
/// `policy` learns the tools as listed (see [`Policy::learn`]).
pub fn filter_message(
    bytes: &[u8],
    filter: &ToolFilter,
    policy: Option<&Policy>,
) -> Option<Vec<u8>> {
    let mut message: Value = serde_json::from_slice(bytes).ok()?;
    filter_value(&mut message, filter, policy)?;
    serde_json::to_vec(&message).ok()
}

/// Removes unexposed tools from a parsed message; None when it is not a tools list.
pub fn filter_value(
    message: &mut Value,
    filter: &ToolFilter,
    policy: Option<&Policy>,
) -> Option<()> {
    let tools = message
        .get_mut("result")?
        .get_mut("tools")?
        .as_array_mut()?;
    if let Some(policy) = policy {
        policy.learn(tools);
    }
    tools.retain(|tool| {
        tool.get("name")
            .and_then(Value::as_str)
            .is_some_and(|name| filter.permits(name))
    });
    Some(())
}

/// Filters a JSON response body (buffered, up to `limit` bytes); `Err` says what came instead.
pub async fn filter_json(
    body: Incoming,
    filter: ToolFilter,
    policy: Option<Arc<Policy>>,
    limit: usize,
) -> Result<Body, String> {
    let bytes = super::upstream::reply::collect_limited(body, limit).await?;
    let out = filter_message(&bytes, &filter, policy.as_deref()).map_or(bytes, Bytes::from);
    Ok(crate::error::full(out))
}

/// Filters an SSE response body event by event, streaming: each event is passed on as soon as
/// its terminating blank line arrives.
pub fn filter_sse(
    body: Incoming,
    filter: ToolFilter,
    policy: Option<Arc<Policy>>,
    max_event: usize,
) -> Body {
    let frames = events(body, max_event).map(move |event| {
        event.map(|e| Frame::data(Bytes::from(rewrite_event(&e, &filter, policy.as_deref()))))
    });
    BodyExt::boxed_unsync(StreamBody::new(frames))
}

/// One event with its `data` rewritten if it carries a tools list; otherwise as it came.
pub(crate) fn rewrite_event(event: &[u8], filter: &ToolFilter, policy: Option<&Policy>) -> Vec<u8> {
    let Some(parsed) = Event::parse(event) else {
        return event.to_vec();
    };
    match parsed
        .data
        .as_deref()
        .and_then(|data| filter_message(data.as_bytes(), filter, policy))
    {
        Some(filtered) => parsed.render(&filtered),
        None => event.to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> ToolFilter {
        ToolFilter {
            allow: vec![],
            deny: vec!["hidden".into()],
        }
    }

    #[test]
    fn drops_denied_tools_and_keeps_everything_else_in_order() {
        let message = br#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"a","x-extra":1},{"name":"hidden"}],"nextCursor":"c","_meta":{"k":true}}}"#;
        let out = filter_message(message, &filter(), None).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"jsonrpc":"2.0","id":3,"result":{"tools":[{"name":"a","x-extra":1}],"nextCursor":"c","_meta":{"k":true}}}"#
        );
    }

    #[test]
    fn other_messages_are_left_alone() {
        assert!(
            filter_message(
                br#"{"jsonrpc":"2.0","id":1,"result":{"content":[]}}"#,
                &filter(),
                None
            )
            .is_none()
        );
        assert!(filter_message(b"not json", &filter(), None).is_none());
    }

    #[test]
    fn sse_events_keep_their_id_and_event_lines() {
        let event = b"event: message\nid: 7\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"hidden\"},{\"name\":\"b\"}]}}\n\n";
        let out = String::from_utf8(rewrite_event(event, &filter(), None)).unwrap();
        assert_eq!(
            out,
            "event: message\nid: 7\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"tools\":[{\"name\":\"b\"}]}}\n\n"
        );
        let priming = b"id: 0\ndata: \n\n";
        assert_eq!(rewrite_event(priming, &filter(), None), priming.to_vec());
    }
}
