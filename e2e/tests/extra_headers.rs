//! `x-mcp-headers` with a real upstream (`e2e/peers/headers_server.py`, the `mcp` SDK), which
//! reports the request headers it received: each server gets only the headers keyed by its
//! name (for a virtual server, by member), bad ones are refused with a JSON-RPC error, and
//! the values never reach the gateway's log or audit trail. Ignored by plain `cargo test`;
//! `make e2e` runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use anyhow::{Result, ensure};
use mcpgate_e2e::{call_in_session, free_port, gateway_for, python_peer};
use serde_json::{Value, json};

/// `tools/call` of `tool` with `arguments` in a fresh legacy session at `url`, sending
/// `extra` as `x-mcp-headers` when given; the HTTP status and the first text (or the error).
fn call(url: &str, tool: &str, arguments: Value, extra: Option<&str>) -> Result<(u16, String)> {
    let headers: Vec<(&str, &str)> = extra.map(|e| ("x-mcp-headers", e)).into_iter().collect();
    let (status, _, message) = call_in_session(url, &headers, tool, arguments)?;
    if status != 200 {
        return Ok((status, message.to_string()));
    }
    let text = message["result"]["content"][0]["text"]
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| message.to_string());
    Ok((status, text))
}

#[test]
#[ignore = "needs the Python MCP peers: run `make e2e`"]
fn each_upstream_gets_only_the_headers_meant_for_it() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let port = free_port();
    let _upstream = python_peer("headers_server.py", port, dir.path())?;
    let proxy = gateway_for(
        dir.path(),
        "servers.yaml",
        &format!(
            "apiVersion: mcpgate.dev/v1alpha1\nkind: McpServer\nmetadata: {{name: echo, namespace: team}}\nspec:\n  remote: {{url: \"http://127.0.0.1:{port}/mcp\"}}\n  public: true\n---\napiVersion: mcpgate.dev/v1alpha1\nkind: VirtualMcpServer\nmetadata: {{name: bundle, namespace: team}}\nspec:\n  public: true\n  tools:\n  - server: echo\n    tools: [header]\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: team-token\n  namespace: team\n  labels: {{mcpgate.dev/credential: \"true\"}}\n  annotations: {{mcpgate.dev/allowed-servers: keyed}}\nstringData: {{token: from-the-gateway}}\n---\napiVersion: mcpgate.dev/v1alpha1\nkind: McpServer\nmetadata: {{name: keyed, namespace: team}}\nspec:\n  remote: {{url: \"http://127.0.0.1:{port}/mcp\"}}\n  public: true\n  auth:\n    type: ApiKey\n    apiKey:\n      scope: Shared\n      headerName: X-Team-Token\n      secretKeyRef: {{name: team-token, key: token}}\n"
        ),
    )?;
    let base = format!("http://127.0.0.1:{}", proxy.port);
    let server = format!("{base}/team/mcp/echo/server");
    let bundle = format!("{base}/team/mcp/bundle/server");
    let ask = json!({"name": "x-team-token"});
    let mine = r#"{"echo": {"X-Team-Token": "s3cr3t-for-echo"}, "other": {"X-Team-Token": "not-for-echo"}}"#;

    assert_eq!(
        call(&server, "header", ask.clone(), None)?,
        (200, "-".into())
    );
    assert_eq!(
        call(&server, "header", ask.clone(), Some(mine))?,
        (200, "s3cr3t-for-echo".into()),
        "a server route gets the headers keyed by its name"
    );
    assert_eq!(
        call(&bundle, "echo_header", ask.clone(), Some(mine))?,
        (200, "s3cr3t-for-echo".into()),
        "a virtual server's member gets the headers keyed by the member's name"
    );
    assert_eq!(
        call(
            &server,
            "header",
            ask.clone(),
            Some(r#"{"other": {"X-Team-Token": "x"}}"#)
        )?,
        (200, "-".into()),
        "headers for another server never reach this one"
    );
    assert_eq!(
        call(
            &server,
            "header",
            json!({"name": "x-mcp-headers"}),
            Some(mine)
        )?,
        (200, "-".into()),
        "the header itself is not forwarded"
    );
    let keyed = format!("{base}/team/mcp/keyed/server");
    assert_eq!(
        call(&keyed, "header", ask.clone(), None)?,
        (200, "from-the-gateway".into()),
        "the shared key is injected"
    );
    assert_eq!(
        call(
            &keyed,
            "header",
            ask.clone(),
            Some(r#"{"keyed": {"X-Team-Token": "the-callers-own"}}"#)
        )?,
        (200, "the-callers-own".into()),
        "the caller's header wins over the injected key"
    );
    for (bad, says) in [
        (
            r#"{"echo": {"Host": "evil.example"}}"#,
            "host header may not",
        ),
        ("not json", "must be a JSON object"),
    ] {
        let (status, body) = call(&server, "header", ask.clone(), Some(bad))?;
        ensure!(
            status == 400 && body.contains(says) && body.contains("-32600"),
            "{bad}: {status} {body}"
        );
    }
    let log = proxy.process.log();
    ensure!(
        !log.contains("s3cr3t-for-echo"),
        "the value is never logged: {log}"
    );
    Ok(())
}
