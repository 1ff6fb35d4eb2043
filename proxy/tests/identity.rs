//! Who may call: bearer tokens on routes that are not public, the resource metadata clients
//! discover the identity provider by, and McpCollaborator access per route.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::gateway::*;
use common::idp;
use serde_json::{Value, json};

#[test]
fn servers_that_are_not_public_need_a_valid_bearer_token() {
    let (_runtime, idp, key) = idp::with_one_key();
    let (upstream, _seen) = spawn_upstream();
    let dir = tempfile::tempdir().unwrap();
    let none = || json!({"type": "none"});
    write_config(
        dir.path(),
        &json!({
            "schema": 1, "version": "auth",
            "servers": [
                server_config(upstream, "open", none(), vec![], 5000, true),
                granted(server_config(upstream, "closed", none(), vec![], 5000, false), "User", "alice@example.com"),
            ],
            "virtualServers": [{"namespace": "team", "name": "bundle", "path": "/team/mcp/bundle/server",
                "description": null, "instructions": null, "access": {"subjects": []},
                "members": [{"server": "open", "all": true, "tools": {}}]}],
        }),
    );
    let (_proxy, port, admin) = start_proxy(
        dir.path(),
        &idp.proxy_flags(&["--public-url", "https://gw.example/"]),
    );
    wait_for("the proxy", || {
        (get(port, "/.well-known/oauth-protected-resource").0 == 200).then_some(())
    });
    let closed = "/team/mcp/closed/server";
    let metadata_url =
        "https://gw.example/.well-known/oauth-protected-resource/team/mcp/closed/server";

    // No token: 401 with a challenge naming the route's resource metadata, and a JSON body.
    let (status, head, body) = post(port, closed, &[], &call("echo"));
    assert_eq!(status, 401, "{body}");
    let challenge = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"))
        .unwrap_or_default();
    assert!(
        challenge.contains(&format!("Bearer resource_metadata=\"{metadata_url}\""))
            && !challenge.contains("invalid_token"),
        "{challenge}"
    );
    // Its own code, not the upstream failure's (-32001).
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["error"]["code"],
        -32005
    );

    // The metadata the challenge points at, per route and for the gateway.
    let (status, _, body) = get(
        port,
        "/.well-known/oauth-protected-resource/team/mcp/closed/server",
    );
    let document: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(status, 200);
    assert_eq!(
        document["resource"],
        "https://gw.example/team/mcp/closed/server"
    );
    assert_eq!(document["authorization_servers"], json!([idp.issuer]));
    assert_eq!(document["bearer_methods_supported"], json!(["header"]));
    let (_, _, body) = get(port, "/.well-known/oauth-protected-resource");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["resource"],
        "https://gw.example"
    );
    let (status, head, _) = get(
        port,
        "/.well-known/oauth-protected-resource/team/mcp/nope/server",
    );
    assert_eq!(status, 404);
    assert!(head.to_ascii_lowercase().contains("application/json"));

    // A valid token passes, and the caller's token is not forwarded.
    let token = idp::sign(&key, &idp.claims());
    let bearer = format!("Bearer {token}");
    let (status, _, body) = post(port, closed, &[("Authorization", &bearer)], &call("echo"));
    assert_eq!(status, 200, "{body}");
    let result: Value = serde_json::from_str(&body).unwrap();
    assert!(result["result"]["headers"].get("authorization").is_none());

    // Refused: a token in the query string, an expired one, one for another audience, a
    // virtual server without a token. A public server needs none.
    let (status, _, _) = post(
        port,
        &format!("{closed}?access_token={token}"),
        &[],
        &call("echo"),
    );
    assert_eq!(status, 401);
    let mut claims = idp.claims();
    claims["exp"] = json!(idp::now() - 600);
    let expired = format!("Bearer {}", idp::sign(&key, &claims));
    let (status, head, _) = post(port, closed, &[("Authorization", &expired)], &call("echo"));
    assert_eq!(status, 401);
    assert!(head.contains("error=\"invalid_token\""), "{head}");
    let mut claims = idp.claims();
    claims["aud"] = json!("https://upstream.example/mcp");
    let foreign = format!("Bearer {}", idp::sign(&key, &claims));
    let (status, _, _) = post(port, closed, &[("Authorization", &foreign)], &call("echo"));
    assert_eq!(status, 401);
    let (status, _, _) = post(port, "/team/mcp/bundle/server", &[], &call("open_echo"));
    assert_eq!(status, 401);
    let (status, _, body) = post(port, "/team/mcp/open/server", &[], &call("echo"));
    assert_eq!(status, 200, "{body}");

    // Refusals are counted by reason.
    let (_, _, metrics) = get(admin, "/metrics");
    for reason in ["missing", "expired", "audience"] {
        assert!(
            metrics.contains(&format!(
                "mcpgate_auth_failures_total{{reason=\"{reason}\"}}"
            )),
            "{reason}"
        );
    }
}

/// `server` with one subject granted access.
fn granted(mut server: Value, kind: &str, name: &str) -> Value {
    server["access"]["subjects"]
        .as_array_mut()
        .unwrap()
        .push(json!({"kind": kind, "name": name}));
    server
}

/// `server` moved to `namespace`.
fn in_namespace(mut server: Value, namespace: &str) -> Value {
    let name = server["name"].as_str().unwrap().to_owned();
    server["namespace"] = json!(namespace);
    server["path"] = json!(format!("/{namespace}/mcp/{name}/server"));
    server
}

fn initialize() -> String {
    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {},
        "clientInfo": {"name": "test", "version": "1"}}})
    .to_string()
}

#[test]
fn collaborators_decide_who_may_use_each_route() {
    let (_runtime, idp, key) = idp::with_one_key();
    let (upstream, seen) = spawn_upstream();
    let dir = tempfile::tempdir().unwrap();
    let server = |namespace: &str, name: &str| {
        in_namespace(
            server_config(upstream, name, json!({"type": "none"}), vec![], 5000, false),
            namespace,
        )
    };
    let routes = |alice_on_tools: bool| {
        let mut tools = granted(server("team-a", "tools"), "Group", "nobody");
        if alice_on_tools {
            tools = granted(tools, "User", "alice@example.com");
        }
        json!({
            "schema": 1, "version": format!("access-{alice_on_tools}"),
            "servers": [
                tools,
                granted(server("team-a", "ops"), "Group", "admins"),
                granted(server("team-b", "tools"), "User", "bob@example.com"),
            ],
            "virtualServers": [{"namespace": "team-a", "name": "bundle", "path": "/team-a/mcp/bundle/server",
                "description": null, "instructions": null,
                "access": {"subjects": [{"kind": "Group", "name": "team-a"}]},
                "members": [{"server": "ops", "all": true, "tools": {}}]}],
        })
    };
    write_config(dir.path(), &routes(true));
    let (_proxy, port, admin) = start_proxy(dir.path(), &idp.proxy_flags(&[]));
    wait_for("the proxy", || {
        (get(admin, "/readyz").0 == 200).then_some(())
    });
    let bearer = |email: &str, groups: &[&str]| {
        let mut claims = idp.claims();
        claims["email"] = json!(email);
        claims["groups"] = json!(groups);
        format!("Bearer {}", idp::sign(&key, &claims))
    };
    let alice = bearer("alice@example.com", &["team-a", "admins"]);
    let bob = bearer("bob@example.com", &["team-b"]);
    let carol = bearer("carol@example.com", &["team-a"]);
    let call_as =
        |token: &str, path: &str| post(port, path, &[("Authorization", token)], &call("echo"));

    // Each user reaches what their collaborators grant: by email, or by group.
    assert_eq!(call_as(&alice, "/team-a/mcp/tools/server").0, 200);
    assert_eq!(call_as(&alice, "/team-a/mcp/ops/server").0, 200);
    assert_eq!(call_as(&bob, "/team-b/mcp/tools/server").0, 200);

    // A user of tenant A calling tenant B's server: 403, a JSON-RPC error naming the caller
    // and the route asked for, and nothing about who does have access.
    while seen.try_recv().is_ok() {}
    let (status, _, body) = call_as(&alice, "/team-b/mcp/tools/server");
    assert_eq!(status, 403, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], -32003, "{body}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("alice@example.com") && message.contains("team-b/tools"),
        "{message}"
    );
    assert!(!message.contains("bob"), "{message}");
    assert_eq!(call_as(&bob, "/team-a/mcp/tools/server").0, 403);

    // Paths spelled to slip into tenant B's route from tenant A's never reach a route.
    for trick in [
        "/team-a/mcp/tools/../../../team-b/mcp/tools/server",
        "/team-a/mcp/tools/server/../../../../team-b/mcp/tools/server",
        "/team-b%2Fmcp%2Ftools/mcp/tools/server",
        "/team-b/mcp/tools%2Fserver",
        "/team-b/mcp/%74ools/server",
        "//team-b/mcp/tools/server",
        "/team-b//mcp/tools/server",
        "/team-b/mcp/tools/server/",
        "/Team-B/mcp/tools/server",
        "/team-b/MCP/tools/server",
        "/team-b/mcp/./tools/server",
    ] {
        let (status, head, body) = call_as(&alice, trick);
        assert_eq!(status, 404, "{trick}: {body}");
        assert!(
            head.to_ascii_lowercase().contains("application/json"),
            "{trick}"
        );
    }
    assert!(
        seen.try_recv().is_err(),
        "no refused request reached an upstream"
    );

    // A virtual server is its own access unit: carol (group team-a) may use the bundle but
    // not its member server, whose collaborators are admins only.
    assert_eq!(call_as(&carol, "/team-a/mcp/ops/server").0, 403);
    let (status, _, body) = post(
        port,
        "/team-a/mcp/bundle/server",
        &[("Authorization", &carol)],
        &initialize(),
    );
    assert_ne!(status, 403, "{body}");
    assert_ne!(status, 401, "{body}");
    assert_eq!(call_as(&bob, "/team-a/mcp/bundle/server").0, 403);

    // Without a token every method gets 401 with a challenge (a client would take 400, 404
    // or 405 on its first POST as "use the old transport").
    for (method, body) in [
        ("POST", initialize()),
        ("GET", String::new()),
        ("DELETE", String::new()),
    ] {
        let (status, head, _) = request(port, method, "/team-a/mcp/tools/server", &[], &body);
        assert_eq!(status, 401, "{method}");
        assert!(
            head.to_ascii_lowercase()
                .contains("www-authenticate: bearer"),
            "{method}"
        );
    }

    // A collaborator removed while alice holds a session: her next call is refused as soon as
    // the configuration without her is in service.
    let (status, head, _) = post(
        port,
        "/team-a/mcp/tools/server",
        &[("Authorization", &alice)],
        &initialize(),
    );
    assert_eq!(status, 200);
    let session = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("mcp-session-id: ")
                .or_else(|| l.strip_prefix("Mcp-Session-Id: "))
        })
        .expect("a session id")
        .trim()
        .to_owned();
    let in_session = || {
        post(
            port,
            "/team-a/mcp/tools/server",
            &[("Authorization", &alice), ("Mcp-Session-Id", &session)],
            &call("echo"),
        )
        .0
    };
    assert_eq!(in_session(), 200);
    write_config(dir.path(), &routes(false));
    wait_for("the reload", || {
        get(admin, "/readyz")
            .2
            .contains("access-false")
            .then_some(())
    });
    assert_eq!(in_session(), 403);
    assert_eq!(
        call_as(&alice, "/team-a/mcp/ops/server").0,
        200,
        "other grants stay"
    );

    let (_, _, metrics) = get(admin, "/metrics");
    assert!(
        metrics
            .contains(r#"mcpgate_access_denied_total{server="tools",server_namespace="team-b"} 1"#),
        "{metrics}"
    );
}
