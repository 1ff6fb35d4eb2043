//! Real MCP peers through the gateway: the Python `mcp` SDK client, in both protocol eras,
//! through `mcpgate-proxy` (configured by `mcpgate-operator standalone`) to an `mcp` SDK
//! server. Ignored by plain `cargo test`; `make e2e` installs the peers and runs them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mcpgate_e2e::{Process, Proxy, built_bin, free_port, python, wait_for, workspace};
use serde_json::Value;

/// The demo server, the rendered configuration and the proxy, stopped on drop.
struct Gateway {
    url: String,
    _upstream: Process,
    _proxy: Proxy,
    _dir: tempfile::TempDir,
}

impl Gateway {
    fn start() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let upstream_port = free_port();
        let upstream = Process::spawn(
            "demo MCP server",
            {
                let mut c = Command::new(python()?);
                c.arg(workspace().join("e2e/peers/demo_server.py"))
                    .arg(upstream_port.to_string());
                c
            },
            dir.path().join("upstream.log"),
        )?;
        let manifests = dir.path().join("manifests");
        std::fs::create_dir_all(&manifests)?;
        std::fs::write(
            manifests.join("server.yaml"),
            format!(
                "apiVersion: mcpgate.dev/v1alpha1\nkind: McpServer\nmetadata: {{name: demo, namespace: peers}}\nspec:\n  remote: {{url: \"http://127.0.0.1:{upstream_port}/mcp\"}}\n  tools: {{deny: [secret_tool]}}\n  public: true\n"
            ),
        )?;
        let config = dir.path().join("config");
        let status = Command::new(built_bin("mcpgate-operator")?)
            .args(["standalone", "--input"])
            .arg(&manifests)
            .arg("--output")
            .arg(&config)
            .status()?;
        ensure!(status.success(), "standalone render failed");
        let proxy = Proxy::start(
            &[OsStr::new("--config-dir"), config.as_os_str()],
            &[],
            dir.path(),
        )?;
        let port = proxy.port;
        wait_for("upstream listening", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", upstream_port)).ok()
        })?;
        Ok(Self {
            url: format!("http://127.0.0.1:{port}/peers/mcp/demo/server"),
            _upstream: upstream,
            _proxy: proxy,
            _dir: dir,
        })
    }
}

/// Runs the Python client; returns its JSON output.
fn client(url: &str, mode: &str, args: &[&str]) -> Result<Value> {
    let out = Command::new(python()?)
        .arg(workspace().join("e2e/peers/call.py"))
        .args([url, mode])
        .args(args)
        .output()?;
    ensure!(
        out.status.success(),
        "client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| String::from_utf8_lossy(&out.stdout).into_owned())
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
