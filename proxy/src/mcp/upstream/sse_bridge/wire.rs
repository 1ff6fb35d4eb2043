//! What the bridge reads and writes: the upstream's message endpoint resolved against its
//! event stream, the upstream's events, and the SSE answers the gateway reads.

use futures::StreamExt;
use http::{Response, Uri};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::Body;
use crate::mcp::sse::{Event, events, message_event, stream_response};

/// The endpoint the upstream named, made absolute against its event stream URL.
pub(super) fn resolve(upstream: &Uri, endpoint: &str) -> Result<Uri, String> {
    if endpoint.starts_with("http://") || endpoint.starts_with("https://") {
        return endpoint
            .parse()
            .map_err(|e| format!("endpoint {endpoint:?}: {e}"));
    }
    let scheme = upstream.scheme_str().unwrap_or("http");
    let authority = upstream.authority().map(|a| a.as_str()).unwrap_or_default();
    let path = if endpoint.starts_with('/') {
        endpoint.to_owned()
    } else {
        let base = upstream.path();
        let directory = base.rfind('/').map_or("/", |end| &base[..=end]);
        format!("{directory}{endpoint}")
    };
    format!("{scheme}://{authority}{path}")
        .parse()
        .map_err(|e| format!("endpoint {endpoint:?}: {e}"))
}

/// The events of an SSE body as (event type, data); events without data are skipped.
pub(super) fn sse_messages(
    body: Incoming,
    max_event: usize,
) -> futures::stream::BoxStream<'static, Result<(Option<String>, String), hyper::Error>> {
    events(body, max_event)
        .filter_map(|event| async move {
            let raw = match event {
                Ok(raw) => raw,
                Err(error) => return Some(Err(error)),
            };
            let event = Event::parse(&raw)?;
            let kind = event
                .fields
                .iter()
                .find_map(|f| f.strip_prefix("event:"))
                .map(|k| k.trim().to_owned());
            Some(Ok((kind, event.data?)))
        })
        .boxed()
}

/// An SSE response of the messages on `rx`; with `until_response`, it ends after the first
/// response.
pub(super) fn event_stream(rx: mpsc::Receiver<Value>, until_response: bool) -> Response<Body> {
    let stream = futures::stream::unfold((rx, false), move |(mut rx, done)| async move {
        if done {
            return None;
        }
        let message = rx.recv().await?;
        let last = until_response && message.get("method").is_none();
        let event = message_event(&message);
        Some((Ok::<_, hyper::Error>(Frame::data(event)), (rx, last)))
    });
    stream_response(BodyExt::boxed_unsync(StreamBody::new(stream)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::proptests::config;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(config())]

        /// Whatever endpoint the upstream names resolves to a URI or is refused.
        #[test]
        fn any_endpoint_resolves_or_is_refused(
            endpoint in any::<String>(),
            stream in prop::sample::select(vec!["http://127.0.0.1:3001/sse", "http://h", "https://h/a/b/", "h:80"]),
        ) {
            let _ = resolve(&stream.parse().unwrap(), &endpoint);
        }
    }

    #[test]
    fn endpoints_resolve_against_the_event_stream_url() {
        let sse: Uri = "http://127.0.0.1:3001/sse".parse().unwrap();
        assert_eq!(
            resolve(&sse, "/message?sessionId=1").unwrap(),
            "http://127.0.0.1:3001/message?sessionId=1"
        );
        let nested: Uri = "https://mcp.example/v1/sse".parse().unwrap();
        assert_eq!(
            resolve(&nested, "messages?s=2").unwrap(),
            "https://mcp.example/v1/messages?s=2"
        );
        assert_eq!(
            resolve(&nested, "https://other.example/m").unwrap(),
            "https://other.example/m"
        );
    }
}
