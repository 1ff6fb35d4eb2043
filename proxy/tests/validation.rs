//! A virtual server checks requests as a server route does, with the one check both share
//! (`Shared::admit`): the same status and JSON-RPC error for a wrong `Content-Type` or
//! `Accept`, an unsupported `MCP-Protocol-Version` or an object that is no JSON-RPC message,
//! before anything reaches an upstream; and a good request still goes through.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::gateway::*;

use serde_json::{Value, json};

const SERVER: &str = "/team/mcp/plain/server";
const BUNDLE: &str = "/team/mcp/bundle/server";

/// HTTP method, body, extra headers, and the answer both routes give.
type Case<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>, (u16, Value));

/// (status, JSON body) of a request to `path` in session `sid` with `headers`.
fn send(
    port: u16,
    method: &str,
    path: &str,
    sid: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, Value) {
    let mut all = vec![("Mcp-Session-Id", sid)];
    all.extend_from_slice(headers);
    let (status, _, body) = request(port, method, path, &all, body);
    (
        status,
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body:?}")),
    )
}

#[test]
fn a_virtual_server_refuses_what_a_server_route_refuses() {
    let (upstream, seen) = spawn_upstream();
    let mut config = config(upstream, 2000);
    config["virtualServers"] = json!([virtual_config("bundle", &["plain"])]);
    let (_dir, _proxy, port) = serving(&config);
    let sessions = [
        (BUNDLE, initialize(port, BUNDLE)),
        (SERVER, initialize(port, SERVER)),
    ];

    let list = json!({"jsonrpc": "2.0", "id": 5, "method": "tools/list"}).to_string();
    let refusal = |status: u16, id: Value, code: i64, message: &str| {
        (
            status,
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}),
        )
    };
    let mut unsupported = refusal(
        400,
        json!(5),
        -32022,
        "protocol version 1999-01-01 is not supported",
    );
    unsupported.1["error"]["data"] =
        json!({"supported": ["2026-07-28"], "requested": "1999-01-01"});
    let cases: [Case; 6] = [
        (
            "POST",
            &list,
            vec![("Content-Type", "text/plain")],
            refusal(
                415,
                Value::Null,
                -32600,
                "Unsupported Media Type: Content-Type must be application/json",
            ),
        ),
        (
            "POST",
            &list,
            vec![("Accept", "application/json")],
            refusal(
                406,
                Value::Null,
                -32600,
                "Not Acceptable: Client must accept both application/json and text/event-stream",
            ),
        ),
        (
            "GET",
            "",
            vec![("Accept", "application/json")],
            refusal(
                406,
                Value::Null,
                -32600,
                "Not Acceptable: Client must accept text/event-stream",
            ),
        ),
        (
            "POST",
            &list,
            vec![("MCP-Protocol-Version", "1999-01-01")],
            unsupported,
        ),
        (
            "POST",
            r#"{"jsonrpc":"2.0","id":6}"#,
            vec![("MCP-Protocol-Version", "2025-11-25")],
            refusal(
                400,
                json!(6),
                -32600,
                "not a JSON-RPC request, notification or response",
            ),
        ),
        (
            "POST",
            r#"[{"jsonrpc":"2.0","id":7,"method":"tools/list"}]"#,
            vec![],
            refusal(
                400,
                Value::Null,
                -32600,
                "the body is not one JSON-RPC message: JSON-RPC batches are not part of MCP since 2025-06-18; send one message per request",
            ),
        ),
    ];
    for (method, body, headers, expected) in &cases {
        for (path, sid) in &sessions {
            while seen.try_recv().is_ok() {}
            let answer = send(port, method, path, sid, headers, body);
            assert_eq!(&answer, expected, "{method} {path} with {headers:?}");
            assert!(
                seen.try_recv().is_err(),
                "{method} {path} with {headers:?} reached the upstream"
            );
        }
    }

    // What is well formed still goes through, with the same headers spelled otherwise.
    let call = json!({"jsonrpc": "2.0", "id": 8, "method": "tools/call",
        "params": {"name": "plain_echo", "arguments": {}}});
    let (status, answer) = send(
        port,
        "POST",
        BUNDLE,
        &sessions[0].1,
        &[
            ("Content-Type", "Application/JSON; charset=utf-8"),
            ("Accept", "text/*, application/*;q=0.9"),
            ("MCP-Protocol-Version", "2025-11-25"),
        ],
        &call.to_string(),
    );
    assert_eq!((status, &answer["id"]), (200, &json!(8)), "{answer}");
    assert_eq!(
        answer["result"]["body"]["params"]["name"], "echo",
        "{answer}"
    );
}
