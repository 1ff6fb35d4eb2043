//! The proxy process in front of a loopback upstream that reports what it received: routes,
//! credential injection, header hygiene, errors, limits and hot reload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::gateway::*;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

#[test]
fn forwards_with_route_credentials_and_fails_clearly() {
    let (upstream, seen) = spawn_upstream();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &config(upstream, 1000));
    let (_proxy, port, admin) = start_proxy(dir.path(), &["--max-body-bytes", "2048"]);
    let admin_body = |path: &str| request(admin, "GET", path, &[], "").2;
    wait_for("readyz", || {
        (request(admin, "GET", "/readyz", &[], "").0 == 200).then_some(())
    });

    // The gateway mints its own sealed session id for the upstream's, and maps it back.
    let (status, head, body) = post(port, "/team/mcp/keyed/server", &[], &initialize_request());
    assert_eq!(status, 200, "{body}");
    let sid = session_id(&head);
    assert!(sid.starts_with("g1.") && !sid.contains("up-1"), "{sid}");

    // A shared key is injected with its template; the caller's token and cookies stay here.
    let (status, head, body) = post(
        port,
        "/team/mcp/keyed/server",
        &[
            ("Authorization", "Bearer caller"),
            ("Cookie", "c=1"),
            ("Mcp-Session-Id", &sid),
            ("MCP-Protocol-Version", "2025-11-25"),
        ],
        &call("echo"),
    );
    assert_eq!(status, 200, "{body}");
    let result: Value = serde_json::from_str(&body).unwrap();
    let headers = &result["result"]["headers"];
    assert_eq!(headers["x-api-key"], "Key s3cret");
    assert!(
        headers.get("authorization").is_none() && headers.get("cookie").is_none(),
        "{headers}"
    );
    assert_eq!(headers["mcp-session-id"], "up-1");
    assert_eq!(headers["mcp-protocol-version"], "2025-11-25");
    assert_eq!(
        result["result"]["body"]["params"]["name"], "echo",
        "the body reaches the upstream verbatim"
    );
    assert!(
        !head.to_ascii_lowercase().contains("mcp-session-id")
            && !head.to_ascii_lowercase().contains("set-cookie"),
        "{head}"
    );

    // Session ids the gateway did not mint, or minted for another route, are unknown: 404,
    // so the client initializes again.
    for (path, sid) in [
        ("/team/mcp/keyed/server", "up-1"),
        ("/team/mcp/plain/server", sid.as_str()),
    ] {
        let (status, _, body) = post(port, path, &[("Mcp-Session-Id", sid)], &call("echo"));
        assert_eq!(status, 404, "{path} {sid}: {body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["id"],
            7,
            "{body}"
        );
    }

    // Passthrough forwards the caller's token, and only there.
    let (_, _, body) = post(
        port,
        "/team/mcp/relay/server",
        &[("Authorization", "Bearer caller")],
        &call("echo"),
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["result"]["headers"]["authorization"],
        "Bearer caller"
    );

    // Denied tools never reach the upstream.
    while seen.try_recv().is_ok() {}
    let (status, _, body) = post(port, "/team/mcp/plain/server", &[], &call("hidden"));
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        (
            status,
            error["error"]["code"].as_i64(),
            error["id"].as_i64()
        ),
        (200, Some(-32602), Some(7)),
        "{body}"
    );
    assert!(
        seen.try_recv().is_err(),
        "a denied call reached the upstream"
    );

    // Malformed JSON, oversized bodies, unknown and tricky routes, foreign origins.
    let (status, _, body) = post(port, "/team/mcp/plain/server", &[], "{not json");
    assert_eq!(
        (
            status,
            serde_json::from_str::<Value>(&body).unwrap()["error"]["code"].as_i64()
        ),
        (400, Some(-32700))
    );
    let (status, _, _) = post(port, "/team/mcp/plain/server", &[], &"x".repeat(4096));
    assert_eq!(status, 413);
    for path in [
        "/team/mcp/nope/server",
        "/team/mcp/plain/server/",
        "/team/mcp/../mcp/plain/server",
        "/team%2Fmcp/plain/server",
        "//team/mcp/plain/server",
    ] {
        let (status, head, body) = post(port, path, &[], &call("echo"));
        assert_eq!(status, 404, "{path}: {body}");
        assert!(
            head.to_ascii_lowercase().contains("application/json"),
            "{path}: 404 without a JSON body"
        );
    }
    let (status, _, _) = post(
        port,
        "/team/mcp/plain/server",
        &[("Origin", "https://evil.example")],
        &call("echo"),
    );
    assert_eq!(status, 403);
    // Listening on loopback: a DNS-rebinding page (foreign Host and Origin) is refused, a
    // page on this machine is not.
    let (status, _, body) = post(
        port,
        "/team/mcp/plain/server",
        &[
            ("Host", "rebound.example"),
            ("Origin", "http://rebound.example"),
        ],
        &call("echo"),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("--allowed-hosts"), "{body}");
    let (status, _, body) = post(
        port,
        "/team/mcp/plain/server",
        &[("Origin", "http://localhost:6274")],
        &call("echo"),
    );
    assert_eq!(status, 200, "{body}");

    // A slow upstream: a JSON-RPC error naming the server within the timeout.
    let started = Instant::now();
    let (status, _, body) = post(port, "/team/mcp/plain/server", &[], &call("sleep"));
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("team/plain did not answer within 1s"),
        "{body}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        started.elapsed()
    );

    // Hot reload: a new version is served; a broken one keeps the last good.
    write_config(dir.path(), &config(upstream, 5000));
    wait_for("reload", || {
        Some(admin_body("/readyz")).filter(|r| r.contains("ok v5000"))
    });
    std::fs::write(dir.path().join("config.json"), "{broken").unwrap();
    wait_for("config_synchronized 0", || {
        Some(admin_body("/metrics")).filter(|m| m.contains("mcpgate_config_synchronized 0"))
    });
    let (status, _, _) = post(port, "/team/mcp/plain/server", &[], &call("echo"));
    assert_eq!(status, 200, "the last good configuration stopped serving");
    assert!(admin_body("/readyz").contains("ok v5000"));
}

#[test]
fn an_unreachable_upstream_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let dead = free_port();
    write_config(dir.path(), &config(dead, 2000));
    let (_proxy, port, _admin) = start_proxy(dir.path(), &[]);
    let body = wait_for("the proxy to answer", || {
        let (status, _, body) = post(port, "/team/mcp/plain/server", &[], &call("echo"));
        (status == 200).then_some(body)
    });
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], -32001);
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream team/plain is unreachable"),
        "{body}"
    );
}

#[test]
fn serves_https_with_http2_and_http1() {
    let (upstream, _seen) = spawn_upstream();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &config(upstream, 2000));
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "openssl could not make a test certificate"
    );
    let (_proxy, port, _admin) = start_proxy(
        dir.path(),
        &[
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
        ],
    );
    let curl = |version: &str| {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5", version, "--cacert"])
            .arg(&cert)
            .args(["-H", "content-type: application/json"])
            .args(["-H", "accept: application/json, text/event-stream"])
            .args(["-w", "\n%{http_version} %{http_code}"])
            .args(["-d", &call("echo")])
            .arg(format!("https://127.0.0.1:{port}/team/mcp/plain/server"))
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.contains("200").then_some(text)
    };
    let h2 = wait_for("HTTPS over HTTP/2", || curl("--http2"));
    assert!(h2.ends_with("2 200"), "{h2}");
    assert!(
        h2.contains("\"name\":\"echo\""),
        "the call reached the upstream: {h2}"
    );
    let h1 = curl("--http1.1").expect("HTTPS over HTTP/1.1");
    assert!(h1.ends_with("1.1 200"), "{h1}");

    // Plain HTTP on the TLS port gets no MCP answer.
    let (status, _, _) = post(port, "/team/mcp/plain/server", &[], &call("echo"));
    assert_ne!(status, 200);
}

#[test]
fn an_upstream_era_is_probed_once_however_many_callers_ask_at_once() {
    let discovered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = discovered.clone();
    let upstream = spawn_scripted(move |_, request| {
        if request["method"] == "server/discover" {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // A slow answer: every caller arrives while the probe is out.
            std::thread::sleep(Duration::from_millis(300));
            return json_reply(&json!({"jsonrpc": "2.0", "id": request["id"],
                "result": {"supportedVersions": ["2026-07-28"], "capabilities": {"tools": {}},
                    "serverInfo": {"name": "modern", "version": "1"}}}));
        }
        json_reply(&json!({"jsonrpc": "2.0", "id": request["id"],
            "result": {"content": [{"type": "text", "text": "ok"}]}}))
    });
    let (_dir, _proxy, port) = serving(&config(upstream, 5000));
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..12)
            .map(|_| {
                scope.spawn(move || stateless_call(port, "/team/mcp/plain/server", "echo", &[]).0)
            })
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert_eq!(statuses, [200; 12]);
    assert_eq!(discovered.load(std::sync::atomic::Ordering::SeqCst), 1);
}
