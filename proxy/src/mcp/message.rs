//! JSON-RPC messages as the gateway sees them: just enough of each to route it, the rest kept
//! as received. Also the SSE framing shared by every place that reads upstream streams.

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use futures::stream::BoxStream;
use serde::Deserialize;
use serde_json::{Map, Value};

/// The routing-relevant parts of one JSON-RPC message.
#[derive(Deserialize, Debug, Default)]
pub struct Envelope {
    /// Request or response id.
    #[serde(default)]
    pub id: Option<Value>,
    /// Method, for requests and notifications.
    #[serde(default)]
    pub method: Option<String>,
    /// Parameters.
    #[serde(default, deserialize_with = "params")]
    pub params: Option<Params>,
    /// Present on success responses.
    #[serde(default)]
    pub result: Option<serde::de::IgnoredAny>,
    /// Present on error responses.
    #[serde(default)]
    pub error: Option<serde::de::IgnoredAny>,
}

/// The parameters routing looks at.
#[derive(Deserialize, Debug, Default)]
pub struct Params {
    /// Tool or prompt name.
    #[serde(default)]
    pub name: Option<String>,
    /// Resource URI.
    #[serde(default)]
    pub uri: Option<String>,
    /// Pagination cursor.
    #[serde(default)]
    pub cursor: Option<String>,
    /// Tool arguments, as sent (the audit trail measures them).
    #[serde(default)]
    pub arguments: Option<Box<serde_json::value::RawValue>>,
    /// Request metadata (stateless requests carry their protocol version here).
    #[serde(default, rename = "_meta", deserialize_with = "meta")]
    pub meta: Option<Meta>,
}

/// The `_meta` keys routing looks at.
#[derive(Deserialize, Debug, Default)]
pub struct Meta {
    /// The stateless era's per-request protocol version.
    #[serde(default, rename = "io.modelcontextprotocol/protocolVersion")]
    pub protocol_version: Option<String>,
    /// The stateless era's client capabilities (required there; not read here).
    #[serde(default, rename = "io.modelcontextprotocol/clientCapabilities")]
    pub client_capabilities: Option<serde::de::IgnoredAny>,
}

/// `params` and `params._meta` are objects (or null) in MCP; serde would also take an array
/// for a struct, which the gateway's rewrites could not handle.
fn params<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Params>, D::Error> {
    d.deserialize_option(ObjectOrNull::new("params to be a JSON object"))
}

fn meta<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Meta>, D::Error> {
    d.deserialize_option(ObjectOrNull::new("params._meta to be a JSON object"))
}

/// Deserializes a `T` from a JSON object only; null is None.
struct ObjectOrNull<T> {
    expected: &'static str,
    into: std::marker::PhantomData<T>,
}

impl<T> ObjectOrNull<T> {
    fn new(expected: &'static str) -> Self {
        Self {
            expected,
            into: std::marker::PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ObjectOrNull<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.expected)
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Some)
    }
}

/// Why a body is not one JSON-RPC message, with the JSON-RPC error code that says so.
#[derive(Debug)]
pub struct Malformed {
    /// -32700 for what is not JSON, -32600 for JSON that is not one message MCP accepts.
    pub code: i64,
    /// What is wrong, and where.
    pub message: String,
    /// The message's id, when it could be read.
    pub id: Option<Value>,
}

impl Malformed {
    fn invalid(message: impl Into<String>) -> Self {
        Self {
            code: crate::error::code::INVALID_REQUEST,
            message: message.into(),
            id: None,
        }
    }
}

/// Just the id of a message whose other fields are wrong.
#[derive(Deserialize)]
struct IdOnly {
    #[serde(default)]
    id: Option<Value>,
}

/// What kind of message it is.
#[derive(Debug, PartialEq, Eq)]
pub enum Kind {
    /// Has a method and an id.
    Request,
    /// Has a method and no id.
    Notification,
    /// Has an id and a result or error.
    Response,
    /// Anything else.
    Invalid,
}

impl Envelope {
    /// Parses a message; arrays (2025-03-26 batches), non-objects, and fields of the wrong
    /// type are errors.
    pub fn parse(bytes: &[u8]) -> Result<Self, Malformed> {
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => serde_json::from_slice(bytes).map_err(|e| match e.classify() {
                serde_json::error::Category::Data => Malformed {
                    id: serde_json::from_slice::<IdOnly>(bytes)
                        .ok()
                        .and_then(|m| m.id),
                    ..Malformed::invalid(e.to_string())
                },
                _ => Malformed {
                    code: crate::error::code::PARSE_ERROR,
                    message: e.to_string(),
                    id: None,
                },
            }),
            Some(b'[') => Err(Malformed::invalid(
                "JSON-RPC batches are not part of MCP since 2025-06-18; send one message per request",
            )),
            _ => Err(Malformed {
                code: crate::error::code::PARSE_ERROR,
                message: "expected a JSON object".into(),
                id: None,
            }),
        }
    }

    /// The message's kind.
    pub fn kind(&self) -> Kind {
        match (&self.method, &self.id) {
            (Some(_), Some(id)) if !id.is_null() => Kind::Request,
            (Some(_), None) => Kind::Notification,
            (None, Some(_)) if self.result.is_some() || self.error.is_some() => Kind::Response,
            _ => Kind::Invalid,
        }
    }

    /// The method, or "".
    pub fn method(&self) -> &str {
        self.method.as_deref().unwrap_or_default()
    }

    /// The protocol version in `_meta`, if any.
    pub fn meta_version(&self) -> Option<&str> {
        self.params
            .as_ref()?
            .meta
            .as_ref()?
            .protocol_version
            .as_deref()
    }

    /// `params.name`, or "".
    pub fn name(&self) -> &str {
        self.params
            .as_ref()
            .and_then(|p| p.name.as_deref())
            .unwrap_or_default()
    }
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
    Bytes::from(format!("event: message\ndata: {message}\n\n"))
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

/// `map[key]` as an object to write into: created when absent or null; None when it holds
/// anything else (a peer's malformed message is never indexed into, which would panic).
pub fn child_object<'a>(
    map: &'a mut Map<String, Value>,
    key: &str,
) -> Option<&'a mut Map<String, Value>> {
    let slot = map.entry(key).or_insert(Value::Null);
    if slot.is_null() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut()
}

/// A message's `params` to write into (see [`child_object`]); None when the message is not an
/// object or its `params` is not one.
pub fn params_mut(message: &mut Value) -> Option<&mut Map<String, Value>> {
    child_object(message.as_object_mut()?, "params")
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
        let mut out = Vec::with_capacity(data.len() + 32);
        for line in &self.fields {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(data);
        out.extend_from_slice(b"\n\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds() {
        let kind = |s: &str| Envelope::parse(s.as_bytes()).unwrap().kind();
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#),
            Kind::Request
        );
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            Kind::Notification
        );
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#),
            Kind::Response
        );
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","id":"a","error":{"code":1,"message":"x"}}"#),
            Kind::Response
        );
        assert_eq!(kind(r#"{"jsonrpc":"2.0"}"#), Kind::Invalid);
        assert!(Envelope::parse(b"[]").is_err());
    }

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
