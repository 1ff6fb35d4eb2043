//! The MCP port under hostile or careless clients: slow headers, idle keep-alive, oversized
//! heads, slow bodies, too many connections or requests, many idle connections, and early
//! refusals on keep-alive connections.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::gateway::*;
use http_body_util::{BodyExt, Full};
use serde_json::json;

struct Gateway {
    _proxy: Killed,
    port: u16,
    admin: u16,
    /// One message per request the upstream received.
    seen: std::sync::mpsc::Receiver<()>,
    _dir: tempfile::TempDir,
}

/// A proxy with `extra` flags in front of the recording upstream.
fn gateway(extra: &[&str]) -> Gateway {
    let (upstream, seen) = spawn_upstream();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(upstream, 10_000);
    let closed = server_config(
        upstream,
        "closed",
        json!({"type": "none"}),
        vec![],
        5000,
        false,
    );
    config["servers"].as_array_mut().unwrap().push(closed);
    write_config(dir.path(), &config);
    let (proxy, port, admin) = start_proxy(dir.path(), extra);
    wait_for("the proxy", || {
        (post(port, "/team/mcp/plain/server", &[], &call("echo")).0 == 200).then_some(())
    });
    while seen.try_recv().is_ok() {}
    Gateway {
        _proxy: proxy,
        port,
        admin,
        seen,
        _dir: dir,
    }
}

/// How long until the peer closes `stream` (reads nothing more), at most `limit`.
fn closed_after(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buffer = [0u8; 4096];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) if started.elapsed() < limit => return Some(started.elapsed()),
            Ok(_) => continue,
            Err(_) => return None,
        }
    }
}

/// One response read from a keep-alive connection: (status, head).
fn read_response(stream: &mut TcpStream) -> (u16, String) {
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut received = Vec::new();
    let mut byte = [0u8; 1];
    while !received.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).unwrap_or(0) == 0 {
            break;
        }
        received.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&received).into_owned();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    stream.read_exact(&mut body).unwrap();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head)
}

#[test]
fn slow_headers_and_idle_keep_alive_connections_are_closed() {
    let gateway = gateway(&["--header-read-timeout-seconds", "1"]);
    let port = gateway.port;
    // A client that starts a request and never finishes its headers.
    let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
    slow.write_all(b"POST /team/mcp/plain/server HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .unwrap();
    let after = closed_after(&mut slow, Duration::from_secs(5)).expect("still open after 5 s");
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}"
    );

    // Clients that connect and send nothing, or only the start of the HTTP/2 preface (which
    // the server reads before any HTTP timer runs).
    for start in [&b""[..], b"PRI * HTTP/2"] {
        let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
        silent.write_all(start).unwrap();
        let after = closed_after(&mut silent, Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{start:?}: still open after 5 s"));
        assert!(
            after >= Duration::from_millis(900),
            "closed after {after:?}"
        );
    }

    // A keep-alive connection that answered one request and then sits idle.
    let mut idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let body = call("echo");
    write!(
        idle,
        "POST /team/mcp/plain/server HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    assert_eq!(read_response(&mut idle).0, 200);
    let after = closed_after(&mut idle, Duration::from_secs(5)).expect("idle connection kept");
    assert!(
        after >= Duration::from_millis(900),
        "closed after {after:?}"
    );

    // A request answered after 3 s is not cut by the 1 s timeout (the timeout is for a
    // connection with nothing being answered), and its connection then carries another.
    let mut long = TcpStream::connect(("127.0.0.1", port)).unwrap();
    for tool in ["sleep", "echo"] {
        let body = call(tool);
        write!(
            long,
            "POST /team/mcp/plain/server HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let (status, head) = read_response(&mut long);
        assert_eq!(status, 200, "{tool}: {head}");
    }
}

#[test]
fn a_large_answer_read_slowly_is_not_cut() {
    let gateway = gateway(&[
        "--header-read-timeout-seconds",
        "1",
        "--max-body-bytes",
        "12000000",
    ]);
    // The upstream echoes the 8 MB argument: an answer hyper gets in one piece, far larger
    // than the kernel buffers, read by a client that takes about 6 s over it.
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "x".repeat(8_000_000)}}})
    .to_string();
    let mut stream = TcpStream::connect(("127.0.0.1", gateway.port)).unwrap();
    write!(
        stream,
        "POST /team/mcp/plain/server HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut received = Vec::new();
    let mut chunk = vec![0u8; 128 * 1024];
    let started = Instant::now();
    let expected = loop {
        let n = stream.read(&mut chunk).unwrap_or(0);
        received.extend_from_slice(&chunk[..n]);
        let head_end = received.windows(4).position(|w| w == b"\r\n\r\n");
        let length = head_end.and_then(|end| {
            let head = String::from_utf8_lossy(&received[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))?
                .trim()
                .parse()
                .ok()?;
            Some(end + 4 + length)
        });
        if n == 0 || length.is_some_and(|l| received.len() >= l) {
            break length;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let expected = expected.expect("a response head with Content-Length");
    assert!(received.starts_with(b"HTTP/1.1 200"));
    assert_eq!(
        received.len(),
        expected,
        "answer cut after {:?}",
        started.elapsed()
    );
    assert!(
        started.elapsed() > Duration::from_secs(1),
        "read too fast to test the timeout"
    );
}

#[test]
fn oversized_heads_get_431() {
    let gateway = gateway(&[]);
    let port = gateway.port;
    // The proxy answers 431 and closes with part of the head unread, so the client's
    // kernel may see a reset before the answer: 0 (nothing read) is allowed, never another
    // status, and 431 must be seen.
    let big = "a".repeat(128 * 1024);
    let statuses: Vec<u16> = (0..5)
        .map(|_| {
            post(
                port,
                "/team/mcp/plain/server",
                &[("X-Big", &big)],
                &call("echo"),
            )
            .0
        })
        .collect();
    assert!(
        statuses.iter().all(|s| *s == 431 || *s == 0) && statuses.contains(&431),
        "{statuses:?}"
    );
    let names: Vec<String> = (0..150).map(|i| format!("X-Header-{i}")).collect();
    let many: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "1")).collect();
    let (status, _, _) = post(port, "/team/mcp/plain/server", &many, &call("echo"));
    assert_eq!(status, 431);
    // Within the limits, fine.
    let (status, _, _) = post(port, "/team/mcp/plain/server", &many[..50], &call("echo"));
    assert_eq!(status, 200);
}

#[test]
fn a_body_that_does_not_arrive_in_time_gets_408() {
    let gateway = gateway(&["--request-body-timeout-seconds", "1"]);
    let port = gateway.port;
    let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .write_all(b"POST /team/mcp/plain/server HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\"")
        .unwrap();
    let started = Instant::now();
    let (status, head) = read_response(&mut stream);
    assert_eq!(status, 408, "{head}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
}

#[test]
fn over_the_connection_cap_new_connections_get_503_and_retry_after() {
    let gateway = gateway(&["--max-connections", "2"]);
    let (port, admin) = (gateway.port, gateway.admin);
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let head = wait_for("a connection over the cap refused", || {
        let (status, head, body) = post(port, "/team/mcp/plain/server", &[], &call("echo"));
        (status == 503).then(|| {
            assert!(body.contains("limit of open connections"), "{body}");
            head
        })
    });
    assert!(head.contains("retry-after: 1"), "{head}");
    let (_, _, metrics) = get(admin, "/metrics");
    assert!(
        metrics.contains("mcpgate_refused_total{limit=\"connections\"}"),
        "{metrics}"
    );
    drop(held);
    wait_for("room again", || {
        (post(port, "/team/mcp/plain/server", &[], &call("echo")).0 == 200).then_some(())
    });
}

#[test]
fn over_the_in_flight_cap_requests_get_503_and_retry_after() {
    let gateway = gateway(&["--max-in-flight", "1"]);
    let port = gateway.port;
    // The upstream answers `sleep` after 3 s: one request in flight for that long.
    let slow =
        std::thread::spawn(move || post(port, "/team/mcp/plain/server", &[], &call("sleep")).0);
    gateway
        .seen
        .recv_timeout(Duration::from_secs(10))
        .expect("the slow request reached the upstream");
    let (status, head, body) = post(port, "/team/mcp/plain/server", &[], &call("echo"));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("limit of open requests"), "{body}");
    assert!(head.contains("retry-after: 1"), "{head}");
    assert_eq!(slow.join().unwrap(), 200);
    assert_eq!(
        post(port, "/team/mcp/plain/server", &[], &call("echo")).0,
        200
    );
}

#[test]
fn two_thousand_idle_connections_do_not_stop_the_gateway() {
    let gateway = gateway(&[]);
    let (port, admin) = (gateway.port, gateway.admin);
    let idle: Vec<TcpStream> = (0..2000)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    wait_for("2,000 connections accepted", || {
        let (_, _, metrics) = get(admin, "/metrics");
        let open: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("mcpgate_connections_open "))?
            .parse()
            .ok()?;
        (open >= 2000.0).then_some(())
    });
    let started = Instant::now();
    assert_eq!(
        post(port, "/team/mcp/plain/server", &[], &call("echo")).0,
        200
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(idle);
}

#[test]
fn early_refusals_never_break_the_next_request_on_a_keep_alive_connection() {
    let gateway = gateway(&[]);
    let port = gateway.port;
    // On a keep-alive connection, a request whose body is refused unread: the refusal says
    // the connection ends (so no client sends on it again), or the connection carries the
    // next request.
    for body_size in [10, 8192, 300_000] {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let body = "x".repeat(body_size);
        let send = |stream: &mut TcpStream| {
            write!(
                stream,
                "POST /team/mcp/closed/server HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        };
        send(&mut stream).unwrap();
        let (status, head) = read_response(&mut stream);
        assert_eq!(status, 401, "{head}");
        if head.to_ascii_lowercase().contains("connection: close") {
            continue;
        }
        eprintln!("{body_size}: kept open: {head}");
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            send(&mut stream).is_ok(),
            "{body_size}: closed without saying so"
        );
        let (status, head) = read_response(&mut stream);
        assert_eq!(
            status, 401,
            "{body_size}: the next request on the connection: {head}"
        );
    }

    // A pooling client (hyper's) sending bodies that are refused before they are read: every
    // request gets its answer, none "connection closed before message completed".
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<Full<bytes::Bytes>>();
        let body = bytes::Bytes::from("y".repeat(16 * 1024));
        for (i, path) in ["/team/mcp/closed/server", "/nowhere"]
            .iter()
            .cycle()
            .take(400)
            .enumerate()
        {
            let request = http::Request::post(format!("http://127.0.0.1:{port}{path}"))
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(Full::new(body.clone()))
                .unwrap();
            let response = client
                .request(request)
                .await
                .unwrap_or_else(|e| panic!("request {i} to {path} failed: {e:?}"));
            let status = response.status().as_u16();
            let _ = response.into_body().collect().await;
            assert!(status == 401 || status == 404, "request {i}: {status}");
        }
    });
}
