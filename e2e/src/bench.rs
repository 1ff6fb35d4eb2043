//! What the benchmarks and the soak share: a fast loopback MCP upstream, a load generator of
//! `tools/call` in one session, opening a session, a rendered server, and CPU and median
//! readings.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::json;

/// Connections the upstream accepted (a proxy that reuses connections keeps this small).
pub static ACCEPTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// An upstream that answers every POST with a small tools/call result, as fast as it can.
pub async fn upstream(listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        ACCEPTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                |req: Request<hyper::body::Incoming>| async move {
                    let body = req
                        .into_body()
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let message =
                        serde_json::from_slice::<serde_json::Value>(&body).unwrap_or_default();
                    let id = message["id"].clone();
                    let result = match message["method"].as_str().unwrap_or_default() {
                        "initialize" => {
                            json!({"protocolVersion": "2025-11-25", "capabilities": {"tools": {}},
                                               "serverInfo": {"name": "fast", "version": "1"}})
                        }
                        "server/discover" => {
                            json!({"supportedVersions": ["2026-07-28"], "capabilities": {"tools": {}}})
                        }
                        "tools/list" => {
                            json!({"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]})
                        }
                        m if m.starts_with("notifications/") => {
                            let mut accepted = Response::new(Full::new(Bytes::new()));
                            *accepted.status_mut() = hyper::StatusCode::ACCEPTED;
                            return Ok::<_, Infallible>(accepted);
                        }
                        _ => json!({"content": [{"type": "text", "text": "ok"}], "isError": false}),
                    };
                    let answer = json!({"jsonrpc": "2.0", "id": id, "result": result});
                    let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
                    response.headers_mut().insert(
                        "mcp-session-id",
                        hyper::header::HeaderValue::from_static("upstream-session"),
                    );
                    response.headers_mut().insert(
                        "content-type",
                        "application/json"
                            .parse()
                            .unwrap_or(hyper::header::HeaderValue::from_static("application/json")),
                    );
                    Ok::<_, Infallible>(response)
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// A runtime with one worker thread (the load generator's) serving `count` fast upstreams
/// on loopback; their addresses.
pub fn upstreams(count: usize) -> Result<(tokio::runtime::Runtime, Vec<SocketAddr>)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut addresses = Vec::new();
    for _ in 0..count {
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        addresses.push(listener.local_addr()?);
        runtime.spawn(upstream(listener));
    }
    Ok((runtime, addresses))
}

/// `concurrency` connections, each sending calls back to back until `calls` are done.
pub async fn load(
    addr: SocketAddr,
    path: &str,
    session: &str,
    tool: &str,
    concurrency: usize,
    calls: usize,
    bearer: Option<&str>,
) -> Result<(Duration, Vec<Duration>)> {
    let authorization = bearer.map(|token| format!("Bearer {token}"));
    let argument = "x".repeat(200);
    let started = Instant::now();
    let per_worker = calls / concurrency;
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (path, argument, session, tool, authorization) = (
            path.to_owned(),
            argument.clone(),
            session.to_owned(),
            tool.to_owned(),
            authorization.clone(),
        );
        workers.push(tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let mut latencies = Vec::with_capacity(per_worker);
            for i in 0..per_worker {
                let body =
                    json!({"jsonrpc": "2.0", "id": w * per_worker + i, "method": "tools/call",
                                  "params": {"name": tool, "arguments": {"text": argument}}})
                    .to_string();
                let mut request = Request::post(path.as_str())
                    .header("host", "127.0.0.1")
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .header("mcp-protocol-version", "2025-11-25")
                    .header("mcp-session-id", session.as_str());
                if let Some(authorization) = &authorization {
                    request = request.header("authorization", authorization.as_str());
                }
                let request = request.body(Full::new(Bytes::from(body)))?;
                let sent = Instant::now();
                let response = sender.send_request(request).await?;
                let status = response.status();
                response.into_body().collect().await?;
                anyhow::ensure!(status == 200, "status {status}");
                latencies.push(sent.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut all = Vec::with_capacity(calls);
    for worker in workers {
        all.extend(worker.await??);
    }
    all.sort();
    Ok((started.elapsed(), all))
}

/// Opens a session at `path` (initialize + initialized), as `bearer` if given; returns its id.
pub async fn open_session(addr: SocketAddr, path: &str, bearer: Option<&str>) -> Result<String> {
    let authorization = bearer.map(|token| format!("Bearer {token}"));
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let post = |body: serde_json::Value, session: Option<&str>| {
        let mut request = Request::post(path)
            .header("host", "127.0.0.1")
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        if let Some(authorization) = &authorization {
            request = request.header("authorization", authorization.as_str());
        }
        if let Some(session) = session {
            request = request
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-11-25");
        }
        request.body(Full::new(Bytes::from(body.to_string())))
    };
    let response = sender
        .send_request(post(
            json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}}),
            None,
        )?)
        .await
        .context("initialize")?;
    anyhow::ensure!(
        response.status() == 200,
        "initialize: {}",
        response.status()
    );
    let session = response
        .headers()
        .get("mcp-session-id")
        .context("no session id")?
        .to_str()?
        .to_owned();
    response.into_body().collect().await?;
    sender
        .ready()
        .await
        .context("connection after initialize")?;
    let response = sender
        .send_request(post(
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
            Some(&session),
        )?)
        .await
        .context("notifications/initialized")?;
    response.into_body().collect().await?;
    Ok(session)
}

pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// One rendered McpServer `bench/<name>` in front of `upstream`.
pub fn server_config(
    name: &str,
    upstream: SocketAddr,
    tools: serde_json::Value,
    public: bool,
    subjects: serde_json::Value,
) -> serde_json::Value {
    json!({
        "namespace": "bench", "name": name, "path": format!("/bench/mcp/{name}/server"),
        "upstream": {"type": "remote", "url": format!("http://{upstream}/mcp"), "transport": "StreamableHttp"},
        "auth": {"type": "none"}, "tools": tools, "timeoutMs": 30000,
        "retry": {"attempts": 0, "backoffMs": 100}, "rateLimits": {"perUser": null, "perServer": null},
        "public": public, "access": {"subjects": subjects}})
}

/// The median of `values` (reordered).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// A rendered configuration of `servers` (the first three named fast, second and third)
/// and the public virtual server `bench/bundle` taking every tool of those three.
pub fn bundle_config(version: &str, servers: Vec<serde_json::Value>) -> serde_json::Value {
    let members: Vec<_> = ["fast", "second", "third"]
        .iter()
        .map(|name| json!({"server": name, "all": true, "tools": {}}))
        .collect();
    json!({"schema": 1, "version": version, "servers": servers,
        "virtualServers": [{"namespace": "bench", "name": "bundle", "path": "/bench/mcp/bundle/server",
            "description": null, "instructions": null, "members": members, "public": true,
            "access": {"subjects": []}}]})
}
