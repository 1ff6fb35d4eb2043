//! The proxy as a process on loopback, and the plain-socket HTTP the tests speak to it: a
//! recording upstream, rendered configuration written to a directory, raw requests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::{Value, json};

pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An upstream that answers every POST with a JSON-RPC result holding the request's headers
/// and body (`isError` for tool `fail`), and `sleep` requests only after 3 s.
pub fn spawn_upstream() -> (u16, mpsc::Receiver<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let tx = tx.clone();
            std::thread::spawn(move || serve_one(stream, &tx));
        }
    });
    (port, rx)
}

/// One HTTP/1.1 request read from `stream`: (head, body); None when the peer sent nothing.
pub fn read_request(stream: &mut TcpStream) -> Option<(String, String)> {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&buffer[..end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().parse().unwrap())
            })
            .unwrap_or(0);
        while buffer.len() < end + 4 + length {
            let n = stream.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                break;
            }
            buffer.extend_from_slice(&chunk[..n]);
        }
        return Some((
            head,
            String::from_utf8_lossy(&buffer[end + 4..]).into_owned(),
        ));
    }
}

pub fn serve_one(mut stream: TcpStream, seen: &mpsc::Sender<()>) {
    let Some((head, body)) = read_request(&mut stream) else {
        return;
    };
    let _ = seen.send(());
    let headers: serde_json::Map<String, Value> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_ascii_lowercase(), Value::String(v.trim().to_owned())))
        .collect();
    let request: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if request["params"]["name"] == "sleep" {
        std::thread::sleep(Duration::from_secs(3));
    }
    // `fail` is a tool that runs and reports failure.
    let failed = request["params"]["name"] == "fail";
    let answer = json!({"jsonrpc": "2.0", "id": request["id"],
        "result": {"headers": headers, "body": request, "isError": failed}})
    .to_string();
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: up-1\r\nSet-Cookie: upstream=1\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{answer}",
        answer.len()
    );
}

/// An upstream that answers every request with the HTTP response `answer` makes of its head
/// and JSON body (see [`json_reply`] and [`sse_reply`]), then closes the connection.
pub fn spawn_scripted(answer: impl Fn(&str, &Value) -> String + Send + Sync + 'static) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let answer = answer.clone();
            std::thread::spawn(move || {
                if let Some((head, body)) = read_request(&mut stream) {
                    let request = serde_json::from_str(&body).unwrap_or(Value::Null);
                    let _ = stream.write_all(answer(&head, &request).as_bytes());
                }
            });
        }
    });
    port
}

/// A 200 response with one JSON message.
pub fn json_reply(message: &Value) -> String {
    let body = message.to_string();
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A 200 event stream of `messages`, ended by closing the connection.
pub fn sse_reply(messages: &[Value]) -> String {
    let events: String = messages
        .iter()
        .map(|m| format!("event: message\ndata: {m}\n\n"))
        .collect();
    sse_raw(&events)
}

/// A 200 event stream of `events` as written, ended by closing the connection.
pub fn sse_raw(events: &str) -> String {
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n{events}"
    )
}

/// A chunked HTTP/1.1 body, de-chunked.
pub fn dechunked(body: &str) -> String {
    String::from_utf8_lossy(&mcpgate_testkit::dechunk(body.as_bytes())).into_owned()
}

/// Starts the proxy on `dir` with `extra` flags: (process, MCP port, admin port).
pub fn start_proxy(dir: &Path, extra: &[&str]) -> (Killed, u16, u16) {
    start_proxy_with(dir, extra, &[], Stdio::null())
}

/// [`start_proxy`] with `env` added and its diagnostic log (stderr) going to `stderr`.
pub fn start_proxy_with(
    dir: &Path,
    extra: &[&str],
    env: &[(&str, &str)],
    stderr: Stdio,
) -> (Killed, u16, u16) {
    let (port, admin) = (free_port(), free_port());
    let child = Command::new(env!("CARGO_BIN_EXE_mcpgate-proxy"))
        .arg("--config-dir")
        .arg(dir)
        .args([
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin}"),
        ])
        .args(extra)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    (Killed(child), port, admin)
}

/// A rendered server `team/<name>` in front of the upstream on `upstream_port`.
pub fn server_config(
    upstream_port: u16,
    name: &str,
    auth: Value,
    deny: Vec<&str>,
    timeout_ms: u64,
    public: bool,
) -> Value {
    json!({
        "namespace": "team", "name": name, "path": format!("/team/mcp/{name}/server"),
        "upstream": {"type": "remote", "url": format!("http://127.0.0.1:{upstream_port}/mcp"), "transport": "StreamableHttp"},
        "auth": auth, "tools": {"allow": [], "deny": deny}, "timeoutMs": timeout_ms,
        "retry": {"attempts": 0, "backoffMs": 100}, "rateLimits": {"perUser": null, "perServer": null},
        "public": public, "access": {"subjects": []}
    })
}

pub fn config(upstream_port: u16, timeout_ms: u64) -> Value {
    let server = |name: &str, auth: Value, deny: Vec<&str>| {
        server_config(upstream_port, name, auth, deny, timeout_ms, true)
    };
    json!({
        "schema": 1, "version": format!("v{timeout_ms}"),
        "servers": [
            server("plain", json!({"type": "none"}), vec!["hidden"]),
            server("keyed", json!({"type": "sharedApiKey", "header": "X-Api-Key", "template": "Key {{API_KEY}}",
                                   "credential": {"secret": "cred", "key": "api-key"}}), vec![]),
            server("relay", json!({"type": "passthrough"}), vec![]),
        ],
        "virtualServers": []
    })
}

/// A rendered public virtual server `team/<name>` taking every tool of each of `members`.
pub fn virtual_config(name: &str, members: &[&str]) -> Value {
    let members: Vec<Value> = members
        .iter()
        .map(|m| json!({"server": m, "all": true, "tools": {}}))
        .collect();
    json!({"namespace": "team", "name": name, "path": format!("/team/mcp/{name}/server"),
        "description": null, "instructions": null, "public": true,
        "access": {"subjects": []}, "members": members})
}

pub fn write_config(dir: &Path, config: &Value) {
    std::fs::create_dir_all(dir.join("credentials/cred")).unwrap();
    std::fs::write(dir.join("credentials/cred/api-key"), "s3cret").unwrap();
    std::fs::write(dir.join("config.json.tmp"), config.to_string()).unwrap();
    std::fs::rename(dir.join("config.json.tmp"), dir.join("config.json")).unwrap();
}

/// POST a body; returns (status, headers, body).
pub fn post(port: u16, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    request(port, "POST", path, headers, body)
}

/// One HTTP/1.1 request on loopback (`Host`, and a POST's `Content-Type` and `Accept`,
/// overridable in `headers`): (status, head, body);
/// status 0 when nothing listens or the peer hangs up before the request is sent.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    // A POST is JSON and accepts JSON and SSE unless `headers` say otherwise.
    let defaults = [
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    let mut all: Vec<(&str, &str)> = defaults
        .into_iter()
        .filter(|(name, _)| {
            method == "POST" && !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name))
        })
        .collect();
    all.extend_from_slice(headers);
    let host = format!("127.0.0.1:{port}");
    match mcpgate_testkit::exchange(
        &host,
        method,
        path,
        &all,
        body.as_bytes(),
        Duration::from_secs(10),
    ) {
        Ok(answer) => (
            answer.status,
            answer.head,
            String::from_utf8_lossy(&answer.body).into_owned(),
        ),
        Err(_) => (0, String::new(), String::new()),
    }
}

/// The proxy serving `config` from a new directory, once ready: (directory, process, MCP port).
pub fn serving(config: &Value) -> (tempfile::TempDir, Killed, u16) {
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), config);
    let (proxy, port, admin) = start_proxy(dir.path(), &[]);
    wait_for("the proxy", || {
        (request(admin, "GET", "/readyz", &[], "").0 == 200).then_some(())
    });
    (dir, proxy, port)
}

/// The `Mcp-Session-Id` in a response head.
pub fn session_id(head: &str) -> String {
    head.lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("mcp-session-id"))
                .map(|(_, v)| v.trim().to_owned())
        })
        .expect("a session id")
}

/// A client's `initialize` (2025-11-25).
pub fn initialize_request() -> String {
    json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    .to_string()
}

/// Initializes a session on the route at `path`; its id.
pub fn initialize(port: u16, path: &str) -> String {
    let (status, head, body) = post(port, path, &[], &initialize_request());
    assert_eq!(status, 200, "{path}: {body}");
    session_id(&head)
}

/// A stateless (2026-07-28) `tools/call` of `tool` on the route at `path`, with its headers
/// and `_meta`, plus `headers`: (status, head, body).
pub fn stateless_call(
    port: u16,
    path: &str,
    tool: &str,
    headers: &[(&str, &str)],
) -> (u16, String, String) {
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": {},
        "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"}}}});
    let mut all = vec![
        ("MCP-Protocol-Version", "2026-07-28"),
        ("Mcp-Method", "tools/call"),
        ("Mcp-Name", tool),
    ];
    all.extend_from_slice(headers);
    post(port, path, &all, &body.to_string())
}

pub fn call(tool: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": {}}}).to_string()
}

/// Waits up to 20 s for `probe`, failing the test if it never answers.
pub fn wait_for<T>(what: &str, probe: impl FnMut() -> Option<T>) -> T {
    mcpgate_testkit::wait_for(what, Duration::from_secs(20), probe)
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A plain HTTP GET on the MCP port: (status, head, body).
pub fn get(port: u16, path: &str) -> (u16, String, String) {
    request(port, "GET", path, &[], "")
}
