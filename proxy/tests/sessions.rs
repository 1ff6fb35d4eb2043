//! Sessions are the caller's: an id works only for who opened it, only until its maximum
//! age, and only if what it seals is small; sessions the gateway holds upstream for stateless
//! clients are never shared between callers' credentials.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::gateway::*;
use common::idp;
use serde_json::{Value, json};

fn initialize(capabilities: Value) -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": capabilities,
        "clientInfo": {"name": "sessions-test", "version": "1"}}})
    .to_string()
}

/// `server` with users granted access.
fn granted(mut route: Value, users: &[&str]) -> Value {
    route["access"]["subjects"] = users
        .iter()
        .map(|u| json!({"kind": "User", "name": u}))
        .collect();
    route
}

#[test]
fn a_session_belongs_to_the_caller_who_opened_it_until_its_maximum_age() {
    let (_runtime, idp, key) = idp::with_one_key();
    let (upstream, seen) = spawn_upstream();
    let dir = tempfile::tempdir().unwrap();
    let users = ["alice@example.com", "bob@example.com"];
    let mut bundle = virtual_config("bundle", &["closed"]);
    bundle["public"] = json!(false);
    write_config(
        dir.path(),
        &json!({
            "schema": 1, "version": "sessions",
            "servers": [granted(server_config(upstream, "closed", json!({"type": "none"}), vec![], 5000, false), &users)],
            "virtualServers": [granted(bundle, &users)],
        }),
    );
    let (_proxy, port, _) = start_proxy(
        dir.path(),
        &idp.proxy_flags(&["--session-max-age-seconds", "3"]),
    );
    let token = |email: &str| {
        let mut claims = idp.claims();
        claims["sub"] = json!(email);
        claims["email"] = json!(email);
        format!("Bearer {}", idp::sign(&key, &claims))
    };
    let (alice, bob) = (token(users[0]), token(users[1]));
    wait_for("the proxy", || {
        let (status, _, _) = post(
            port,
            "/team/mcp/closed/server",
            &[("Authorization", &alice)],
            &call("echo"),
        );
        (status == 200).then_some(())
    });

    for path in ["/team/mcp/closed/server", "/team/mcp/bundle/server"] {
        let (status, head, body) = post(
            port,
            path,
            &[("Authorization", &alice)],
            &initialize(json!({})),
        );
        assert_eq!(status, 200, "{path}: {body}");
        let sid = session_id(&head);
        let with = |who: &str| {
            post(
                port,
                path,
                &[("Authorization", who), ("Mcp-Session-Id", &sid)],
                &call("closed_echo"),
            )
        };
        let (status, _, body) = with(&alice);
        assert_eq!(status, 200, "{path}: alice continues her session: {body}");
        // Bob may use the route, but not Alice's session.
        let (status, _, body) = with(&bob);
        assert_eq!(status, 404, "{path}: bob took over alice's session: {body}");
        assert!(body.contains("initialize a new session"), "{body}");
    }

    // Older than the maximum age: gone, for its owner too.
    let (_, head, _) = post(
        port,
        "/team/mcp/closed/server",
        &[("Authorization", &alice)],
        &initialize(json!({})),
    );
    let sid = session_id(&head);
    let continued = || {
        post(
            port,
            "/team/mcp/closed/server",
            &[("Authorization", &alice), ("Mcp-Session-Id", &sid)],
            &call("echo"),
        )
        .0
    };
    assert_eq!(continued(), 200, "a fresh session");
    std::thread::sleep(Duration::from_millis(4200));
    assert_eq!(continued(), 404, "a session past its maximum age");

    // What a session keeps is bounded: an initialize too large to seal is refused before
    // any upstream is asked.
    while seen.try_recv().is_ok() {}
    let huge = json!({"experimental": {"padding": "x".repeat(20 * 1024)}});
    for path in ["/team/mcp/closed/server", "/team/mcp/bundle/server"] {
        let (status, head, body) = post(
            port,
            path,
            &[("Authorization", &alice)],
            &initialize(huge.clone()),
        );
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body.contains("send smaller capabilities"), "{body}");
        assert!(!head.to_ascii_lowercase().contains("mcp-session-id"));
    }
    assert!(seen.try_recv().is_err(), "the upstream was asked");
    // A forged id far longer than any the gateway mints is refused as well.
    let (status, _, _) = post(
        port,
        "/team/mcp/closed/server",
        &[
            ("Authorization", &alice),
            ("Mcp-Session-Id", &format!("g1.{}", "A".repeat(40_000))),
        ],
        &call("echo"),
    );
    assert_eq!(status, 404);
}

/// What the session-checking upstream answered a `whoami` call: its session and whether
/// the call came with the credential that session was opened with; None unless 200.
fn checked((status, _, answer): (u16, String, String)) -> Option<Value> {
    (status == 200).then(|| {
        let answer: Value = serde_json::from_str(&answer).unwrap();
        let text = answer["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or("{}");
        serde_json::from_str::<Value>(text).unwrap()
    })
}

/// An upstream of the `initialize` era only: every session it opens remembers the
/// `Authorization` it was opened with, and each request says whether it came with the same.
fn session_checking_upstream() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let sessions: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let sessions = sessions.clone();
            std::thread::spawn(move || {
                let Some((head, body)) = read_request(&mut stream) else {
                    return;
                };
                let header = |name: &str| {
                    head.lines().find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
                    })
                };
                let request: Value = serde_json::from_str(&body).unwrap_or_default();
                let authorization = header("authorization").unwrap_or_default();
                let mut extra = String::new();
                let answer = match request["method"].as_str().unwrap_or_default() {
                    "server/discover" => {
                        json!({"jsonrpc": "2.0", "id": request["id"], "error": {"code": -32601, "message": "Method not found"}})
                    }
                    "initialize" => {
                        let mut sessions = sessions.lock().unwrap();
                        let sid = format!("s{}", sessions.len() + 1);
                        sessions.insert(sid.clone(), authorization);
                        extra = format!("Mcp-Session-Id: {sid}\r\n");
                        json!({"jsonrpc": "2.0", "id": request["id"], "result": {
                            "protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                            "serverInfo": {"name": "checker", "version": "1"}}})
                    }
                    method if method.starts_with("notifications/") => {
                        let _ = stream.write_all(
                            b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                        );
                        return;
                    }
                    _ => {
                        let sid = header("mcp-session-id").unwrap_or_default();
                        let opened_with = sessions.lock().unwrap().get(&sid).cloned();
                        let text = json!({"session": sid,
                            "sameCredential": opened_with.as_deref() == Some(authorization.as_str())});
                        json!({"jsonrpc": "2.0", "id": request["id"], "result": {
                            "content": [{"type": "text", "text": text.to_string()}]}})
                    }
                };
                let answer = answer.to_string();
                let _ = write!(
                    stream,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}Connection: close\r\nContent-Length: {}\r\n\r\n{answer}",
                    answer.len()
                );
            });
        }
    });
    port
}

#[test]
fn stateless_callers_of_a_passthrough_route_never_share_an_upstream_session() {
    let upstream = session_checking_upstream();
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &json!({
            "schema": 1, "version": "pooled",
            "servers": [server_config(upstream, "relay", json!({"type": "passthrough"}), vec![], 5000, true)],
            "virtualServers": [],
        }),
    );
    let (_proxy, port, _) = start_proxy(dir.path(), &[]);
    let whoami = |token: &str| {
        let bearer = format!("Bearer {token}");
        let answer = stateless_call(
            port,
            "/team/mcp/relay/server",
            "whoami",
            &[("Authorization", &bearer)],
        );
        checked(answer)
    };
    wait_for("the proxy", || whoami("token-of-alice"));
    let mut used = HashMap::new();
    for token in [
        "token-of-alice",
        "token-of-bob",
        "token-of-alice",
        "token-of-bob",
    ] {
        let seen = whoami(token).unwrap();
        assert_eq!(
            seen["sameCredential"], true,
            "{token} was sent in a session opened with another credential: {seen}"
        );
        let session = seen["session"].as_str().unwrap().to_owned();
        assert_eq!(
            used.entry(token).or_insert_with(|| session.clone()),
            &session,
            "each caller keeps its own session"
        );
    }
    assert_ne!(used["token-of-alice"], used["token-of-bob"]);
}

#[test]
fn stateless_users_of_a_route_never_share_an_upstream_session() {
    let (_runtime, idp, key) = idp::with_one_key();
    let upstream = session_checking_upstream();
    let dir = tempfile::tempdir().unwrap();
    let users = ["alice@example.com", "bob@example.com"];
    write_config(
        dir.path(),
        &json!({
            "schema": 1, "version": "per-user",
            "servers": [granted(server_config(upstream, "shared", json!({"type": "none"}), vec![], 5000, false), &users)],
            "virtualServers": [],
        }),
    );
    let (_proxy, port, _) = start_proxy(dir.path(), &idp.proxy_flags(&[]));
    let session_of = |email: &str| {
        let mut claims = idp.claims();
        claims["sub"] = json!(email);
        claims["email"] = json!(email);
        let bearer = format!("Bearer {}", idp::sign(&key, &claims));
        let answer = stateless_call(
            port,
            "/team/mcp/shared/server",
            "whoami",
            &[("Authorization", &bearer)],
        );
        checked(answer).map(|seen| seen["session"].as_str().unwrap().to_owned())
    };
    let alice = wait_for("the proxy", || session_of(users[0]));
    let bob = session_of(users[1]).unwrap();
    assert_ne!(alice, bob, "two users in one upstream session");
    assert_eq!(session_of(users[0]).unwrap(), alice, "each keeps its own");
    assert_eq!(session_of(users[1]).unwrap(), bob);
}
