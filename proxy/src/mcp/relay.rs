//! Upstream answers passed to the client with each JSON-RPC message rewritten on the way:
//! JSON bodies whole, SSE streams event by event as they arrive.

use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use http::{Response, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::Value;

use super::sse::{Event, events};
use super::upstream::hop::{Hop, HopError};
use super::upstream::reply::collect_limited;
use crate::error::{Body, ProxyError};

/// A stream of body chunks.
pub type Chunks = BoxStream<'static, Result<Bytes, hyper::Error>>;

/// What to do with each message: rewrite it in place; false drops it.
pub trait Rewrite: FnMut(&mut Value) -> bool + Send + 'static {}
impl<F: FnMut(&mut Value) -> bool + Send + 'static> Rewrite for F {}

/// What becomes of the upstream's SSE event ids on the way to the client.
#[derive(Clone, Debug)]
pub enum EventIds {
    /// Dropped, and so are the events that carry nothing else (priming events): the stream
    /// cannot be resumed (a stateless client, or a rewritten position that means nothing).
    Dropped,
    /// Kept as `<member>:<id>` (member names are DNS labels, so the first `:` ends the
    /// name), priming events too, so the client can resume this member's stream through the
    /// gateway with that `Last-Event-ID` (see [`resumed`]).
    Member(String),
}

/// The member and its own event id named by a client's `Last-Event-ID` (see
/// [`EventIds::Member`]).
pub fn resumed(last_event_id: &str) -> Option<(&str, &str)> {
    last_event_id.split_once(':')
}

/// An upstream response from `hop` with every message passed through `rewrite` (and SSE
/// event ids as `ids` says); status and content headers kept. A JSON answer over the hop's
/// reply limit, not JSON, or an HTTP error page becomes a 502 JSON-RPC error naming the
/// server.
pub async fn response(
    response: Response<Incoming>,
    mut rewrite: impl Rewrite,
    ids: EventIds,
    hop: &Hop<'_>,
) -> Response<Body> {
    let (parts, body) = response.into_parts();
    let refused = |why: String| {
        let server = hop.server();
        tracing::warn!(%server, %why, "upstream answer refused");
        ProxyError::Upstream {
            id: None,
            error: HopError::Answer(server, why),
        }
        .respond()
    };
    let sse_stream = super::sse::is_event_stream(&parts.headers);
    let json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if !parts.status.is_success() && !json && !sse_stream {
        let excerpt = super::upstream::reply::status_text(body).await;
        return refused(format!("HTTP {} {excerpt}", parts.status.as_u16()));
    }
    let body = if sse_stream {
        BodyExt::boxed_unsync(StreamBody::new(
            sse(body, rewrite, ids, hop.limits.event_bytes).map(|c| c.map(Frame::data)),
        ))
    } else {
        let read = collect_limited(body, hop.limits.reply_bytes)
            .await
            .and_then(|bytes| match serde_json::from_slice::<Value>(&bytes) {
                Ok(mut message) => Ok(if rewrite(&mut message) {
                    Bytes::from(message.to_string())
                } else {
                    Bytes::new()
                }),
                // Nothing to rewrite (202 to a notification, for example).
                Err(_) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(bytes),
                Err(_) => Err("with a body that is not JSON".to_owned()),
            });
        match read {
            Ok(bytes) => crate::error::full(bytes),
            Err(why) => return refused(why),
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

/// An SSE body, event by event through `rewrite`, event ids as `ids` says; events without a
/// JSON message (comments, and priming events unless their ids are kept) are dropped.
pub fn sse(body: Incoming, mut rewrite: impl Rewrite, ids: EventIds, max_event: usize) -> Chunks {
    events(body, max_event)
        .map(move |event| event.map(|e| Bytes::from(event_through(&e, &mut rewrite, &ids))))
        .boxed()
}

/// One event through `rewrite`: its message rewritten and its id as `ids` says, or nothing
/// when it has no message (and is no priming event kept) or the rewrite drops it.
pub(crate) fn event_through(event: &[u8], rewrite: &mut impl Rewrite, ids: &EventIds) -> Vec<u8> {
    let Some(parsed) = Event::parse(event) else {
        return Vec::new();
    };
    let message = parsed
        .data
        .as_deref()
        .and_then(|d| serde_json::from_str::<Value>(d).ok());
    let has_id = parsed.fields.iter().any(|f| f.starts_with("id:"));
    let data = match (message, ids) {
        (Some(mut message), _) => {
            if !rewrite(&mut message) {
                return Vec::new();
            }
            message.to_string()
        }
        (None, EventIds::Member(_)) if has_id => String::new(),
        (None, _) => return Vec::new(),
    };
    let fields: Vec<std::borrow::Cow<'_, str>> = parsed
        .fields
        .iter()
        .filter_map(|line| match (line.strip_prefix("id:"), ids) {
            (None, _) => Some((*line).into()),
            (Some(_), EventIds::Dropped) => None,
            (Some(id), EventIds::Member(member)) => {
                Some(format!("id: {member}:{}", id.trim_start()).into())
            }
        })
        .collect();
    super::sse::render(fields.iter().map(|f| f.as_bytes()), data.as_bytes())
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
        let dropped = &EventIds::Dropped;
        let out = event_through(
            b"event: message\nid: 4\ndata: {\"a\":1}\n\n",
            &mut rewrite,
            dropped,
        );
        assert_eq!(
            out,
            b"event: message\ndata: {\"a\":1,\"seen\":1}\n\n".to_vec()
        );
        assert!(event_through(b"id: 1\ndata: \n\n", &mut rewrite, dropped).is_empty());
        assert!(event_through(b"data: {\"drop\":true}\n\n", &mut rewrite, dropped).is_empty());
    }

    #[test]
    fn kept_ids_name_their_member_and_priming_events_pass() {
        let kept = &EventIds::Member("fs".into());
        let mut keep = |_: &mut Value| true;
        assert_eq!(
            event_through(b"id: 0\nretry: 500\ndata: \n\n", &mut keep, kept),
            b"id: fs:0\nretry: 500\ndata: \n\n".to_vec()
        );
        assert_eq!(
            event_through(b"event: message\nid:7\ndata: {}\n\n", &mut keep, kept),
            b"event: message\nid: fs:7\ndata: {}\n\n".to_vec()
        );
        assert!(event_through(b": keep-alive\n\n", &mut keep, kept).is_empty());
        assert_eq!(resumed("fs:a:b"), Some(("fs", "a:b")));
    }
}
