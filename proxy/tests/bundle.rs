//! What a virtual server itself sends its members.
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
    let upstream = spawn_scripted(move |request| {
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
