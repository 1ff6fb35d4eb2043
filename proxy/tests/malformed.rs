//! Malformed messages from clients and upstreams get JSON-RPC errors naming what is wrong, or
//! are left out, and never take a connection down: each case here panicked the gateway, or
//! sent an upstream something else than the client's message, before it was fixed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::gateway::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const MODERN: &str = "2026-07-28";
const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
/// The `_meta` a stateless request carries.
const ENVELOPE: &str = r#"{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}"#;

/// The echo upstream's servers, and a virtual server `bundle` of `plain`.
fn bundle_of_plain(upstream: u16) -> Value {
    let mut config = config(upstream, 2000);
    config["virtualServers"] = json!([virtual_config("bundle", &["plain"])]);
    config
}

fn parsed(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

/// `depth` nested arrays.
fn nested(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

#[test]
fn params_that_are_not_objects_are_refused_naming_them() {
    let (upstream, _seen) = spawn_upstream();
    let (_dir, _proxy, port) = serving(&bundle_of_plain(upstream));
    let refused = [
        (
            json!({"jsonrpc": "2.0", "id": 1, "method": "logging/setLevel", "params": []}),
            "invalid type: sequence, expected params to be a JSON object at line 1 column 63",
        ),
        (
            json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": "plain_echo", "_meta": 5}}),
            "invalid type: integer `5`, expected params._meta to be a JSON object at line 1 column 85",
        ),
    ];
    for (message, why) in refused {
        let (status, _, body) = post(
            port,
            "/team/mcp/bundle/server",
            &[("MCP-Protocol-Version", MODERN)],
            &message.to_string(),
        );
        assert_eq!(
            (status, parsed(&body)),
            (
                400,
                json!({"jsonrpc": "2.0", "id": message["id"], "error": {"code": -32600,
                    "message": format!("the body is not one JSON-RPC message: {why}")}})
            ),
        );
    }
}

/// Deeper than serde_json builds values for, but a valid message to the envelope parser: the
/// gateway used to rewrite `null` in its place and send that upstream.
#[test]
fn messages_too_deep_to_rewrite_are_refused_not_replaced() {
    let (upstream, seen) = spawn_upstream();
    let (_dir, _proxy, port) = serving(&bundle_of_plain(upstream));
    let deep_call = format!(
        r#"{{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{{"_meta":{ENVELOPE},"name":"plain_echo","arguments":{{"a":{}}}}}}}"#,
        nested(200)
    );
    let too_deep = serde_json::from_str::<Value>(&deep_call).unwrap_err();
    let refusal = |id: Value| {
        json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32700,
            "message": format!("the body is not one JSON-RPC message: {too_deep}")}})
    };
    let stateless = [
        ("MCP-Protocol-Version", MODERN),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", "plain_echo"),
    ];
    // A stateless call through the virtual server, and to a server route whose upstream speaks
    // only the `initialize` era (the gateway rewrites the id there).
    for path in ["/team/mcp/bundle/server", "/team/mcp/plain/server"] {
        while seen.try_recv().is_ok() {}
        let (status, _, body) = post(port, path, &stateless, &deep_call);
        assert_eq!((status, parsed(&body)), (400, refusal(json!(3))), "{path}");
    }

    // A client's answer to an upstream's request, within a session.
    let sid = initialize(port, "/team/mcp/bundle/server");
    while seen.try_recv().is_ok() {}
    let deep_answer = format!(
        r#"{{"jsonrpc":"2.0","id":"mcpgate:plain:1","result":{{"roots":{}}}}}"#,
        nested(200)
    );
    let too_deep = serde_json::from_str::<Value>(&deep_answer).unwrap_err();
    let (status, _, body) = post(
        port,
        "/team/mcp/bundle/server",
        &[("Mcp-Session-Id", &sid)],
        &deep_answer,
    );
    assert_eq!(
        (status, parsed(&body)),
        (
            400,
            json!({"jsonrpc": "2.0", "id": "mcpgate:plain:1", "error": {"code": -32700,
                "message": format!("the body is not one JSON-RPC message: {too_deep}")}})
        )
    );
    assert!(seen.try_recv().is_err(), "something reached the upstream");
}

/// A member's listen stream with notifications whose params cannot carry the subscription
/// id: they are left out, the rest tagged, and the stream goes on.
#[test]
fn listen_notifications_with_malformed_params_are_left_out() {
    let upstream = spawn_scripted(|_, request| match request["method"].as_str() {
        Some("server/discover") => json_reply(&json!({"jsonrpc": "2.0", "id": request["id"],
            "result": {"supportedVersions": [MODERN], "capabilities": {"tools": {"listChanged": true}}}})),
        Some("subscriptions/listen") => sse_reply(&[
            json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged", "params": []}),
            json!({"jsonrpc": "2.0", "method": "notifications/message", "params": 5}),
            json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed", "params": {"_meta": []}}),
            json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"}),
        ]),
        _ => json_reply(
            &json!({"jsonrpc": "2.0", "id": request["id"], "error": {"code": -32601, "message": "no"}}),
        ),
    });
    let mut config = config(upstream, 2000);
    config["servers"][0]["name"] = json!("modern");
    config["servers"][0]["path"] = json!("/team/mcp/modern/server");
    config["virtualServers"] = json!([virtual_config("bundle", &["modern"])]);
    let (_dir, _proxy, port) = serving(&config);

    let listen = json!({"jsonrpc": "2.0", "id": 9, "method": "subscriptions/listen",
        "params": {"notifications": {"toolsListChanged": true},
                   "_meta": parsed(ENVELOPE)}});
    let messages = stream_messages(
        port,
        "/team/mcp/bundle/server",
        &listen.to_string(),
        "notifications/tools/list_changed",
    );
    let tag = json!({SUBSCRIPTION_ID: 9});
    assert_eq!(
        messages,
        [
            json!({"jsonrpc": "2.0", "method": "notifications/subscriptions/acknowledged",
                "params": {"notifications": {"toolsListChanged": true}, "_meta": tag}}),
            json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed",
                "params": {"_meta": tag}}),
        ]
    );
}

/// POSTs a stateless request and reads its event stream until a message containing `until`
/// (or the stream ends, or 10 s pass): the messages of its `data:` lines.
fn stream_messages(port: u16, path: &str, body: &str, until: &str) -> Vec<Value> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nMCP-Protocol-Version: {MODERN}\r\nMcp-Method: subscriptions/listen\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut received = Vec::new();
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(_) => {}
        }
        let text = String::from_utf8_lossy(&received);
        if text
            .lines()
            .any(|l| l.starts_with("data:") && l.contains(until))
        {
            break;
        }
    }
    let text = String::from_utf8_lossy(&received);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(parsed)
        .collect()
}
