//! The operator against a real kube-apiserver + etcd, driven with kubectl as a user would.
//! One control plane for the whole run; each test has its own namespaces and operator.
//! Marked ignored so plain `cargo test` needs no control plane: `make e2e` runs them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use libtest_mimic::{Arguments, Failed, Trial};
use mcpgate_e2e::{CRD_NAMES, ControlPlane, Operator, Proxy, free_port, wait_for, workspace};
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
        (
            "the_proxy_discovers_tools_for_the_operator",
            the_proxy_discovers_tools_for_the_operator,
        ),
        (
            "operator_rbac_is_least_privilege",
            operator_rbac_is_least_privilege,
        ),
        ("a_manager_cannot_escalate", a_manager_cannot_escalate),
        // Last: it stops and restarts the API server.
        (
            "an_api_server_outage_is_survived",
            an_api_server_outage_is_survived,
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

/// Every sample (namespace `ns`), with each McpServer pointed at `upstream`, client
/// credentials asked of the provider at `issuer` (test client `mcp-tests`), and every server
/// and virtual server public but those taking each user's own key, so the test calls them
/// without tokens but as alice where a person is needed.
fn samples_in_front_of(upstream: &str, issuer: &str, code_issuer: &str) -> Result<String> {
    let mut documents = Vec::new();
    let dir = workspace().join("config/samples");
    let mut files: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.sort();
    let mut client_secrets = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        for document in serde_yaml::Deserializer::from_str(&text) {
            let mut value: Value = serde::Deserialize::deserialize(document)?;
            match value["kind"].as_str() {
                Some("McpServer") => {
                    if value["spec"]["remote"].is_object() {
                        value["spec"]["remote"] = serde_json::json!({"url": upstream});
                    }
                    let auth = &mut value["spec"]["auth"];
                    if let Some(grant) = auth.get_mut("oauth2ClientCredentials") {
                        grant["tokenUrl"] = Value::String(format!("{issuer}/token"));
                        grant["clientId"] = Value::String("mcp-tests".into());
                        grant["audience"] = Value::String(SAMPLES_AUDIENCE.into());
                        client_secrets.push((grant["clientSecretRef"].clone(), "mcp-tests-secret"));
                    }
                    if let Some(grant) = auth.get_mut("tokenExchange") {
                        grant["tokenUrl"] = Value::String(format!("{code_issuer}/token"));
                        grant["clientId"] = Value::String("mcpgate".into());
                        grant["scopes"] = serde_json::json!(["mcp"]);
                        client_secrets.push((grant["clientSecretRef"].clone(), "mcpgate-secret"));
                    }
                    if let Some(grant) = auth.get_mut("oauth2AuthorizationCode") {
                        grant["authorizationUrl"] = Value::String(format!("{code_issuer}/auth"));
                        grant["tokenUrl"] = Value::String(format!("{code_issuer}/token"));
                        grant["clientId"] = Value::String("mcpgate".into());
                        grant["scopes"] = serde_json::json!(["openid", "mcp"]);
                        client_secrets.push((grant["clientSecretRef"].clone(), "mcpgate-secret"));
                    }
                    let per_user = auth["apiKey"]["scope"] == "PerUser"
                        || auth["type"] == "OAuth2AuthorizationCode"
                        || auth["type"] == "TokenExchange";
                    value["spec"]["public"] = Value::Bool(!per_user);
                }
                Some("VirtualMcpServer") => value["spec"]["public"] = Value::Bool(true),
                _ => {}
            }
            documents.push(value);
        }
    }
    // The test providers know their clients by their own secrets.
    for (reference, value) in client_secrets {
        for secret in documents
            .iter_mut()
            .filter(|d| d["kind"] == "Secret" && d["metadata"]["name"] == reference["name"])
        {
            secret["stringData"][reference["key"].as_str().unwrap_or_default()] =
                Value::String(value.into());
        }
    }
    documents
        .iter()
        .map(serde_json::to_string)
        .collect::<serde_json::Result<Vec<_>>>()
        .map(|d| d.join("\n---\n"))
        .map_err(Into::into)
}

/// The audience of the samples test's provider (its tokens for the gateway and upstreams).
const SAMPLES_AUDIENCE: &str = "https://samples.example";

/// Status against behaviour: every sample is accepted; those reporting Ready answer real tool
/// calls through the proxy, those reporting NotServed have no route and no credential copy.
fn every_sample_applies_and_renders(plane: &ControlPlane) -> Result<()> {
    let (ns, gw) = namespaces(plane, "samples")?;
    let logs = tempfile::tempdir()?;
    let upstream_port = free_port();
    let upstream = format!("http://127.0.0.1:{upstream_port}/mcp");
    let _upstream = mcpgate_e2e::python_peer("samples_server.py", upstream_port, logs.path())?;
    // People sign in at the gateway with one provider; the per-user OAuth sample's upstream
    // has its own authorization server.
    let (port, admin) = (free_port(), free_port());
    let gateway = format!("http://127.0.0.1:{port}");
    let idp = mcpgate_e2e::IdentityProvider::start_for(
        logs.path(),
        SAMPLES_AUDIENCE,
        &[format!("{gateway}/-/signin/callback")],
    )?;
    let code_provider = mcpgate_e2e::IdentityProvider::start_upstream(
        logs.path(),
        &upstream,
        &[format!("{gateway}/-/connections/callback")],
        600,
        Some(&idp.issuer),
    )?;
    let alice = idp.password_token("alice", "alice-pw")?;
    plane.apply(
        &ns,
        &samples_in_front_of(&upstream, &idp.issuer, &code_provider.issuer)?,
    )?;
    let _operator = Operator::start(plane, &[&ns], &gw, "samples")?;
    let config = wait_for("7 servers and 1 virtual server rendered", WAIT, || {
        config(plane, &gw).filter(|c| {
            server_names(c, "servers").len() == 7 && server_names(c, "virtualServers").len() == 1
        })
    })?;
    let mut args =
        mcpgate_e2e::signin_args_for(logs.path(), &gateway, &idp.issuer, SAMPLES_AUDIENCE)?;
    args.extend(["--config-namespace".to_owned(), gw.clone()]);
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let proxy = Proxy::start_at(
        port,
        admin,
        &args,
        &[("KUBECONFIG", plane.kubeconfig.as_os_str())],
        logs.path(),
    )?;
    // Alice connects her account at the per-user OAuth sample's provider, in a browser.
    let connected = mcpgate_e2e::run_peer(
        "connect_oauth.py",
        &[
            &format!("{gateway}/-/connections/{ns}/github"),
            "alice",
            "alice-pw",
            "alice",
            "alice-pw",
        ],
    )
    .map_err(|e| e.context(proxy.process.log()))?;
    ensure!(
        connected["state"]
            .as_str()
            .is_some_and(|s| s.starts_with("connected")),
        "github connection page: {connected}"
    );

    let mut ready_routes = Vec::new();
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
            let object = format!("{resource}/{name}");
            wait_condition(plane, &ns, &object, "Accepted", "True")?;
            let (status, reason, message) = wait_for(&format!("{object} Ready"), WAIT, || {
                condition(plane, &ns, &object, "Ready")
                    .filter(|c| c.0 == "True" || c.1 == "NotServed")
            })?;
            let route = resource != "mcpcollaborators" && resource != "authoverrides";
            if status == "True" {
                if route {
                    ready_routes.push(name.to_owned());
                }
                continue;
            }
            ensure!(
                message.contains(" not served"),
                "{object} {reason}: {message}"
            );
            if route {
                let (code, _) = post_json(proxy.port, &format!("/{ns}/mcp/{name}/server"));
                ensure!(code == 404, "{object} reports NotServed but answers {code}");
            }
        }
    }
    ready_routes.sort();
    ensure!(
        ready_routes
            == [
                "deepwiki",
                "engineering",
                "github",
                "huggingface",
                "internal-docs",
                "inventory",
                "linear",
                "tickets"
            ],
        "Ready routes: {ready_routes:?}"
    );
    for name in &ready_routes {
        let url = format!("http://127.0.0.1:{}/{ns}/mcp/{name}/server", proxy.port);
        // The per-user servers are called by alice, whose key an AuthOverride supplies, who
        // connected her account for github, and whose token is exchanged for tickets.
        let bearer = ["github", "linear", "tickets"]
            .contains(&name.as_str())
            .then_some(alice.as_str());
        let mcp_client =
            |url: &str, mode: &str, args: &[&str]| mcp_client_as(url, mode, args, bearer);
        let tools = mcp_client(&url, "legacy", &["list"]).map_err(anyhow::Error::msg)?;
        let tools: Vec<String> = serde_json::from_value(tools)?;
        ensure!(!tools.is_empty(), "{name} is Ready but lists no tools");
        for tool in &tools {
            let answer = mcp_client(&url, "2026-07-28", &["call", tool, "{}"])
                .map_err(anyhow::Error::msg)?;
            ensure!(
                answer["isError"] == false
                    && answer["text"][0]
                        .as_str()
                        .is_some_and(|t| t.contains(" answered")),
                "{name} {tool}: {answer}"
            );
        }
        // The gateway's credentials reach their upstreams (huggingface's shared key,
        // inventory's client credentials token, alice's own key for linear and her own token
        // for github); the others send none.
        let credential = mcp_client(&url, "legacy", &["call", &tools[0], "{}"])
            .map_err(anyhow::Error::msg)?["text"][0]
            .as_str()
            .is_some_and(|t| t.ends_with("with a credential"));
        ensure!(
            credential
                == ["github", "huggingface", "inventory", "linear", "tickets"]
                    .contains(&name.as_str()),
            "{name}: credential sent: {credential}"
        );
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

    // Credentials are copied into the gateway namespace, only there, and only for served servers.
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
    let copies = plane.kubectl(&[
        "get",
        "secrets",
        "-n",
        &gw,
        "-o",
        "jsonpath={.items[*].metadata.name}",
    ])?;
    // (Beside them: the proxy's own sign-in state, alice's github tokens sealed among it.)
    ensure!(
        copies
            .split_whitespace()
            .filter(|name| name.starts_with("mcpgate-cred."))
            .collect::<Vec<_>>()
            == ["github", "huggingface", "inventory", "linear", "tickets"]
                .map(|s| format!("mcpgate-cred.{ns}.{s}")),
        "credential copies: {copies}"
    );
    ensure!(
        copies
            .split_whitespace()
            .filter(|name| name.starts_with("mcpgate-signin.credentials."))
            .count()
            == 1,
        "alice's stored github authorization: {copies}"
    );
    let text = config.to_string();
    ensure!(
        [
            "hf_example_not_a_real_token",
            "example-client-secret",
            "lin_api_example_alice",
            "mcp-tests-secret"
        ]
        .iter()
        .all(|secret| !text.contains(secret)),
        "a secret leaked into the ConfigMap"
    );
    let statuses = plane.kubectl(&["get", "mcpgate", "-n", &ns, "-o", "json"])?;
    ensure!(
        [
            "hf_example_not_a_real_token",
            "lin_api_example_alice",
            "mcp-tests-secret"
        ]
        .iter()
        .all(|secret| !statuses.contains(secret)),
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
    plane.apply(&ns, &yaml.replace("hf_example_not_a_real_token", "rotated"))?;
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
    let operator = Operator::start(plane, &[&ns], &gw, "missing")?;
    let yaml =
        std::fs::read_to_string(workspace().join("config/samples/mcpserver-apikey-shared.yaml"))?;
    let server_only = yaml.split("---").nth(1).unwrap();
    plane.apply(&ns, server_only)?;
    let (_, reason, message) =
        wait_condition(plane, &ns, "mcps/huggingface", "ResolvedRefs", "False")?;
    ensure!(reason == "SecretNotFound", "reason {reason}");
    ensure!(
        message.contains(&format!("Secret {ns}/huggingface-token not found")),
        "message: {message}"
    );
    let (_, ready_reason, _) = wait_condition(plane, &ns, "mcps/huggingface", "Ready", "False")?;
    ensure!(
        ready_reason == "RefsNotResolved",
        "Ready reason {ready_reason}"
    );
    let rendered = wait_for("config written", WAIT, || config(plane, &gw))?;
    ensure!(
        server_names(&rendered, "servers").is_empty(),
        "an unresolved server was served"
    );

    // The Secret without the opt-in label is invisible to the operator: still not found,
    // and the message says how to opt in.
    plane.kubectl(&[
        "create",
        "secret",
        "generic",
        "huggingface-token",
        "-n",
        &ns,
        "--from-literal=token=hf_example_not_a_real_token",
    ])?;
    // A change of the server makes the operator render again, after the Secret exists.
    let before = operator.metric("mcpgate_operator_reconcile_duration_seconds_count", &[])?;
    plane.kubectl(&["annotate", "mcps/huggingface", "-n", &ns, "touched=1"])?;
    reconciled(&operator, before + 1.0)?;
    let (_, reason, message) =
        wait_condition(plane, &ns, "mcps/huggingface", "ResolvedRefs", "False")?;
    ensure!(
        reason == "SecretNotFound"
            && message.contains("label it mcpgate.dev/credential=true and annotate it mcpgate.dev/allowed-servers=\"huggingface\""),
        "{reason}: {message}"
    );
    plane.kubectl(&["delete", "secret", "huggingface-token", "-n", &ns])?;

    plane.apply(&ns, &yaml)?;
    wait_condition(plane, &ns, "mcps/huggingface", "Ready", "True")?;
    wait_for("server served after the Secret appeared", WAIT, || {
        config(plane, &gw).filter(|c| server_names(c, "servers") == ["huggingface"])
    })?;
    let status = plane.kubectl(&["get", "mcps/huggingface", "-n", &ns, "-o", "json"])?;
    ensure!(
        !status.contains("hf_example_not_a_real_token"),
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

    // ...and a real change writes exactly what changed: the configuration (its new part and
    // the manifest; the old part goes) and one status.
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
    let config_applies = second.metric(
        "mcpgate_operator_writes_total",
        &[("kind", "ConfigMap"), ("op", "apply")],
    )?;
    let config_deletes = second.metric(
        "mcpgate_operator_writes_total",
        &[("kind", "ConfigMap"), ("op", "delete")],
    )?;
    let secret_writes = second.metric("mcpgate_operator_writes_total", &[("kind", "Secret")])?;
    ensure!(
        config_applies == 2.0 && config_deletes == 1.0 && secret_writes == 0.0,
        "ConfigMap applies {config_applies}, deletes {config_deletes}, Secret writes {secret_writes}"
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
    mcp_client_as(url, mode, args, None)
}

/// [`mcp_client`] as the bearer of `token`, when given.
fn mcp_client_as(
    url: &str,
    mode: &str,
    args: &[&str],
    token: Option<&str>,
) -> std::result::Result<Value, String> {
    let env: Vec<(&str, &str)> = token.map(|t| ("MCPGATE_BEARER", t)).into_iter().collect();
    mcpgate_e2e::run_peer_with("call.py", &[&[url, mode], args].concat(), &env)
        .map_err(|e| format!("{e:#}"))
}

fn the_proxy_serves_what_the_operator_renders(plane: &ControlPlane) -> Result<()> {
    let (ns, gw) = namespaces(plane, "proxy")?;
    let logs = tempfile::tempdir()?;
    let upstream_port = free_port();
    let _upstream = mcpgate_e2e::python_peer("demo_server.py", upstream_port, logs.path())?;
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
    plane.kubectl(&[
        "label",
        "secret",
        "demo-key",
        "-n",
        &ns,
        "mcpgate.dev/credential=true",
    ])?;
    plane.kubectl(&[
        "annotate",
        "secret",
        "demo-key",
        "-n",
        &ns,
        "mcpgate.dev/allowed-servers=demo",
    ])?;
    plane.apply(&ns, &server("secret_tool"))?;
    let _operator = Operator::start(plane, &[&ns], &gw, "proxy")?;

    let proxy = Proxy::start(
        &[OsStr::new("--config-namespace"), OsStr::new(&gw)],
        &[("KUBECONFIG", plane.kubeconfig.as_os_str())],
        logs.path(),
    )?;
    let port = proxy.port;

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

/// A server without an allow list: the proxy lists its tools and records them, and the
/// operator counts them and checks the virtual servers that bundle it against them.
fn the_proxy_discovers_tools_for_the_operator(plane: &ControlPlane) -> Result<()> {
    let (ns, gw) = namespaces(plane, "census")?;
    let logs = tempfile::tempdir()?;
    let upstream_port = free_port();
    // echo, add, blob, sleep and secret_tool.
    let _upstream = mcpgate_e2e::python_peer("demo_server.py", upstream_port, logs.path())?;
    plane.apply(
        &ns,
        &format!(
            "apiVersion: mcpgate.dev/v1alpha1\nkind: McpServer\nmetadata: {{name: demo}}\nspec:\n  remote: {{url: \"http://127.0.0.1:{upstream_port}/mcp\"}}\n  tools: {{deny: [secret_tool]}}\n  public: true\n"
        ),
    )?;
    plane.apply(
        &ns,
        &format!(
            "apiVersion: mcpgate.dev/v1alpha1\nkind: McpServer\nmetadata: {{name: forwarded}}\nspec:\n  remote: {{url: \"http://127.0.0.1:{upstream_port}/mcp\"}}\n  auth: {{type: Passthrough}}\n"
        ),
    )?;
    // `add` renamed to what `echo` is exposed as by default: a collision only a known tool
    // list shows. `not_a_tool` is named, and the upstream has no such tool.
    plane.apply(
        &ns,
        "apiVersion: mcpgate.dev/v1alpha1\nkind: VirtualMcpServer\nmetadata: {name: clash}\nspec:\n  tools:\n  - server: demo\n    tools: [\"*\"]\n    rename: {add: demo_echo}\n",
    )?;
    plane.apply(
        &ns,
        "apiVersion: mcpgate.dev/v1alpha1\nkind: VirtualMcpServer\nmetadata: {name: unknown}\nspec:\n  tools:\n  - server: demo\n    tools: [echo, not_a_tool]\n",
    )?;
    let _operator = Operator::start(plane, &[&ns], &gw, "census")?;
    // Before the proxy has listed anything, nothing is known: no count, no complaint.
    wait_condition(plane, &ns, "mcps/demo", "Ready", "True")?;
    let server = || -> Option<Value> {
        serde_json::from_str(
            &plane
                .kubectl(&["get", "mcps/demo", "-n", &ns, "-o", "json"])
                .ok()?,
        )
        .ok()
    };
    ensure!(
        server().is_some_and(|s| s["status"].get("toolCount").is_none()),
        "no tool count before the census: {:?}",
        server()
    );
    wait_condition(plane, &ns, "vmcps/clash", "Ready", "True")?;

    let _proxy = Proxy::start(
        &[OsStr::new("--config-namespace"), OsStr::new(&gw)],
        &[("KUBECONFIG", plane.kubeconfig.as_os_str())],
        logs.path(),
    )?;
    let record_name = format!("mcpgate-tools.{ns}.demo");
    let record = wait_for("the proxy's tool record", WAIT, || {
        let json = plane
            .kubectl(&["get", "configmap", &record_name, "-n", &gw, "-o", "json"])
            .ok()?;
        serde_json::from_str::<Value>(&json).ok()
    })?;
    let tools: Value = serde_json::from_str(record["data"]["tools.json"].as_str().unwrap_or("{}"))?;
    ensure!(
        tools["tools"] == serde_json::json!(["add", "blob", "echo", "secret_tool", "sleep"]),
        "the record holds the upstream's tools, sorted: {tools}"
    );
    let owner = &record["metadata"]["ownerReferences"][0];
    ensure!(
        owner["kind"] == "ConfigMap" && owner["name"] == "mcpgate-gateway-config",
        "owned by the configuration manifest, so uninstall takes it: {owner}"
    );
    ensure!(
        record["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "mcpgate-proxy",
        "{record}"
    );

    // Four tools once secret_tool is denied; `kubectl get` shows them in TOOLS.
    wait_for("status.toolCount from the census", WAIT, || {
        (server()?["status"]["toolCount"] == 4).then_some(())
    })?;
    let table = plane.kubectl(&["get", "mcps/demo", "-n", &ns])?;
    let header = table.lines().next().unwrap_or_default();
    let row = table.lines().nth(1).unwrap_or_default();
    let column = header
        .split_whitespace()
        .position(|c| c == "TOOLS")
        .context("a TOOLS column")?;
    ensure!(
        row.split_whitespace().nth(column) == Some("4"),
        "TOOLS shows 4:\n{table}"
    );
    // A collision only the upstream's list shows: served, Degraded, naming what to rename.
    let (_, reason, message) = wait_for("the collision to show", WAIT, || {
        condition(plane, &ns, "vmcps/clash", "ResolvedRefs").filter(|c| c.0 == "False")
    })?;
    ensure!(
        reason == "ToolNameCollision" && message.contains("demo_echo"),
        "{reason}: {message}"
    );
    let (_, reason, _) = condition(plane, &ns, "vmcps/clash", "Ready").context("Ready")?;
    ensure!(reason == "Degraded", "{reason}");
    // A server called with each caller's own token is not listed.
    let forwarded = format!("mcpgate-tools.{ns}.forwarded");
    ensure!(
        plane.absent(&format!("configmap/{forwarded}"), Some(&gw))?,
        "no record of a passthrough server"
    );
    // A missing tool is a reference that does not resolve: served without it (Degraded).
    let (_, reason, message) = wait_for("the unknown tool to show", WAIT, || {
        condition(plane, &ns, "vmcps/unknown", "ResolvedRefs").filter(|c| c.1 == "UnknownTool")
    })?;
    ensure!(message.contains("not_a_tool"), "{reason}: {message}");
    let (_, reason, _) = condition(plane, &ns, "vmcps/unknown", "Ready").context("Ready")?;
    ensure!(reason == "Degraded", "{reason}");

    // The server goes; so does its record.
    plane.kubectl(&["delete", "mcps/demo", "-n", &ns])?;
    wait_for("the record to be pruned", WAIT, || {
        plane
            .absent(&format!("configmap/{record_name}"), Some(&gw))
            .ok()?
            .then_some(())
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

/// The chart's operator rules (`charts/mcpgate/files/operator-rules-<which>.yaml`).
fn chart_rules(which: &str) -> Result<Value> {
    let path = workspace().join(format!("charts/mcpgate/files/operator-rules-{which}.yaml"));
    Ok(serde_yaml::from_str(&std::fs::read_to_string(path)?)?)
}

/// The operator's ServiceAccount in `gw` with the chart's RBAC: Roles in `watched`
/// namespaces, or a ClusterRole when `watched` is empty, plus its Role in `gw`.
fn install_operator_rbac(plane: &ControlPlane, gw: &str, watched: &[&str]) -> Result<()> {
    use serde_json::json;
    let name = format!("{gw}-mcpgate-operator");
    let subjects = json!([{"kind": "ServiceAccount", "name": "mcpgate-operator", "namespace": gw}]);
    let role_ref = |kind: &str, name: &str| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name});
    let rbac = |kind: &str, name: &str, ns: Option<&str>, body: (&str, Value)| {
        let mut object = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind,
            "metadata": {"name": name}});
        if let Some(ns) = ns {
            object["metadata"]["namespace"] = json!(ns);
        }
        object[body.0] = body.1;
        object
    };
    let mut items = vec![json!({"apiVersion": "v1", "kind": "ServiceAccount",
        "metadata": {"name": "mcpgate-operator", "namespace": gw}})];
    let watched_rules = chart_rules("watched")?;
    if watched.is_empty() {
        items.push(rbac(
            "ClusterRole",
            &name,
            None,
            ("rules", watched_rules.clone()),
        ));
        let mut binding = rbac(
            "ClusterRoleBinding",
            &name,
            None,
            ("subjects", subjects.clone()),
        );
        binding["roleRef"] = role_ref("ClusterRole", &name);
        items.push(binding);
    }
    for ns in watched {
        items.push(rbac(
            "Role",
            &name,
            Some(ns),
            ("rules", watched_rules.clone()),
        ));
        let mut binding = rbac(
            "RoleBinding",
            &name,
            Some(ns),
            ("subjects", subjects.clone()),
        );
        binding["roleRef"] = role_ref("Role", &name);
        items.push(binding);
    }
    let gateway = "mcpgate-operator-gateway";
    items.push(rbac(
        "Role",
        gateway,
        Some(gw),
        ("rules", chart_rules("gateway")?),
    ));
    let mut binding = rbac("RoleBinding", gateway, Some(gw), ("subjects", subjects));
    binding["roleRef"] = role_ref("Role", gateway);
    items.push(binding);
    let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
    plane.kubectl_stdin(&["apply", "-f", "-"], Some(&list.to_string()))?;
    Ok(())
}

/// `kubectl create --dry-run=server` of `yaml` as `user`: Err carries the API server's refusal.
fn create_as(plane: &ControlPlane, user: &str, yaml: &str) -> Result<String> {
    plane.kubectl_stdin(
        &[
            "create",
            "--dry-run=server",
            &format!("--as={user}"),
            "-f",
            "-",
        ],
        Some(yaml),
    )
}

fn operator_rbac_is_least_privilege(plane: &ControlPlane) -> Result<()> {
    let (ns, gw) = namespaces(plane, "least")?;
    let cluster_gw = "gw-least-cluster";
    plane.kubectl(&["create", "namespace", cluster_gw])?;
    install_operator_rbac(plane, &gw, &[&ns])?;
    install_operator_rbac(plane, cluster_gw, &[])?;
    let namespaced = format!("system:serviceaccount:{gw}:mcpgate-operator");
    let cluster = format!("system:serviceaccount:{cluster_gw}:mcpgate-operator");

    let star_role = |namespace: &str| {
        format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: star, namespace: {namespace}}}\nrules:\n- {{apiGroups: ['*'], resources: ['*'], verbs: ['*']}}\n"
        )
    };
    let admin_binding = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: admin, namespace: {ns}}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}}\nsubjects:\n- {{kind: User, name: mallory}}\n"
    );
    let manager_like = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: manager-like, namespace: {ns}}}\nrules:\n- {{apiGroups: [mcpgate.dev], resources: [mcpservers], resourceNames: [x], verbs: [get, update, patch, delete]}}\n"
    );
    for (user, own_gw) in [(&namespaced, gw.as_str()), (&cluster, cluster_gw)] {
        for namespace in ["kube-system", ns.as_str()] {
            match create_as(plane, user, &star_role(namespace)) {
                Err(e) if e.to_string().contains("forbidden") => {}
                other => bail!("{user} may create a '*' Role in {namespace}: {other:?}"),
            }
        }
        match create_as(plane, user, &admin_binding) {
            Err(e) if e.to_string().contains("forbidden") => {}
            other => bail!("{user} may bind cluster-admin: {other:?}"),
        }
        // What a Manager Role grants, the operator may write without bind or escalate.
        create_as(plane, user, &manager_like)
            .map_err(|e| e.context(format!("{user} cannot write a Manager Role")))?;
        let checks = [
            ("kube-system", "escalate", "roles", false),
            (ns.as_str(), "bind", "roles", false),
            (ns.as_str(), "bind", "clusterroles", false),
            (ns.as_str(), "get", "secrets/anything", false),
            ("kube-system", "get", "secrets/anything", false),
            (ns.as_str(), "create", "secrets", false),
            (ns.as_str(), "update", "secrets", false),
            (ns.as_str(), "delete", "secrets", false),
            (ns.as_str(), "list", "secrets", true),
            (own_gw, "create", "secrets", true),
            (ns.as_str(), "patch", "mcpservers.mcpgate.dev", true),
            (ns.as_str(), "create", "mcpservers.mcpgate.dev", false),
            (ns.as_str(), "create", "pods", false),
            (ns.as_str(), "create", "serviceaccounts/token", false),
        ];
        for (namespace, verb, resource, want) in checks {
            ensure!(
                can_i(plane, namespace, verb, resource, user) == want,
                "can-i {verb} {resource} -n {namespace} as {user}: expected {want}"
            );
        }
    }
    // Watching every namespace, listing (labelled) Secrets reaches kube-system too: the
    // documented price of watching all namespaces.
    ensure!(
        can_i(plane, "kube-system", "list", "secrets", &cluster),
        "expected the all-namespaces operator to list Secrets everywhere"
    );
    // Watching some namespaces: nothing outside them.
    for (namespace, verb, resource) in [
        ("kube-system", "list", "secrets"),
        ("kube-system", "create", "roles"),
        ("kube-system", "patch", "mcpservers.mcpgate.dev"),
    ] {
        ensure!(
            !can_i(plane, namespace, verb, resource, &namespaced),
            "can-i {verb} {resource} -n {namespace} as {namespaced}: expected no"
        );
    }

    // And those rules are enough: the operator, running as that ServiceAccount, renders the
    // samples, writes credentials, statuses and Manager RBAC, and elects itself leader.
    apply_samples(plane, &ns)?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = plane.service_account_kubeconfig(&gw, "mcpgate-operator", dir.path())?;
    let operator = Operator::start_as(&[&ns], &gw, "least", &kubeconfig)?;
    wait_condition(plane, &ns, "vmcps/engineering", "Ready", "True")?;
    wait_condition(plane, &ns, "mcps/github", "Ready", "True")?;
    wait_condition(plane, &ns, "mcps/petstore", "Ready", "False")?;
    wait_for("credential copied", WAIT, || {
        plane
            .kubectl(&[
                "get",
                "secret",
                &format!("mcpgate-cred.{ns}.huggingface"),
                "-n",
                &gw,
            ])
            .ok()
    })?;
    wait_for("Manager RoleBinding written", WAIT, || {
        plane
            .kubectl(&[
                "get",
                "rolebinding",
                "mcpgate-manager.github-managers",
                "-n",
                &ns,
            ])
            .ok()
    })?;
    ensure!(
        can_i(
            plane,
            &ns,
            "update",
            "mcpservers.mcpgate.dev/github",
            "bob@example.com"
        ),
        "the Manager grant does not work"
    );
    let log = operator.process.log();
    ensure!(
        !log.contains("forbidden"),
        "the operator was refused something:\n{log}"
    );
    Ok(())
}

fn a_manager_cannot_escalate(plane: &ControlPlane) -> Result<()> {
    let (ns, gw) = namespaces(plane, "escalate")?;
    // The chart's admission policy (CEL in the API server, no webhook).
    let policy = workspace().join("charts/mcpgate/files/admission-policy.yaml");
    plane.kubectl(&["apply", "-f", policy.to_str().unwrap()])?;
    let _operator = Operator::start(plane, &[&ns], &gw, "escalate")?;
    let sample =
        |file: &str| std::fs::read_to_string(workspace().join("config/samples").join(file));
    plane.apply(&ns, &sample("mcpserver-apikey-shared.yaml")?)?;
    plane.apply(&ns, &sample("mcpserver-remote.yaml")?)?;
    plane.apply(&ns, &sample("mcpserver-apikey-peruser.yaml")?)?;
    let collaborator = |name: &str, target: &str, role: &str, user: &str| {
        format!(
            "apiVersion: mcpgate.dev/v1alpha1\nkind: McpCollaborator\nmetadata: {{name: {name}}}\nspec:\n  targetRef: {{kind: McpServer, name: {target}}}\n  role: {role}\n  subjects: [{{kind: User, name: {user}}}]\n"
        )
    };
    plane.apply(
        &ns,
        &collaborator("hf-managers", "huggingface", "Manager", "bob"),
    )?;
    plane.apply(
        &ns,
        &collaborator("hf-users", "huggingface", "User", "carol"),
    )?;
    plane.apply(
        &ns,
        &collaborator("deepwiki-users", "deepwiki", "User", "carol"),
    )?;
    // A Secret of the namespace that has nothing to do with mcpgate, and one opted in for
    // deepwiki only.
    plane.kubectl(&[
        "create",
        "secret",
        "generic",
        "database",
        "-n",
        &ns,
        "--from-literal=password=db-hunter2",
    ])?;
    plane.apply(&ns, "apiVersion: v1\nkind: Secret\nmetadata:\n  name: deepwiki-token\n  labels: {mcpgate.dev/credential: \"true\"}\n  annotations: {mcpgate.dev/allowed-servers: deepwiki}\nstringData: {token: dw-secret-value}\n")?;
    wait_for("bob's Manager RoleBinding", WAIT, || {
        plane
            .kubectl(&[
                "get",
                "rolebinding",
                "mcpgate-manager.hf-managers",
                "-n",
                &ns,
            ])
            .ok()
    })?;
    wait_condition(plane, &ns, "mcps/huggingface", "Ready", "True")?;

    // 1. Retargeting a collaborator is refused at admission, for the Manager and for anyone.
    // (The tenant admin is the test's own kubectl identity, a member of system:masters.)
    for user in [Some("--as=bob"), None] {
        let mut args = vec![
            "patch",
            "mcpcollaborator/hf-managers",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"targetRef":{"kind":"McpServer","name":"deepwiki"}}}"#,
        ];
        args.extend(user);
        let refused = plane.kubectl(&args);
        match refused {
            Err(e)
                if e.to_string().contains(
                    "spec.targetRef is immutable: delete this McpCollaborator and create a new one",
                ) => {}
            other => bail!("{user:?} retargeted a collaborator: {other:?}"),
        }
    }
    let refused = plane.kubectl(&[
        "patch",
        "authoverride/alice-linear",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"serverRef":{"name":"huggingface"}}}"#,
    ]);
    ensure!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("spec.serverRef is immutable")),
        "an AuthOverride was retargeted: {refused:?}"
    );

    // 2. The Manager may not change where the server points, its credential, or who may
    //    call it; the description, tools and timeouts are theirs.
    let patch_as = |user: Option<&str>, object: &str, patch: &str| {
        let mut args = vec!["patch", object, "-n", &ns, "--type=merge", "-p", patch];
        let as_user = user.map(|u| format!("--as={u}"));
        args.extend(as_user.as_deref());
        plane.kubectl(&args)
    };
    let refused = |result: Result<String>, what: &str| match result {
        Err(e) if e.to_string().contains("only a tenant admin") => Ok(()),
        other => Err(anyhow::anyhow!("{what}: {other:?}")),
    };
    wait_for("the admission policy in force", WAIT, || {
        refused(
            patch_as(
                Some("bob"),
                "mcps/huggingface",
                r#"{"spec":{"remote":{"url":"https://attacker.example/mcp"}}}"#,
            ),
            "remote.url",
        )
        .ok()
    })?;
    for (what, patch) in [
        (
            "secretKeyRef",
            r#"{"spec":{"auth":{"apiKey":{"secretKeyRef":{"name":"database","key":"password"}}}}}"#,
        ),
        (
            "passthrough",
            r#"{"spec":{"auth":{"type":"Passthrough","apiKey":null}}}"#,
        ),
        ("public", r#"{"spec":{"public":true}}"#),
    ] {
        refused(patch_as(Some("bob"), "mcps/huggingface", patch), what)?;
    }
    patch_as(
        Some("bob"),
        "mcps/huggingface",
        r#"{"spec":{"description":"managed by bob","timeoutSeconds":12,"tools":{"deny":["delete_repo"]}}}"#,
    )
    .context("what a Manager may change")?;

    //    Nor can even a tenant admin hand mcpgate a Secret that did not opt in for the
    //    server: nothing is copied.
    let point_at = |secret: &str, key: &str| {
        patch_as(
            None,
            "mcps/huggingface",
            &format!(
                r#"{{"spec":{{"auth":{{"apiKey":{{"secretKeyRef":{{"name":"{secret}","key":"{key}"}}}}}}}}}}"#
            ),
        )
    };
    point_at("database", "password")?;
    let (_, reason, message) =
        wait_condition(plane, &ns, "mcps/huggingface", "ResolvedRefs", "False")?;
    ensure!(
        reason == "SecretNotFound" && message.contains("label it mcpgate.dev/credential=true"),
        "{reason}: {message}"
    );
    wait_for("the old copy pruned", WAIT, || {
        plane
            .kubectl(&[
                "get",
                "secret",
                &format!("mcpgate-cred.{ns}.huggingface"),
                "-n",
                &gw,
            ])
            .err()
    })?;
    point_at("deepwiki-token", "token")?;
    wait_for("the other server's Secret refused", WAIT, || {
        condition(plane, &ns, "mcps/huggingface", "ResolvedRefs")
            .filter(|c| c.1 == "SecretNotOptedIn")
    })?;
    let everything = [
        plane.kubectl(&["get", "secrets,configmaps", "-n", &gw, "-o", "json"])?,
        plane.kubectl(&["get", "mcpgate", "-n", &ns, "-o", "json"])?,
    ]
    .concat();
    for (value, what) in [
        ("db-hunter2", "the database password"),
        ("dw-secret-value", "deepwiki's token"),
    ] {
        use base64::Engine;
        let encoded = base64::engine::general_purpose::STANDARD.encode(value);
        ensure!(
            !everything.contains(value) && !everything.contains(&encoded),
            "{what} reached the gateway namespace or a status"
        );
    }

    // 3. The Manager may edit the collaborators of their server, and so make another Manager
    //    of that server, but of nothing else.
    plane.kubectl(&[
        "patch",
        "mcpcollaborator/hf-users",
        "-n",
        &ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"role":"Manager","subjects":[{"kind":"User","name":"mallory"}]}}"#,
        "--as=bob",
    ])?;
    wait_for("mallory's RoleBinding", WAIT, || {
        plane
            .kubectl(&["get", "rolebinding", "mcpgate-manager.hf-users", "-n", &ns])
            .ok()
    })?;
    // 4. A Manager of a bundle may not add servers to it (that would reach servers they have
    //    no grant on, with those servers' credentials), but may rename and drop tools.
    plane.apply(&ns, "apiVersion: mcpgate.dev/v1alpha1\nkind: VirtualMcpServer\nmetadata: {name: bundle}\nspec:\n  tools:\n  - {server: deepwiki, tools: [ask_question, read_wiki_structure]}\n")?;
    plane.apply(&ns, "apiVersion: mcpgate.dev/v1alpha1\nkind: McpCollaborator\nmetadata: {name: bundle-managers}\nspec:\n  targetRef: {kind: VirtualMcpServer, name: bundle}\n  role: Manager\n  subjects: [{kind: User, name: bob}]\n")?;
    wait_for("bob's bundle RoleBinding", WAIT, || {
        plane
            .kubectl(&[
                "get",
                "rolebinding",
                "mcpgate-manager.bundle-managers",
                "-n",
                &ns,
            ])
            .ok()
    })?;
    refused(
        patch_as(
            Some("bob"),
            "vmcps/bundle",
            r#"{"spec":{"tools":[{"server":"deepwiki","tools":["ask_question"]},{"server":"huggingface","tools":["*"]}]}}"#,
        ),
        "a bundle member added",
    )?;
    patch_as(
        Some("bob"),
        "vmcps/bundle",
        r#"{"spec":{"tools":[{"server":"deepwiki","tools":["ask_question"],"rename":{"ask_question":"ask"}}]}}"#,
    )
    .context("what a bundle's Manager may change")?;

    let checks = [
        (
            "bob",
            "patch",
            "mcpcollaborators.mcpgate.dev/hf-users",
            true,
        ),
        (
            "bob",
            "patch",
            "mcpcollaborators.mcpgate.dev/deepwiki-users",
            false,
        ),
        ("bob", "create", "mcpcollaborators.mcpgate.dev", false),
        ("bob", "update", "mcpservers.mcpgate.dev/deepwiki", false),
        (
            "bob",
            "patch",
            "authoverrides.mcpgate.dev/alice-linear",
            false,
        ),
        ("bob", "create", "authoverrides.mcpgate.dev", false),
        ("bob", "get", "secrets", false),
        ("bob", "list", "secrets", false),
        ("bob", "create", "roles", false),
        (
            "mallory",
            "update",
            "mcpservers.mcpgate.dev/huggingface",
            true,
        ),
        (
            "mallory",
            "update",
            "mcpservers.mcpgate.dev/deepwiki",
            false,
        ),
        ("mallory", "get", "secrets", false),
    ];
    for (user, verb, resource, want) in checks {
        ensure!(
            can_i(plane, &ns, verb, resource, user) == want,
            "can-i {verb} {resource} as {user}: expected {want}"
        );
    }
    Ok(())
}

/// The API server stops: the proxy keeps serving its last good configuration and the
/// operator stays up; when the API server returns, a change made then reaches the proxy.
fn an_api_server_outage_is_survived(plane: &ControlPlane) -> Result<()> {
    let (ns, gw) = namespaces(plane, "outage")?;
    let logs = tempfile::tempdir()?;
    let upstream_port = free_port();
    let _upstream = mcpgate_e2e::python_peer("demo_server.py", upstream_port, logs.path())?;
    let server = |deny: &str| {
        format!(
            "apiVersion: mcpgate.dev/v1alpha1\nkind: McpServer\nmetadata: {{name: demo}}\nspec:\n  remote: {{url: \"http://127.0.0.1:{upstream_port}/mcp\"}}\n  tools: {{deny: [{deny}]}}\n  public: true\n"
        )
    };
    plane.apply(&ns, &server("secret_tool"))?;
    let mut operator = Operator::start(plane, &[&ns], &gw, "outage")?;
    let proxy = Proxy::start(
        &[OsStr::new("--config-namespace"), OsStr::new(&gw)],
        &[("KUBECONFIG", plane.kubeconfig.as_os_str())],
        logs.path(),
    )?;
    let url = format!("http://127.0.0.1:{}/{ns}/mcp/demo/server", proxy.port);
    let add = || mcp_client(&url, "2026-07-28", &["call", "add", r#"{"a": 2, "b": 3}"#]);
    wait_for("the route served", WAIT, || add().ok())?;

    plane.stop_apiserver();
    let outcome = (|| -> Result<()> {
        for _ in 0..3 {
            let sum = add().map_err(anyhow::Error::msg)?;
            ensure!(sum["text"][0] == "5", "during the outage: {sum}");
        }
        let (status, _) = mcpgate_e2e::http_get(&format!("{}/healthz", operator.metrics_url))?;
        ensure!(
            status == 200,
            "operator /healthz {status} during the outage"
        );
        ensure!(
            !operator.process.exited(),
            "the operator exited during the outage"
        );
        Ok(())
    })();
    plane.start_apiserver()?;
    outcome?;

    // Back: a change made now reaches the proxy through the operator.
    plane.apply(&ns, &server("secret_tool, add"))?;
    wait_for(
        "the change after the outage",
        Duration::from_secs(120),
        || add().err().filter(|e| e.contains("Unknown tool: add")),
    )?;
    ensure!(!operator.process.exited(), "the operator exited");
    Ok(())
}
