//! Real MCP peers through the gateway: the Python `mcp` SDK client, in both protocol eras,
//! through `mcpgate-proxy` (configured by `mcpgate-operator standalone`) to an `mcp` SDK
//! server. Ignored by plain `cargo test`; `make e2e` installs the peers and runs them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mcpgate_e2e::{
    Process, Proxy, everything_server, free_port, gateway_for, http_get, mcp_post, mcp_request,
    peer_around, python, python_peer, render, run_peer, sum_metric, wait_for, workspace,
};
use serde_json::Value;

/// The demo server, the rendered configuration and proxies sharing one session key, stopped
/// on drop.
struct Gateway {
    url: String,
    upstream: Process,
    upstream_port: u16,
    proxies: Vec<Proxy>,
    dir: tempfile::TempDir,
}

impl Gateway {
    fn start() -> Result<Self> {
        Self::with_proxies(1)
    }

    fn with_proxies(count: usize) -> Result<Self> {
        Self::with(count, "")
    }

    /// `count` proxies in front of the demo server, whose McpServer spec gets `extra` (YAML
    /// lines indented by two spaces) too.
    fn with(count: usize, extra: &str) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let upstream_port = free_port();
        let upstream = start_upstream(dir.path(), upstream_port)?;
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&manifests)?;
        std::fs::write(
            manifests.join("server.yaml"),
            format!(
                "apiVersion: mcpgate.dev/v1alpha1\nkind: McpServer\nmetadata: {{name: demo, namespace: peers}}\nspec:\n  remote: {{url: \"http://127.0.0.1:{upstream_port}/mcp\"}}\n  tools: {{deny: [secret_tool]}}\n  public: true\n{extra}"
            ),
        )?;
        render(&manifests, &dir.path().join("config")).context("standalone render failed")?;
        std::fs::write(dir.path().join("session.key"), [0x5au8; 32])?;
        let mut gateway = Self {
            url: String::new(),
            upstream,
            upstream_port,
            proxies: Vec::new(),
            dir,
        };
        for _ in 0..count {
            let proxy = gateway.proxy_at(free_port(), free_port())?;
            gateway.proxies.push(proxy);
        }
        gateway.url = gateway.url_of(0);
        Ok(gateway)
    }

    fn proxy_at(&self, port: u16, admin: u16) -> Result<Proxy> {
        let config = self.dir.path().join("config");
        let key = self.dir.path().join("session.key");
        Proxy::start_at(
            port,
            admin,
            &[OsStr::new("--config-dir"), config.as_os_str()],
            &[("MCPGATE_SESSION_KEY_FILE", key.as_os_str())],
            self.dir.path(),
        )
    }

    fn url_of(&self, proxy: usize) -> String {
        format!(
            "http://127.0.0.1:{}/peers/mcp/demo/server",
            self.proxies[proxy].port
        )
    }

    /// Stops proxy `i` (SIGTERM) and starts a new process on the same ports.
    fn restart_proxy(&mut self, i: usize) -> Result<()> {
        let (port, admin) = (self.proxies[i].port, self.proxies[i].admin);
        self.proxies[i].process.terminate();
        self.proxies[i] = self.proxy_at(port, admin)?;
        Ok(())
    }

    /// Restarts the upstream: it forgets every session it had.
    fn restart_upstream(&mut self) -> Result<()> {
        self.upstream.terminate();
        self.upstream = start_upstream(self.dir.path(), self.upstream_port)?;
        Ok(())
    }
}

fn start_upstream(dir: &std::path::Path, port: u16) -> Result<Process> {
    python_peer("demo_server.py", port, dir)
}

/// Runs the Python client; returns its JSON output.
fn client(url: &str, mode: &str, args: &[&str]) -> Result<Value> {
    run_peer("call.py", &[&[url, mode], args].concat())
}

/// Runs `check` with the client in the initialize-based era and in the stateless one.
fn both_eras(check: impl Fn(&str) -> Result<()>) -> Result<()> {
    for mode in ["legacy", "2026-07-28"] {
        check(mode).with_context(|| format!("mode {mode}"))?;
    }
    Ok(())
}

#[test]
#[ignore = "needs the Python MCP peers: run `make e2e`"]
fn python_client_lists_and_calls_through_the_gateway_in_both_eras() -> Result<()> {
    let gateway = Gateway::start()?;
    both_eras(|mode| {
        let tools = client(&gateway.url, mode, &["list"])?;
        ensure!(
            tools
                .as_array()
                .is_some_and(|t| t.iter().any(|n| n == "add")),
            "tools: {tools}"
        );
        ensure!(
            !tools
                .as_array()
                .is_some_and(|t| t.iter().any(|n| n == "secret_tool")),
            "a denied tool is listed: {tools}"
        );
        let sum = client(
            &gateway.url,
            mode,
            &["call", "add", r#"{"a": 20, "b": 22}"#],
        )?;
        ensure!(
            sum["text"][0] == "42" && sum["isError"] == false,
            "add: {sum}"
        );
        let echo = client(
            &gateway.url,
            mode,
            &["call", "echo", r#"{"text": "héllo ✓"}"#],
        )?;
        ensure!(echo["text"][0] == "héllo ✓", "echo: {echo}");
        Ok(())
    })
}

#[test]
#[ignore = "needs the Python MCP peers: run `make e2e`"]
fn a_denied_tool_is_an_unknown_tool_for_the_client() -> Result<()> {
    let gateway = Gateway::start()?;
    both_eras(|mode| {
        let out = Command::new(python()?)
            .arg(workspace().join("e2e/peers/call.py"))
            .args([gateway.url.as_str(), mode, "call", "secret_tool", "{}"])
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(text.contains("Unknown tool: secret_tool"), "{text}");
        ensure!(
            !text.contains("should never be reached"),
            "the upstream ran a denied tool"
        );
        Ok(())
    })
}

#[test]
#[ignore = "needs the Python MCP peers: run `make e2e`"]
fn a_five_megabyte_result_arrives_whole() -> Result<()> {
    let gateway = Gateway::start()?;
    // Stateless era only: the SDK client refuses SSE events over 1 MiB, and initialize-era
    // servers answer calls as SSE, so 5 MB cannot pass there whoever is in the middle.
    let blob = client(
        &gateway.url,
        "2026-07-28",
        &["call", "blob", r#"{"size": 5242880}"#],
    )?;
    let text = blob["text"][0].as_str().unwrap_or_default();
    ensure!(
        text.len() == 5 * 1024 * 1024 && text.bytes().all(|b| b == b'x'),
        "got {} bytes",
        text.len()
    );
    Ok(())
}

/// The header `name` of a response.
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[test]
#[ignore = "needs the Python MCP peers: run `make e2e`"]
fn one_session_across_two_replicas_restarts_and_an_upstream_that_forgot_it() -> Result<()> {
    let mut gateway = Gateway::with_proxies(2)?;
    let urls = [gateway.url_of(0), gateway.url_of(1)];

    // initialize on one replica, everything else alternating between the two.
    let (status, headers, _) = mcp_post(
        &urls[0],
        &[],
        &serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {},
            "clientInfo": {"name": "e2e", "version": "1"}}}),
    )?;
    ensure!(status == 200, "initialize: {status}");
    let sid = header(&headers, "mcp-session-id")
        .context("no session id")?
        .to_owned();
    let session = [
        ("Mcp-Session-Id", sid.as_str()),
        ("MCP-Protocol-Version", "2025-11-25"),
    ];
    let (status, _, _) = mcp_post(
        &urls[1],
        &session,
        &serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )?;
    ensure!(
        status == 202,
        "initialized through the other replica: {status}"
    );
    let add = |url: &str, id: u64| -> Result<Value> {
        let (status, _, messages) = mcp_post(
            url,
            &session,
            &serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                "params": {"name": "add", "arguments": {"a": id, "b": 1}}}),
        )?;
        ensure!(status == 200, "call {id}: {status}");
        let answer = messages
            .into_iter()
            .find(|m| m["id"] == id)
            .context("no answer")?;
        Ok(answer["result"]["content"][0]["text"].clone())
    };
    for id in 1..=6 {
        let url = &urls[usize::try_from(id % 2)?];
        ensure!(
            add(url, id)?.as_str().and_then(|t| t.parse::<u64>().ok()) == Some(id + 1),
            "call {id} through {url}"
        );
    }

    // The upstream restarts and forgets the session: the gateway opens a new one for it.
    gateway.restart_upstream()?;
    ensure!(add(&urls[0], 10)? == "11", "after the upstream restarted");
    ensure!(
        add(&urls[1], 12)? == "13",
        "the other replica re-opens its own"
    );

    // A tampered id is an unknown session.
    let mut tampered = sid.clone();
    tampered.pop();
    tampered.push(if sid.ends_with('A') { 'B' } else { 'A' });
    let (status, _, _) = mcp_post(
        &urls[0],
        &[("Mcp-Session-Id", tampered.as_str())],
        &serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
    )?;
    ensure!(status == 404, "tampered session id: {status}");

    // A real client keeps its session while the proxy it talks to restarts.
    let mut client = Command::new(python()?)
        .arg(workspace().join("e2e/peers/session.py"))
        .args([urls[0].as_str(), "legacy"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut stdout = std::io::BufReader::new(client.stdout.take().context("stdout")?);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line)?;
    ensure!(line.trim() == r#"["before"]"#, "before: {line}");
    gateway.restart_proxy(0)?;
    std::io::Write::write_all(client.stdin.as_mut().context("stdin")?, b"go\n")?;
    line.clear();
    std::io::BufRead::read_line(&mut stdout, &mut line)?;
    let status = client.wait()?;
    ensure!(
        line.trim() == r#"["after"]"# && status.success(),
        "after the proxy restarted: {line} ({status})"
    );
    Ok(())
}

/// Two `mcp` SDK servers behind one virtual server: every tool of `alpha` (its deny list
/// applied), `add` of `beta` renamed to `plus`.
struct Bundle {
    url: String,
    _upstreams: Vec<Process>,
    _proxy: Proxy,
    dir: tempfile::TempDir,
}

impl Bundle {
    fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let ports = [free_port(), free_port()];
        let upstreams = ports
            .iter()
            .map(|port| start_upstream(dir.path(), *port))
            .collect::<Result<Vec<_>>>()?;
        let proxy = gateway_for(
            dir.path(),
            "bundle.yaml",
            &format!(
                "apiVersion: mcpgate.dev/v1alpha1
kind: McpServer
metadata: {{name: alpha, namespace: peers}}
spec:
  remote: {{url: \"http://127.0.0.1:{}/mcp\"}}
  tools: {{deny: [secret_tool]}}
  public: true
---
apiVersion: mcpgate.dev/v1alpha1
kind: McpServer
metadata: {{name: beta, namespace: peers}}
spec:
  remote: {{url: \"http://127.0.0.1:{}/mcp\"}}
  public: true
---
apiVersion: mcpgate.dev/v1alpha1
kind: VirtualMcpServer
metadata: {{name: bundle, namespace: peers}}
spec:
  public: true
  instructions: Two demo servers in one.
  tools:
  - server: alpha
    tools: [\"*\"]
  - server: beta
    tools: [add]
    rename: {{add: plus}}
",
                ports[0], ports[1]
            ),
        )?;
        Ok(Self {
            url: format!("http://127.0.0.1:{}/peers/mcp/bundle/server", proxy.port),
            _upstreams: upstreams,
            _proxy: proxy,
            dir,
        })
    }
}

#[test]
#[ignore = "needs the Python MCP peers: run `make e2e`"]
fn a_virtual_server_aggregates_and_routes_to_its_members() -> Result<()> {
    let bundle = Bundle::start()?;
    for mode in ["legacy", "auto", "2026-07-28"] {
        let tools = client(&bundle.url, mode, &["list"])?;
        let expected = serde_json::json!([
            "alpha_add",
            "alpha_blob",
            "alpha_echo",
            "alpha_sleep",
            "plus"
        ]);
        ensure!(tools == expected, "{mode}: tools {tools}");
        let sum = client(&bundle.url, mode, &["call", "plus", r#"{"a": 40, "b": 2}"#])?;
        ensure!(sum["text"][0] == "42", "{mode}: plus {sum}");
        let echo = client(
            &bundle.url,
            mode,
            &["call", "alpha_echo", r#"{"text": "through alpha"}"#],
        )?;
        ensure!(echo["text"][0] == "through alpha", "{mode}: echo {echo}");
        for hidden in ["alpha_secret_tool", "beta_add", "beta_echo", "add"] {
            let out = Command::new(python()?)
                .arg(workspace().join("e2e/peers/call.py"))
                .args([bundle.url.as_str(), mode, "call", hidden, "{}"])
                .output()?;
            let text = String::from_utf8_lossy(&out.stderr).into_owned()
                + &String::from_utf8_lossy(&out.stdout);
            ensure!(
                text.contains(&format!("Unknown tool: {hidden}")),
                "{mode}: {hidden}: {text}"
            );
        }
    }

    // The merged initialize result, seen on the wire.
    let (status, headers, messages) = mcp_post(
        &bundle.url,
        &[],
        &serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "e2e", "version": "1"}}}),
    )?;
    ensure!(status == 200, "initialize: {status}");
    ensure!(
        header(&headers, "mcp-session-id").is_some(),
        "no session id"
    );
    let result = &messages.first().context("no answer")?["result"];
    ensure!(
        result["protocolVersion"] == "2025-06-18"
            && result["serverInfo"]["name"] == "peers/bundle"
            && result["capabilities"]["tools"]["listChanged"] == true,
        "initialize result: {result}"
    );
    let instructions = result["instructions"].as_str().unwrap_or_default();
    ensure!(
        instructions.starts_with("Two demo servers in one.")
            && instructions.contains("A demo server behind mcpgate."),
        "instructions: {instructions}"
    );
    Ok(())
}

/// McpServer `first` at `url` (with `extra` remote fields), the demo server, and the virtual
/// server `mixed`: every tool of `first`, `add` of the demo server.
fn mixed_manifests(first: &str, url: &str, extra: &str, demo_port: u16) -> String {
    format!(
        "apiVersion: mcpgate.dev/v1alpha1
kind: McpServer
metadata: {{name: {first}, namespace: peers}}
spec:
  remote: {{url: \"{url}\"{extra}}}
  public: true
---
apiVersion: mcpgate.dev/v1alpha1
kind: McpServer
metadata: {{name: demo, namespace: peers}}
spec:
  remote: {{url: \"http://127.0.0.1:{demo_port}/mcp\"}}
  public: true
---
apiVersion: mcpgate.dev/v1alpha1
kind: VirtualMcpServer
metadata: {{name: mixed, namespace: peers}}
spec:
  public: true
  tools:
  - server: {first}
    tools: [\"*\"]
  - server: demo
    tools: [add]
"
    )
}

/// Through `url` in `mode`: the reference server's long-running operation reports three
/// progress events, and its `get-sum` adds (tool names after `prefix`).
fn progress_and_sum(url: &str, mode: &str, prefix: &str) -> Result<()> {
    let out = relay(
        url,
        mode,
        &[&format!("{prefix}trigger-long-running-operation")],
    )?;
    ensure!(
        out["progress"].as_array().map(Vec::len) == Some(3),
        "{mode} progress at {url}: {out}"
    );
    let sum = client(
        url,
        mode,
        &["call", &format!("{prefix}get-sum"), r#"{"a": 40, "b": 2}"#],
    )?;
    ensure!(
        sum["text"][0].as_str().unwrap_or_default().contains("42"),
        "{mode} get-sum at {url}: {sum}"
    );
    Ok(())
}

/// Through `url` in the initialize era: progress, and an elicitation the reference server
/// sends mid-call, answered by the client (tool names after `prefix`).
fn progress_and_elicitation(url: &str, prefix: &str) -> Result<()> {
    let out = relay(
        url,
        "legacy",
        &[
            &format!("{prefix}trigger-long-running-operation"),
            &format!("{prefix}trigger-elicitation-request"),
        ],
    )?;
    ensure!(
        out["progress"].as_array().map(Vec::len) == Some(3),
        "{url}: progress {out}"
    );
    let elicited = out["elicitation"].to_string();
    ensure!(
        elicited.contains("Name: mcpgate") && out["asked"].as_array().map(Vec::len) == Some(1),
        "{url}: elicitation {out}"
    );
    Ok(())
}

/// Runs `e2e/peers/relay.py`; returns its JSON output.
fn relay(url: &str, mode: &str, tools: &[&str]) -> Result<Value> {
    run_peer("relay.py", &[&[url, mode], tools].concat())
}

#[test]
#[ignore = "needs the Python and Node MCP peers: run `make e2e`"]
fn relays_with_the_reference_server_in_both_eras() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (everything_port, demo_port) = (free_port(), free_port());
    let _everything = everything_server(dir.path(), everything_port, "streamableHttp")?;
    let _demo = start_upstream(dir.path(), demo_port)?;
    let proxy = gateway_for(
        dir.path(),
        "servers.yaml",
        &mixed_manifests(
            "everything",
            &format!("http://127.0.0.1:{everything_port}/mcp"),
            "",
            demo_port,
        ),
    )?;
    let single = format!(
        "http://127.0.0.1:{}/peers/mcp/everything/server",
        proxy.port
    );
    let mixed = format!("http://127.0.0.1:{}/peers/mcp/mixed/server", proxy.port);

    // Initialize era: progress, and an elicitation the upstream sends mid-call answered by
    // the client through the gateway, on a server route and through the virtual server.
    for (url, prefix) in [(&single, ""), (&mixed, "everything_")] {
        progress_and_elicitation(url, prefix)?;
    }

    // Stateless era in front of an initialize-only upstream: the gateway holds the session.
    for (url, prefix) in [(&single, ""), (&mixed, "everything_")] {
        progress_and_sum(url, "2026-07-28", prefix)?;
    }
    let tools = client(&mixed, "2026-07-28", &["list"])?;
    ensure!(
        tools
            .as_array()
            .is_some_and(|t| t.iter().any(|n| n == "everything_echo")
                && t.iter().any(|n| n == "demo_add")
                && !t.iter().any(|n| n == "demo_echo")),
        "mixed tools: {tools}"
    );
    Ok(())
}

#[test]
#[ignore = "needs the Python MCP peers: run `make e2e`"]
fn a_configuration_change_tells_open_sessions_their_tools_changed() -> Result<()> {
    let bundle = Bundle::start()?;
    // The session's GET stream in the initialize era, a subscriptions/listen stream in
    // 2026-07-28; each time the platform team renames beta's tool, the operator re-renders
    // and the proxy reloads.
    for (mode, before, after) in [
        ("legacy", "plus", "beta_sum"),
        ("2026-07-28", "beta_sum", "plus"),
    ] {
        let line = peer_around("listen.py", &[&bundle.url, mode], |first| {
            ensure!(
                first.contains(&format!("\"{before}\"")),
                "{mode} before: {first}"
            );
            let manifests = bundle.dir.path().join("manifests");
            let yaml = std::fs::read_to_string(manifests.join("bundle.yaml"))?;
            std::fs::write(
                manifests.join("bundle.yaml"),
                yaml.replace(&format!("{{add: {before}}}"), &format!("{{add: {after}}}")),
            )?;
            render(&manifests, &bundle.dir.path().join("config"))
                .context("standalone render failed")
        })?;
        ensure!(
            line.contains(&format!("\"{after}\"")) && !line.contains(&format!("\"{before}\"")),
            "{mode} after the change: {line}"
        );
    }
    Ok(())
}

#[test]
#[ignore = "needs the Python MCP peers: run `make e2e`"]
fn configuration_reloads_under_load_fail_no_request() -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let gateway = Gateway::start()?;
    let stop = AtomicBool::new(false);
    let (ok, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let manifests = gateway.dir.path().join("manifests");
    let config = gateway.dir.path().join("config");
    let reloads = || -> Result<f64> {
        let (_, metrics) = http_get(&format!(
            "http://127.0.0.1:{}/metrics",
            gateway.proxies[0].admin
        ))?;
        Ok(sum_metric(
            &metrics,
            "mcpgate_config_reloads_total",
            &[("outcome", "ok")],
        ))
    };
    let before = reloads()?;
    std::thread::scope(|scope| -> Result<()> {
        for worker in 0..4u64 {
            let (stop, ok, failed, url) = (&stop, &ok, &failed, &gateway.url);
            scope.spawn(move || {
                let mut id = worker * 1_000_000;
                while !stop.load(Ordering::Relaxed) {
                    id += 1;
                    let request = serde_json::json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                        "params": {"name": "add", "arguments": {"a": id, "b": 1},
                            "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                                      "io.modelcontextprotocol/clientCapabilities": {}}}});
                    let headers = [
                        ("MCP-Protocol-Version", "2026-07-28"),
                        ("Mcp-Method", "tools/call"),
                        ("Mcp-Name", "add"),
                    ];
                    let answered = mcp_post(url, &headers, &request).is_ok_and(|(status, _, m)| {
                        status == 200
                            && m.first().is_some_and(|m| {
                                m["result"]["content"][0]["text"].as_str().and_then(|t| t.parse::<u64>().ok()) == Some(id + 1)
                            })
                    });
                    let counter = if answered { ok } else { failed };
                    counter.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        // Ten new configurations while the calls run: the deny list flips each time.
        for round in 0..10 {
            let deny = if round % 2 == 0 {
                "[secret_tool, blob]"
            } else {
                "[secret_tool]"
            };
            let path = manifests.join("server.yaml");
            let yaml = std::fs::read_to_string(&path)?;
            let (head, _) = yaml.split_once("  tools:").context("no tools line")?;
            std::fs::write(
                &path,
                format!("{head}  tools: {{deny: {deny}}}\n  public: true\n"),
            )?;
            render(&manifests, &config).with_context(|| format!("render {round} failed"))?;
            std::thread::sleep(Duration::from_millis(300));
        }
        stop.store(true, Ordering::Relaxed);
        Ok(())
    })?;
    let (ok, failed) = (ok.into_inner(), failed.into_inner());
    let reloaded = reloads()? - before;
    eprintln!("{ok} calls answered, {failed} failed, {reloaded} reloads");
    ensure!(
        failed == 0,
        "{failed} of {} calls failed during reloads",
        ok + failed
    );
    ensure!(ok > 100, "only {ok} calls ran");
    ensure!(reloaded >= 10.0, "only {reloaded} reloads happened");
    Ok(())
}

#[test]
#[ignore = "needs the Python and Node MCP peers: run `make e2e`"]
fn an_http_sse_upstream_through_server_and_virtual_routes() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (old_port, demo_port) = (free_port(), free_port());
    let mut old = everything_server(dir.path(), old_port, "sse")?;
    let _demo = start_upstream(dir.path(), demo_port)?;
    let proxy = gateway_for(
        dir.path(),
        "servers.yaml",
        &mixed_manifests(
            "old",
            &format!("http://127.0.0.1:{old_port}/sse"),
            ", transport: Sse",
            demo_port,
        ),
    )?;
    let single = format!("http://127.0.0.1:{}/peers/mcp/old/server", proxy.port);
    let mixed = format!("http://127.0.0.1:{}/peers/mcp/mixed/server", proxy.port);
    for (url, prefix) in [(&single, ""), (&mixed, "old_")] {
        for mode in ["legacy", "2026-07-28"] {
            progress_and_sum(url, mode, prefix)?;
        }
        // The upstream asks the client mid-call; the answer goes back over the old transport.
        progress_and_elicitation(url, prefix)?;
    }
    let add = client(
        &mixed,
        "legacy",
        &["call", "demo_add", r#"{"a": 40, "b": 2}"#],
    )?;
    ensure!(add["text"][0] == "42", "demo_add: {add}");

    // The upstream restarts and forgets its sessions: the gateway opens new ones.
    old.terminate();
    let _old = everything_server(dir.path(), old_port, "sse")?;
    for mode in ["legacy", "2026-07-28"] {
        progress_and_sum(&single, mode, "")?;
        progress_and_sum(&mixed, mode, "old_")?;
    }
    Ok(())
}

/// Opens a session's GET stream on `url`; the socket, to read until the gateway ends it.
fn open_stream(url: &str, sid: &str) -> Result<std::net::TcpStream> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").context("http:// URLs only")?;
    let (host, path) = rest.split_once('/').context("no path")?;
    let mut stream = std::net::TcpStream::connect(host)?;
    write!(
        stream,
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\nMcp-Session-Id: {sid}\r\nMCP-Protocol-Version: 2025-11-25\r\nConnection: close\r\n\r\n"
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    ensure!(
        head.starts_with(b"HTTP/1.1 200"),
        "GET stream: {:?}",
        String::from_utf8_lossy(&head)
    );
    Ok(stream)
}

/// Whether the gateway ends `stream` within 10 s.
fn ended(mut stream: std::net::TcpStream) -> bool {
    let mut sink = Vec::new();
    std::io::Read::read_to_end(&mut stream, &mut sink).is_ok()
}

#[test]
#[ignore = "needs the Python MCP peers: run `make e2e`"]
fn a_reopened_stream_replaces_the_old_one_and_delete_ends_it() -> Result<()> {
    let gateway = Gateway::start()?;
    let bundle = Bundle::start()?;
    for url in [&gateway.url, &bundle.url] {
        let (status, headers, _) = mcp_post(
            url,
            &[],
            &serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
                "protocolVersion": "2025-11-25", "capabilities": {},
                "clientInfo": {"name": "e2e", "version": "1"}}}),
        )?;
        ensure!(status == 200, "initialize at {url}: {status}");
        let sid = header(&headers, "mcp-session-id").context("no session id")?;
        let first = open_stream(url, sid)?;
        let second = open_stream(url, sid)?;
        ensure!(ended(first), "{url}: the old stream stayed open");
        let session = [
            ("Mcp-Session-Id", sid),
            ("MCP-Protocol-Version", "2025-11-25"),
        ];
        let (status, _, _) = mcp_request("DELETE", url, &session, None)?;
        ensure!(status < 300, "DELETE at {url}: {status}");
        ensure!(ended(second), "{url}: the stream outlived its session");
        let (status, _, _) = mcp_post(
            url,
            &[
                ("Mcp-Session-Id", sid),
                ("MCP-Protocol-Version", "2025-11-25"),
            ],
            &serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        )?;
        ensure!(status == 404, "{url}: a deleted session answered {status}");
    }
    Ok(())
}

/// What the Python client saw of each of `count` calls of `tool` in one session.
fn calls(url: &str, mode: &str, count: usize, tool: &str, arguments: &str) -> Result<Vec<Value>> {
    let outcomes = client(url, mode, &["calls", &count.to_string(), tool, arguments])?;
    Ok(outcomes.as_array().cloned().unwrap_or_default())
}

/// The JSON-RPC error codes of `outcomes` (0 for a result).
fn codes(outcomes: &[Value]) -> Vec<i64> {
    outcomes
        .iter()
        .map(|o| o["error"]["code"].as_i64().unwrap_or(0))
        .collect()
}

#[test]
#[ignore = "needs the Python MCP peers: run `make e2e`"]
fn python_client_meets_a_rate_limit_and_a_circuit_that_recovers() -> Result<()> {
    let mut gateway = Gateway::with(
        1,
        "  rateLimits: {perTool: [{tool: add, requests: 3, periodSeconds: 3600}]}\n  circuitBreaker: {consecutiveFailures: 2, openSeconds: 2}\n",
    )?;
    let url = gateway.url.clone();
    // The budget of `add` is shared by both eras' calls: 3 pass, the rest are told to wait.
    let legacy = calls(&url, "legacy", 5, "add", r#"{"a": 1, "b": 2}"#)?;
    ensure!(codes(&legacy) == [0, 0, 0, -32029, -32029], "{legacy:?}");
    ensure!(legacy[0]["text"] == serde_json::json!(["3"]), "{legacy:?}");
    let message = legacy[3]["error"]["message"].as_str().unwrap_or_default();
    ensure!(
        message.starts_with("rate limited: peers/demo allows 3 tool calls of this tool every 3600 s (spec.rateLimits.perTool); retry after "),
        "{message}"
    );
    let modern = calls(&url, "2026-07-28", 2, "add", r#"{"a": 1, "b": 2}"#)?;
    ensure!(codes(&modern) == [-32029, -32029], "{modern:?}");
    ensure!(codes(&calls(&url, "2026-07-28", 1, "echo", r#"{"text": "hi"}"#)?) == [0]);
    let limited =
        gateway.proxies[0].metric("mcpgate_rate_limited_total", &[("limit", "perTool")])?;
    ensure!(limited == 4.0, "{limited}");

    // The upstream goes away: two failures open the circuit, and calls fail at once.
    gateway.upstream.terminate();
    let down = calls(&url, "2026-07-28", 4, "echo", r#"{"text": "hi"}"#)?;
    ensure!(codes(&down) == [-32001; 4], "{down:?}");
    let messages: Vec<&str> = down
        .iter()
        .map(|o| o["error"]["message"].as_str().unwrap_or_default())
        .collect();
    ensure!(
        messages[0] == "upstream peers/demo is unreachable",
        "{messages:?}"
    );
    ensure!(
        messages[2].starts_with("upstream peers/demo is failing and the gateway stopped sending to it for now (its circuit is open"),
        "{messages:?}"
    );
    ensure!(gateway.proxies[0].metric("mcpgate_circuit_open", &[])? == 1.0);

    // Back, and once the circuit's cool-down is over the probe closes it: both eras call.
    gateway.upstream = start_upstream(gateway.dir.path(), gateway.upstream_port)?;
    wait_for("the circuit to close", Duration::from_secs(20), || {
        let call = calls(&url, "legacy", 1, "echo", r#"{"text": "back"}"#).ok()?;
        (codes(&call) == [0]).then_some(())
    })?;
    both_eras(|mode| {
        let up = calls(&url, mode, 2, "echo", r#"{"text": "back"}"#)?;
        ensure!(codes(&up) == [0, 0], "{up:?}");
        Ok(())
    })?;
    ensure!(gateway.proxies[0].metric("mcpgate_circuit_open", &[])? == 0.0);
    Ok(())
}
