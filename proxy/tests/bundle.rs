//! A virtual server's own exchanges with its members: the requests it makes for the client,
//! and resuming a member's stream.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::gateway::*;

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};

/// The lists of one client session, one after the other or at once, reach a member with
/// distinct request ids: an upstream routes answers by id within its session, so two list
/// requests sharing one (as `mcpgate-list-0` did) left one of them waiting for the timeout.
#[test]
fn list_requests_to_a_member_never_share_an_id() {
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let record = seen.clone();
    let upstream = spawn_scripted(move |_, request| {
        if request["method"] == "tools/list" {
            record.lock().unwrap().push(request["id"].clone());
        }
        json_reply(&json!({"jsonrpc": "2.0", "id": request["id"], "result": {"tools": []}}))
    });
    let mut config = config(upstream, 2000);
    config["virtualServers"] = json!([virtual_config("bundle", &["plain"])]);
    let (_dir, _proxy, port) = serving(&config);
    let sid = initialize(port, "/team/mcp/bundle/server");
    let list = |id: u32| {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}).to_string();
        let (status, _, body) = post(
            port,
            "/team/mcp/bundle/server",
            &[("Mcp-Session-Id", &sid)],
            &body,
        );
        assert_eq!(
            (status, serde_json::from_str::<Value>(&body).unwrap()),
            (
                200,
                json!({"jsonrpc": "2.0", "id": id, "result": {"tools": []}})
            )
        );
    };
    list(1);
    std::thread::scope(|s| {
        for id in 2..5 {
            s.spawn(move || list(id));
        }
    });
    let ids = seen.lock().unwrap().clone();
    let mut distinct = ids.clone();
    distinct.sort_by_key(Value::to_string);
    distinct.dedup();
    assert_eq!((ids.len(), distinct.len()), (4, 4), "{ids:?}");
}

/// A member's response stream that closes early (to be polled) is resumed through the bundle:
/// its event ids reach the client as `<member>:<id>`, priming event included, and a GET with
/// that `Last-Event-ID` resumes the member's stream after its own id.
#[test]
fn a_members_stream_is_resumed_through_the_bundle() {
    let upstream = spawn_scripted(|head, request| {
        let resumed = head.to_ascii_lowercase().contains("\r\nlast-event-id: 7");
        match request["method"].as_str() {
            Some("tools/call") => sse_raw("id: 7\nretry: 500\ndata: \n\n"),
            None if head.starts_with("GET") && resumed => sse_raw(
                "id: 8\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{\"content\":[]}}\n\n",
            ),
            None => {
                "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into()
            }
            _ => json_reply(&json!({"jsonrpc": "2.0", "id": request["id"], "result": {}})),
        }
    });
    let mut config = config(upstream, 2000);
    config["virtualServers"] = json!([virtual_config("bundle", &["plain"])]);
    let (_dir, _proxy, port) = serving(&config);
    let sid = initialize(port, "/team/mcp/bundle/server");
    let session = ("Mcp-Session-Id", sid.as_str());

    let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "plain_echo", "arguments": {}}});
    let (status, _, body) = post(
        port,
        "/team/mcp/bundle/server",
        &[session],
        &call.to_string(),
    );
    assert_eq!(
        (status, dechunked(&body).as_str()),
        (200, "id: plain:7\nretry: 500\ndata: \n\n")
    );
    let resume = [
        session,
        ("Accept", "text/event-stream"),
        ("Last-Event-ID", "plain:7"),
    ];
    let (status, _, body) = request(port, "GET", "/team/mcp/bundle/server", &resume, "");
    assert_eq!(
        (status, dechunked(&body).as_str()),
        (
            200,
            "id: plain:8\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"id\":3,\"result\":{\"content\":[]}}\n\n"
        )
    );
}
