//! Reading what upstreams answer, within bounds: a body whole up to a limit, an error page's
//! excerpt, and the JSON-RPC response to one request from a JSON body or an SSE stream.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::Value;

use crate::mcp::sse::{Event, events};

/// Bounds on what the gateway holds in memory from upstream answers; answers are otherwise
/// streamed through.
#[derive(Debug, Clone, Copy)]
pub struct ReadLimits {
    /// A JSON answer the gateway reads whole (to rewrite, filter or inspect it).
    pub reply_bytes: usize,
    /// One SSE event (the gateway reads events whole to rewrite them).
    pub event_bytes: usize,
    /// Pages of one member's list a virtual server fetches for one list request.
    pub list_pages: usize,
    /// Items of one member's list a virtual server gathers for one list request.
    pub list_items: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            reply_bytes: 16 * 1024 * 1024,
            event_bytes: 16 * 1024 * 1024,
            list_pages: 100,
            list_items: 10_000,
        }
    }
}

/// The most of an upstream's error body quoted in messages.
const ERROR_EXCERPT: usize = 200;

/// An upstream body read whole, unless it is over `limit` bytes.
pub async fn collect_limited(body: Incoming, limit: usize) -> Result<Bytes, String> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(format!("more than the gateway's limit of {limit} bytes"))
        }
        Err(error) => Err(format!("but broke off ({error})")),
    }
}

/// The first bytes of an error body, for messages: at most [`ERROR_EXCERPT`] bytes are
/// read, within a second, however much the upstream sends.
pub(crate) async fn status_text(mut body: Incoming) -> String {
    let mut bytes = Vec::new();
    let read = async {
        while bytes.len() < ERROR_EXCERPT
            && let Some(Ok(frame)) = body.frame().await
        {
            if let Some(data) = frame.data_ref() {
                bytes.extend_from_slice(data);
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), read).await;
    bytes.truncate(ERROR_EXCERPT);
    String::from_utf8_lossy(&bytes).trim().to_owned()
}

/// The JSON-RPC response with `id` from a JSON body or an SSE stream, within `limits`;
/// `Err` says what came instead.
pub async fn read_reply(
    headers: &HeaderMap,
    body: Incoming,
    id: Option<&Value>,
    limits: ReadLimits,
) -> Result<Value, String> {
    let missing = || "without a JSON-RPC response".to_owned();
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if content_type.starts_with("application/json") {
        let bytes = collect_limited(body, limits.reply_bytes).await?;
        return serde_json::from_slice(&bytes).map_err(|_| "with a body that is not JSON".into());
    }
    if !content_type.starts_with("text/event-stream") {
        return Err(format!(
            "with content type {content_type:?}, not JSON or SSE"
        ));
    }
    let mut events = events(body, limits.event_bytes);
    let oversized = crate::mcp::sse::oversized_event(limits.event_bytes);
    while let Some(event) = events.next().await {
        let Ok(event) = event else {
            return Err("a stream that broke off".into());
        };
        if event == oversized {
            return Err(format!(
                "an SSE event over the gateway's limit of {} bytes",
                limits.event_bytes
            ));
        }
        let Some(data) = Event::parse(&event).and_then(|e| e.data) else {
            continue;
        };
        let Ok(message) = serde_json::from_str::<Value>(&data) else {
            continue;
        };
        let answers = message.get("method").is_none() && (id.is_none() || message.get("id") == id);
        if answers {
            return Ok(message);
        }
    }
    Err(missing())
}
