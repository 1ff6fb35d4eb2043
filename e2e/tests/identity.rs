//! Who may call, with real parts only: McpCollaborators applied to a real kube-apiserver and
//! rendered by the operator; user tokens from a real OpenID provider (password and client
//! credentials grants); ServiceAccount tokens minted by the API server's TokenRequest and
//! reviewed by its TokenReview; the `mcp` and fastmcp clients calling with a bearer token
//! through a server and a virtual server; the audit trail of those calls. Ignored by plain
//! `cargo test`; `make e2e` runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mcpgate_e2e::{
    ControlPlane, IdentityProvider, Operator, Process, Proxy, free_port, mcp_post, python,
    run_peer_with, sum_metric, wait_for, workspace,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
/// The audience user tokens are minted for (the gateway's URL).
const USER_AUDIENCE: &str = "https://mcp.example.test";
/// The audience ServiceAccount tokens must carry.
const SA_AUDIENCE: &str = "mcpgate";

/// Agent scenarios on tenant A: `shared` sends one key for every caller, `personal` each
/// user's own (both in front of `headers_server.py` at `headers`); the agent may use both.
fn agent_manifests(headers: u16) -> String {
    format!(
        "apiVersion: v1
kind: Secret
metadata:
  name: shared-key
  labels: {{mcpgate.dev/credential: \"true\"}}
  annotations: {{mcpgate.dev/allowed-servers: shared}}
stringData: {{key: team-a-shared-key}}
---
apiVersion: mcpgate.dev/v1alpha1
kind: McpServer
metadata: {{name: shared}}
spec:
  remote: {{url: \"http://127.0.0.1:{headers}/mcp\"}}
  auth: {{type: ApiKey, apiKey: {{scope: Shared, headerName: X-Api-Key, secretKeyRef: {{name: shared-key, key: key}}}}}}
---
apiVersion: mcpgate.dev/v1alpha1
kind: McpServer
metadata: {{name: personal}}
spec:
  remote: {{url: \"http://127.0.0.1:{headers}/mcp\"}}
  auth: {{type: ApiKey, apiKey: {{scope: PerUser, headerName: X-Api-Key}}}}
---
apiVersion: mcpgate.dev/v1alpha1
kind: McpCollaborator
metadata: {{name: agent-servers}}
spec:
  targetRef: {{kind: McpServer, name: shared}}
  role: User
  subjects:
  - {{kind: ServiceAccount, name: agent, namespace: agents}}
---
apiVersion: mcpgate.dev/v1alpha1
kind: McpCollaborator
metadata: {{name: agent-personal}}
spec:
  targetRef: {{kind: McpServer, name: personal}}
  role: User
  subjects:
  - {{kind: ServiceAccount, name: agent, namespace: agents}}
"
    )
}

fn manifests(upstream: u16) -> (String, String) {
    let server = |name: &str| {
        format!(
            "apiVersion: mcpgate.dev/v1alpha1\nkind: McpServer\nmetadata: {{name: {name}}}\nspec:\n  remote: {{url: \"http://127.0.0.1:{upstream}/mcp\"}}\n  tools: {{deny: [secret_tool]}}\n"
        )
    };
    let team_a = format!(
        "{}---\n{}",
        server("tools"),
        "apiVersion: mcpgate.dev/v1alpha1
kind: VirtualMcpServer
metadata: {name: bundle}
spec:
  tools:
  - server: tools
    tools: [echo, add]
    rename: {add: sum}
---
apiVersion: mcpgate.dev/v1alpha1
kind: McpCollaborator
metadata: {name: tools-users}
spec:
  targetRef: {kind: McpServer, name: tools}
  role: User
  subjects:
  - {kind: User, name: alice@example.com}
  - {kind: ServiceAccount, name: agent, namespace: agents}
---
apiVersion: mcpgate.dev/v1alpha1
kind: McpCollaborator
metadata: {name: bundle-users}
spec:
  targetRef: {kind: VirtualMcpServer, name: bundle}
  role: User
  subjects:
  - {kind: Group, name: team-a}
---
apiVersion: mcpgate.dev/v1alpha1
kind: McpCollaborator
metadata: {name: dangling}
spec:
  targetRef: {kind: McpServer, name: not-there}
  role: User
  subjects:
  - {kind: Group, name: team-a}
"
    );
    let team_b = format!(
        "{}---\napiVersion: mcpgate.dev/v1alpha1\nkind: McpCollaborator\nmetadata: {{name: other-users}}\nspec:\n  targetRef: {{kind: McpServer, name: other}}\n  role: Manager\n  subjects:\n  - {{kind: User, name: bob@example.com}}\n",
        server("other")
    );
    (team_a, team_b)
}

/// A ServiceAccount token from the API server's TokenRequest (`kubectl create token`).
fn sa_token(plane: &ControlPlane, name: &str, audience: Option<&str>) -> Result<String> {
    let mut args = vec!["create", "token", name, "-n", "agents", "--duration", "10m"];
    if let Some(audience) = audience {
        args.extend(["--audience", audience]);
    }
    Ok(plane.kubectl(&args)?.trim().to_owned())
}

/// A client's first request.
fn initialize() -> Value {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "identity-test", "version": "1"}}})
}

/// (status, the `WWW-Authenticate` header, the JSON-RPC message) of a first request (an
/// `initialize`) with `token`.
fn ping_with(url: &str, token: &str) -> Result<(u16, String, Value)> {
    let bearer = format!("Bearer {token}");
    let headers = [("Authorization", bearer.as_str())];
    let (status, head, messages) = mcp_post(url, &headers, &initialize())?;
    let challenge = head
        .iter()
        .find(|(k, _)| k == "www-authenticate")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    Ok((
        status,
        challenge,
        messages.into_iter().next().unwrap_or_default(),
    ))
}

/// Runs a client peer with `token` as its bearer; its JSON output, or its error text.
fn client(script: &str, token: &str, args: &[&str]) -> std::result::Result<Value, String> {
    run_peer_with(script, args, &[("MCPGATE_BEARER", token)]).map_err(|e| format!("{e:#}"))
}

#[test]
#[ignore = "needs the control plane and peers: run `make e2e`"]
fn identities_from_a_real_provider_and_the_api_server_decide_who_may_call() -> Result<()> {
    let logs = tempfile::tempdir()?;
    let plane = ControlPlane::start()?;
    plane.install_crds()?;
    for namespace in ["team-a", "team-b", "agents", "gw"] {
        plane.kubectl(&["create", "namespace", namespace])?;
    }
    for account in ["agent", "intruder"] {
        plane.kubectl(&["create", "serviceaccount", account, "-n", "agents"])?;
    }
    let upstream_port = free_port();
    let mut upstream = std::process::Command::new(python()?);
    upstream
        .arg(workspace().join("e2e/peers/demo_server.py"))
        .arg(upstream_port.to_string());
    let _upstream = Process::spawn("demo MCP server", upstream, logs.path().join("up.log"))?;
    let headers_port = free_port();
    let _headers = mcpgate_e2e::python_peer("headers_server.py", headers_port, logs.path())?;
    let (team_a, team_b) = manifests(upstream_port);
    plane.apply("team-a", &team_a)?;
    plane.apply("team-a", &agent_manifests(headers_port))?;
    plane.apply("team-b", &team_b)?;
    let _operator = Operator::start(&plane, &["team-a", "team-b"], "gw", "identity")?;
    let idp = IdentityProvider::start(logs.path(), USER_AUDIENCE)?;

    let audit = logs.path().join("audit.log");
    let env: [(&str, &OsStr); 6] = [
        ("KUBECONFIG", plane.kubeconfig.as_os_str()),
        ("MCPGATE_OIDC_ISSUERS", OsStr::new(&idp.issuer)),
        ("MCPGATE_OIDC_AUDIENCES", OsStr::new(USER_AUDIENCE)),
        ("MCPGATE_OIDC_USER_CLAIM", OsStr::new("email")),
        ("MCPGATE_SERVICEACCOUNT_AUDIENCES", OsStr::new(SA_AUDIENCE)),
        ("MCPGATE_AUDIT_LOG", audit.as_os_str()),
    ];
    let proxy = Proxy::start(
        &[OsStr::new("--config-namespace"), OsStr::new("gw")],
        &env,
        logs.path(),
    )?;
    let base = format!("http://127.0.0.1:{}", proxy.port);
    let tools = format!("{base}/team-a/mcp/tools/server");
    let bundle = format!("{base}/team-a/mcp/bundle/server");
    let other = format!("{base}/team-b/mcp/other/server");

    let alice = idp.password_token("alice", "alice-pw")?;
    let bob = idp.password_token("bob", "bob-pw")?;
    let machine = idp.client_token()?;
    let agent = sa_token(&plane, "agent", Some(SA_AUDIENCE))?;
    let intruder = sa_token(&plane, "intruder", Some(SA_AUDIENCE))?;
    let agent_elsewhere = sa_token(&plane, "agent", Some("another-service"))?;
    let agent_default = sa_token(&plane, "agent", None)?;
    let mut last = None;
    let reached = wait_for("the routes to reach the proxy", WAIT, || {
        let answer = ping_with(&other, &bob);
        let ok = matches!(answer, Ok((200, _, _)));
        last = Some(answer);
        ok.then_some(())
    });
    reached.with_context(|| format!("last answer: {last:?}\n{}", proxy.process.log()))?;

    // The mcp and fastmcp clients, with bearer tokens, through a server and a virtual server.
    for mode in ["legacy", "2026-07-28"] {
        let sum = client(
            "call.py",
            &alice,
            &[&tools, mode, "call", "add", r#"{"a": 2, "b": 3}"#],
        )
        .map_err(anyhow::Error::msg)?;
        ensure!(sum["text"] == json!(["5"]), "mcp client, {mode}: {sum}");
        let sum = client(
            "call.py",
            &alice,
            &[&bundle, mode, "call", "sum", r#"{"a": 4, "b": 5}"#],
        )
        .map_err(anyhow::Error::msg)?;
        ensure!(
            sum["text"] == json!(["9"]),
            "mcp client, virtual, {mode}: {sum}"
        );
        let listed = client("fastmcp_client.py", &alice, &[&bundle, mode, "list"])
            .map_err(anyhow::Error::msg)?;
        ensure!(
            listed == json!(["sum", "tools_echo"]),
            "fastmcp client, {mode}: {listed}"
        );
    }
    let sum = client(
        "fastmcp_client.py",
        &alice,
        &[&bundle, "auto", "call", "sum", r#"{"a": 20, "b": 22}"#],
    )
    .map_err(anyhow::Error::msg)?;
    ensure!(sum["text"] == json!(["42"]), "{sum}");
    let echo = client(
        "fastmcp_client.py",
        &agent,
        &[&tools, "auto", "call", "echo", r#"{"text": "from a pod"}"#],
    )
    .map_err(anyhow::Error::msg)?;
    ensure!(
        echo["text"] == json!(["from a pod"]),
        "ServiceAccount through fastmcp: {echo}"
    );
    // An in-cluster agent on a server with a shared credential: the gateway sends the key.
    let shared = format!("{base}/team-a/mcp/shared/server");
    let header = client(
        "call.py",
        &agent,
        &[
            &shared,
            "legacy",
            "call",
            "header",
            r#"{"name": "x-api-key"}"#,
        ],
    )
    .map_err(anyhow::Error::msg)?;
    ensure!(
        header["text"] == json!(["team-a-shared-key"]),
        "the agent through a shared key: {header}"
    );
    // The same agent on a server that sends each user's own key: a machine identity has
    // none, and the error says so and what to do instead.
    let personal = format!("{base}/team-a/mcp/personal/server");
    let (status, answer) = mcpgate_e2e::call_in_session(
        &personal,
        &[("authorization", &format!("Bearer {agent}"))],
        "header",
        json!({"name": "x-api-key"}),
    )
    .map(|(status, _, answer)| (status, answer))?;
    let message = answer["error"]["message"].as_str().unwrap_or_default();
    ensure!(
        status != 401
            && message.contains("team-a/personal")
            && message.contains("machine identity")
            && message.contains("AuthOverride"),
        "the agent on a per-user server: {status} {answer}"
    );
    let refused = client("call.py", &agent, &[&bundle, "2026-07-28", "list"])
        .err()
        .context("the agent is no collaborator of the bundle")?;
    ensure!(
        refused.contains("403") || refused.contains("Forbidden"),
        "{refused}"
    );

    // Every other caller: the right status, and nothing about who does have access.
    let cases: [(&str, &str, &str, u16); 7] = [
        ("bob on tenant A's server", &tools, &bob, 403),
        ("bob on his own server", &other, &bob, 200),
        (
            "a client-credentials token, without the email claim users are named by",
            &tools,
            &machine,
            401,
        ),
        ("another ServiceAccount", &tools, &intruder, 403),
        (
            "a ServiceAccount token for another audience",
            &tools,
            &agent_elsewhere,
            401,
        ),
        (
            "a ServiceAccount token for the API server",
            &tools,
            &agent_default,
            401,
        ),
        ("the allowed ServiceAccount", &tools, &agent, 200),
    ];
    for (what, url, token, want) in cases {
        let (status, challenge, message) = ping_with(url, token)?;
        ensure!(status == want, "{what}: {status} {message}");
        let text = message.to_string();
        ensure!(
            !text.contains("alice") && !text.contains("agents:agent"),
            "{what} leaks: {text}"
        );
        if want == 401 {
            ensure!(
                challenge.contains("error=\"invalid_token\""),
                "{what}: {challenge}"
            );
        }
        if want == 403 {
            ensure!(message["error"]["code"] == -32003, "{what}: {text}");
        }
    }
    let mut tampered: Vec<String> = alice.split('.').map(str::to_owned).collect();
    tampered[1] = tampered[1].replacen('e', "f", 1);
    let (status, _, _) = ping_with(&tools, &tampered.join("."))?;
    ensure!(status == 401, "a tampered payload: {status}");

    // Status: how many subjects have access; a collaborator whose target is missing says so.
    let count = plane.kubectl(&[
        "get",
        "mcps",
        "tools",
        "-n",
        "team-a",
        "-o",
        "jsonpath={.status.subjectCount}",
    ])?;
    ensure!(count.trim() == "2", "subjectCount {count}");
    let reason = plane.kubectl(&[
        "get",
        "mcpcollaborators",
        "dangling",
        "-n",
        "team-a",
        "-o",
        "jsonpath={.status.conditions[*].reason}",
    ])?;
    ensure!(
        reason.split_whitespace().any(|r| r == "TargetNotFound"),
        "dangling collaborator: {reason:?}"
    );

    // The audit trail names each caller and how they authenticated, never a token.
    let records = wait_for("the audit records", WAIT, || {
        let text = std::fs::read_to_string(&audit).ok()?;
        let records: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        (records.len() >= 4).then_some((text, records))
    })?;
    let (text, records) = records;
    let by = |user: &str, tool: &str| {
        records
            .iter()
            .find(|r| r["caller"]["user"] == user && r["tool"] == tool)
            .cloned()
            .with_context(|| format!("no record of {user} calling {tool}: {text}"))
    };
    let record = by("alice@example.com", "sum")?;
    ensure!(
        record["caller"]["method"] == "oidc" && record["caller"]["issuer"] == idp.issuer.as_str(),
        "{record}"
    );
    ensure!(
        record["route"] == "virtual"
            && record["upstream"] == "team-a/tools"
            && record["upstreamTool"] == "add",
        "{record}"
    );
    let record = by("system:serviceaccount:agents:agent", "echo")?;
    ensure!(
        record["caller"]["method"] == "serviceaccount" && record["outcome"] == "ok",
        "{record}"
    );
    for token in [&alice, &agent, &bob] {
        ensure!(!text.contains(token.as_str()), "a token in the audit log");
    }
    ensure!(
        !text.contains("from a pod"),
        "an argument value in the audit log"
    );

    let (_, metrics) = mcpgate_e2e::http_get(&format!("http://127.0.0.1:{}/metrics", proxy.admin))?;
    ensure!(
        sum_metric(
            &metrics,
            "mcpgate_auth_failures_total",
            &[("reason", "audience")]
        ) >= 2.0,
        "{metrics}"
    );
    ensure!(
        sum_metric(
            &metrics,
            "mcpgate_access_denied_total",
            &[("server_namespace", "team-a")]
        ) >= 3.0,
        "{metrics}"
    );
    Ok(())
}
