//! Property tests: whatever a client or upstream sends, the parsers and rewriters of this
//! module return (no panic), and SSE events come out the same whatever the chunking. Cases
//! are bounded and the seed fixed, so a run takes seconds and never flakes; raise
//! `PROPTEST_CASES` locally to search harder.
#![allow(clippy::unwrap_used)]

use std::convert::Infallible;

use bytes::Bytes;
use futures::StreamExt;
use http::HeaderMap;
use mcpgate_crds::gateway_config::ToolFilter;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;
use serde_json::{Map, Value};

use super::filter::{filter_message, filter_value, rewrite_event};
use super::message::{Envelope, params_mut};
use super::relay::{EventIds, event_through};
use super::shared::Message;
use super::sse::{Event, event_end, oversized_event, split_events};
use super::upstream::era;
use super::virtual_server::listing::{exposed_page, listing};
use super::virtual_server::relayed::{from_member, tagged};

/// 256 cases from a fixed seed (see the module doc).
pub(crate) fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        rng_seed: RngSeed::Fixed(0x6d63_7067_6174_6531),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Object keys: the ones the gateway looks at, often, and anything.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "jsonrpc", "id", "method", "params", "result", "error", "_meta", "name", "uri",
            "cursor", "arguments", "tools", "prompts", "resources", "nextCursor", "code",
            "message", "isError", "resultType", "notifications", "ref", "type",
            "supportedVersions", "io.modelcontextprotocol/protocolVersion",
            "io.modelcontextprotocol/subscriptionId",
        ])
        .prop_map(str::to_owned),
        1 => any::<String>(),
    ]
}

/// Any JSON value, a few levels deep.
pub(crate) fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_filter_map("finite", |f| {
            serde_json::Number::from_f64(f).map(Value::Number)
        }),
        key().prop_map(Value::String),
        Just(Value::String("mcpgate-call-0".into())),
        Just(Value::String("mcpgate:fs:1".into())),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

/// A method name: one the gateway routes on, or any value at all.
fn method() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "initialize", "ping", "server/discover", "tools/list", "tools/call", "prompts/list",
            "prompts/get", "resources/list", "resources/read", "resources/templates/list",
            "completion/complete", "logging/setLevel", "subscriptions/listen",
            "elicitation/create", "notifications/initialized",
            "notifications/subscriptions/acknowledged", "notifications/resources/updated",
            "notifications/tools/list_changed", "notifications/progress",
        ])
        .prop_map(Value::from),
        1 => json(),
    ]
}

/// Something shaped like a JSON-RPC request, notification or response, every field of any
/// type (or absent).
pub(crate) fn message() -> impl Strategy<Value = Value> {
    let field = |s: BoxedStrategy<Value>| prop::option::weighted(0.6, s);
    (
        field(json().boxed()),
        field(method().boxed()),
        field(json().boxed()),
        field(json().boxed()),
        field(json().boxed()),
        prop::collection::vec((key(), json()), 0..3),
    )
        .prop_map(|(id, method, params, result, error, extra)| {
            let mut message: Map<String, Value> = extra.into_iter().collect();
            message.insert("jsonrpc".into(), "2.0".into());
            for (name, value) in [
                ("id", id),
                ("method", method),
                ("params", params),
                ("result", result),
                ("error", error),
            ] {
                if let Some(value) = value {
                    message.insert(name.into(), value);
                }
            }
            Value::Object(message)
        })
}

/// A message or any other JSON value (upstreams may send anything).
fn peer_json() -> impl Strategy<Value = Value> {
    prop_oneof![3 => message(), 1 => json()]
}

/// An SSE body: events of `data:` lines carrying messages (or not), other fields and
/// comments, in either line ending, then maybe an unfinished event; or any bytes at all.
pub(crate) fn sse_body() -> impl Strategy<Value = Vec<u8>> {
    let line = prop_oneof![
        4 => peer_json().prop_map(|m| format!("data: {m}")),
        1 => Just("event: message".to_owned()),
        1 => Just("id: 7".to_owned()),
        1 => Just(": keep-alive".to_owned()),
        1 => Just("data:".to_owned()),
        1 => any::<String>(),
    ];
    let event = (
        prop::collection::vec(line, 0..4),
        prop::sample::select(vec!["\n", "\r\n"]),
    )
        .prop_map(|(lines, eol)| {
            let mut event: String = lines.iter().map(|l| format!("{l}{eol}")).collect();
            event.push_str(eol);
            event
        });
    let structured = (
        prop::collection::vec(event, 0..6),
        prop::collection::vec(any::<u8>(), 0..16),
    )
        .prop_map(|(events, tail)| {
            let mut body = events.concat().into_bytes();
            body.extend(tail);
            body
        });
    prop_oneof![4 => structured, 1 => prop::collection::vec(any::<u8>(), 0..256)]
}

/// `body` cut at `cuts` (indexes into it, in any order).
pub(crate) fn chunked(body: &[u8], cuts: &[prop::sample::Index]) -> Vec<Bytes> {
    let mut at: Vec<usize> = cuts.iter().map(|i| i.index(body.len() + 1)).collect();
    at.extend([0, body.len()]);
    at.sort_unstable();
    at.dedup();
    at.windows(2)
        .map(|w| Bytes::copy_from_slice(&body[w[0]..w[1]]))
        .collect()
}

fn split(chunks: Vec<Bytes>) -> Vec<Bytes> {
    split_within(chunks, usize::MAX)
}

fn split_within(chunks: Vec<Bytes>, max_event: usize) -> Vec<Bytes> {
    let stream = futures::stream::iter(chunks.into_iter().map(Ok::<_, Infallible>));
    futures::executor::block_on(split_events(stream, max_event).collect::<Vec<_>>())
        .into_iter()
        .map(|event| event.unwrap())
        .collect()
}

fn headers(pairs: &[(&'static str, String)]) -> HeaderMap {
    pairs
        .iter()
        .filter_map(|(k, v)| Some((http::HeaderName::from_static(k), v.parse().ok()?)))
        .collect()
}

fn filter() -> ToolFilter {
    ToolFilter {
        allow: vec![],
        deny: vec!["name".into()],
    }
}

/// A virtual server's member `fs` with every tool, from a rendered configuration.
fn member() -> std::sync::Arc<crate::source::VirtualRoute> {
    let config = serde_json::json!({
        "schema": mcpgate_crds::gateway_config::SCHEMA_VERSION, "version": "v1",
        "servers": [{"namespace": "team", "name": "fs", "path": "/team/mcp/fs/server",
            "upstream": {"type": "remote", "url": "http://127.0.0.1:9/mcp", "transport": "StreamableHttp"},
            "auth": {"type": "none"}, "tools": {"allow": [], "deny": ["hidden"]}, "timeoutMs": 1000,
            "retry": {"attempts": 0, "backoffMs": 100}, "rateLimits": {"perUser": null, "perServer": null},
            "public": true, "access": {"subjects": []}}],
        "virtualServers": [{"namespace": "team", "name": "bundle", "path": "/team/mcp/bundle/server",
            "description": null, "instructions": null, "public": true, "access": {"subjects": []},
            "members": [{"server": "fs", "all": true, "tools": {"read": "cat"}}]}],
    });
    let snapshot = crate::source::Snapshot::build(
        serde_json::from_value(config).unwrap(),
        &Default::default(),
    )
    .unwrap();
    match snapshot.route("/team/mcp/bundle/server") {
        Some(crate::source::Route::Virtual(route)) => route.clone(),
        _ => unreachable!("the configuration has the virtual server"),
    }
}

proptest! {
    #![proptest_config(config())]

    /// Client bodies: the envelope, the checks of stateless requests, and the value the
    /// virtual server rewrites, whose `params` and `params._meta` the envelope guarantees to
    /// be objects when present.
    #[test]
    fn client_messages_parse_or_are_refused(
        message in prop_oneof![3 => message().prop_map(|m| m.to_string().into_bytes()),
                               1 => prop::collection::vec(any::<u8>(), 0..64)],
        version in prop::option::of(prop::sample::select(vec!["2026-07-28", "2025-11-25", "2099-01-01", ""])),
        method in prop::option::of(any::<String>()),
        name in prop::option::of(any::<String>()),
    ) {
        let Ok(envelope) = Envelope::parse(&message) else { return Ok(()) };
        let _ = (envelope.kind(), envelope.method(), envelope.name(), envelope.meta_version());
        let mut pairs = Vec::new();
        pairs.extend(version.map(|v| ("mcp-protocol-version", v.to_owned())));
        pairs.extend(method.map(|m| ("mcp-method", m)));
        pairs.extend(name.map(|n| ("mcp-name", n)));
        let headers = headers(&pairs);
        let _ = era::is_modern(&headers, &envelope);
        let _ = era::check(&headers, &envelope);
        let message = Message { bytes: Bytes::from(message), envelope };
        if let Ok(request) = message.request() {
            let params = request.get("params").filter(|p| !p.is_null());
            prop_assert!(params.is_none_or(Value::is_object), "{request}");
            let meta = params.and_then(|p| p.get("_meta")).filter(|m| !m.is_null());
            prop_assert!(meta.is_none_or(Value::is_object), "{request}");
        }
    }

    /// Upstream messages through every rewrite on their way to a client.
    #[test]
    fn upstream_messages_pass_every_rewrite(message in peer_json(), id in json()) {
        let rewrites: [Box<dyn super::relay::Rewrite>; 4] = [
            Box::new(from_member("fs".into())),
            Box::new(tagged("fs".into(), id.clone())),
            Box::new(era::restored("mcpgate-call-0".into(), id.clone(), true, from_member("fs".into()))),
            Box::new(|m: &mut Value| filter_value(m, &filter(), None).is_some()),
        ];
        for mut rewrite in rewrites {
            let mut rewritten = message.clone();
            let _ = rewrite(&mut rewritten);
        }
        let mut rewritten = message.clone();
        if let Some(params) = params_mut(&mut rewritten) {
            params.insert("_meta".into(), id);
        }
        let _ = filter_message(message.to_string().as_bytes(), &filter(), None);
    }

    /// A member's list page, any shape, merged into a virtual server's list.
    #[test]
    fn list_pages_of_any_shape_merge(result in json(), items in prop::collection::vec(json(), 0..6),
                                     method in prop::sample::select(vec!["tools/list", "prompts/list", "resources/list", "resources/templates/list"])) {
        let route = member();
        let listing = listing(method).unwrap();
        let member = &route.members[0];
        let _ = exposed_page(member, &listing, &result);
        let page = serde_json::json!({listing.key: items, "nextCursor": result});
        let (exposed, _) = exposed_page(member, &listing, &page);
        prop_assert!(exposed.len() <= items.len());
    }

    /// SSE bodies: split into the same events whatever the chunk boundaries, each event
    /// complete, and every event through the parsers and rewriters that read them.
    #[test]
    fn sse_events_are_the_same_whatever_the_chunking(
        body in sse_body(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
    ) {
        let whole = split(vec![Bytes::copy_from_slice(&body)]);
        let pieces = split(chunked(&body, &cuts));
        prop_assert_eq!(&pieces, &whole);
        let joined = whole.concat();
        prop_assert!(body.starts_with(&joined));
        for event in &whole {
            prop_assert_eq!(event_end(event), Some(event.len()));
            if let Some(parsed) = Event::parse(event) {
                let _ = parsed.render(b"{}");
            }
            for ids in [EventIds::Dropped, EventIds::Member("fs".into())] {
                let _ = event_through(event, &mut from_member("fs".into()), &ids);
                let _ = event_through(event, &mut tagged("fs".into(), Value::from(1)), &ids);
            }
            let _ = rewrite_event(event, &filter(), None);
        }
    }

    /// With a limit, the events up to the first one over it come out as without one, then
    /// the stand-in for the oversized event, and nothing after.
    #[test]
    fn an_event_over_the_limit_ends_the_stream_in_its_place(
        body in sse_body(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..12),
        limit in 1usize..64,
    ) {
        let whole = split(vec![Bytes::copy_from_slice(&body)]);
        let bounded = split_within(chunked(&body, &cuts), limit);
        let (last, kept) = match bounded.split_last() {
            Some((last, kept)) if *last == oversized_event(limit) => (Some(last), kept),
            _ => (None, &bounded[..]),
        };
        prop_assert_eq!(kept, &whole[..kept.len()]);
        prop_assert!(kept.iter().all(|e| e.len() <= limit), "an event over the limit came out");
        if last.is_none() {
            prop_assert_eq!(&bounded, &whole);
        }
    }
}

#[test]
fn many_small_events_in_one_chunk_are_framed_in_linear_time() {
    // 200,000 events in one chunk: searching the rest of the buffer per event (for either
    // terminator) would read about 10^11 bytes; one pass reads 1.8 MB.
    let body = "data: x\n\n".repeat(200_000);
    let started = std::time::Instant::now();
    let events = split(vec![Bytes::from(body)]);
    assert_eq!(events.len(), 200_000);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    // The audit's scan of a tools/call answer frames the same way.
    let mut framer = super::sse::Framer::default();
    framer.push("data: x\r\n\r\n".repeat(200_000).as_bytes());
    assert_eq!(std::iter::from_fn(|| framer.next_event()).count(), 200_000);
    assert!(started.elapsed() < std::time::Duration::from_secs(40));
}

#[test]
fn a_large_event_in_small_chunks_is_framed_in_linear_time() {
    // 4 MiB in 64-byte chunks: rescanning the buffer per chunk (the old framing) would read
    // about 130 GB; one pass reads 4 MiB.
    let mut body = b"data: ".to_vec();
    body.extend(std::iter::repeat_n(b'x', 4 * 1024 * 1024));
    body.extend_from_slice(b"\n\n");
    let chunks: Vec<Bytes> = body.chunks(64).map(Bytes::copy_from_slice).collect();
    let started = std::time::Instant::now();
    let events = split(chunks);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].len(), body.len());
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}
