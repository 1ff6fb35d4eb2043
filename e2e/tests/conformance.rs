//! The MCP conformance suite (`@modelcontextprotocol/conformance`, server scenarios) against
//! the gateway: `mcpgate-proxy` fronting `e2e/peers/conformance_server.py`, once for the
//! scenarios the 2025-11-25 revision requires and once for 2026-07-28, on two routes: the
//! server's own (unprefixed) route, and a VirtualMcpServer bundling it (its tools renamed to
//! their own names, so the tool scenarios find them; prompts and resource URIs keep the
//! bundle's prefixes). Failures must be listed in `e2e/conformance/expected-failures.yml`
//! (server route) or `expected-failures-virtual.yml` (bundle), and a listed failure that
//! starts passing fails the test too. Ignored by plain `cargo test`; `make e2e` installs the
//! suite (and the Node.js 22 it needs) and runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use mcpgate_e2e::{conformance_suite, free_port, gateway_for, python_peer, workspace};
use serde_json::Value;

const REVISIONS: [&str; 2] = ["2025-11-25", "2026-07-28"];
/// Where the suite runs (the route's name) and the failures expected there.
const ROUTES: [(&str, &str); 2] = [
    ("fixture", "e2e/conformance/expected-failures.yml"),
    ("bundle", "e2e/conformance/expected-failures-virtual.yml"),
];

#[test]
#[ignore = "needs the conformance suite and the Python MCP peers: run `make e2e`"]
fn the_gateway_passes_the_conformance_suite() -> Result<()> {
    let (node, suite) = conformance_suite()?;
    let dir = tempfile::tempdir()?;
    let upstream_port = free_port();
    let _upstream = python_peer("conformance_server.py", upstream_port, dir.path())?;
    let renames: Vec<String> = fixture_tools()?
        .iter()
        .map(|tool| format!("{tool}: {tool}"))
        .collect();
    let proxy = gateway_for(
        dir.path(),
        "server.yaml",
        &format!(
            "apiVersion: mcpgate.dev/v1alpha1\nkind: McpServer\nmetadata: {{name: fixture, namespace: conformance}}\nspec:\n  remote: {{url: \"http://127.0.0.1:{upstream_port}/mcp\"}}\n  public: true\n---\napiVersion: mcpgate.dev/v1alpha1\nkind: VirtualMcpServer\nmetadata: {{name: bundle, namespace: conformance}}\nspec:\n  public: true\n  tools:\n  - server: fixture\n    tools: [\"*\"]\n    rename: {{{}}}\n",
            renames.join(", ")
        ),
    )?;

    let mut report = Vec::new();
    for ((route, baseline), revision) in ROUTES
        .iter()
        .flat_map(|route| REVISIONS.map(|revision| (route, revision)))
    {
        let url = format!(
            "http://127.0.0.1:{}/conformance/mcp/{route}/server",
            proxy.port
        );
        let baseline = workspace().join(baseline);
        let expected = expected_scenarios(&baseline)?;
        let results = dir.path().join(format!("results-{route}-{revision}"));
        let out = Command::new(&node)
            .arg(&suite)
            .args(["server", "--url", &url, "--requirements", revision])
            .arg("--expected-failures")
            .arg(&baseline)
            .arg("--output-dir")
            .arg(&results)
            .env("NO_COLOR", "1")
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            out.status.success(),
            "{route}: conformance --requirements {revision} failed:\n{stdout}\n{stderr}\nproxy log:\n{}",
            proxy.process.log()
        );
        // Read the checks ourselves too: only listed scenarios may have failed.
        let summary = summarize(&results)?;
        let unexpected: Vec<_> = summary
            .failing
            .iter()
            .filter(|s| !expected.contains(s.as_str()))
            .collect();
        ensure!(
            unexpected.is_empty(),
            "{route} {revision}: unlisted failing scenarios {unexpected:?}\n{stdout}"
        );
        ensure!(
            summary.scenarios >= 20 && summary.passed_checks > 0,
            "{route} {revision}: the suite ran too little ({} scenarios)\n{stdout}",
            summary.scenarios
        );
        report.push(format!(
            "{route} {revision}: {} scenarios, {} checks passed, {} failed (expected: {})",
            summary.scenarios,
            summary.passed_checks,
            summary.failed_checks,
            summary
                .failing
                .iter()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    println!("conformance through mcpgate:\n  {}", report.join("\n  "));
    Ok(())
}

/// The tools `conformance_server.py` defines (each `@server.tool()` function's name).
fn fixture_tools() -> Result<Vec<String>> {
    let source = std::fs::read_to_string(workspace().join("e2e/peers/conformance_server.py"))?;
    let lines: Vec<&str> = source.lines().collect();
    let tools: Vec<String> = lines
        .windows(2)
        .filter(|pair| pair[0].trim() == "@server.tool()")
        .filter_map(|pair| {
            let signature = pair[1].trim_start_matches("async ").strip_prefix("def ")?;
            Some(signature.split('(').next()?.to_owned())
        })
        .collect();
    ensure!(
        tools.len() > 10,
        "found only {tools:?} in conformance_server.py"
    );
    Ok(tools)
}

/// Scenario names listed in the expected-failures file (its `server:` list).
fn expected_scenarios(path: &Path) -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(path)?;
    let value: serde_yaml::Value = serde_yaml::from_str(&text)?;
    Ok(value["server"]
        .as_sequence()
        .context("expected-failures.yml has no server list")?
        .iter()
        .filter_map(|s| s.as_str())
        .map(|s| s.split(':').next().unwrap_or(s).to_owned())
        .collect())
}

struct Summary {
    scenarios: usize,
    passed_checks: usize,
    failed_checks: usize,
    failing: BTreeSet<String>,
}

/// Counts the checks in every `<results>/server-<scenario>-<time>/checks.json`.
fn summarize(results: &Path) -> Result<Summary> {
    let mut summary = Summary {
        scenarios: 0,
        passed_checks: 0,
        failed_checks: 0,
        failing: BTreeSet::new(),
    };
    for entry in std::fs::read_dir(results)? {
        let path = entry?.path();
        let Ok(text) = std::fs::read_to_string(path.join("checks.json")) else {
            continue;
        };
        let checks: Vec<Value> = serde_json::from_str(&text)?;
        let dir_name = path.file_name().unwrap().to_string_lossy().into_owned();
        // `server-<scenario>-<ISO time with dashes>`: the time has 6 dash-separated parts.
        let parts: Vec<&str> = dir_name.split('-').collect();
        let scenario = parts[1..parts.len().saturating_sub(6)].join("-");
        summary.scenarios += 1;
        for check in &checks {
            match check["status"].as_str() {
                Some("SUCCESS") => summary.passed_checks += 1,
                Some("FAILURE" | "WARNING") => {
                    summary.failed_checks += 1;
                    summary.failing.insert(scenario.clone());
                }
                _ => {}
            }
        }
    }
    Ok(summary)
}
