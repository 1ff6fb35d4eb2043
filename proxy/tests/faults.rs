//! Upstreams that misbehave: error pages of any size, garbage, answers over the limits, an
//! SSE event that never ends, a stream cut off, no answer in time. Every read the gateway
//! makes is bounded, every failure comes back as a JSON-RPC error naming the server, and
//! the gateway keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::time::Duration;

use common::gateway::*;
use serde_json::{Value, json};

/// An upstream speaking the stateless era that answers each `tools/call` with what
/// `scenario` writes for the tool's name; it owns the socket (and may keep writing).
fn misbehaving(scenario: fn(&str, &mut std::net::TcpStream)) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let Some((_, body)) = read_request(&mut stream) else {
                    return;
                };
                let request: Value = serde_json::from_str(&body).unwrap_or_default();
                if request["method"] == "server/discover" {
                    let reply = json_reply(&json!({"jsonrpc": "2.0", "id": request["id"],
                        "result": {"supportedVersions": ["2026-07-28"], "capabilities": {"tools": {}},
                            "serverInfo": {"name": "faulty", "version": "1"}}}));
                    let _ = stream.write_all(reply.as_bytes());
                    return;
                }
                let tool = request["params"]["name"].as_str().unwrap_or_default();
                scenario(tool, &mut stream);
            });
        }
    });
    port
}

fn scenario(tool: &str, stream: &mut std::net::TcpStream) {
    match tool {
        "error_page" => {
            let page = "<html>".repeat(200_000);
            let _ = write!(
                stream,
                "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
        "garbage" => {
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 9\r\nConnection: close\r\n\r\nnot{json!",
            );
        }
        "huge_json" => {
            let text = "x".repeat(2 * 1024 * 1024);
            let body = json!({"jsonrpc": "2.0", "id": 7, "result": {"content": [{"type": "text", "text": text}]}}).to_string();
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
        "endless_event" => {
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\ndata: ",
            );
            // An event that never ends: at most 256 MiB, until the gateway hangs up.
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..4096 {
                if stream.write_all(&chunk).is_err() {
                    return;
                }
            }
        }
        "cut_off" => {
            let progress = json!({"jsonrpc": "2.0", "method": "notifications/progress",
                "params": {"progressToken": 1, "progress": 1}});
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\nevent: message\ndata: {progress}\n\n"
            );
            let _ = stream.flush();
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        "slow" => std::thread::sleep(Duration::from_secs(3)),
        _ => {
            let reply = json_reply(&json!({"jsonrpc": "2.0", "id": 7,
                "result": {"content": [{"type": "text", "text": "fine"}]}}));
            let _ = stream.write_all(reply.as_bytes());
        }
    }
}

/// RSS of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn misbehaving_upstreams_get_bounded_reads_and_errors_naming_the_server() {
    let upstream = misbehaving(scenario);
    let dir = tempfile::tempdir().unwrap();
    write_config(
        dir.path(),
        &json!({
            "schema": 1, "version": "faults",
            "servers": [server_config(upstream, "faulty", json!({"type": "none"}), vec![], 1000, true)],
            "virtualServers": [virtual_config("bundle", &["faulty"])],
        }),
    );
    let (proxy, port, _) = start_proxy(
        dir.path(),
        &[
            "--max-upstream-reply-bytes",
            "1048576",
            "--max-sse-event-bytes",
            "1048576",
        ],
    );
    let pid = proxy.0.id();
    let call = |tool: &str| {
        stateless_call(
            port,
            "/team/mcp/bundle/server",
            &format!("faulty_{tool}"),
            &[],
        )
    };
    wait_for("the proxy", || (call("fine").0 == 200).then_some(()));
    let error = |body: &str| -> String {
        let message: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("{body}"));
        message["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    };

    // A 1.2 MB error page: quoted in at most 200 bytes.
    let (_, _, body) = call("error_page");
    let message = error(&body);
    assert!(
        message.contains("upstream team/faulty answered HTTP 503") && message.len() < 400,
        "{message}"
    );

    // Not JSON.
    let (_, _, body) = call("garbage");
    let message = error(&body);
    assert!(
        message.contains("team/faulty") && message.contains("not JSON"),
        "{message}"
    );

    // A JSON answer over the limit.
    let (status, _, body) = call("huge_json");
    assert_eq!(status, 502, "{body}");
    let message = error(&body);
    assert!(
        message.contains(
            "upstream team/faulty answered more than the gateway's limit of 1048576 bytes"
        ),
        "{message}"
    );

    // An SSE event that never ends: the stream ends after the limit with an error message,
    // and the gateway holds no more than about the limit.
    let before = rss_kib(pid);
    let (status, _, body) = call("endless_event");
    assert_eq!(status, 200);
    assert!(
        body.contains("over the gateway's limit of 1048576 bytes; the gateway ended the stream"),
        "{}",
        &body[..body.len().min(500)]
    );
    let grown = rss_kib(pid).saturating_sub(before);
    assert!(grown < 16 * 1024, "RSS grew by {grown} KiB");

    // A stream cut off after a progress notification: what came is delivered, then it ends.
    let (status, _, body) = call("cut_off");
    assert_eq!(status, 200);
    assert!(body.contains("notifications/progress"), "{body}");

    // No answer within the server's timeout.
    let (_, _, body) = call("slow");
    assert!(
        error(&body).contains("upstream team/faulty did not answer within 1s"),
        "{body}"
    );

    // And the gateway still serves.
    let (status, _, body) = call("fine");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("fine"), "{body}");
}
