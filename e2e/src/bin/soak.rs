//! `make soak` (not in CI): mixed traffic through `mcpgate-proxy` for `MCPGATE_SOAK_MINUTES`
//! (20) minutes, printing every minute the calls answered by outcome, the p50 and p99 of
//! tool calls on a server route, and the proxy's RSS, open file descriptors and upstream
//! connections. Flat lines are the pass: nothing grows with time.
//!
//! The mix, all at once: tool calls in long-lived sessions on a server route and on a virtual
//! server over three upstreams; sessions opened, used and ended (DELETE) over and over;
//! stateless (2026-07-28) calls; virtual-server lists; and a caller over a server's rate
//! limit, answered 429.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::json;

use mcpgate_e2e::bench::{ACCEPTED, bundle_config, open_session, server_config, upstreams};
use mcpgate_e2e::{Proxy, rss_kib};

/// What one minute saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    limited: AtomicU64,
    failed: AtomicU64,
    /// Server-route tool call latencies in microseconds.
    latencies: std::sync::Mutex<Vec<u64>>,
}

impl Tally {
    fn count(&self, status: u16) {
        let counter = match status {
            200 | 202 => &self.ok,
            429 => &self.limited,
            _ => &self.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One kind of caller: what it sends on `path`, with or without a session of its own.
#[derive(Clone, Copy)]
enum Caller {
    /// Tool calls in one long-lived session; `timed` ones feed the latency figures.
    Session { timed: bool },
    /// initialize, a call, DELETE; again.
    Churn,
    /// A stateless call each time.
    Stateless,
    /// `tools/list` in one long-lived session.
    Lists,
}

fn post(
    path: &str,
    session: Option<&str>,
    body: &serde_json::Value,
) -> Result<Request<Full<Bytes>>> {
    let mut request = Request::post(path)
        .header("host", "127.0.0.1")
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream");
    if let Some(session) = session {
        request = request
            .header("mcp-session-id", session)
            .header("mcp-protocol-version", "2025-11-25");
    }
    Ok(request.body(Full::new(Bytes::from(body.to_string())))?)
}

fn call(id: u64) -> serde_json::Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"text": "x".repeat(200)}}})
}

/// Runs `caller` against `path` until `stop`, counting into the current minute's tally.
async fn run(
    gateway: SocketAddr,
    path: &'static str,
    tool_prefix: &'static str,
    caller: Caller,
    stop: Arc<AtomicBool>,
    tally: Arc<arc_swap::ArcSwap<Tally>>,
) -> Result<()> {
    let stream = tokio::net::TcpStream::connect(gateway).await?;
    stream.set_nodelay(true)?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let mut session = match caller {
        Caller::Session { .. } | Caller::Lists => Some(open_session(gateway, path, None).await?),
        _ => None,
    };
    let mut id = 0u64;
    while !stop.load(Ordering::Relaxed) {
        id += 1;
        let mut message = call(id);
        message["params"]["name"] = format!("{tool_prefix}echo").into();
        let request = match caller {
            Caller::Session { .. } => post(path, session.as_deref(), &message)?,
            Caller::Lists => post(
                path,
                session.as_deref(),
                &json!({"jsonrpc": "2.0", "id": id, "method": "tools/list"}),
            )?,
            Caller::Stateless => {
                message["params"]["_meta"] = json!({
                    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                    "io.modelcontextprotocol/clientCapabilities": {},
                    "io.modelcontextprotocol/clientInfo": {"name": "soak", "version": "1"}});
                let mut request = post(path, None, &message)?;
                let headers = request.headers_mut();
                headers.insert("mcp-protocol-version", "2026-07-28".parse()?);
                headers.insert("mcp-method", "tools/call".parse()?);
                headers.insert("mcp-name", format!("{tool_prefix}echo").parse()?);
                request
            }
            Caller::Churn => {
                let opened = open_session(gateway, path, None).await?;
                let response = sender
                    .send_request(post(path, Some(&opened), &message)?)
                    .await?;
                let status = response.status().as_u16();
                response.into_body().collect().await?;
                tally.load().count(status);
                session = Some(opened);
                let mut end = Request::delete(path)
                    .header("host", "127.0.0.1")
                    .header("mcp-session-id", session.as_deref().unwrap_or_default());
                if let Some(headers) = end.headers_mut() {
                    headers.insert("mcp-protocol-version", "2025-11-25".parse()?);
                }
                end.body(Full::new(Bytes::new()))?
            }
        };
        let sent = Instant::now();
        let response = sender.send_request(request).await.context("request")?;
        let status = response.status().as_u16();
        response.into_body().collect().await?;
        let current = tally.load();
        current.count(status);
        if let Caller::Session { timed: true } = caller {
            let micros = u64::try_from(sent.elapsed().as_micros()).unwrap_or(u64::MAX);
            if let Ok(mut latencies) = current.latencies.lock() {
                latencies.push(micros);
            }
        }
    }
    Ok(())
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64
}

fn main() -> Result<()> {
    let minutes: u64 = std::env::var("MCPGATE_SOAK_MINUTES")
        .ok()
        .and_then(|m| m.parse().ok())
        .unwrap_or(20);
    let (runtime, upstreams) = upstreams(3)?;
    let dir = tempfile::tempdir()?;
    let server = |name: &str, addr: SocketAddr| {
        server_config(
            name,
            addr,
            json!({"allow": [], "deny": []}),
            true,
            json!([]),
        )
    };
    let mut limited = server("limited", upstreams[0]);
    limited["rateLimits"] = json!({"perServer": {"requests": 50, "periodSeconds": 1}});
    std::fs::write(
        dir.path().join("config.json"),
        bundle_config(
            "soak",
            vec![
                server("fast", upstreams[0]),
                server("second", upstreams[1]),
                server("third", upstreams[2]),
                limited,
            ],
        )
        .to_string(),
    )?;
    std::fs::write(dir.path().join("session.key"), [7u8; 32])?;
    let key = dir.path().join("session.key");
    let args = [std::ffi::OsStr::new("--config-dir"), dir.path().as_os_str()];
    let env = [
        ("RUST_LOG", std::ffi::OsStr::new("warn")),
        ("MCPGATE_SESSION_KEY_FILE", key.as_os_str()),
        ("MCPGATE_WORKER_THREADS", std::ffi::OsStr::new("1")),
    ];
    let proxy = Proxy::start(&args, &env, dir.path())?;
    let pid = proxy.process.pid();
    let gateway: SocketAddr = format!("127.0.0.1:{}", proxy.port).parse()?;

    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(arc_swap::ArcSwap::from_pointee(Tally::default()));
    let callers: [(&'static str, &'static str, Caller, usize); 6] = [
        (
            "/bench/mcp/fast/server",
            "",
            Caller::Session { timed: true },
            8,
        ),
        (
            "/bench/mcp/bundle/server",
            "fast_",
            Caller::Session { timed: false },
            4,
        ),
        ("/bench/mcp/fast/server", "", Caller::Churn, 2),
        ("/bench/mcp/fast/server", "", Caller::Stateless, 2),
        ("/bench/mcp/bundle/server", "", Caller::Lists, 1),
        (
            "/bench/mcp/limited/server",
            "",
            Caller::Session { timed: false },
            1,
        ),
    ];
    let mut tasks = Vec::new();
    for (path, prefix, caller, count) in callers {
        for _ in 0..count {
            tasks.push(runtime.spawn(run(
                gateway,
                path,
                prefix,
                caller,
                stop.clone(),
                tally.clone(),
            )));
        }
    }
    println!(
        "soak: {minutes} min of mixed traffic (sessions, churn, stateless, virtual, lists, a rate limit) through one proxy (1 worker thread)"
    );
    println!(
        "{:>6} {:>9} {:>8} {:>7} {:>9} {:>9} {:>9} {:>5} {:>9}",
        "minute", "ok", "429", "failed", "p50", "p99", "RSS", "FDs", "upstream"
    );
    let started = Instant::now();
    for minute in 1..=minutes {
        let due = started + Duration::from_secs(60 * minute);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let done = tally.swap(Arc::new(Tally::default()));
        let mut latencies = done.latencies.lock().map(|l| l.clone()).unwrap_or_default();
        latencies.sort_unstable();
        println!(
            "{minute:>6} {:>9} {:>8} {:>7} {:>7.0}us {:>7.0}us {:>6} MiB {:>5} {:>9}",
            done.ok.load(Ordering::Relaxed),
            done.limited.load(Ordering::Relaxed),
            done.failed.load(Ordering::Relaxed),
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            rss_kib(pid, "VmRSS:").unwrap_or(0) / 1024,
            open_fds(pid),
            ACCEPTED.load(Ordering::Relaxed),
        );
        for task in &tasks {
            anyhow::ensure!(!task.is_finished(), "a caller stopped early");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in tasks {
        runtime.block_on(task)??;
    }
    println!(
        "peak RSS {} MiB",
        rss_kib(pid, "VmHWM:").unwrap_or(0) / 1024
    );
    Ok(())
}
