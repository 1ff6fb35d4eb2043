//! The audit trail: one JSON line per tool call with who made it and what happened, on its
//! own sink, never a token, credential or argument value; and the tool call metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::gateway::*;
use common::idp;
use serde_json::{Value, json};

fn tool_call(tool: &str, arguments: Value) -> String {
    json!({"jsonrpc": "2.0", "id": "c-1", "method": "tools/call",
        "params": {"name": tool, "arguments": arguments}})
    .to_string()
}

fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every audit line is one JSON object"))
        .collect()
}

#[test]
fn every_tool_call_is_recorded_with_its_caller_and_outcome() {
    let (_runtime, idp, key) = idp::with_one_key();
    let (upstream, _seen) = spawn_upstream();
    let dir = tempfile::tempdir().unwrap();
    let keyed = json!({"type": "sharedApiKey", "header": "X-Api-Key", "template": "Key {{API_KEY}}",
        "credential": {"secret": "cred", "key": "api-key"}});
    let mut tools = server_config(upstream, "tools", keyed, vec!["hidden"], 5000, false);
    tools["access"]["subjects"] = json!([{"kind": "User", "name": "alice@example.com"}]);
    let mut gone = server_config(
        free_port(),
        "gone",
        json!({"type": "none"}),
        vec![],
        5000,
        false,
    );
    gone["access"] = tools["access"].clone();
    write_config(
        dir.path(),
        &json!({
            "schema": 1, "version": "audit",
            "servers": [tools, gone, server_config(upstream, "open", json!({"type": "none"}), vec![], 5000, true)],
            "virtualServers": [{"namespace": "team", "name": "bundle", "path": "/team/mcp/bundle/server",
                "description": null, "instructions": null,
                "access": {"subjects": [{"kind": "Group", "name": "team-a"}]},
                "members": [{"server": "tools", "all": false, "tools": {"echo": "say"}}]}],
        }),
    );
    let log = dir.path().join("audit.log");
    let (_proxy, port, admin) = start_proxy(
        dir.path(),
        &idp.proxy_flags(&["--audit-log", log.to_str().unwrap()]),
    );
    let token = idp::sign(&key, &idp.claims());
    let bearer = format!("Bearer {token}");
    let auth = [("Authorization", bearer.as_str())];
    let secret_argument = json!({"password": "hunter2-do-not-log", "n": 1});
    wait_for("the proxy", || {
        (post(port, "/team/mcp/open/server", &[], &call("warm-up")).0 == 200).then_some(())
    });

    let calls = [
        ("/team/mcp/tools/server", "echo", secret_argument.clone()),
        ("/team/mcp/tools/server", "fail", json!({})),
        ("/team/mcp/tools/server", "hidden", json!({})),
        ("/team/mcp/gone/server", "echo", json!({})),
        ("/team/mcp/bundle/server", "say", json!({"x": true})),
        ("/team/mcp/bundle/server", "nothing_here", json!({})),
    ];
    let mut request_ids = Vec::new();
    for (path, tool, arguments) in &calls {
        let mut headers = auth.to_vec();
        // The caller names the first request; the gateway names the others.
        if *tool == "echo" && path.contains("tools") {
            headers.push(("X-Request-Id", "caller-req-42"));
        }
        if path.contains("bundle") {
            headers.extend([
                ("MCP-Protocol-Version", "2026-07-28"),
                ("Mcp-Method", "tools/call"),
                ("Mcp-Name", tool),
            ]);
        }
        let mut body: Value = serde_json::from_str(&tool_call(tool, arguments.clone())).unwrap();
        if path.contains("bundle") {
            body["params"]["_meta"] = json!({"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                "io.modelcontextprotocol/clientCapabilities": {}, "io.modelcontextprotocol/clientInfo": {"name": "t", "version": "1"}});
        }
        let (status, head, answer) = post(port, path, &headers, &body.to_string());
        assert_eq!(status, 200, "{path} {tool}: {answer}");
        let id = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("x-request-id: ")
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| panic!("{path} {tool}: no x-request-id in {head}"));
        request_ids.push(id);
    }
    // Not tool calls, or refused before routing: no record.
    post(
        port,
        "/team/mcp/tools/server",
        &auth,
        &json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).to_string(),
    );
    post(port, "/team/mcp/tools/server", &[], &call("echo"));

    let lines = wait_for("the audit records", || {
        let lines = records(&log);
        (lines.len() >= 7).then_some(lines)
    });
    std::thread::sleep(std::time::Duration::from_millis(300));
    let lines = {
        let again = records(&log);
        assert_eq!(
            again.len(),
            lines.len(),
            "one record per tool call, no more"
        );
        again
    };
    assert_eq!(lines.len(), 7, "{lines:#?}");
    let by_tool = |server: &str, tool: &str| {
        lines
            .iter()
            .find(|r| r["server"] == server && r["tool"] == tool)
            .unwrap_or_else(|| panic!("no record of {server}/{tool}: {lines:#?}"))
    };

    let echo = by_tool("tools", "echo");
    assert_eq!(echo["kind"], "toolCall");
    assert_eq!(echo["namespace"], "team");
    assert_eq!(echo["route"], "server");
    assert_eq!(echo["upstream"], "team/tools");
    assert_eq!(echo["upstreamTool"], "echo");
    assert_eq!(echo["outcome"], "ok");
    assert!(echo.get("errorCode").is_none());
    assert_eq!(
        echo["caller"],
        json!({"user": "alice@example.com", "email": "alice@example.com",
            "groups": ["team-a", "admins"], "method": "oidc", "issuer": idp.issuer})
    );
    let raw = secret_argument.to_string();
    assert_eq!(echo["argumentBytes"], raw.len());
    assert_eq!(echo["argumentSha256"].as_str().unwrap().len(), 64);
    assert!(echo["latencyMs"].as_f64().unwrap() > 0.0);
    let time: jiff::Timestamp = echo["time"].as_str().unwrap().parse().unwrap();
    assert!(time.duration_until(jiff::Timestamp::now()).as_secs() < 60);

    // Each record names the request that carried it, as the response did.
    assert_eq!(request_ids[0], "caller-req-42");
    assert_eq!(echo["requestId"], "caller-req-42");
    let fail = by_tool("tools", "fail");
    assert_eq!(fail["requestId"], request_ids[1].as_str());
    assert_eq!(request_ids[1].len(), 32, "made by the gateway");
    assert_eq!(
        by_tool("bundle", "say")["requestId"],
        request_ids[4].as_str()
    );
    let unique: std::collections::BTreeSet<_> = request_ids.iter().collect();
    assert_eq!(unique.len(), request_ids.len());

    assert_eq!(by_tool("tools", "fail")["outcome"], "tool_error");
    let hidden = by_tool("tools", "hidden");
    assert_eq!(
        (hidden["outcome"].as_str(), hidden["errorCode"].as_i64()),
        (Some("error"), Some(-32602))
    );
    let gone = by_tool("gone", "echo");
    assert_eq!(gone["outcome"], "error");
    assert_eq!(gone["errorCode"], -32001, "upstream unreachable");
    let say = by_tool("bundle", "say");
    assert_eq!(
        (
            &say["route"],
            &say["upstream"],
            &say["upstreamTool"],
            &say["outcome"]
        ),
        (
            &json!("virtual"),
            &json!("team/tools"),
            &json!("echo"),
            &json!("ok")
        )
    );
    let unknown = by_tool("bundle", "nothing_here");
    assert_eq!(
        (&unknown["upstream"], &unknown["errorCode"]),
        (&json!(""), &json!(-32602))
    );
    let open = by_tool("open", "warm-up");
    assert!(open["caller"].is_null(), "public routes have no caller");

    let text = std::fs::read_to_string(&log).unwrap();
    for secret in ["hunter2", &token, "s3cret", "Bearer"] {
        assert!(!text.contains(secret), "the audit log holds {secret:?}");
    }

    let (_, _, metrics) = get(admin, "/metrics");
    let sample = |labels: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with(&format!("mcpgate_tool_calls_total{{{labels}}}")))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    };
    assert_eq!(
        sample(r#"outcome="ok",server="tools",server_namespace="team",tool="echo""#),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        sample(r#"outcome="tool_error",server="tools",server_namespace="team",tool="fail""#),
        Some(1.0)
    );
    assert_eq!(
        sample(r#"outcome="error",server="tools",server_namespace="team",tool="_other""#),
        Some(1.0),
        "unknown tools share one label"
    );
    assert!(metrics.contains("mcpgate_tool_call_duration_seconds_bucket{outcome=\"ok\",server=\"bundle\",server_namespace=\"team\",tool=\"say\""));
    assert!(metrics.contains("mcpgate_audit_records_dropped_total 0"));
}
