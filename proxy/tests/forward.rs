//! The proxy process in front of a loopback upstream that reports what it received: routes,
//! credential injection, header hygiene, errors, limits and hot reload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An upstream that answers every POST with a JSON-RPC result holding the request's headers
/// and body, and `sleep` requests only after 3 s.
fn spawn_upstream() -> (u16, mpsc::Receiver<()>) {
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

fn serve_one(mut stream: TcpStream, seen: &mpsc::Sender<()>) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let (head, body) = loop {
        let n = stream.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            return;
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
        break (
            head,
            String::from_utf8_lossy(&buffer[end + 4..]).into_owned(),
        );
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
    let answer = json!({"jsonrpc": "2.0", "id": request["id"], "result": {"headers": headers, "body": request}}).to_string();
    let _ = write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nMcp-Session-Id: up-1\r\nSet-Cookie: upstream=1\r\nContent-Length: {}\r\n\r\n{answer}",
        answer.len()
    );
}

/// Starts the proxy on `dir` with `extra` flags: (process, MCP port, admin port).
fn start_proxy(dir: &Path, extra: &[&str]) -> (Killed, u16, u16) {
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
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Killed(child), port, admin)
}

/// A rendered server `team/<name>` in front of the upstream on `upstream_port`.
fn server_config(
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

fn config(upstream_port: u16, timeout_ms: u64) -> Value {
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

fn write_config(dir: &Path, config: &Value) {
    std::fs::create_dir_all(dir.join("credentials/cred")).unwrap();
    std::fs::write(dir.join("credentials/cred/api-key"), "s3cret").unwrap();
    std::fs::write(dir.join("config.json.tmp"), config.to_string()).unwrap();
    std::fs::rename(dir.join("config.json.tmp"), dir.join("config.json")).unwrap();
}

/// POST a body; returns (status, headers, body).
fn post(port: u16, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    request(port, "POST", path, headers, body)
}

/// One HTTP/1.1 request on loopback (`Host` overridable in `headers`): (status, head, body);
/// status 0 when nothing listens.
fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new(), String::new());
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let host = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("host"))
        .map_or_else(|| format!("127.0.0.1:{port}"), |(_, v)| (*v).to_owned());
    let extra: String = headers
        .iter()
        .filter(|(k, _)| !k.eq_ignore_ascii_case("host"))
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    let content = if method == "POST" {
        "Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
    } else {
        ""
    };
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{content}{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

fn call(tool: &str) -> String {
    json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": tool, "arguments": {}}}).to_string()
}

fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn forwards_with_route_credentials_and_fails_clearly() {
    let (upstream, seen) = spawn_upstream();
    let dir = tempfile::tempdir().unwrap();
    write_config(dir.path(), &config(upstream, 1000));
    let (_proxy, port, admin) = start_proxy(dir.path(), &["--max-body-bytes", "2048"]);
    let get = |path: &str| {
        let mut s = TcpStream::connect(("127.0.0.1", admin)).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut r = String::new();
        s.read_to_string(&mut r).ok()?;
        Some(r)
    };
    wait_for("readyz", || {
        get("/readyz").filter(|r| r.starts_with("HTTP/1.1 200"))
    });

    // The gateway mints its own sealed session id for the upstream's, and maps it back.
    let initialize = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})
    .to_string();
    let (status, head, body) = post(port, "/team/mcp/keyed/server", &[], &initialize);
    assert_eq!(status, 200, "{body}");
    let sid = head
        .lines()
        .find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case("mcp-session-id"))
                .map(|(_, v)| v)
        })
        .expect("a session id")
        .trim()
        .to_owned();
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
        get("/readyz").filter(|r| r.contains("ok v5000"))
    });
    std::fs::write(dir.path().join("config.json"), "{broken").unwrap();
    wait_for("config_synchronized 0", || {
        get("/metrics").filter(|m| m.contains("mcpgate_config_synchronized 0"))
    });
    let (status, _, _) = post(port, "/team/mcp/plain/server", &[], &call("echo"));
    assert_eq!(status, 200, "the last good configuration stopped serving");
    assert!(get("/readyz").unwrap().contains("ok v5000"));
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

/// A plain HTTP GET on the MCP port: (status, head, body).
fn get(port: u16, path: &str) -> (u16, String, String) {
    request(port, "GET", path, &[], "")
}

#[test]
fn servers_that_are_not_public_need_a_valid_bearer_token() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let idp = runtime.block_on(common::provider());
    let key = common::es256("k1");
    idp.publish(&[&key]);
    let (upstream, _seen) = spawn_upstream();
    let dir = tempfile::tempdir().unwrap();
    let none = || json!({"type": "none"});
    write_config(
        dir.path(),
        &json!({
            "schema": 1, "version": "auth",
            "servers": [
                server_config(upstream, "open", none(), vec![], 5000, true),
                server_config(upstream, "closed", none(), vec![], 5000, false),
            ],
            "virtualServers": [{"namespace": "team", "name": "bundle", "path": "/team/mcp/bundle/server",
                "description": null, "instructions": null, "access": {"subjects": []},
                "members": [{"server": "open", "all": true, "tools": {}}]}],
        }),
    );
    let (_proxy, port, admin) = start_proxy(
        dir.path(),
        &[
            "--oidc-issuer",
            &idp.issuer,
            "--oidc-audience",
            common::AUDIENCE,
            "--oidc-user-claim",
            "email",
            "--public-url",
            "https://gw.example/",
        ],
    );
    wait_for("the proxy", || {
        (get(port, "/.well-known/oauth-protected-resource").0 == 200).then_some(())
    });
    let closed = "/team/mcp/closed/server";
    let metadata_url =
        "https://gw.example/.well-known/oauth-protected-resource/team/mcp/closed/server";

    // No token: 401 with a challenge naming the route's resource metadata, and a JSON body.
    let (status, head, body) = post(port, closed, &[], &call("echo"));
    assert_eq!(status, 401, "{body}");
    let challenge = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
        .unwrap_or_default();
    assert!(
        challenge.contains(&format!("Bearer resource_metadata=\"{metadata_url}\""))
            && !challenge.contains("invalid_token"),
        "{challenge}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        -32001
    );

    // The metadata the challenge points at, per route and for the gateway.
    let (status, _, body) = get(
        port,
        "/.well-known/oauth-protected-resource/team/mcp/closed/server",
    );
    let document: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        document["resource"],
        "https://gw.example/team/mcp/closed/server"
    );
    assert_eq!(document["authorization_servers"], json!([idp.issuer]));
    assert_eq!(document["bearer_methods_supported"], json!(["header"]));
    let (_, _, body) = get(port, "/.well-known/oauth-protected-resource");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["resource"],
        "https://gw.example"
    );
    let (status, head, _) = get(
        port,
        "/.well-known/oauth-protected-resource/team/mcp/nope/server",
    );
    assert_eq!(status, 404);
    assert!(head.to_ascii_lowercase().contains("application/json"));

    // A valid token passes, and the caller's token is not forwarded.
    let token = common::sign(&key, &idp.claims());
    let bearer = format!("Bearer {token}");
    let (status, _, body) = post(port, closed, &[("Authorization", &bearer)], &call("echo"));
    assert_eq!(status, 200, "{body}");
    let result: Value = serde_json::from_str(&body).unwrap();
    assert!(result["result"]["headers"].get("authorization").is_none());

    // Refused: a token in the query string, an expired one, one for another audience, a
    // virtual server without a token. A public server needs none.
    let (status, _, _) = post(
        port,
        &format!("{closed}?access_token={token}"),
        &[],
        &call("echo"),
    );
    assert_eq!(status, 401);
    let mut claims = idp.claims();
    claims["exp"] = json!(common::now() - 600);
    let expired = format!("Bearer {}", common::sign(&key, &claims));
    let (status, head, _) = post(port, closed, &[("Authorization", &expired)], &call("echo"));
    assert_eq!(status, 401);
    assert!(head.contains("error=\"invalid_token\""), "{head}");
    let mut claims = idp.claims();
    claims["aud"] = json!("https://upstream.example/mcp");
    let foreign = format!("Bearer {}", common::sign(&key, &claims));
    let (status, _, _) = post(port, closed, &[("Authorization", &foreign)], &call("echo"));
    assert_eq!(status, 401);
    let (status, _, _) = post(port, "/team/mcp/bundle/server", &[], &call("open_echo"));
    assert_eq!(status, 401);
    let (status, _, body) = post(port, "/team/mcp/open/server", &[], &call("echo"));
    assert_eq!(status, 200, "{body}");

    // Refusals are counted by reason.
    let (_, _, metrics) = get(admin, "/metrics");
    for reason in ["missing", "expired", "audience"] {
        assert!(
            metrics.contains(&format!(
                "mcpgate_auth_failures_total{{reason=\"{reason}\"}}"
            )),
            "{reason}"
        );
    }
}
