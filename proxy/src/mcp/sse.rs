//! Server-sent events, framed in one place: splitting a body into events (each byte looked
//! at once, every event bounded), reading and rewriting one event, writing a JSON-RPC message
//! as an event, and the headers and keep-alives of an event-stream response.

use std::fmt::Display;

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;
use http::{HeaderMap, HeaderValue, Response, header};

use crate::error::Body;

/// The media type of an event stream.
pub const EVENT_STREAM: &str = "text/event-stream";

/// A comment line that keeps an idle stream open through proxies.
pub const KEEP_ALIVE: &[u8] = b": keep-alive\n\n";

/// One JSON-RPC `message` as an event.
pub fn message_event(message: &impl Display) -> Bytes {
    Bytes::from(format!("event: message\ndata: {message}\n\n"))
}

/// Whether `headers` say the body is an event stream.
pub fn is_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with(EVENT_STREAM))
}

/// An event-stream response of `body`, marked for proxies not to cache or buffer it.
pub fn stream_response(body: Body) -> Response<Body> {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(EVENT_STREAM));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// An event of `fields` (`event:`, `id:`, comment lines, as written) and `data`.
pub fn render<'a>(fields: impl Iterator<Item = &'a [u8]>, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    for line in fields {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\n\n");
    out
}

/// The complete events of an SSE body, each as its raw bytes (terminating blank line
/// included), as soon as each arrives. Bytes after the last blank line are an event the
/// sender never finished and are dropped, as an SSE client would. An event growing past
/// `max_event` bytes ends the stream with [`oversized_event`] in its place.
pub fn events(
    body: hyper::body::Incoming,
    max_event: usize,
) -> BoxStream<'static, Result<Bytes, hyper::Error>> {
    use http_body_util::BodyExt;
    split_events(body.into_data_stream(), max_event)
}

/// [`events`] of any stream of chunks: the same events whatever the chunk boundaries (and
/// the same stand-in for the first event over `max_event`, whether it arrived whole or not).
pub fn split_events<E: Send + 'static>(
    chunks: impl futures::Stream<Item = Result<Bytes, E>> + Send + 'static,
    max_event: usize,
) -> BoxStream<'static, Result<Bytes, E>> {
    let state = (chunks.boxed(), Framer::default(), false);
    futures::stream::unfold(state, move |(mut chunks, mut framer, done)| async move {
        if done {
            return None;
        }
        loop {
            if let Some(event) = framer.next_event() {
                if event.len() > max_event {
                    return Some((Ok(oversized_event(max_event)), (chunks, framer, true)));
                }
                return Some((Ok(event), (chunks, framer, false)));
            }
            if framer.pending() > max_event {
                return Some((Ok(oversized_event(max_event)), (chunks, framer, true)));
            }
            match chunks.next().await? {
                Ok(chunk) => framer.push(&chunk),
                Err(error) => return Some((Err(error), (chunks, framer, false))),
            }
        }
    })
    .boxed()
}

/// SSE events found in bytes as they arrive, each byte looked at once however the bytes are
/// chunked and however many events one chunk holds: a search resumes where the last one
/// stopped, and stops at the first event end.
#[derive(Debug, Default)]
pub struct Framer {
    buffer: BytesMut,
    /// Bytes of `buffer` already searched for an event end.
    scanned: usize,
}

impl Framer {
    /// Appends bytes that arrived.
    pub fn push(&mut self, chunk: &[u8]) {
        self.buffer.extend_from_slice(chunk);
    }

    /// The next complete event (its terminating blank line included), if one has arrived.
    pub fn next_event(&mut self) -> Option<Bytes> {
        // A terminator may straddle the previous search's end: back up three bytes.
        let from = self.scanned.saturating_sub(3);
        match event_end(&self.buffer[from..]) {
            Some(end) => {
                self.scanned = 0;
                Some(self.buffer.split_to(from + end).freeze())
            }
            None => {
                self.scanned = self.buffer.len();
                None
            }
        }
    }

    /// Bytes held that are not yet a complete event.
    pub fn pending(&self) -> usize {
        self.buffer.len()
    }

    /// Everything held, leaving the framer empty.
    pub fn take(&mut self) -> BytesMut {
        self.scanned = 0;
        std::mem::take(&mut self.buffer)
    }
}

/// What stands in for an SSE event over `limit` bytes, ending its stream: a log message at
/// error level, which every client shows and no rewrite mistakes for an answer.
pub fn oversized_event(limit: usize) -> Bytes {
    let message = serde_json::json!({
        "jsonrpc": "2.0", "method": "notifications/message",
        "params": {"level": "error", "logger": "mcpgate", "data": format!(
            "the upstream sent an SSE event over the gateway's limit of {limit} bytes; the gateway ended the stream"
        )},
    });
    message_event(&message)
}

/// Index just past the blank line ending the first complete SSE event in `buffer`: a line
/// end (`\n` or `\r\n`) followed by an empty line (`\n` or `\r\n`), found in one pass.
pub fn event_end(buffer: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(found) = buffer[from..].iter().position(|&b| b == b'\n') {
        let at = from + found;
        let before = |back: usize| at.checked_sub(back).map(|i| buffer[i]);
        // "\n\n" (or "\r\n\n"), or "\n\r\n" (or "\r\n\r\n").
        if before(1) == Some(b'\n') || (before(1) == Some(b'\r') && before(2) == Some(b'\n')) {
            return Some(at + 1);
        }
        from = at + 1;
    }
    None
}

/// One SSE event split into its data (lines joined with `\n`) and its other lines.
pub struct Event<'a> {
    /// `event:`, `id:`, `retry:` and comment lines, in order.
    pub fields: Vec<&'a str>,
    /// The data, if the event has any `data:` line.
    pub data: Option<String>,
}

impl<'a> Event<'a> {
    /// Splits one event (as delimited by [`event_end`]); None if it is not UTF-8.
    pub fn parse(event: &'a [u8]) -> Option<Self> {
        let text = std::str::from_utf8(event).ok()?;
        let mut fields = Vec::new();
        let mut data: Option<String> = None;
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(d) = line.strip_prefix("data:") {
                let d = d.strip_prefix(' ').unwrap_or(d);
                match &mut data {
                    Some(all) => {
                        all.push('\n');
                        all.push_str(d);
                    }
                    None => data = Some(d.to_owned()),
                }
            } else {
                fields.push(line);
            }
        }
        Some(Self { fields, data })
    }

    /// The event written back out with `data` in place of its data.
    pub fn render(&self, data: &[u8]) -> Vec<u8> {
        render(self.fields.iter().map(|f| f.as_bytes()), data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_boundaries_in_either_line_ending() {
        assert_eq!(event_end(b"data: a\n\ndata: b"), Some(9));
        assert_eq!(event_end(b"data: a\r\n\r\n"), Some(11));
        assert_eq!(event_end(b"data: a\n"), None);
        // Mixed line endings end an event too.
        assert_eq!(event_end(b"data: a\r\n\n"), Some(10));
        assert_eq!(event_end(b"data: a\n\r\n"), Some(10));
        assert_eq!(event_end(b"\n\n"), Some(2));
        assert_eq!(event_end(b"data: a\r\ndata: b\r\n"), None);
    }

    #[test]
    fn events_keep_their_fields_and_join_data_lines() {
        let event = Event::parse(b"event: message\nid: 7\ndata: {\"a\":\ndata: 1}\n\n").unwrap();
        assert_eq!(event.fields, ["event: message", "id: 7"]);
        assert_eq!(event.data.as_deref(), Some("{\"a\":\n1}"));
        assert_eq!(
            event.render(b"{}"),
            b"event: message\nid: 7\ndata: {}\n\n".to_vec()
        );
        assert!(Event::parse(b": keep-alive\n\n").unwrap().data.is_none());
    }
}
