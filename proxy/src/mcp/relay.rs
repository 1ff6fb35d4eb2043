//! Upstream answers passed to the client with each JSON-RPC message rewritten on the way:
//! JSON bodies whole, SSE streams event by event as they arrive.

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use http::{Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::Value;

use super::message::{Event, events};
use crate::error::Body;

/// A stream of body chunks.
pub type Chunks = BoxStream<'static, Result<Bytes, hyper::Error>>;

/// What to do with each message: rewrite it in place; false drops it.
pub trait Rewrite: FnMut(&mut Value) -> bool + Send + 'static {}
impl<F: FnMut(&mut Value) -> bool + Send + 'static> Rewrite for F {}

/// Whether a response is an SSE stream.
pub fn is_sse(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("text/event-stream"))
}

/// An upstream response with every message passed through `rewrite`; status and content
/// headers kept.
pub async fn response(response: Response<Incoming>, mut rewrite: impl Rewrite) -> Response<Body> {
    let (parts, body) = response.into_parts();
    let body = if is_sse(&parts.headers) {
        BodyExt::boxed_unsync(StreamBody::new(
            sse(body, rewrite).map(|c| c.map(Frame::data)),
        ))
    } else {
        match body.collect().await {
            Ok(collected) => {
                let bytes = collected.to_bytes();
                let rewritten = serde_json::from_slice::<Value>(&bytes)
                    .ok()
                    .map(|mut message| {
                        if rewrite(&mut message) {
                            Bytes::from(message.to_string())
                        } else {
                            Bytes::new()
                        }
                    });
                crate::error::full(rewritten.unwrap_or(bytes))
            }
            Err(error) => {
                tracing::warn!(%error, "upstream body broke off");
                crate::error::full(Bytes::new())
            }
        }
    };
    let mut out = Response::new(body);
    *out.status_mut() = parts.status;
    for name in [header::CONTENT_TYPE, header::CACHE_CONTROL] {
        if let Some(value) = parts.headers.get(&name) {
            out.headers_mut().insert(name, value.clone());
        }
    }
    out
}

/// An SSE body, event by event through `rewrite`. Upstream event ids are dropped (a
/// rewritten stream cannot be resumed from the upstream's position), and so are events
/// without a JSON message (priming events, comments).
pub fn sse(body: Incoming, mut rewrite: impl Rewrite) -> Chunks {
    events(body)
        .map(move |event| event.map(|e| Bytes::from(event_through(&e, &mut rewrite))))
        .boxed()
}

/// One event through `rewrite`: its message rewritten, or nothing when it has none or the
/// rewrite drops it.
pub(crate) fn event_through(event: &[u8], rewrite: &mut impl Rewrite) -> Vec<u8> {
    let Some(parsed) = Event::parse(event) else {
        return Vec::new();
    };
    let Some(mut message) = parsed
        .data
        .as_deref()
        .and_then(|d| serde_json::from_str::<Value>(d).ok())
    else {
        return Vec::new();
    };
    if !rewrite(&mut message) {
        return Vec::new();
    }
    let event = Event {
        fields: parsed
            .fields
            .into_iter()
            .filter(|f| !f.starts_with("id:"))
            .collect(),
        data: None,
    };
    event.render(message.to_string().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_rewritten_and_ids_and_priming_dropped() {
        let mut seen = 0;
        let mut rewrite = move |m: &mut Value| {
            seen += 1;
            m["seen"] = seen.into();
            m.get("drop").is_none()
        };
        let out = event_through(b"event: message\nid: 4\ndata: {\"a\":1}\n\n", &mut rewrite);
        assert_eq!(
            out,
            b"event: message\ndata: {\"a\":1,\"seen\":1}\n\n".to_vec()
        );
        assert!(event_through(b"id: 1\ndata: \n\n", &mut rewrite).is_empty());
        assert!(event_through(b"data: {\"drop\":true}\n\n", &mut rewrite).is_empty());
    }
}
