//! Traffic policy against upstreams that fail on cue: budgets exact under concurrency, a
//! 5xx storm whose retries stay within the budget, only requests that cannot act twice sent
//! again, and a flapping upstream whose circuit opens, fails fast and recovers; a virtual
//! server keeps serving around a member whose circuit is open.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::gateway::*;
use serde_json::{Value, json};

/// The proxy serving `config`, ready: (directory, process, MCP port, admin port).
fn proxy(config: &Value) -> (tempfile::TempDir, Killed, u16, u16) {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), config);
    let (proxy, port, admin) = start_proxy(dir.path(), &[]);
    wait_for("the proxy", || {
        (request(admin, "GET", "/readyz", &[], "").0 == 200).then_some(())
    });
    (dir, proxy, port, admin)
}

/// The sum of metric `name` with `labels` on the admin port.
fn metric(admin: u16, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, _, body) = request(admin, "GET", "/metrics", &[], "");
    body.lines()
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                && labels
                    .iter()
                    .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A configuration of public server `team/<name>`s, each `(name, upstream port, policy)`
/// with the policy's fields merged into the server.
fn servers(servers: &[(&str, u16, Value)], virtual_servers: Vec<Value>) -> Value {
    let servers: Vec<Value> = servers
        .iter()
        .map(|(name, port, policy)| {
            let mut server =
                server_config(*port, name, json!({"type": "none"}), vec![], 2000, true);
            for (key, value) in policy.as_object().unwrap() {
                server[key] = value.clone();
            }
            server
        })
        .collect();
    json!({"schema": 1, "version": "traffic", "servers": servers, "virtualServers": virtual_servers})
}

/// A tools/list answer: `safe` tools annotated idempotent, `unsafe` not.
fn tools(id: &Value) -> String {
    json_reply(&json!({"jsonrpc": "2.0", "id": id, "result": {"tools": [
        {"name": "lookup", "inputSchema": {"type": "object"}, "annotations": {"idempotentHint": true}},
        {"name": "charge", "inputSchema": {"type": "object"}, "annotations": {"idempotentHint": false}},
    ]}}))
}

fn answered(id: &Value, tool: &str) -> String {
    json_reply(
        &json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": tool}]}}),
    )
}

fn unavailable() -> String {
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy".into()
}

/// An upstream answering lists and calls, or 503 to everything while `down`; counts what
/// reaches it, by tool (`*` for everything).
fn flaky(down: Arc<AtomicBool>, hits: Arc<dashless::Counts>) -> u16 {
    spawn_scripted(move |_, request| {
        let tool = request["params"]["name"].as_str().unwrap_or("-");
        hits.add(tool);
        if down.load(Ordering::SeqCst) {
            return unavailable();
        }
        match request["method"].as_str() {
            Some("tools/list") => tools(&request["id"]),
            _ => answered(&request["id"], tool),
        }
    })
}

/// Per-tool hit counts without a map crate.
mod dashless {
    use std::sync::Mutex;

    #[derive(Default)]
    pub struct Counts(Mutex<Vec<(String, usize)>>);

    impl Counts {
        pub fn add(&self, tool: &str) {
            let mut counts = self.0.lock().unwrap();
            for name in [tool, "*"] {
                match counts.iter_mut().find(|(n, _)| n == name) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((name.to_owned(), 1)),
                }
            }
        }

        pub fn of(&self, tool: &str) -> usize {
            let counts = self.0.lock().unwrap();
            counts
                .iter()
                .find(|(n, _)| n == tool)
                .map_or(0, |(_, n)| *n)
        }
    }
}

fn list() -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).to_string()
}

fn error_of(body: &str) -> Value {
    serde_json::from_str::<Value>(body).unwrap()["error"].clone()
}

/// The statuses of two POSTs of `body` sent one after the other on one kept-alive connection
/// (0 for an answer that never came).
fn two_on_one_connection(port: u16, path: &str, body: &str) -> (u16, u16) {
    use std::io::{BufRead, BufReader, Read, Write};
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    let mut exchange = || {
        let sent = write!(
            writer,
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if sent.is_err() {
            return 0;
        }
        let mut status = 0;
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return 0;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some(code) = line.strip_prefix("HTTP/1.1 ") {
                status = code[..3].parse().unwrap_or(0);
            } else if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap_or(0);
            }
        }
        let mut content = vec![0; length];
        reader.read_exact(&mut content).map_or(0, |()| status)
    };
    let first = exchange();
    (first, exchange())
}

/// The JSON-RPC error message of an answer.
fn message_of(body: &str) -> String {
    error_of(body)["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn budgets_hold_exactly_under_concurrency_and_say_when_to_come_back() {
    let hits = Arc::new(dashless::Counts::default());
    let upstream = flaky(Arc::new(AtomicBool::new(false)), hits.clone());
    let policy = json!({"rateLimits": {
        "perServer": {"requests": 25, "periodSeconds": 3600},
        "perTool": [{"tool": "costly", "limit": {"requests": 3, "periodSeconds": 3600}}],
    }});
    let (_dir, _proxy, port, admin) = proxy(&servers(&[("limited", upstream, policy)], vec![]));
    let path = "/team/mcp/limited/server";

    // 10 callers at once, 4 calls each, of a tool without a budget of its own: 25 pass.
    let results: Vec<(u16, String, String)> = std::thread::scope(|scope| {
        let callers: Vec<_> = (0..10)
            .map(|_| {
                scope.spawn(move || {
                    (0..4)
                        .map(|_| post(port, path, &[], &call("cheap")))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        callers
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    });
    let ok = results.iter().filter(|(s, ..)| *s == 200).count();
    let limited: Vec<_> = results.iter().filter(|(s, ..)| *s == 429).collect();
    assert_eq!(
        (ok, limited.len()),
        (25, 15),
        "{:?}",
        results.iter().map(|r| r.0).collect::<Vec<_>>()
    );
    assert_eq!(
        hits.of("cheap"),
        25,
        "only the calls within the budget reach the upstream"
    );
    let (_, head, body) = limited[0];
    // 25 per hour: one back every 144 s.
    let retry_after: u64 = head
        .lines()
        .find_map(|l| l.strip_prefix("retry-after: "))
        .expect("Retry-After")
        .trim()
        .parse()
        .unwrap();
    assert!((140..=144).contains(&retry_after), "{head}");
    let error = error_of(body);
    assert_eq!(error["code"], -32029, "{body}");
    assert_eq!(
        error["message"],
        format!(
            "rate limited: team/limited allows 25 tool calls for all callers every 3600 s (spec.rateLimits.perServer); retry after {retry_after} s"
        )
    );
    assert_eq!(
        serde_json::from_str::<Value>(body).unwrap()["id"],
        7,
        "the error answers the call"
    );
    assert_eq!(
        metric(
            admin,
            "mcpgate_rate_limited_total",
            &[("server", "limited"), ("limit", "perServer")]
        ),
        15.0
    );
    assert_eq!(
        metric(admin, "mcpgate_errors_total", &[("kind", "rate_limited")]),
        15.0
    );
    // A refused call was read whole: its connection carries the caller's next request.
    assert_eq!(
        two_on_one_connection(port, path, &call("cheap")),
        (429, 429)
    );
    // Lists are not tool calls and cost nothing.
    assert_eq!(post(port, path, &[], &list()).0, 200);
}

#[test]
fn a_tool_budget_refuses_only_that_tool() {
    let hits = Arc::new(dashless::Counts::default());
    let upstream = flaky(Arc::new(AtomicBool::new(false)), hits.clone());
    let policy = json!({"rateLimits": {
        "perTool": [{"tool": "costly", "limit": {"requests": 3, "periodSeconds": 3600}}],
    }});
    let (_dir, _proxy, port, admin) = proxy(&servers(&[("tooled", upstream, policy)], vec![]));
    let path = "/team/mcp/tooled/server";
    let statuses: Vec<u16> = std::thread::scope(|scope| {
        let calls: Vec<_> = (0..8)
            .map(|_| scope.spawn(move || post(port, path, &[], &call("costly")).0))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    });
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        3,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        5,
        "{statuses:?}"
    );
    for _ in 0..5 {
        assert_eq!(post(port, path, &[], &call("other")).0, 200);
    }
    assert_eq!((hits.of("costly"), hits.of("other")), (3, 5));
    assert_eq!(
        metric(
            admin,
            "mcpgate_rate_limited_total",
            &[("server", "tooled"), ("limit", "perTool")]
        ),
        5.0
    );
}

#[test]
fn a_5xx_storm_is_retried_only_within_the_budget_and_only_where_safe() {
    let down = Arc::new(AtomicBool::new(false));
    let hits = Arc::new(dashless::Counts::default());
    let upstream = flaky(down.clone(), hits.clone());
    let policy = json!({"retry": {"attempts": 3, "backoffMs": 1, "budgetPercent": 20}});
    let (_dir, _proxy, port, admin) = proxy(&servers(&[("retried", upstream, policy)], vec![]));
    let path = "/team/mcp/retried/server";
    // The gateway learns from the upstream's list which tools may be called twice.
    assert_eq!(post(port, path, &[], &list()).0, 200);

    down.store(true, Ordering::SeqCst);
    // A tool that is not idempotent is never sent twice after a 503: it may have run.
    // (A server route passes the upstream's own answer on.)
    for _ in 0..5 {
        let (status, _, body) = post(port, path, &[], &call("charge"));
        assert_eq!((status, body.as_str()), (503, "busy"));
    }
    assert_eq!(hits.of("charge"), 5);

    // An idempotent one is, within the budget: 10 saved, 0.2 per call, 1 back a second.
    let started = Instant::now();
    let calls = 200;
    for _ in 0..calls {
        let (status, _, body) = post(port, path, &[], &call("lookup"));
        assert_eq!((status, body.as_str()), (503, "busy"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let retries = hits.of("lookup") - calls;
    let most = 10.0 + 0.2 * f64::from(calls as u32 + 5) + elapsed + 1.0;
    assert!(retries > 40, "retries were sent: {retries}");
    assert!(
        (retries as f64) <= most,
        "{retries} retries over {calls} calls in {elapsed:.1} s: over the budget ({most:.0}); without one there would be {}",
        calls * 3
    );
    let sent = metric(
        admin,
        "mcpgate_upstream_retries_total",
        &[("server", "retried"), ("outcome", "sent")],
    );
    assert_eq!(sent, retries as f64);
    assert!(
        metric(
            admin,
            "mcpgate_upstream_retries_total",
            &[("server", "retried"), ("outcome", "budget_spent")]
        ) > 0.0
    );

    // The upstream recovers: calls go through again, once each.
    down.store(false, Ordering::SeqCst);
    let before = hits.of("lookup");
    let (status, _, body) = post(port, path, &[], &call("lookup"));
    assert_eq!((status, hits.of("lookup") - before), (200, 1), "{body}");
    assert!(error_of(&body).is_null(), "{body}");
}

#[test]
fn a_connection_refused_is_retried_even_for_a_tool_that_is_not_idempotent() {
    // Nothing listens yet; the upstream starts while the gateway backs off.
    let upstream = free_port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let policy = json!({"retry": {"attempts": 3, "backoffMs": 400}});
    let (_dir, _proxy, port, admin) = proxy(&servers(&[("late", upstream, policy)], vec![]));
    let starter = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        let listener = TcpListener::bind(("127.0.0.1", upstream)).unwrap();
        let (mut stream, _) = listener.accept().unwrap();
        let (_, body) = read_request(&mut stream).unwrap();
        counted.fetch_add(1, Ordering::SeqCst);
        let request: Value = serde_json::from_str(&body).unwrap();
        std::io::Write::write_all(&mut stream, answered(&request["id"], "charge").as_bytes())
            .unwrap();
    });
    let (status, _, body) = post(port, "/team/mcp/late/server", &[], &call("charge"));
    starter.join().unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(error_of(&body).is_null(), "{body}");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "sent once it could be");
    assert!(
        metric(
            admin,
            "mcpgate_upstream_retries_total",
            &[("server", "late"), ("outcome", "sent")]
        ) >= 1.0
    );
}

#[test]
fn a_flapping_upstream_opens_its_circuit_fails_fast_and_recovers() {
    let down = Arc::new(AtomicBool::new(true));
    let hits = Arc::new(dashless::Counts::default());
    let upstream = flaky(down.clone(), hits.clone());
    let healthy = flaky(Arc::new(AtomicBool::new(false)), Arc::default());
    let breaker = json!({"circuitBreaker": {"consecutiveFailures": 3, "openMs": 1500}});
    let bundle = virtual_config("bundle", &["flapping", "steady"]);
    let (_dir, _proxy, port, admin) = proxy(&servers(
        &[
            ("flapping", upstream, breaker),
            ("steady", healthy, json!({})),
        ],
        vec![bundle],
    ));
    let path = "/team/mcp/flapping/server";
    let labels = [("server", "flapping")];
    for _ in 0..3 {
        assert_eq!(post(port, path, &[], &call("lookup")).0, 503);
    }
    assert_eq!(hits.of("*"), 3);
    assert_eq!(metric(admin, "mcpgate_circuit_open", &labels), 1.0);

    // Open: calls fail at once, naming the server, and never reach it.
    let started = Instant::now();
    for _ in 0..20 {
        let (status, _, body) = post(port, path, &[], &call("lookup"));
        assert_eq!(status, 200);
        let message = error_of(&body)["message"].as_str().unwrap().to_owned();
        assert!(
            message.starts_with("upstream team/flapping is failing and the gateway stopped sending to it for now (its circuit is open for "),
            "{message}"
        );
    }
    assert!(started.elapsed() < Duration::from_secs(1), "failed fast");
    assert_eq!(hits.of("*"), 3);
    assert_eq!(
        metric(admin, "mcpgate_circuit_rejected_total", &labels),
        20.0
    );

    // The virtual server serves its healthy member and says which one is down.
    let session = initialize(port, "/team/mcp/bundle/server");
    let (status, _, body) = post(
        port,
        "/team/mcp/bundle/server",
        &[("Mcp-Session-Id", &session)],
        &list(),
    );
    assert_eq!(status, 200, "{body}");
    let result = &serde_json::from_str::<Value>(&body).unwrap()["result"];
    let names: Vec<&str> = result["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["steady_lookup", "steady_charge"], "{body}");
    let left_out = &result["_meta"]["mcpgate.dev/unavailable"];
    assert_eq!(left_out[0]["server"], "flapping", "{body}");
    assert!(
        left_out[0]["error"]
            .as_str()
            .unwrap()
            .contains("circuit is open"),
        "{body}"
    );

    // Still down after the cool-down: the one probe fails and the circuit opens again.
    std::thread::sleep(Duration::from_millis(1600));
    assert_eq!(post(port, path, &[], &call("lookup")).0, 503);
    let (_, _, body) = post(port, path, &[], &call("lookup"));
    assert!(message_of(&body).contains("circuit is open"), "{body}");
    let probes = hits.of("*");
    // Up again: after the next cool-down the probe succeeds and the circuit closes.
    down.store(false, Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(1600));
    let (status, _, body) = post(port, path, &[], &call("lookup"));
    assert_eq!(status, 200);
    assert!(error_of(&body).is_null(), "{body}");
    assert_eq!(hits.of("*"), probes + 1);
    assert_eq!(metric(admin, "mcpgate_circuit_open", &labels), 0.0);
    for _ in 0..5 {
        let (_, _, body) = post(port, path, &[], &call("lookup"));
        assert!(error_of(&body).is_null(), "{body}");
    }
}

#[test]
fn an_upstream_that_never_answers_opens_its_circuit_on_every_path() {
    let hanging = spawn_scripted(|_, _| {
        std::thread::sleep(Duration::from_secs(2));
        unavailable()
    });
    let breaker =
        json!({"circuitBreaker": {"consecutiveFailures": 2, "openMs": 60000}, "timeoutMs": 300});
    let (_dir, _proxy, port, admin) = proxy(&servers(
        &[
            ("silent", hanging, breaker.clone()),
            ("quiet", hanging, breaker),
        ],
        vec![virtual_config("bundle", &["quiet"])],
    ));
    // A server route: each call times out, the second opens the circuit, the third fails fast.
    for _ in 0..2 {
        let (_, _, body) = post(port, "/team/mcp/silent/server", &[], &call("lookup"));
        assert!(
            message_of(&body).contains("did not answer within 0.3s"),
            "{body}"
        );
    }
    let started = Instant::now();
    let (_, _, body) = post(port, "/team/mcp/silent/server", &[], &call("lookup"));
    assert!(message_of(&body).contains("circuit is open"), "{body}");
    assert!(started.elapsed() < Duration::from_millis(250));
    // Through a virtual server, where the gateway's own deadline ends the wait: the same.
    for _ in 0..2 {
        let (status, _, body) = post(port, "/team/mcp/bundle/server", &[], &initialize_request());
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        metric(admin, "mcpgate_circuit_open", &[("server", "quiet")]),
        1.0
    );
}
