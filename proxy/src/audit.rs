//! The audit trail: one JSON record per tool call (who called which tool of which server, how
//! they were authenticated, what happened and how long it took), written as a line to its
//! own sink, apart from the diagnostic log. Arguments are recorded by size and SHA-256 only;
//! tokens, credentials and argument values never appear.
//!
//! A call's record is finished by the response body it wraps: the body is watched (never
//! changed) for the JSON-RPC answer to the call, and the record is written when the body ends
//! or the client goes away, whichever comes first. Records are appended to a bounded buffer
//! that a thread of its own writes out every [`FLUSH_EVERY`] (sooner when it fills up), one
//! write for many records and no thread wake-up per call; a slow disk never holds a request,
//! and records that do not fit are counted in `mcpgate_audit_records_dropped_total`.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Response;
use http_body::Frame;
use http_body_util::BodyExt;
use mcpgate_crds::gateway_config::ServerConfig;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::auth::Identity;
use crate::error::Body;
use crate::mcp::message::Envelope;
use crate::mcp::sse::Framer;
use crate::metrics::Metrics;

/// How often buffered records are written out.
const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// Buffered bytes that wake the writer before its time.
const WAKE_AT: usize = 256 * 1024;
/// Buffered bytes beyond which new records are dropped (the sink is not keeping up).
const MAX_BUFFERED: usize = 16 * 1024 * 1024;
/// The largest JSON answer read to learn a call's outcome; larger ones are recorded as
/// `unknown` (the answer itself is forwarded whole either way).
const MAX_INSPECTED: usize = 8 * 1024 * 1024;
/// Distinct tool labels per route in metrics; further names count as `_other`.
const TOOL_LABELS_PER_ROUTE: usize = 256;

/// Where records go and the metrics they feed (cheap to clone: one shared part).
#[derive(Clone)]
pub struct Audit(Arc<Shared>);

struct Shared {
    log: Option<Arc<Log>>,
    metrics: Metrics,
    labels: ToolLabels,
}

/// Records on their way to the sink.
struct Log {
    buffer: Mutex<Vec<u8>>,
    wake: Condvar,
    sink: Mutex<Box<dyn Write + Send>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Log {
    /// Writes `taken` out; returns it emptied, for reuse as the next buffer.
    fn write_out(&self, mut taken: Vec<u8>) -> Vec<u8> {
        if !taken.is_empty() {
            let mut sink = lock(&self.sink);
            if sink.write_all(&taken).and_then(|()| sink.flush()).is_err() {
                tracing::error!("the audit log could not be written");
            }
            taken.clear();
        }
        taken
    }

    fn run(&self) {
        let mut spare = Vec::new();
        loop {
            let guard = lock(&self.buffer);
            let (mut guard, _) = self
                .wake
                .wait_timeout_while(guard, FLUSH_EVERY, |b| b.len() < WAKE_AT)
                .unwrap_or_else(PoisonError::into_inner);
            std::mem::swap(&mut *guard, &mut spare);
            drop(guard);
            spare = self.write_out(spare);
        }
    }
}

impl Audit {
    /// Records written to `sink` (stdout or a file) by a thread of its own.
    pub fn new(sink: Box<dyn Write + Send>, metrics: Metrics) -> std::io::Result<Self> {
        let log = Arc::new(Log {
            buffer: Mutex::new(Vec::with_capacity(64 * 1024)),
            wake: Condvar::new(),
            sink: Mutex::new(sink),
        });
        let writer = log.clone();
        std::thread::Builder::new()
            .name("audit".into())
            .spawn(move || writer.run())?;
        Ok(Self(Arc::new(Shared {
            log: Some(log),
            metrics,
            labels: ToolLabels::default(),
        })))
    }

    /// Metrics only, no records (`--audit-log off`).
    pub fn metrics_only(metrics: Metrics) -> Self {
        Self(Arc::new(Shared {
            log: None,
            metrics,
            labels: ToolLabels::default(),
        }))
    }

    /// Writes out every buffered record now (at shutdown).
    pub fn flush(&self) {
        if let Some(log) = &self.0.log {
            let taken = std::mem::take(&mut *lock(&log.buffer));
            log.write_out(taken);
        }
    }

    /// Starts the record of one tool call; [`Pending::observe`] finishes it.
    pub fn start(&self, call: ToolCall) -> Pending {
        Pending {
            audit: self.clone(),
            call,
            time: jiff::Timestamp::now(),
            started: Instant::now(),
        }
    }

    fn record(&self, call: ToolCall, time: jiff::Timestamp, started: Instant, outcome: Outcome) {
        let Shared {
            log,
            metrics,
            labels,
        } = &*self.0;
        let latency = started.elapsed();
        let (kind, code) = outcome.parts();
        let series = labels.series(
            metrics,
            &call.namespace,
            &call.server,
            &call.tool,
            kind,
            code,
        );
        series.calls.inc();
        series.duration.observe(latency.as_secs_f64());
        let Some(log) = log else { return };
        let record = Record {
            kind: "toolCall",
            time: time.to_string(),
            request_id: call.request_id.as_ref().map(|id| id.as_str()),
            caller: call.caller.as_ref().map(Caller::from),
            namespace: &call.namespace,
            server: &call.server,
            route: call.route,
            tool: &call.tool,
            upstream: &call.upstream,
            upstream_tool: &call.upstream_tool,
            outcome: kind,
            error_code: code,
            latency_ms: (latency.as_secs_f64() * 1e6).round() / 1e3,
            argument_bytes: call.arguments.bytes,
            argument_sha256: &call.arguments.sha256,
        };
        let mut buffer = lock(&log.buffer);
        let start = buffer.len();
        if start > MAX_BUFFERED || serde_json::to_writer(&mut *buffer, &record).is_err() {
            buffer.truncate(start);
            metrics.audit_dropped.inc();
            return;
        }
        buffer.push(b'\n');
        if buffer.len() >= WAKE_AT {
            log.wake.notify_one();
        }
    }
}

/// What is known of a tool call before its answer.
#[derive(Debug, Clone)]
pub struct ToolCall {
    /// The authenticated caller; None on a public route.
    pub caller: Option<Identity>,
    /// The route's namespace.
    pub namespace: String,
    /// The McpServer or VirtualMcpServer called.
    pub server: String,
    /// `server` or `virtual`.
    pub route: &'static str,
    /// The tool name as called.
    pub tool: String,
    /// The McpServer that serves it (`namespace/name`); empty if none does.
    pub upstream: String,
    /// The tool's name there.
    pub upstream_tool: String,
    /// The JSON-RPC id of the call, to find its answer.
    pub id: Option<Value>,
    /// Size and hash of `params.arguments`.
    pub arguments: Arguments,
    /// The HTTP request that carried the call.
    pub request_id: Option<crate::request_id::RequestId>,
}

impl ToolCall {
    /// The `tools/call` in `envelope`, made by `caller` on route `namespace/server` (`route`
    /// is `server` or `virtual`); who serves it is set by [`Self::served_by`].
    pub fn new(
        caller: Option<Identity>,
        namespace: &str,
        server: &str,
        route: &'static str,
        envelope: &Envelope,
        request_id: Option<&crate::request_id::RequestId>,
    ) -> Self {
        let arguments = envelope
            .params
            .as_ref()
            .and_then(|p| p.arguments.as_deref())
            .map(serde_json::value::RawValue::get);
        // The request span (and its exported trace) names the tool too.
        tracing::Span::current().record("tool", envelope.name());
        Self {
            caller,
            namespace: namespace.to_owned(),
            server: server.to_owned(),
            route,
            tool: envelope.name().to_owned(),
            upstream: String::new(),
            upstream_tool: String::new(),
            id: envelope.id.clone(),
            arguments: Arguments::of(arguments),
            request_id: request_id.cloned(),
        }
    }

    /// The call is served by McpServer `upstream` as its tool `tool`.
    pub fn served_by(mut self, upstream: &ServerConfig, tool: &str) -> Self {
        self.upstream = format!("{}/{}", upstream.namespace, upstream.name);
        tool.clone_into(&mut self.upstream_tool);
        self
    }
}

/// `params.arguments` as sent: its size in bytes and SHA-256 (hex), never its value.
#[derive(Debug, Clone, Default)]
pub struct Arguments {
    /// Bytes of the arguments' JSON text.
    pub bytes: usize,
    /// Hex SHA-256 of that text; empty without arguments.
    pub sha256: String,
}

impl Arguments {
    /// Measures the raw JSON of the arguments.
    pub fn of(raw: Option<&str>) -> Self {
        match raw {
            None => Self::default(),
            Some(text) => Self {
                bytes: text.len(),
                sha256: base16ct::lower::encode_string(&Sha256::digest(text.as_bytes())),
            },
        }
    }
}

/// A started record.
pub struct Pending {
    audit: Audit,
    call: ToolCall,
    time: jiff::Timestamp,
    started: Instant,
}

impl Pending {
    /// [`Self::observe`] when a record was started, else `response` as it is.
    pub fn observe_some(pending: Option<Self>, response: Response<Body>) -> Response<Body> {
        match pending {
            Some(pending) => pending.observe(response),
            None => response,
        }
    }

    /// The response to the call, its body watched for the call's answer; the record is
    /// written when the body ends or is dropped.
    pub fn observe(self, response: Response<Body>) -> Response<Body> {
        let sse = crate::mcp::sse::is_event_stream(response.headers());
        let status = response.status();
        let (parts, body) = response.into_parts();
        let scan = Scan {
            sse,
            id: self.call.id.clone(),
            buffer: Framer::default(),
            found: None,
            http_status: status.as_u16(),
        };
        let body = Observed {
            inner: body,
            scan,
            pending: Some(self),
        };
        Response::from_parts(parts, body.boxed_unsync())
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A result.
    Ok,
    /// A result with `isError: true` (the tool ran and failed).
    ToolError,
    /// The server needs input from the client first (2026-07-28 `input_required`).
    InputRequired,
    /// A JSON-RPC error with this code.
    Error(i64),
    /// An HTTP error without a JSON-RPC answer.
    Http(u16),
    /// The body ended, or the client left, before an answer.
    Incomplete,
    /// An answer too large to inspect.
    Unknown,
}

impl Outcome {
    /// The metric label and the JSON-RPC error code, if any.
    fn parts(self) -> (&'static str, Option<i64>) {
        match self {
            Self::Ok => ("ok", None),
            Self::ToolError => ("tool_error", None),
            Self::InputRequired => ("input_required", None),
            Self::Error(code) => ("error", Some(code)),
            Self::Http(_) => ("http_error", None),
            Self::Incomplete => ("incomplete", None),
            Self::Unknown => ("unknown", None),
        }
    }
}

/// Watches a response body for the answer to one call.
struct Scan {
    sse: bool,
    id: Option<Value>,
    buffer: Framer,
    found: Option<Outcome>,
    http_status: u16,
}

impl Scan {
    fn feed(&mut self, chunk: &Bytes) {
        if self.found.is_some() {
            return;
        }
        if self.buffer.pending() + chunk.len() > MAX_INSPECTED {
            self.found = Some(Outcome::Unknown);
            self.buffer.take();
            return;
        }
        self.buffer.push(chunk);
        if !self.sse {
            return;
        }
        while let Some(event) = self.buffer.next_event() {
            let data = crate::mcp::sse::Event::parse(&event).and_then(|e| e.data);
            if let Some(outcome) = data.and_then(|d| self.answer(d.as_bytes())) {
                self.found = Some(outcome);
                self.buffer.take();
                return;
            }
        }
    }

    /// The outcome once the body has ended.
    fn end(&mut self) -> Outcome {
        if let Some(found) = self.found {
            return found;
        }
        if !self.sse {
            let body = self.buffer.take();
            if let Some(outcome) = self.answer(&body) {
                return outcome;
            }
        }
        if self.http_status >= 400 {
            return Outcome::Http(self.http_status);
        }
        Outcome::Incomplete
    }

    /// The outcome if `message` answers the call.
    fn answer(&self, message: &[u8]) -> Option<Outcome> {
        let reply: Reply = serde_json::from_slice(message).ok()?;
        if reply.method.is_some() || (reply.id.is_some() && reply.id != self.id) {
            return None;
        }
        match (reply.result, reply.error) {
            (_, Some(error)) => Some(Outcome::Error(error.code)),
            (Some(result), None) if result.result_type.as_deref() == Some("input_required") => {
                Some(Outcome::InputRequired)
            }
            (Some(result), None) if result.is_error => Some(Outcome::ToolError),
            (Some(_), None) => Some(Outcome::Ok),
            (None, None) => None,
        }
    }
}

/// Just what decides an outcome; everything else in the answer is skipped unread.
#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    method: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    result: Option<ReplyResult>,
    #[serde(default)]
    error: Option<ReplyError>,
}

#[derive(Deserialize)]
struct ReplyResult {
    #[serde(default, rename = "isError")]
    is_error: bool,
    #[serde(default, rename = "resultType")]
    result_type: Option<String>,
}

#[derive(Deserialize)]
struct ReplyError {
    #[serde(default)]
    code: i64,
}

/// A response body passed through unchanged while [`Scan`] watches it.
struct Observed {
    inner: Body,
    scan: Scan,
    pending: Option<Pending>,
}

impl Observed {
    fn finish(&mut self) {
        if let Some(pending) = self.pending.take() {
            let Pending {
                audit,
                call,
                time,
                started,
            } = pending;
            audit.record(call, time, started, self.scan.end());
        }
    }
}

impl http_body::Body for Observed {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.scan.feed(data);
                }
                if this.scan.found.is_some() || this.inner.is_end_stream() {
                    this.finish();
                }
            }
            Poll::Ready(Some(Err(_)) | None) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Observed {
    fn drop(&mut self) {
        self.finish();
    }
}

/// One audit line.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Record<'a> {
    kind: &'static str,
    time: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
    caller: Option<Caller<'a>>,
    namespace: &'a str,
    server: &'a str,
    route: &'static str,
    tool: &'a str,
    upstream: &'a str,
    upstream_tool: &'a str,
    outcome: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<i64>,
    latency_ms: f64,
    argument_bytes: usize,
    argument_sha256: &'a str,
}

/// Who called, as recorded.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Caller<'a> {
    user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    groups: &'a [String],
    method: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    issuer: Option<&'a str>,
}

impl<'a> From<&'a Identity> for Caller<'a> {
    fn from(identity: &'a Identity) -> Self {
        Self {
            user: &identity.user,
            email: identity.email.as_deref(),
            groups: &identity.groups,
            method: identity.method.label(),
            issuer: identity.method.issuer(),
        }
    }
}

/// Tool names used as metric labels, at most [`TOOL_LABELS_PER_ROUTE`] per route, so callers
/// cannot grow the metric set without bound by calling made-up names; and the metric series
/// of each label set, bound once, so a call of a known tool takes no lock but a read lock
/// and allocates nothing.
#[derive(Default)]
struct ToolLabels {
    /// Tools granted a label, by namespace and server.
    granted: Mutex<HashMap<String, HashMap<String, HashSet<String>>>>,
    /// Bound series by a hash of (namespace, server, tool label, outcome).
    bound: std::sync::RwLock<HashMap<u64, Vec<Arc<Series>>>>,
    hasher: std::collections::hash_map::RandomState,
}

/// The series of one tool label and outcome.
struct Series {
    key: (String, String, String, &'static str),
    calls: prometheus::IntCounter,
    duration: prometheus::Histogram,
}

/// The label of tools that earn none of their own.
const OTHER_TOOL: &str = "_other";

impl ToolLabels {
    /// The series a call of `tool` on `namespace/server` with outcome `kind` counts in.
    fn series(
        &self,
        metrics: &Metrics,
        namespace: &str,
        server: &str,
        tool: &str,
        kind: &'static str,
        code: Option<i64>,
    ) -> Arc<Series> {
        let find = |tool: &str| {
            let hash =
                std::hash::BuildHasher::hash_one(&self.hasher, (namespace, server, tool, kind));
            let bound = self.bound.read().unwrap_or_else(PoisonError::into_inner);
            let found = bound.get(&hash)?.iter().find(|s| {
                s.key.0 == namespace && s.key.1 == server && s.key.2 == tool && s.key.3 == kind
            });
            found.cloned()
        };
        let plain = Self::plain(tool, code);
        if let Some(found) = find(if plain { tool } else { OTHER_TOOL }) {
            return found;
        }
        let label = self.label(namespace, server, tool, code);
        if let Some(found) = find(&label) {
            return found;
        }
        let values = [namespace, server, &*label, kind];
        let series = Arc::new(Series {
            calls: metrics.tool_calls.with_label_values(&values),
            duration: metrics.tool_call_duration.with_label_values(&values),
            key: (namespace.to_owned(), server.to_owned(), label, kind),
        });
        let hash = std::hash::BuildHasher::hash_one(
            &self.hasher,
            (namespace, server, &*series.key.2, kind),
        );
        let mut bound = self.bound.write().unwrap_or_else(PoisonError::into_inner);
        let slot = bound.entry(hash).or_default();
        match slot.iter().find(|s| s.key == series.key) {
            Some(raced) => raced.clone(),
            None => {
                slot.push(series.clone());
                series
            }
        }
    }

    /// Whether `tool` may be a label at all: a plain, short name of a tool that exists.
    fn plain(tool: &str, code: Option<i64>) -> bool {
        tool.len() <= 64
            && tool
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
            // Unknown tools (invalid params) never earn a label of their own.
            && code != Some(crate::error::code::INVALID_PARAMS)
    }

    fn label(&self, namespace: &str, server: &str, tool: &str, code: Option<i64>) -> String {
        const OTHER: &str = OTHER_TOOL;
        if !Self::plain(tool, code) {
            return OTHER.to_owned();
        }
        let mut routes = lock(&self.granted);
        if !routes
            .get(namespace)
            .is_some_and(|s| s.contains_key(server))
        {
            routes
                .entry(namespace.to_owned())
                .or_default()
                .insert(server.to_owned(), HashSet::new());
        }
        let Some(seen) = routes.get_mut(namespace).and_then(|s| s.get_mut(server)) else {
            return OTHER.to_owned();
        };
        if seen.contains(tool) {
            tool.to_owned()
        } else if seen.len() < TOOL_LABELS_PER_ROUTE {
            seen.insert(tool.to_owned());
            tool.to_owned()
        } else {
            OTHER.to_owned()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mcp::proptests::{chunked, config, json, sse_body};
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(config())]

        /// A call's outcome does not depend on how its answer was chunked.
        #[test]
        fn outcomes_are_the_same_whatever_the_chunking(
            body in sse_body(),
            cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
            sse in any::<bool>(),
            id in json(),
        ) {
            let outcome = |chunks: Vec<Bytes>| {
                let mut scan = Scan {
                    sse,
                    id: Some(id.clone()),
                    buffer: Framer::default(),
                    found: None,
                    http_status: 200,
                };
                for chunk in &chunks {
                    scan.feed(chunk);
                }
                scan.end()
            };
            let whole = outcome(vec![Bytes::copy_from_slice(&body)]);
            prop_assert_eq!(outcome(chunked(&body, &cuts)), whole);
        }
    }

    fn scan(sse: bool, id: Value) -> Scan {
        Scan {
            sse,
            id: Some(id),
            buffer: Framer::default(),
            found: None,
            http_status: 200,
        }
    }

    #[test]
    fn json_answers_decide_the_outcome() {
        let outcome = |body: &str| {
            let mut scan = scan(false, Value::from(7));
            scan.feed(&Bytes::copy_from_slice(body.as_bytes()));
            scan.end()
        };
        assert_eq!(
            outcome(r#"{"jsonrpc":"2.0","id":7,"result":{"content":[]}}"#),
            Outcome::Ok
        );
        assert_eq!(
            outcome(r#"{"jsonrpc":"2.0","id":7,"result":{"content":[],"isError":true}}"#),
            Outcome::ToolError
        );
        assert_eq!(
            outcome(r#"{"jsonrpc":"2.0","id":7,"error":{"code":-32602,"message":"Unknown tool"}}"#),
            Outcome::Error(-32602)
        );
        assert_eq!(
            outcome(r#"{"jsonrpc":"2.0","id":7,"result":{"resultType":"input_required"}}"#),
            Outcome::InputRequired
        );
        assert_eq!(outcome(""), Outcome::Incomplete);
        assert_eq!(
            outcome(r#"{"jsonrpc":"2.0","id":8,"result":{}}"#),
            Outcome::Incomplete,
            "another call's answer"
        );
    }

    #[test]
    fn sse_answers_are_found_among_notifications_in_any_chunking() {
        let body = concat!(
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",\"params\":{}}\n\n",
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"a\",\"method\":\"elicitation/create\"}\n\n",
            "event: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":\"c-1\",\n",
            "data: \"result\":{\"isError\":true}}\n\n",
        );
        for size in [1, 7, 64, body.len()] {
            let mut scan = scan(true, Value::from("c-1"));
            for chunk in body.as_bytes().chunks(size) {
                scan.feed(&Bytes::copy_from_slice(chunk));
            }
            assert_eq!(scan.end(), Outcome::ToolError, "chunks of {size}");
        }
        let mut open = scan(true, Value::from("c-1"));
        open.feed(&Bytes::from_static(
            b"event: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"x\"}\n\n",
        ));
        assert_eq!(open.end(), Outcome::Incomplete);
    }

    #[test]
    fn arguments_are_measured_never_kept() {
        let arguments = Arguments::of(Some(r#"{"password":"hunter2"}"#));
        assert_eq!(arguments.bytes, 22);
        assert_eq!(arguments.sha256.len(), 64);
        assert!(!arguments.sha256.contains("hunter2"));
        assert_eq!(Arguments::of(None).bytes, 0);
    }

    #[test]
    fn known_tools_reuse_their_bound_series() {
        let metrics = Metrics::new().unwrap();
        let labels = ToolLabels::default();
        let first = labels.series(&metrics, "ns", "s", "t", "ok", None);
        let again = labels.series(&metrics, "ns", "s", "t", "ok", None);
        assert!(Arc::ptr_eq(&first, &again));
        first.calls.inc();
        again.calls.inc();
        let counted = metrics
            .tool_calls
            .with_label_values(&["ns", "s", "t", "ok"]);
        assert_eq!(counted.get(), 2);
        let failed = labels.series(&metrics, "ns", "s", "t", "error", None);
        assert!(!Arc::ptr_eq(&first, &failed));
        let odd = labels.series(&metrics, "ns", "s", "bad name", "ok", None);
        assert_eq!(odd.key.2, "_other");
        let unknown = labels.series(&metrics, "ns", "s", "t", "error", Some(-32602));
        assert_eq!(unknown.key.2, "_other");
    }

    #[test]
    fn tool_labels_are_bounded_per_route() {
        let labels = ToolLabels::default();
        for i in 0..TOOL_LABELS_PER_ROUTE {
            assert_eq!(
                labels.label("a", "s", &format!("t{i}"), None),
                format!("t{i}")
            );
        }
        assert_eq!(labels.label("a", "s", "one-more", None), "_other");
        assert_eq!(
            labels.label("a", "s", "t0", None),
            "t0",
            "known names keep theirs"
        );
        assert_eq!(labels.label("a", "other", "one-more", None), "one-more");
        assert_eq!(labels.label("a", "other", "bad name", None), "_other");
        assert_eq!(
            labels.label("a", "other", "made-up", Some(-32602)),
            "_other"
        );
    }
}
