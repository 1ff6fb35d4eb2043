//! `make bench` (proxy part): `tools/call` with a 200-byte argument, direct to a fast
//! loopback upstream and through `mcpgate-proxy`, at 1, 16 and 64 concurrent connections:
//! req/s, p50, p99, the proxy's CPU time per proxied call, and its peak RSS.
//! Load generator, proxy and upstream share this machine's cores, so CPU per call is the
//! figure that compares across machines.

use std::convert::Infallible;
use std::ffi::OsStr;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use mcpgate_e2e::{Proxy, rss_kib};
use serde_json::json;

const CALLS_PER_RUN: usize = 20_000;

/// Connections the upstream accepted (a proxy that reuses connections keeps this small).
static ACCEPTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// An upstream that answers every POST with a small tools/call result, as fast as it can.
async fn upstream(listener: tokio::net::TcpListener) {
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
                    let id = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .map(|v| v["id"].clone())
                        .unwrap_or_default();
                    let answer = json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": "ok"}], "isError": false}});
                    let mut response = Response::new(Full::new(Bytes::from(answer.to_string())));
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

/// `concurrency` connections, each sending calls back to back until `calls` are done.
async fn load(
    addr: SocketAddr,
    path: &str,
    concurrency: usize,
    calls: usize,
) -> Result<(Duration, Vec<Duration>)> {
    let argument = "x".repeat(200);
    let started = Instant::now();
    let per_worker = calls / concurrency;
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let (path, argument) = (path.to_owned(), argument.clone());
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
                                  "params": {"name": "echo", "arguments": {"text": argument}}})
                    .to_string();
                let request = Request::post(path.as_str())
                    .header("host", "127.0.0.1")
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream")
                    .header("mcp-protocol-version", "2026-07-28")
                    .header("mcp-method", "tools/call")
                    .header("mcp-name", "echo")
                    .body(Full::new(Bytes::from(body)))?;
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

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let upstream_listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let upstream_addr = upstream_listener.local_addr()?;
    runtime.spawn(upstream(upstream_listener));

    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("config.json"),
        json!({"schema": 1, "version": "bench", "virtualServers": [], "servers": [{
            "namespace": "bench", "name": "fast", "path": "/bench/mcp/fast/server",
            "upstream": {"type": "remote", "url": format!("http://{upstream_addr}/mcp"), "transport": "StreamableHttp"},
            "auth": {"type": "none"}, "tools": {"allow": [], "deny": ["never"]}, "timeoutMs": 30000,
            "retry": {"attempts": 0, "backoffMs": 100}, "rateLimits": {"perUser": null, "perServer": null},
            "public": true, "access": {"subjects": []}}]})
        .to_string(),
    )?;
    let proxy = Proxy::start(
        &[OsStr::new("--config-dir"), dir.path().as_os_str()],
        &[("RUST_LOG", OsStr::new("warn"))],
        dir.path(),
    )?;
    let proxy_pid = proxy.process.pid();
    let gateway: SocketAddr = format!("127.0.0.1:{}", proxy.port).parse()?;
    let idle_rss = rss_kib(proxy_pid, "VmRSS:").unwrap_or(0);

    println!(
        "tools/call, 200-byte argument, {CALLS_PER_RUN} calls per row (loopback, 2 cores shared by load, proxy and upstream)"
    );
    println!(
        "{:<10} {:>5} {:>10} {:>10} {:>10} {:>16}",
        "path", "conns", "req/s", "p50", "p99", "proxy CPU/call"
    );
    let pid = proxy_pid;
    for concurrency in [1, 16, 64] {
        let (elapsed, latencies) =
            runtime.block_on(load(upstream_addr, "/mcp", concurrency, CALLS_PER_RUN))?;
        let rps = latencies.len() as f64 / elapsed.as_secs_f64();
        print_row("direct", concurrency, rps, &latencies, None);

        let before = cpu_seconds(pid).context("proxy CPU")?;
        let (elapsed, latencies) = runtime.block_on(load(
            gateway,
            "/bench/mcp/fast/server",
            concurrency,
            CALLS_PER_RUN,
        ))?;
        let cpu = cpu_seconds(pid).context("proxy CPU")? - before;
        let rps_gw = latencies.len() as f64 / elapsed.as_secs_f64();
        print_row(
            "gateway",
            concurrency,
            rps_gw,
            &latencies,
            Some(cpu / latencies.len() as f64),
        );
        println!(
            "{:<10} {:>5} {:>9.2}x   (upstream connections so far: {})",
            "ratio",
            concurrency,
            rps_gw / rps,
            ACCEPTED.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    println!(
        "proxy RSS: idle {} KiB, peak {} KiB (target <= 20 MB under the 64-connection load)",
        idle_rss,
        rss_kib(pid, "VmHWM:").unwrap_or(0)
    );
    Ok(())
}

fn print_row(
    path: &str,
    concurrency: usize,
    rps: f64,
    latencies: &[Duration],
    cpu_per_call: Option<f64>,
) {
    let p = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    let cpu = cpu_per_call.map_or_else(|| "-".to_owned(), |c| format!("{:.1} us", c * 1e6));
    println!(
        "{:<10} {:>5} {:>10.0} {:>10.1?} {:>10.1?} {:>16}",
        path,
        concurrency,
        rps,
        p(0.5),
        p(0.99),
        cpu
    );
}
