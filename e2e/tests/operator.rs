//! The operator against a real kube-apiserver + etcd, driven with kubectl as a user would.
//! One control plane for the whole run; each test has its own namespaces and operator.
//! Marked ignored so plain `cargo test` needs no control plane: `make e2e` runs them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Result, bail, ensure};
use libtest_mimic::{Arguments, Failed, Trial};
use mcpgate_e2e::{
    CRD_NAMES, ControlPlane, Operator, Process, Proxy, free_port, python, wait_for, workspace,
};
use serde_json::Value;

type Shared = Arc<Mutex<Option<ControlPlane>>>;
type Test = fn(&ControlPlane) -> Result<()>;

const WAIT: Duration = Duration::from_secs(30);

fn main() {
    let args = Arguments::from_args();
    let plane: Shared = Arc::new(Mutex::new(None));
    let tests: &[(&str, Test)] = &[
        (
            "crds_are_established_and_explained",
            crds_are_established_and_explained,
        ),
        (
            "every_sample_applies_and_renders",
            every_sample_applies_and_renders,
        ),
        (
            "update_changes_and_delete_prunes",
            update_changes_and_delete_prunes,
        ),
        (
            "missing_secret_is_reported_then_recovers",
            missing_secret_is_reported_then_recovers,
        ),
        (
            "invalid_specs_are_rejected_naming_the_field",
            invalid_specs_are_rejected_naming_the_field,
        ),
        (
            "restart_writes_nothing_when_nothing_changed",
            restart_writes_nothing_when_nothing_changed,
        ),
        ("only_the_leader_writes", only_the_leader_writes),
        (
            "manager_collaborators_get_rbac_on_one_resource",
            manager_collaborators_get_rbac_on_one_resource,
        ),
        (
            "the_proxy_serves_what_the_operator_renders",
            the_proxy_serves_what_the_operator_renders,
        ),
    ];
    let trials = tests
        .iter()
        .map(|&(name, test)| {
            let plane = plane.clone();
            Trial::test(name, move || {
                let mut guard = plane.lock().unwrap_or_else(|p| p.into_inner());
                if guard.is_none() {
                    let started =
                        ControlPlane::start().map_err(|e| Failed::from(format!("{e:#}")))?;
                    started
                        .install_crds()
                        .map_err(|e| Failed::from(format!("{e:#}")))?;
                    *guard = Some(started);
                }
                let plane = guard.as_ref().expect("started above");
                test(plane).map_err(|e| Failed::from(format!("{e:#}")))
            })
            .with_ignored_flag(true)
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // Stop etcd and kube-apiserver before exiting (exit skips destructors).
    drop(plane.lock().unwrap_or_else(|p| p.into_inner()).take());
    conclusion.exit();
}

/// Creates a fresh namespace for the test's resources and one for the gateway.
fn namespaces(plane: &ControlPlane, test: &str) -> Result<(String, String)> {
    let (ns, gw) = (format!("t-{test}"), format!("gw-{test}"));
    plane.kubectl(&["create", "namespace", &ns])?;
    plane.kubectl(&["create", "namespace", &gw])?;
    Ok((ns, gw))
}

/// `kubectl apply` of every file in config/samples/.
fn apply_samples(plane: &ControlPlane, ns: &str) -> Result<String> {
    let samples = workspace().join("config/samples");
    plane.kubectl(&["apply", "-n", ns, "-f", samples.to_str().unwrap()])
}

/// The rendered configuration in the gateway namespace, if written.
fn config(plane: &ControlPlane, gw: &str) -> Option<Value> {
    plane.gateway_config(gw)
}

fn server_names(config: &Value, list: &str) -> Vec<String> {
    config[list]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s["name"].as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A condition of one resource: (status, reason, message).
fn condition(
    plane: &ControlPlane,
    ns: &str,
    resource: &str,
    type_: &str,
) -> Option<(String, String, String)> {
    let json = plane
        .kubectl(&["get", resource, "-n", ns, "-o", "json"])
        .ok()?;
    let object: Value = serde_json::from_str(&json).ok()?;
    let c = object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?
        .clone();
    Some((
        c["status"].as_str()?.to_owned(),
        c["reason"].as_str()?.to_owned(),
        c["message"].as_str()?.to_owned(),
    ))
}

fn wait_condition(
    plane: &ControlPlane,
    ns: &str,
    resource: &str,
    type_: &str,
    status: &str,
) -> Result<(String, String, String)> {
    wait_for(&format!("{resource} {type_}={status}"), WAIT, || {
        condition(plane, ns, resource, type_).filter(|c| c.0 == status)
    })
}

fn crds_are_established_and_explained(plane: &ControlPlane) -> Result<()> {
    for crd in CRD_NAMES.iter() {
        let names = plane.kubectl(&[
            "get",
            crd,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"NamesAccepted\")].status}",
        ])?;
        ensure!(names == "True", "{crd}: NamesAccepted={names}");
    }
    let resources = plane.kubectl(&["api-resources", "--api-group=mcpgate.dev", "-o", "wide"])?;
    for short in ["mcps", "vmcps", "mcpcollab", "authov"] {
        ensure!(
            resources.contains(short),
            "short name {short} missing:\n{resources}"
        );
    }
    // The category lists all four kinds at once.
    plane.kubectl(&["create", "namespace", "t-category"])?;
    plane.apply(
        "t-category",
        &std::fs::read_to_string(workspace().join("config/samples/mcpserver-remote.yaml"))?,
    )?;
    let all = plane.kubectl(&["get", "mcpgate", "-n", "t-category"])?;
    ensure!(
        all.contains("mcpserver.mcpgate.dev/deepwiki"),
        "kubectl get mcpgate:\n{all}"
    );
    let explain = plane.kubectl(&["explain", "mcpserver.spec.auth"])?;
    for expected in [
        "credential the gateway sends upstream",
        "Passthrough",
        "oauth2AuthorizationCode",
    ] {
        ensure!(
            explain.contains(expected),
            "kubectl explain lacks {expected:?}:\n{explain}"
        );
    }
    Ok(())
}

fn every_sample_applies_and_renders(plane: &ControlPlane) -> Result<()> {
    let (ns, gw) = namespaces(plane, "samples")?;
    apply_samples(plane, &ns)?;
    let _operator = Operator::start(plane, &[&ns], &gw, "samples")?;
    let config = wait_for("7 servers and 1 virtual server rendered", WAIT, || {
        config(plane, &gw).filter(|c| {
            server_names(c, "servers").len() == 7 && server_names(c, "virtualServers").len() == 1
        })
    })?;
    for resource in [
        "mcpservers",
        "virtualmcpservers",
        "mcpcollaborators",
        "authoverrides",
    ] {
        let names = plane.kubectl(&[
            "get",
            resource,
            "-n",
            &ns,
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])?;
        for name in names.split_whitespace() {
            wait_condition(plane, &ns, &format!("{resource}/{name}"), "Ready", "True")?;
        }
    }
    let table = plane.kubectl(&["get", "mcps", "-n", &ns])?;
    ensure!(
        table.contains(&format!("/{ns}/mcp/deepwiki/server")),
        "URL column missing:\n{table}"
    );
    let generation = plane.kubectl(&[
        "get",
        "mcps/deepwiki",
        "-n",
        &ns,
        "-o",
        "jsonpath={.status.observedGeneration}",
    ])?;
    ensure!(generation == "1", "observedGeneration {generation}");

    // Credentials are copied into the gateway namespace, and only there.
    let key = plane.kubectl(&[
        "get",
        "secret",
        &format!("mcpgate-cred.{ns}.huggingface"),
        "-n",
        &gw,
        "-o",
        "jsonpath={.data.api-key}",
    ])?;
    ensure!(
        key == "aGZfZXhhbXBsZV9ub3RfYV9yZWFsX3Rva2Vu",
        "copied key differs: {key}"
    );
    let text = config.to_string();
    ensure!(
        !text.contains("hf_example_not_a_real_token") && !text.contains("example-client-secret"),
        "a secret leaked into the ConfigMap"
    );
    let statuses = plane.kubectl(&["get", "mcpgate", "-n", &ns, "-o", "json"])?;
    ensure!(
        !statuses.contains("hf_example_not_a_real_token"),
        "a secret leaked into a status"
    );
    Ok(())
}

fn update_changes_and_delete_prunes(plane: &ControlPlane) -> Result<()> {
    let (ns, gw) = namespaces(plane, "update")?;
    let _operator = Operator::start(plane, &[&ns], &gw, "update")?;
    let yaml =
        std::fs::read_to_string(workspace().join("config/samples/mcpserver-apikey-shared.yaml"))?;
    plane.apply(&ns, &yaml)?;
    let secret = format!("mcpgate-cred.{ns}.huggingface");
    let first = wait_for("huggingface rendered", WAIT, || {
        config(plane, &gw).filter(|c| server_names(c, "servers") == ["huggingface"])
    })?;
    ensure!(
        first["servers"][0]["timeoutMs"] == 30000,
        "default timeout: {}",
        first["servers"][0]
    );

    plane.apply(
        &ns,
        &yaml.replace("  remote:", "  timeoutSeconds: 7\n  remote:"),
    )?;
    let second = wait_for("timeout update rendered", WAIT, || {
        config(plane, &gw).filter(|c| c["servers"][0]["timeoutMs"] == 7000)
    })?;
    ensure!(
        first["version"] != second["version"],
        "version did not change"
    );
    wait_for("observedGeneration 2", WAIT, || {
        condition(plane, &ns, "mcps/huggingface", "Ready")?;
        let g = plane
            .kubectl(&[
                "get",
                "mcps/huggingface",
                "-n",
                &ns,
                "-o",
                "jsonpath={.status.observedGeneration}",
            ])
            .ok()?;
        (g == "2").then_some(())
    })?;

    // Rotating the upstream key reaches the copied Secret.
    plane
        .kubectl(&[
            "create",
            "secret",
            "generic",
            "huggingface-token",
            "-n",
            &ns,
            "--from-literal=token=rotated",
            "--dry-run=client",
            "-o",
            "yaml",
        ])
        .and_then(|y| plane.apply(&ns, &y))?;
    wait_for("rotated key copied", WAIT, || {
        let v = plane
            .kubectl(&[
                "get",
                "secret",
                &secret,
                "-n",
                &gw,
                "-o",
                "jsonpath={.data.api-key}",
            ])
            .ok()?;
        (v == "cm90YXRlZA==").then_some(())
    })?;

    plane.kubectl(&["delete", "mcps/huggingface", "-n", &ns])?;
    wait_for("server pruned from the configuration", WAIT, || {
        config(plane, &gw).filter(|c| server_names(c, "servers").is_empty())
    })?;
    wait_for("credential Secret pruned", WAIT, || {
        plane
            .kubectl(&["get", "secret", &secret, "-n", &gw])
            .err()
            .filter(|e| e.to_string().contains("NotFound"))
    })?;
    Ok(())
}

fn missing_secret_is_reported_then_recovers(plane: &ControlPlane) -> Result<()> {
    let (ns, gw) = namespaces(plane, "missing")?;
    let _operator = Operator::start(plane, &[&ns], &gw, "missing")?;
    let yaml = std::fs::read_to_string(
        workspace().join("config/samples/mcpserver-oauth2-client-credentials.yaml"),
    )?;
    let server_only = yaml.split("---").nth(1).unwrap();
    plane.apply(&ns, server_only)?;
    let (_, reason, message) =
        wait_condition(plane, &ns, "mcps/inventory", "ResolvedRefs", "False")?;
    ensure!(reason == "SecretNotFound", "reason {reason}");
    ensure!(
        message.contains(&format!("Secret {ns}/inventory-client not found")),
        "message: {message}"
    );
    let (_, ready_reason, _) = wait_condition(plane, &ns, "mcps/inventory", "Ready", "False")?;
    ensure!(
        ready_reason == "RefsNotResolved",
        "Ready reason {ready_reason}"
    );
    let rendered = wait_for("config written", WAIT, || config(plane, &gw))?;
    ensure!(
        server_names(&rendered, "servers").is_empty(),
        "an unresolved server was served"
    );

    plane.apply(&ns, &yaml)?;
    wait_condition(plane, &ns, "mcps/inventory", "Ready", "True")?;
    wait_for("server served after the Secret appeared", WAIT, || {
        config(plane, &gw).filter(|c| server_names(c, "servers") == ["inventory"])
    })?;
    let status = plane.kubectl(&["get", "mcps/inventory", "-n", &ns, "-o", "json"])?;
    ensure!(
        !status.contains("example-inventory-secret"),
        "secret value in the object"
    );
    Ok(())
}

fn invalid_specs_are_rejected_naming_the_field(plane: &ControlPlane) -> Result<()> {
    plane.kubectl(&["create", "namespace", "t-invalid"])?;
    let server = |name: &str, spec: &str| {
        format!(
            "apiVersion: mcpgate.dev/v1alpha1\nkind: McpServer\nmetadata: {{name: {name}}}\nspec: {spec}\n"
        )
    };
    let cases = [
        (server("two-sources", r#"{remote: {url: "http://a/mcp"}, openapi: {url: "http://a/o.json", baseUrl: "http://a"}}"#), "set exactly one of spec.remote"),
        (server("no-source", "{}"), "set exactly one of spec.remote"),
        (server("plain-oauth", r#"{remote: {url: "http://a/mcp"}, auth: {type: OAuth2ClientCredentials, oauth2ClientCredentials: {tokenUrl: "http://auth.example/token", clientId: c, clientSecretRef: {name: s, key: k}}}}"#), "spec.auth.oauth2ClientCredentials.tokenUrl"),
        (server("wrong-block", r#"{remote: {url: "http://a/mcp"}, auth: {type: None, apiKey: {secretKeyRef: {name: s, key: k}}}}"#), "spec.auth.apiKey is required when spec.auth.type is ApiKey and must be absent otherwise"),
        (server("shared-no-secret", r#"{remote: {url: "http://a/mcp"}, auth: {type: ApiKey, apiKey: {scope: Shared}}}"#), "spec.auth.apiKey.secretKeyRef is required for scope Shared"),
        (server("bad-template", r#"{remote: {url: "http://a/mcp"}, auth: {type: ApiKey, apiKey: {scope: PerUser, valueTemplate: "Bearer KEY"}}}"#), "must contain {{API_KEY}}"),
        (server("ftp", r#"{remote: {url: "ftp://a/mcp"}}"#), "spec.remote.url"),
        (server("a-server-name-that-is-far-too-long-for-tools", r#"{remote: {url: "http://a/mcp"}}"#), "metadata.name must be a DNS label of at most 40 characters"),
        (server("bad-timeout", r#"{remote: {url: "http://a/mcp"}, timeoutSeconds: 0}"#), "spec.timeoutSeconds"),
        ("apiVersion: mcpgate.dev/v1alpha1\nkind: VirtualMcpServer\nmetadata: {name: v}\nspec: {tools: [{server: files, tools: [fs.read]}]}\n".to_owned(), "add it to rename"),
        ("apiVersion: mcpgate.dev/v1alpha1\nkind: VirtualMcpServer\nmetadata: {name: v2}\nspec: {tools: [{server: a, tools: [x]}, {server: a, tools: [y]}]}\n".to_owned(), "Duplicate value"),
        ("apiVersion: mcpgate.dev/v1alpha1\nkind: VirtualMcpServer\nmetadata: {name: v3}\nspec: {tools: [{server: a, tools: [x], rename: {x: \"has space\"}}]}\n".to_owned(), "spec.tools[0].rename.x"),
        ("apiVersion: mcpgate.dev/v1alpha1\nkind: McpCollaborator\nmetadata: {name: c}\nspec: {targetRef: {kind: McpServer, name: a}, role: Admin, subjects: [{kind: User, name: x}]}\n".to_owned(), "spec.role: Unsupported value: \"Admin\""),
        ("apiVersion: mcpgate.dev/v1alpha1\nkind: McpCollaborator\nmetadata: {name: c2}\nspec: {targetRef: {kind: McpServer, name: a}, role: User, subjects: [{kind: User, name: x, namespace: other}]}\n".to_owned(), "namespace is only valid for kind ServiceAccount"),
        ("apiVersion: mcpgate.dev/v1alpha1\nkind: McpCollaborator\nmetadata: {name: c3}\nspec: {targetRef: {kind: McpServer, name: a}, role: User, subjects: []}\n".to_owned(), "spec.subjects"),
    ];
    let mut failures = Vec::new();
    for (yaml, expected) in &cases {
        match plane.kubectl_stdin(
            &["apply", "-n", "t-invalid", "--dry-run=server", "-f", "-"],
            Some(yaml),
        ) {
            Ok(out) => failures.push(format!("accepted: {out}\n{yaml}")),
            Err(e) if e.to_string().contains(expected) => {}
            Err(e) => failures.push(format!("expected {expected:?} in: {e}")),
        }
    }
    // Unknown fields are rejected, not silently dropped, with strict validation.
    let typo = server("typo", r#"{remote: {url: "http://a/mcp"}, timeoutSecs: 5}"#);
    match plane.kubectl_stdin(
        &[
            "apply",
            "-n",
            "t-invalid",
            "--dry-run=server",
            "--validate=strict",
            "-f",
            "-",
        ],
        Some(&typo),
    ) {
        Err(e) if e.to_string().contains("unknown field \"spec.timeoutSecs\"") => {}
        other => failures.push(format!("unknown field: {other:?}")),
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n---\n"));
    }
    Ok(())
}

fn writes(operator: &Operator) -> Result<f64> {
    operator.metric("mcpgate_operator_writes_total", &[])
}

fn reconciled(operator: &Operator, at_least: f64) -> Result<()> {
    wait_for("a completed reconcile", WAIT, || {
        (operator
            .metric("mcpgate_operator_reconcile_duration_seconds_count", &[])
            .ok()?
            >= at_least)
            .then_some(())
    })
}

fn restart_writes_nothing_when_nothing_changed(plane: &ControlPlane) -> Result<()> {
    let (ns, gw) = namespaces(plane, "restart")?;
    apply_samples(plane, &ns)?;
    let mut first = Operator::start(plane, &[&ns], &gw, "restart")?;
    wait_condition(plane, &ns, "vmcps/engineering", "Ready", "True")?;
    reconciled(&first, 1.0)?;
    let initial = writes(&first)?;
    ensure!(initial >= 8.0, "first start wrote only {initial} objects");
    first.process.terminate();

    let second = Operator::start(plane, &[&ns], &gw, "restart")?;
    reconciled(&second, 1.0)?;
    let after = writes(&second)?;
    ensure!(
        after == 0.0,
        "a restart with nothing changed wrote {after} times:\n{}",
        second.process.log()
    );

    // ...and a real change writes exactly what changed: the ConfigMap and one status.
    plane.kubectl(&[
        "patch",
        "mcps/deepwiki",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"timeoutSeconds":9}}"#,
    ])?;
    wait_for("one change written", WAIT, || {
        (writes(&second).ok()? >= 2.0).then_some(())
    })?;
    reconciled(&second, 2.0)?;
    let config_writes = second.metric("mcpgate_operator_writes_total", &[("kind", "ConfigMap")])?;
    let secret_writes = second.metric("mcpgate_operator_writes_total", &[("kind", "Secret")])?;
    ensure!(
        config_writes == 1.0 && secret_writes == 0.0,
        "ConfigMap writes {config_writes}, Secret writes {secret_writes}"
    );
    Ok(())
}

fn only_the_leader_writes(plane: &ControlPlane) -> Result<()> {
    let (ns, gw) = namespaces(plane, "leader")?;
    let mut a = Operator::start(plane, &[&ns], &gw, "replica-a")?;
    wait_for("replica-a leads", WAIT, || {
        (a.metric("mcpgate_operator_leader", &[]).ok()? == 1.0).then_some(())
    })?;
    let b = Operator::start(plane, &[&ns], &gw, "replica-b")?;
    let holder = plane.kubectl(&[
        "get",
        "lease",
        "mcpgate-operator",
        "-n",
        &gw,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])?;
    ensure!(holder == "replica-a", "lease holder {holder}");

    plane.apply(
        &ns,
        &std::fs::read_to_string(workspace().join("config/samples/mcpserver-remote.yaml"))?,
    )?;
    wait_for("rendered by the leader", WAIT, || {
        config(plane, &gw).filter(|c| server_names(c, "servers") == ["deepwiki"])
    })?;
    wait_condition(plane, &ns, "mcps/deepwiki", "Ready", "True")?;
    ensure!(writes(&a)? > 0.0, "the leader wrote nothing");
    ensure!(writes(&b)? == 0.0, "the follower wrote");
    ensure!(
        b.metric("mcpgate_operator_leader", &[])? == 0.0,
        "two leaders"
    );

    // The leader stops; it releases the Lease and the follower takes over.
    a.process.terminate();
    wait_for("replica-b leads", WAIT, || {
        (b.metric("mcpgate_operator_leader", &[]).ok()? == 1.0).then_some(())
    })?;
    plane.apply(
        &ns,
        &std::fs::read_to_string(workspace().join("config/samples/mcpserver-passthrough.yaml"))?,
    )?;
    wait_for("rendered by the new leader", WAIT, || {
        config(plane, &gw).filter(|c| server_names(c, "servers").len() == 2)
    })?;
    ensure!(writes(&b)? > 0.0, "the new leader wrote nothing");
    let (_, reason, message) =
        wait_condition(plane, &ns, "mcps/internal-docs", "Accepted", "True")?;
    ensure!(
        reason == "AcceptedWithTokenPassthrough" && message.contains("forwarded"),
        "passthrough not flagged: {reason} {message}"
    );
    Ok(())
}

fn can_i(plane: &ControlPlane, ns: &str, verb: &str, resource: &str, user: &str) -> bool {
    // `kubectl auth can-i` exits 1 with "no".
    plane
        .kubectl(&[
            "auth",
            "can-i",
            verb,
            resource,
            "-n",
            ns,
            &format!("--as={user}"),
        ])
        .is_ok_and(|o| o.trim() == "yes")
}

fn manager_collaborators_get_rbac_on_one_resource(plane: &ControlPlane) -> Result<()> {
    let (ns, gw) = namespaces(plane, "rbac")?;
    let _operator = Operator::start(plane, &[&ns], &gw, "rbac")?;
    for sample in [
        "mcpserver-oauth2-code.yaml",
        "mcpserver-apikey-shared.yaml",
        "mcpcollaborator.yaml",
        "virtualmcpserver.yaml",
    ] {
        plane.apply(
            &ns,
            &std::fs::read_to_string(workspace().join("config/samples").join(sample))?,
        )?;
    }
    let extra = "apiVersion: mcpgate.dev/v1alpha1\nkind: McpCollaborator\nmetadata: {name: hf-agents}\nspec:\n  targetRef: {kind: McpServer, name: huggingface}\n  role: Manager\n  subjects:\n  - {kind: ServiceAccount, name: tuner}\n  - {kind: Group, name: ml-platform}\n";
    plane.apply(&ns, extra)?;
    wait_for("Roles written", WAIT, || {
        plane
            .kubectl(&[
                "get",
                "role",
                "mcpgate-manager.hf-agents",
                "mcpgate-manager.github-managers",
                "-n",
                &ns,
            ])
            .ok()
    })?;
    wait_for("RoleBindings written", WAIT, || {
        plane
            .kubectl(&[
                "get",
                "rolebinding",
                "mcpgate-manager.hf-agents",
                "mcpgate-manager.github-managers",
                "-n",
                &ns,
            ])
            .ok()
    })?;
    let bob = "bob@example.com";
    let checks = [
        ("update", "mcpservers.mcpgate.dev/github", bob, true),
        ("delete", "mcpservers.mcpgate.dev/github", bob, true),
        ("update", "mcpservers.mcpgate.dev/huggingface", bob, false),
        ("create", "mcpservers.mcpgate.dev", bob, false),
        (
            "patch",
            "mcpcollaborators.mcpgate.dev/github-managers",
            bob,
            true,
        ),
        (
            "patch",
            "mcpcollaborators.mcpgate.dev/engineering-users",
            bob,
            false,
        ),
        (
            "update",
            "virtualmcpservers.mcpgate.dev/engineering",
            bob,
            false,
        ),
        (
            "update",
            "mcpservers.mcpgate.dev/huggingface",
            &format!("system:serviceaccount:{ns}:tuner"),
            true,
        ),
        (
            "update",
            "mcpservers.mcpgate.dev/github",
            &format!("system:serviceaccount:{ns}:tuner"),
            false,
        ),
        (
            "patch",
            "mcpcollaborators.mcpgate.dev/hf-agents",
            &format!("system:serviceaccount:{ns}:tuner"),
            true,
        ),
        ("get", "secrets", bob, false),
    ];
    for (verb, resource, user, want) in checks {
        ensure!(
            can_i(plane, &ns, verb, resource, user) == want,
            "can-i {verb} {resource} as {user}: expected {want}"
        );
    }
    // Group subjects: impersonate a user in the group.
    let grouped = plane.kubectl(&[
        "auth",
        "can-i",
        "update",
        "mcpservers.mcpgate.dev/huggingface",
        "-n",
        &ns,
        "--as=carol",
        "--as-group=ml-platform",
    ]);
    ensure!(
        grouped.is_ok_and(|o| o.trim() == "yes"),
        "group member cannot manage"
    );

    plane.kubectl(&["delete", "mcpcollaborator/github-managers", "-n", &ns])?;
    wait_for("Role pruned", WAIT, || {
        plane
            .kubectl(&["get", "role", "mcpgate-manager.github-managers", "-n", &ns])
            .err()
    })?;
    wait_for("access revoked", WAIT, || {
        (!can_i(plane, &ns, "update", "mcpservers.mcpgate.dev/github", bob)).then_some(())
    })?;
    ensure!(
        can_i(
            plane,
            &ns,
            "update",
            "mcpservers.mcpgate.dev/huggingface",
            &format!("system:serviceaccount:{ns}:tuner")
        ),
        "pruning removed another collaborator's grant"
    );
    Ok(())
}

/// Runs the Python MCP client against `url`; returns its JSON output or its stderr.
fn mcp_client(url: &str, mode: &str, args: &[&str]) -> std::result::Result<Value, String> {
    mcpgate_e2e::run_peer("call.py", &[&[url, mode], args].concat()).map_err(|e| format!("{e:#}"))
}

fn the_proxy_serves_what_the_operator_renders(plane: &ControlPlane) -> Result<()> {
    let (ns, gw) = namespaces(plane, "proxy")?;
    let logs = tempfile::tempdir()?;
    let upstream_port = free_port();
    let mut upstream = std::process::Command::new(python()?);
    upstream
        .arg(workspace().join("e2e/peers/demo_server.py"))
        .arg(upstream_port.to_string());
    let _upstream = Process::spawn(
        "demo MCP server",
        upstream,
        logs.path().join("upstream.log"),
    )?;
    let server = |deny: &str| {
        format!(
            "apiVersion: mcpgate.dev/v1alpha1\nkind: McpServer\nmetadata: {{name: demo}}\nspec:\n  remote: {{url: \"http://127.0.0.1:{upstream_port}/mcp\"}}\n  tools: {{deny: [{deny}]}}\n  auth:\n    type: ApiKey\n    apiKey: {{secretKeyRef: {{name: demo-key, key: token}}}}\n  public: true\n"
        )
    };
    plane.kubectl(&[
        "create",
        "secret",
        "generic",
        "demo-key",
        "-n",
        &ns,
        "--from-literal=token=k3y",
    ])?;
    plane.apply(&ns, &server("secret_tool"))?;
    let _operator = Operator::start(plane, &[&ns], &gw, "proxy")?;

    let proxy = Proxy::start(
        &[OsStr::new("--config-namespace"), OsStr::new(&gw)],
        &[("KUBECONFIG", plane.kubeconfig.as_os_str())],
        logs.path(),
    )?;
    let port = proxy.port;
    wait_for("upstream listening", WAIT, || {
        std::net::TcpStream::connect(("127.0.0.1", upstream_port)).ok()
    })?;

    let url = format!("http://127.0.0.1:{port}/{ns}/mcp/demo/server");
    for mode in ["legacy", "2026-07-28"] {
        let sum = mcp_client(&url, mode, &["call", "add", r#"{"a": 1, "b": 2}"#])
            .map_err(anyhow::Error::msg)?;
        ensure!(sum["text"][0] == "3", "{mode}: {sum}");
    }
    // A spec change reaches the running proxy: `add` is denied from now on.
    plane.apply(&ns, &server("secret_tool, add"))?;
    wait_for("the deny list to reach the proxy", WAIT, || {
        mcp_client(&url, "2026-07-28", &["call", "add", r#"{"a": 1, "b": 2}"#])
            .err()
            .filter(|e| e.contains("Unknown tool: add"))
    })?;
    // Deleting the server removes the route.
    plane.kubectl(&["delete", "mcps/demo", "-n", &ns])?;
    wait_for("the route to go", WAIT, || {
        let (status, _) = post_json(port, &format!("/{ns}/mcp/demo/server"));
        (status == 404).then_some(())
    })?;
    Ok(())
}

/// POSTs a ping to the gateway; (status, body).
fn post_json(port: u16, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    let body = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let _ = write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, response)
}
