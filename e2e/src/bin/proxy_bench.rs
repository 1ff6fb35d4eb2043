//! `make bench` (proxy part): `tools/call` with a 200-byte argument in one initialized
//! session, direct to a fast loopback upstream, through `mcpgate-proxy` on a server route,
//! and through a virtual server over three upstreams, at 1, 16 and 64 concurrent
//! connections: req/s, p50, p99, the proxy's CPU time per proxied call, its peak RSS; then
//! the cost of opening a session and the proxy's RSS with 10,000 idle sessions; last, the
//! cost of authentication per call (OIDC JWT, ServiceAccount token, a token the gateway
//! issued after sign-in) against a public route, and the rate of `/-/oauth/token` refresh
//! grants (only those with `MCPGATE_BENCH=auth`); last, the cost of the upstream credential
//! per call: none, a shared key, a stored per-user OAuth token (only those with
//! `MCPGATE_BENCH=outbound`). With `MCPGATE_BENCH_BASELINE=<mcpgate-proxy binary>`
//! it instead compares that build's CPU and p50 per call with this one's, interleaved.
//! Load generator, proxy and upstream share this machine's cores, so CPU per call is the
//! figure that compares across machines.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use std::sync::Arc;

use mcpgate_e2e::bench::{
    ACCEPTED, bundle_config, cpu_seconds, load, median, open_session, server_config, upstreams,
};
use mcpgate_e2e::{ControlPlane, IdentityProvider, Proxy, free_port, rss_kib};
use mcpgate_proxy::signin::store::{FileStore, Store};
use mcpgate_proxy::signin::tokens::{Person, Tokens};
use serde_json::json;

const CALLS_PER_RUN: usize = 20_000;

fn main() -> Result<()> {
    let (runtime, upstreams) = upstreams(3)?;
    let upstream_addr = upstreams[0];
    match std::env::var("MCPGATE_BENCH").as_deref() {
        Ok("auth") => return authentication(&runtime, upstream_addr),
        Ok("outbound") => return outbound(&runtime, upstream_addr),
        _ => {}
    }

    let dir = tempfile::tempdir()?;
    let server = |name: &str, addr: SocketAddr| {
        server_config(
            name,
            addr,
            json!({"allow": [], "deny": ["never"]}),
            true,
            json!([]),
        )
    };
    std::fs::write(
        dir.path().join("config.json"),
        bundle_config(
            "bench",
            vec![
                server("fast", upstreams[0]),
                server("second", upstreams[1]),
                server("third", upstreams[2]),
            ],
        )
        .to_string(),
    )?;
    std::fs::write(dir.path().join("session.key"), [7u8; 32])?;
    let key = dir.path().join("session.key");
    // One worker thread unless told otherwise: on two cores shared with the load and the
    // upstreams it spends the least CPU per call (MCPGATE_WORKER_THREADS=0, one per CPU,
    // compares).
    let threads = std::env::var("MCPGATE_WORKER_THREADS").unwrap_or_else(|_| "1".into());
    let args = [OsStr::new("--config-dir"), dir.path().as_os_str()];
    let env = [
        ("RUST_LOG", OsStr::new("warn")),
        ("MCPGATE_SESSION_KEY_FILE", key.as_os_str()),
        ("MCPGATE_WORKER_THREADS", OsStr::new(&threads)),
    ];
    if let Some(baseline) = std::env::var_os("MCPGATE_BENCH_BASELINE") {
        let baseline = Proxy::start_binary(baseline.as_ref(), &args, &env, dir.path())?;
        let current = Proxy::start(&args, &env, dir.path())?;
        return compare(&runtime, &baseline, &current);
    }
    let proxy = Proxy::start(&args, &env, dir.path())?;
    let pid = proxy.process.pid();
    let gateway: SocketAddr = format!("127.0.0.1:{}", proxy.port).parse()?;
    let idle_rss = rss_kib(pid, "VmRSS:").unwrap_or(0);

    println!(
        "tools/call, 200-byte argument, one session, {CALLS_PER_RUN} calls per row (loopback, 2 cores shared by load, proxy and upstreams; proxy worker threads: {})",
        if threads == "0" {
            "one per CPU"
        } else {
            &threads
        }
    );
    println!(
        "{:<10} {:>5} {:>10} {:>10} {:>10} {:>16}",
        "path", "conns", "req/s", "p50", "p99", "proxy CPU/call"
    );
    let direct_session = runtime.block_on(open_session(upstream_addr, "/mcp", None))?;
    let server_session = runtime.block_on(open_session(gateway, "/bench/mcp/fast/server", None))?;
    let bundle_session =
        runtime.block_on(open_session(gateway, "/bench/mcp/bundle/server", None))?;
    for concurrency in [1, 16, 64] {
        let (elapsed, latencies) = runtime.block_on(load(
            upstream_addr,
            "/mcp",
            &direct_session,
            "echo",
            concurrency,
            CALLS_PER_RUN,
            None,
        ))?;
        let rps = latencies.len() as f64 / elapsed.as_secs_f64();
        print_row("direct", concurrency, rps, &latencies, None);
        for (label, path, session, tool) in [
            ("gateway", "/bench/mcp/fast/server", &server_session, "echo"),
            (
                "virtual",
                "/bench/mcp/bundle/server",
                &bundle_session,
                "second_echo",
            ),
        ] {
            let before = cpu_seconds(pid).context("proxy CPU")?;
            let (elapsed, latencies) = runtime.block_on(load(
                gateway,
                path,
                session,
                tool,
                concurrency,
                CALLS_PER_RUN,
                None,
            ))?;
            let cpu = cpu_seconds(pid).context("proxy CPU")? - before;
            let rps_gw = latencies.len() as f64 / elapsed.as_secs_f64();
            print_row(
                label,
                concurrency,
                rps_gw,
                &latencies,
                Some(cpu / latencies.len() as f64),
            );
            println!("{:<10} {:>5} {:>9.2}x of direct", "", "", rps_gw / rps);
        }
        println!(
            "           (upstream connections so far: {})",
            ACCEPTED.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    println!(
        "proxy RSS: idle {} KiB, peak {} KiB under the 64-connection load (target <= 20 MB)",
        idle_rss,
        rss_kib(pid, "VmHWM:").unwrap_or(0)
    );

    // Opening sessions, and keeping 10,000 of them open.
    const SESSIONS: usize = 10_000;
    for (label, path) in [
        ("server route", "/bench/mcp/fast/server"),
        ("virtual, 3 upstreams", "/bench/mcp/bundle/server"),
    ] {
        let before = cpu_seconds(pid).context("proxy CPU")?;
        let started = Instant::now();
        let opened: Vec<String> = runtime.block_on(async {
            let mut ids = Vec::with_capacity(SESSIONS);
            for _ in 0..SESSIONS / 2 {
                ids.push(open_session(gateway, path, None).await?);
            }
            Ok::<_, anyhow::Error>(ids)
        })?;
        let elapsed = started.elapsed();
        let cpu = cpu_seconds(pid).context("proxy CPU")? - before;
        println!(
            "new session ({label}): {:.0} us wall, {:.0} us proxy CPU each ({} opened)",
            elapsed.as_secs_f64() * 1e6 / opened.len() as f64,
            cpu * 1e6 / opened.len() as f64,
            opened.len()
        );
    }
    println!(
        "proxy RSS with {SESSIONS} idle sessions: {} KiB (target <= 50 MB; sessions live in the clients' sealed ids)",
        rss_kib(pid, "VmRSS:").unwrap_or(0)
    );
    drop(proxy);
    authentication(&runtime, upstream_addr)?;
    outbound(&runtime, upstream_addr)
}

/// Manifests of the outbound rows: one upstream behind four credential modes, alice may
/// use each.
const OUTBOUND_MANIFESTS: &str = r#"
apiVersion: v1
kind: Secret
metadata: {name: shared-key, namespace: bench, labels: {mcpgate.dev/credential: "true"}, annotations: {mcpgate.dev/allowed-servers: shared}}
stringData: {key: bench-shared-key}
---
apiVersion: mcpgate.dev/v1alpha1
kind: McpServer
metadata: {name: none, namespace: bench}
spec: {remote: {url: "UPSTREAM"}}
---
apiVersion: mcpgate.dev/v1alpha1
kind: McpServer
metadata: {name: shared, namespace: bench}
spec:
  remote: {url: "UPSTREAM"}
  auth: {type: ApiKey, apiKey: {scope: Shared, headerName: Authorization, valueTemplate: "Bearer {{API_KEY}}", secretKeyRef: {name: shared-key, key: key}}}
---
apiVersion: mcpgate.dev/v1alpha1
kind: McpServer
metadata: {name: oauth, namespace: bench}
spec:
  remote: {url: "UPSTREAM"}
  auth:
    type: OAuth2AuthorizationCode
    oauth2AuthorizationCode: {authorizationUrl: "http://127.0.0.1:9/authorize", tokenUrl: "http://127.0.0.1:9/token", clientId: bench}
---
apiVersion: mcpgate.dev/v1alpha1
kind: McpCollaborator
metadata: {name: alice, namespace: bench}
spec:
  targetRef: {kind: McpServer, name: none}
  role: User
  subjects: [{kind: User, name: alice@example.com}]
---
apiVersion: mcpgate.dev/v1alpha1
kind: McpCollaborator
metadata: {name: alice-shared, namespace: bench}
spec:
  targetRef: {kind: McpServer, name: shared}
  role: User
  subjects: [{kind: User, name: alice@example.com}]
---
apiVersion: mcpgate.dev/v1alpha1
kind: McpCollaborator
metadata: {name: alice-oauth, namespace: bench}
spec:
  targetRef: {kind: McpServer, name: oauth}
  role: User
  subjects: [{kind: User, name: alice@example.com}]
"#;

/// The CPU a call costs for its upstream credential: no credential, a shared key, and a
/// stored per-user OAuth token (warm: opened and cached by the first call), each called by
/// alice with the same OIDC JWT on one connection.
fn outbound(runtime: &tokio::runtime::Runtime, upstream: SocketAddr) -> Result<()> {
    const AUDIENCE: &str = "https://unused.example";
    let dir = tempfile::tempdir()?;
    let (port, admin) = (free_port(), free_port());
    let public_url = format!("http://127.0.0.1:{port}");
    let idp = IdentityProvider::start_for(
        dir.path(),
        AUDIENCE,
        &[format!("{public_url}/-/signin/callback")],
    )?;
    let jwt = idp.password_token("alice", "alice-pw")?;
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    // Both credentials as long as a typical JWT, so the rows differ by the gateway's work,
    // not by bytes on the wire.
    let upstream_token = "bench-upstream-access-token-".repeat(30);
    std::fs::write(
        manifests.join("bench.yaml"),
        OUTBOUND_MANIFESTS
            .replace("UPSTREAM", &format!("http://{upstream}/mcp"))
            .replace("bench-shared-key", &upstream_token),
    )?;
    let config = dir.path().join("config");
    mcpgate_e2e::render(&manifests, &config)?;
    let state = dir.path().join("state");
    let mut args = mcpgate_e2e::signin_args(dir.path(), &public_url, &idp.issuer)?;
    args.extend([
        "--config-dir".to_owned(),
        config.display().to_string(),
        "--signin-state-dir".to_owned(),
        state.display().to_string(),
    ]);
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let proxy = Proxy::start_at(
        port,
        admin,
        &args,
        &[
            ("RUST_LOG", OsStr::new("warn")),
            ("MCPGATE_WORKER_THREADS", OsStr::new("1")),
        ],
        dir.path(),
    )?;
    // Alice's tokens for `oauth`, stored as the gateway's callback stores them (same store,
    // same session key), valid for the whole run.
    let keys = std::fs::read(dir.path().join("session-key"))?;
    let keys = mcpgate_proxy::session::SessionKeys::new(
        keys.as_slice()
            .try_into()
            .context("a 32-byte session key")?,
        None,
    );
    let vault = mcpgate_proxy::outbound::vault::Vault::new(
        Arc::new(Store::Files(FileStore::open(&state)?)),
        Arc::new(keys),
        Duration::from_secs(3600),
    );
    let alice = mcpgate_proxy::auth::Identity {
        user: "alice@example.com".into(),
        email: Some("alice@example.com".into()),
        groups: vec![],
        method: mcpgate_proxy::auth::Method::Oidc {
            issuer: idp.issuer.clone(),
        },
        audience: mcpgate_proxy::auth::Audience::Gateway,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    runtime.block_on(vault.store_oauth_for(
        "bench/oauth".into(),
        &alice,
        &mcpgate_proxy::outbound::vault::TokenSet {
            access_token: upstream_token,
            refresh_token: Some("bench-refresh".into()),
            id_token: None,
            expires_at: Some(now + 86_400),
            obtained_at: now,
            ..Default::default()
        },
    ))?;
    let pid = proxy.process.pid();
    let gateway: SocketAddr = format!("127.0.0.1:{}", proxy.port).parse()?;
    // Shared twice, before and after: the second shows how much a row's place in the
    // round moves its figure.
    let routes = [
        ("no credential", "/bench/mcp/none/server"),
        ("shared API key", "/bench/mcp/shared/server"),
        ("per-user OAuth", "/bench/mcp/oauth/server"),
        ("shared, again", "/bench/mcp/shared/server"),
    ];
    let mut sessions = Vec::new();
    for (_, path) in routes {
        sessions.push(runtime.block_on(open_session(gateway, path, Some(&jwt)))?);
    }
    let rows: Vec<(&str, &str, Option<&str>)> = routes
        .iter()
        .zip(&sessions)
        .map(|((_, path), session)| (*path, session.as_str(), Some(jwt.as_str())))
        .collect();
    let mut figures = measure_rounds(runtime, pid, gateway, &rows)?;
    println!(
        "outbound credential per call, warm ({AUTH_CALLS} calls x {AUTH_ROUNDS} rounds, 1 connection, alice's OIDC JWT, medians):"
    );
    println!(
        "{:<16} {:>10} {:>16} {:>18}",
        "credential", "p50", "proxy CPU/call", "added vs shared"
    );
    // Paired per round (rows of one round run back to back, so slow drifts cancel): each
    // row's CPU per call less the mean of that round's two shared rows.
    let paired = |row: usize| {
        let mut d: Vec<f64> = (0..AUTH_ROUNDS)
            .map(|i| figures[row].1[i] - (figures[1].1[i] + figures[3].1[i]) / 2.0)
            .collect();
        d.sort_by(f64::total_cmp);
        (d[d.len() / 2], d[d.len() / 4], d[d.len() * 3 / 4])
    };
    let (oauth_paired, none_paired) = (paired(2), paired(0));
    let medians: Vec<(f64, f64)> = figures
        .iter_mut()
        .map(|(p50, cpu)| (median(p50), median(cpu)))
        .collect();
    let (_, shared_cpu) = medians[1];
    for ((label, _), (p50, cpu)) in routes.iter().zip(&medians) {
        println!(
            "{label:<16} {p50:>8.1}us {cpu:>14.1}us {:>16.1}us",
            cpu - shared_cpu
        );
    }
    println!(
        "a stored per-user OAuth token beyond a shared key (the mean of the shared rows before and after it): {:.1} us proxy CPU per call (target <= 5 us; the two shared rows differ by {:.1} us)",
        medians[2].1 - (shared_cpu + medians[3].1) / 2.0,
        medians[3].1 - shared_cpu
    );
    println!(
        "paired per round, beyond that round's shared rows: per-user OAuth {:.1} us (quartiles {:.1}..{:.1}); no credential {:.1} us (quartiles {:.1}..{:.1}), the noise to read it against",
        oauth_paired.0, oauth_paired.1, oauth_paired.2, none_paired.0, none_paired.1, none_paired.2
    );

    // The same difference measured in process, without the noise of three processes on two
    // cores: what the gateway does per call to pick the credential (the caller's identity
    // cloned for a per-user route, the record found, the token checked and its header taken).
    const CALLS: u32 = 200_000;
    let snapshot = mcpgate_proxy::source::dir::load(&config)?;
    let outbound = mcpgate_proxy::outbound::Outbound::new(
        mcpgate_proxy::upstream::client()?,
        Some(vault),
        Some(public_url),
    );
    let server = |key: &str| {
        snapshot
            .server(key)
            .cloned()
            .with_context(|| format!("{key} in the configuration"))
    };
    let (shared, oauth) = (server("bench/shared")?, server("bench/oauth")?);
    let inbound = hyper::HeaderMap::new();
    let mut per_call = [Vec::new(), Vec::new()];
    for _ in 0..AUTH_ROUNDS {
        for (i, route) in [&shared, &oauth].into_iter().enumerate() {
            let per_user = route.config.auth.per_user();
            let started = Instant::now();
            runtime.block_on(async {
                for _ in 0..CALLS {
                    let caller = per_user.then(|| alice.clone());
                    let resolved = outbound.resolve(route, caller.as_ref(), &inbound).await?;
                    std::hint::black_box(resolved);
                }
                anyhow::Ok(())
            })?;
            per_call[i].push(started.elapsed().as_secs_f64() * 1e9 / f64::from(CALLS));
        }
    }
    let [shared_ns, oauth_ns] = per_call.map(|mut v| median(&mut v));
    println!(
        "in process, choosing the credential: shared key {shared_ns:.0} ns, stored per-user OAuth token {oauth_ns:.0} ns per call: {:.2} us added (target <= 5 us)",
        (oauth_ns - shared_ns) / 1000.0
    );
    Ok(())
}

/// Calls per measurement in the before/after comparison.
const COMPARE_CALLS: usize = 5_000;
/// Rounds of the comparison; each figure is the median over them.
const COMPARE_ROUNDS: usize = 15;

/// Proxy CPU and p50 per call of a `baseline` build (`MCPGATE_BENCH_BASELINE=<binary>`)
/// against this one, same configuration and upstreams, on the server route and through the
/// virtual server: measurements alternate between the two (which goes first alternates
/// too), so drift on a shared machine hits both alike.
fn compare(runtime: &tokio::runtime::Runtime, baseline: &Proxy, current: &Proxy) -> Result<()> {
    println!(
        "before/after: tools/call, {COMPARE_CALLS} calls x {COMPARE_ROUNDS} rounds per figure, interleaved; change = median of the rounds' after/before ratios"
    );
    println!(
        "{:<8} {:>5} {:>14} {:>14} {:>8} {:>12} {:>12}",
        "path", "conns", "CPU/call before", "CPU/call after", "change", "p50 before", "p50 after"
    );
    for (label, path, tool) in [
        ("server", "/bench/mcp/fast/server", "echo"),
        ("virtual", "/bench/mcp/bundle/server", "second_echo"),
    ] {
        let mut targets = Vec::new();
        for proxy in [baseline, current] {
            let addr: SocketAddr = format!("127.0.0.1:{}", proxy.port).parse()?;
            let session = runtime.block_on(open_session(addr, path, None))?;
            targets.push((proxy.process.pid(), addr, session));
        }
        for concurrency in [1, 16, 64] {
            let mut cpu = [Vec::new(), Vec::new()];
            let mut p50 = [Vec::new(), Vec::new()];
            for round in 0..COMPARE_ROUNDS {
                for turn in 0..2 {
                    let i = (round + turn) % 2;
                    let (pid, addr, session) = &targets[i];
                    let before = cpu_seconds(*pid).context("proxy CPU")?;
                    let (_, latencies) = runtime.block_on(load(
                        *addr,
                        path,
                        session,
                        tool,
                        concurrency,
                        COMPARE_CALLS,
                        None,
                    ))?;
                    let spent = cpu_seconds(*pid).context("proxy CPU")? - before;
                    cpu[i].push(spent * 1e6 / latencies.len() as f64);
                    p50[i].push(latencies[latencies.len() / 2].as_secs_f64() * 1e6);
                }
            }
            // The change is the median of each round's ratio: a round's two measurements
            // ran back to back, so drift of the machine between rounds cancels out.
            let mut ratios: Vec<f64> = cpu[1].iter().zip(&cpu[0]).map(|(a, b)| a / b).collect();
            let change = (median(&mut ratios) - 1.0) * 100.0;
            let [cpu_before, cpu_after] = cpu.each_mut().map(|v| median(v));
            let [p50_before, p50_after] = p50.each_mut().map(|v| median(v));
            println!(
                "{label:<8} {concurrency:>5} {cpu_before:>13.1}us {cpu_after:>13.1}us {change:>+7.1}% {p50_before:>10.1}us {p50_after:>10.1}us",
            );
        }
    }
    Ok(())
}

/// Calls timed per caller in the authentication rows.
const AUTH_CALLS: usize = 10_000;
/// Rounds of those rows, interleaved; each figure is the median over the rounds.
const AUTH_ROUNDS: usize = 15;

/// The cost of authentication and authorization per call: one upstream behind a public route
/// and behind a route only collaborators may use, called with an OIDC JWT from a real
/// provider (keys fetched and the token verified on the first call) and with a ServiceAccount
/// token reviewed by a real API server (on the first call), then from the caches.
fn authentication(runtime: &tokio::runtime::Runtime, upstream: SocketAddr) -> Result<()> {
    const AUDIENCE: &str = "https://mcp.example.test";
    let dir = tempfile::tempdir()?;
    let plane = ControlPlane::start().context("the control plane (run `make bench`)")?;
    plane.kubectl(&["create", "serviceaccount", "bench", "-n", "default"])?;
    let sa_token = plane.kubectl(&[
        "create",
        "token",
        "bench",
        "-n",
        "default",
        "--audience",
        "mcpgate",
        "--duration",
        "1h",
    ])?;
    let (port, admin) = (free_port(), free_port());
    let public_url = format!("http://127.0.0.1:{port}");
    let idp = IdentityProvider::start_for(
        dir.path(),
        AUDIENCE,
        &[format!("{public_url}/-/signin/callback")],
    )?;
    let jwt = idp.password_token("alice", "alice-pw")?;
    let state = dir.path().join("signin");
    let subjects = json!([
        {"kind": "ServiceAccount", "name": "system:serviceaccount:default:bench"},
        {"kind": "User", "name": "alice@example.com"}]);
    let route = |name: &str, public: bool| {
        server_config(
            name,
            upstream,
            json!({"allow": [], "deny": []}),
            public,
            subjects.clone(),
        )
    };
    std::fs::write(
        dir.path().join("config.json"),
        json!({"schema": 1, "version": "auth-bench", "virtualServers": [],
            "servers": [route("open", true), route("closed", false)]})
        .to_string(),
    )?;
    let proxy = Proxy::start_at(
        port,
        admin,
        &[OsStr::new("--config-dir"), dir.path().as_os_str()],
        &[
            ("RUST_LOG", OsStr::new("warn")),
            ("MCPGATE_WORKER_THREADS", OsStr::new("1")),
            ("KUBECONFIG", plane.kubeconfig.as_os_str()),
            ("MCPGATE_OIDC_ISSUERS", OsStr::new(&idp.issuer)),
            ("MCPGATE_OIDC_AUDIENCES", OsStr::new(AUDIENCE)),
            ("MCPGATE_OIDC_USER_CLAIM", OsStr::new("email")),
            ("MCPGATE_SERVICEACCOUNT_AUDIENCES", OsStr::new("mcpgate")),
            ("MCPGATE_PUBLIC_URL", OsStr::new(&public_url)),
            ("MCPGATE_SIGNIN_ISSUER", OsStr::new(&idp.issuer)),
            ("MCPGATE_SIGNIN_CLIENT_ID", OsStr::new("mcpgate")),
            ("MCPGATE_SIGNIN_STATE_DIR", state.as_os_str()),
        ],
        dir.path(),
    )?;
    let pid = proxy.process.pid();
    let gateway: SocketAddr = format!("127.0.0.1:{}", proxy.port).parse()?;
    // Grants as the authorization code flow makes them (a registered client, alice's
    // consent), minted with the proxy's own keys and store so no browser is needed here.
    let client_id = runtime.block_on(register_client(gateway))?;
    let tokens = runtime.block_on(Tokens::open(
        public_url.clone(),
        Arc::new(Store::Files(FileStore::open(&state)?)),
        Duration::from_secs(3600),
        Duration::from_secs(86_400),
    ))?;
    let resource = format!("{public_url}/bench/mcp/closed/server");
    let mut grants = Vec::new();
    for _ in 0..=TOKEN_CHAINS {
        let person = Person {
            user: "alice@example.com".into(),
            email: Some("alice@example.com".into()),
            groups: vec!["team-a".into()],
            issuer: idp.issuer.clone(),
        };
        let id = mcpgate_proxy::signin::keys::random_id::<16>()?;
        grants.push(runtime.block_on(tokens.authorize(
            &id,
            person,
            &client_id,
            vec![resource.clone()],
            String::new(),
        ))?);
    }
    let gateway_token = grants[0].access_token.clone();
    let callers = [
        ("public route", "/bench/mcp/open/server", None),
        // The same bytes on the wire as the gateway token's row, left unchecked: the
        // difference between the two is what checking the token costs, apart from carrying it.
        (
            "public + header",
            "/bench/mcp/open/server",
            Some(gateway_token.as_str()),
        ),
        ("OIDC JWT", "/bench/mcp/closed/server", Some(jwt.as_str())),
        (
            "ServiceAccount",
            "/bench/mcp/closed/server",
            Some(sa_token.trim()),
        ),
        (
            "gateway token",
            "/bench/mcp/closed/server",
            Some(gateway_token.as_str()),
        ),
    ];
    let mut sessions = Vec::new();
    for (label, path, bearer) in callers {
        let started = Instant::now();
        sessions.push(runtime.block_on(open_session(gateway, path, bearer))?);
        println!(
            "first request as {label}: {:.1?} (initialize; token verified or reviewed, keys fetched)",
            started.elapsed()
        );
    }
    // p50 and CPU per call, per caller and round.
    let rows: Vec<(&str, &str, Option<&str>)> = callers
        .iter()
        .zip(&sessions)
        .map(|((_, path, bearer), session)| (*path, session.as_str(), *bearer))
        .collect();
    let mut figures = measure_rounds(runtime, pid, gateway, &rows)?;
    let tokens = Arc::new(tokens);
    in_process(
        runtime,
        &plane,
        &idp.issuer,
        AUDIENCE,
        &jwt,
        sa_token.trim(),
        (&tokens, &gateway_token, &public_url),
    )?;
    let medians: Vec<(f64, f64)> = figures
        .iter_mut()
        .map(|(p50, cpu)| (median(p50), median(cpu)))
        .collect();
    println!(
        "authentication and authorization per call, warm caches ({AUTH_CALLS} calls x {AUTH_ROUNDS} rounds, 1 connection, medians; target <= 20 us added p50):"
    );
    println!(
        "{:<16} {:>10} {:>12} {:>16} {:>14}",
        "caller", "p50", "added p50", "proxy CPU/call", "added CPU"
    );
    let (base_p50, base_cpu) = medians[0];
    for ((label, _, _), (p50, cpu)) in callers.iter().zip(&medians) {
        println!(
            "{label:<16} {p50:>8.1}us {:>10.1}us {cpu:>14.1}us {:>12.1}us",
            p50 - base_p50,
            cpu - base_cpu
        );
    }
    let (carried_p50, carried_cpu) = medians[1];
    let (gateway_p50, gateway_cpu) = medians[medians.len() - 1];
    println!(
        "checking a gateway token, beyond carrying it (gateway token minus public + header): {:.1} us p50, {:.1} us CPU (target <= 5 us)",
        gateway_p50 - carried_p50,
        gateway_cpu - carried_cpu
    );
    let refresh_tokens: Vec<String> = grants[1..]
        .iter()
        .map(|g| g.refresh_token.clone())
        .collect();
    let before = cpu_seconds(pid).context("proxy CPU")?;
    let (grants, elapsed) =
        runtime.block_on(refresh_chains(gateway, &client_id, refresh_tokens))?;
    let cpu = cpu_seconds(pid).context("proxy CPU")? - before;
    println!(
        "/-/oauth/token, refresh_token grant ({TOKEN_CHAINS} clients at once, each rotating its own grant; standalone file store, one fsync per rotation): {:.0} tokens/s, {:.0} us proxy CPU per token",
        grants as f64 / elapsed.as_secs_f64(),
        cpu * 1e6 / grants as f64
    );
    Ok(())
}

/// p50 and proxy CPU per call (us) of each row (path, session, bearer), over
/// [`AUTH_ROUNDS`] rounds of [`AUTH_CALLS`] calls on one connection, rows interleaved.
fn measure_rounds(
    runtime: &tokio::runtime::Runtime,
    pid: u32,
    gateway: SocketAddr,
    rows: &[(&str, &str, Option<&str>)],
) -> Result<Vec<(Vec<f64>, Vec<f64>)>> {
    let mut figures = vec![(Vec::new(), Vec::new()); rows.len()];
    for _ in 0..AUTH_ROUNDS {
        for ((path, session, bearer), (p50, cpu_per_call)) in rows.iter().zip(&mut figures) {
            let before = cpu_seconds(pid).context("proxy CPU")?;
            let (_, latencies) =
                runtime.block_on(load(gateway, path, session, "echo", 1, AUTH_CALLS, *bearer))?;
            let cpu = cpu_seconds(pid).context("proxy CPU")? - before;
            p50.push(latencies[latencies.len() / 2].as_secs_f64() * 1e6);
            cpu_per_call.push(cpu * 1e6 / latencies.len() as f64);
        }
    }
    Ok(figures)
}

/// Clients refreshing their grants at once.
const TOKEN_CHAINS: usize = 8;
/// How long they do.
const TOKEN_SECONDS: u64 = 5;

/// Registers a public client (RFC 7591) at the gateway; its client id.
async fn register_client(gateway: SocketAddr) -> Result<String> {
    let body = json!({"redirect_uris": ["http://127.0.0.1/cb"], "token_endpoint_auth_method": "none",
        "client_name": "proxy-bench"});
    let (status, answer) = post(
        gateway,
        "/-/oauth/register",
        "application/json",
        body.to_string(),
    )
    .await?;
    anyhow::ensure!(status == 201, "registration: {status} {answer}");
    answer["client_id"]
        .as_str()
        .map(str::to_owned)
        .context("no client_id")
}

/// One POST on a fresh connection; the status and JSON answer.
async fn post(
    gateway: SocketAddr,
    path: &str,
    content_type: &str,
    body: String,
) -> Result<(u16, serde_json::Value)> {
    let stream = tokio::net::TcpStream::connect(gateway).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let request = Request::post(path)
        .header("host", "127.0.0.1")
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))?;
    let response = sender.send_request(request).await?;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await?.to_bytes();
    Ok((status, serde_json::from_slice(&bytes).unwrap_or_default()))
}

/// Each refresh token's client refreshing its grant, one request after another, for
/// [`TOKEN_SECONDS`]; the tokens issued and the time taken.
async fn refresh_chains(
    gateway: SocketAddr,
    client_id: &str,
    refresh_tokens: Vec<String>,
) -> Result<(usize, Duration)> {
    let started = Instant::now();
    let until = started + Duration::from_secs(TOKEN_SECONDS);
    let mut chains = Vec::new();
    for mut refresh in refresh_tokens {
        let client_id = client_id.to_owned();
        chains.push(tokio::spawn(async move {
            let mut issued = 0usize;
            while Instant::now() < until {
                let form = format!(
                    "grant_type=refresh_token&client_id={client_id}&refresh_token={refresh}"
                );
                let (status, answer) = post(
                    gateway,
                    "/-/oauth/token",
                    "application/x-www-form-urlencoded",
                    form,
                )
                .await?;
                anyhow::ensure!(status == 200, "refresh: {status} {answer}");
                refresh = answer["refresh_token"]
                    .as_str()
                    .context("no refresh_token")?
                    .to_owned();
                issued += 1;
            }
            Ok::<_, anyhow::Error>(issued)
        }));
    }
    let mut total = 0;
    for chain in chains {
        total += chain.await??;
    }
    Ok((total, started.elapsed()))
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

/// The same authentication and authorization in process, timed over many calls: the cost
/// the loopback rows above cannot resolve (their noise is larger than it).
fn in_process(
    runtime: &tokio::runtime::Runtime,
    plane: &ControlPlane,
    issuer: &str,
    audience: &str,
    jwt: &str,
    sa_token: &str,
    (tokens, gateway_token, public_url): (&Arc<Tokens>, &str, &str),
) -> Result<()> {
    use mcpgate_crds::gateway_config::{AccessList, AccessSubject};
    use mcpgate_crds::v1alpha1::SubjectKind;
    use mcpgate_proxy::auth::access::Access;
    use mcpgate_proxy::auth::cache::TokenCache;
    use mcpgate_proxy::auth::inbound::Inbound;
    use mcpgate_proxy::auth::oidc::{IssuerConfig, OidcVerifier};
    use mcpgate_proxy::auth::service_account::TokenReviewer;
    const CALLS: u32 = 200_000;

    let kubeconfig = kube::config::Kubeconfig::read_from(&plane.kubeconfig)?;
    let client = runtime.block_on(async {
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        anyhow::Ok(kube::Client::try_from(config)?)
    })?;
    let oidc = || {
        Ok::<_, anyhow::Error>(OidcVerifier::new(
            mcpgate_proxy::upstream::client()?,
            vec![IssuerConfig {
                issuer: issuer.to_owned(),
                audiences: vec![audience.to_owned()],
                user_claim: "email".into(),
                groups_claim: "groups".into(),
                user_prefix: String::new(),
                group_prefix: String::new(),
                require_verified_email: true,
            }],
        ))
    };
    let inbound = Inbound {
        oidc: oidc()?,
        service_accounts: Some(TokenReviewer::new(client, vec!["mcpgate".into()])),
        cache: TokenCache::default(),
        public_url: Some(public_url.to_owned()),
        authorization_servers: Vec::new(),
        scheme: "http",
        gateway: Some(tokens.clone()),
    };
    let access = Access::new(&AccessList {
        subjects: vec![
            AccessSubject {
                kind: SubjectKind::ServiceAccount,
                name: "system:serviceaccount:default:bench".into(),
            },
            AccessSubject {
                kind: SubjectKind::User,
                name: "alice@example.com".into(),
            },
        ],
    });
    println!("in process, per call ({CALLS} calls, warm caches):");
    for (label, token, path) in [
        ("OIDC JWT", jwt, "/default/mcp/bench/server"),
        ("ServiceAccount", sa_token, "/default/mcp/bench/server"),
        ("gateway token", gateway_token, "/bench/mcp/closed/server"),
    ] {
        let mut headers = hyper::HeaderMap::new();
        headers.insert(
            hyper::header::AUTHORIZATION,
            format!("Bearer {token}").parse()?,
        );
        let elapsed = runtime.block_on(async {
            let first = inbound.authenticate(&headers, path).await?;
            anyhow::ensure!(access.permits(&first), "{label}: not permitted");
            let started = Instant::now();
            for _ in 0..CALLS {
                let caller = inbound.authenticate(&headers, path).await?;
                anyhow::ensure!(access.permits(&caller), "{label}: not permitted");
            }
            Ok(started.elapsed())
        })?;
        println!(
            "  {label:<16} authenticate + authorize: {:.2} us",
            elapsed.as_secs_f64() * 1e6 / f64::from(CALLS)
        );
    }
    // Without the token cache, every call would verify the signature again.
    let verifier = oidc()?;
    let elapsed = runtime.block_on(async {
        verifier.verify(jwt).await?;
        let started = Instant::now();
        for _ in 0..CALLS / 100 {
            verifier.verify(jwt).await?;
        }
        anyhow::Ok(started.elapsed())
    })?;
    println!(
        "  (an ES256 signature check, what the cache saves: {:.1} us)",
        elapsed.as_secs_f64() * 1e6 / f64::from(CALLS / 100)
    );
    Ok(())
}
