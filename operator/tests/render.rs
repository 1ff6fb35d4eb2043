//! Render is pure: YAML in, configuration + credentials + diagnostics out, snapshotted.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::path::Path;

use mcpgate_crds::gateway_config as gc;
use mcpgate_operator::render::{Diagnostic, Inputs, Rendered, render};
use serde_json::json;

fn inputs_from(paths: &[&Path], namespace: &str) -> Inputs {
    let mut inputs = Inputs::default();
    for path in paths {
        let text = std::fs::read_to_string(path).unwrap();
        inputs.add_yaml(&text, namespace).unwrap();
    }
    inputs
}

fn samples() -> Vec<std::path::PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/samples");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 8, "config/samples/ lost files: {files:?}");
    files
}

/// A readable view: the configuration, which keys each credential Secret holds (values
/// redacted) and every resource's conditions.
fn summary(rendered: &Rendered) -> serde_json::Value {
    let secrets: serde_json::Map<_, _> = rendered
        .secrets
        .iter()
        .map(|(name, s)| (name.clone(), json!(s.data.keys().collect::<Vec<_>>())))
        .collect();
    let diagnostics: Vec<_> = rendered
        .diagnostics
        .iter()
        .map(|(r, d)| {
            json!({
                "resource": format!("{} {}", r.kind.as_str(), r.key),
                "accepted": format!("{} {}: {}", d.accepted.ok, d.accepted.reason, d.accepted.message),
                "resolvedRefs": format!("{} {}: {}", d.resolved_refs.ok, d.resolved_refs.reason, d.resolved_refs.message),
                "ready": format!("{} {}: {}", d.ready.ok, d.ready.reason, d.ready.message),
                "url": d.url,
                "toolCount": d.tool_count,
                "subjectCount": d.subject_count,
            })
        })
        .collect();
    sorted(json!({"config": rendered.config, "secrets": secrets, "diagnostics": diagnostics}))
}

/// Objects with their keys sorted, whether or not serde_json preserves insertion order (a
/// feature another workspace crate may switch on), so snapshots do not depend on it.
fn sorted(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sorted).collect())
        }
        other => other,
    }
}

/// Samples that use a field the proxy does not serve yet.
const NOT_SERVED_SAMPLES: [&str; 1] = ["petstore"];

#[test]
fn every_sample_renders_ready_or_not_served() {
    let files = samples();
    let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let rendered = render(&inputs_from(&paths, "demo"));
    let mut not_served = Vec::new();
    for (resource, d) in &rendered.diagnostics {
        assert!(d.accepted.ok, "{resource:?} is not accepted: {d:?}");
        if d.ready.reason == "NotServed" {
            assert!(
                !d.ready.ok && d.ready.message.contains("not served"),
                "{d:?}"
            );
            not_served.push(resource.key.name.as_str());
        } else {
            assert!(d.ready.ok, "{resource:?} is not ready: {d:?}");
        }
    }
    not_served.sort();
    assert_eq!(not_served, NOT_SERVED_SAMPLES);
    let served: Vec<_> = rendered
        .config
        .servers
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(
        served,
        [
            "deepwiki",
            "github",
            "huggingface",
            "internal-docs",
            "inventory",
            "linear",
            "tickets"
        ]
    );
    assert_eq!(rendered.config.virtual_servers.len(), 1);
    // Only served servers get their credentials copied.
    let copied: Vec<_> = rendered.secrets.keys().map(String::as_str).collect();
    assert_eq!(
        copied,
        [
            "mcpgate-cred.demo.github",
            "mcpgate-cred.demo.huggingface",
            "mcpgate-cred.demo.inventory",
            "mcpgate-cred.demo.linear",
            "mcpgate-cred.demo.tickets"
        ]
    );
    insta::assert_yaml_snapshot!("samples", summary(&rendered));
}

/// One McpServer manifest in namespace `demo` with `spec` (YAML flow).
fn server(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: mcpgate.dev/v1alpha1\nkind: McpServer\nmetadata: {{name: {name}, namespace: demo}}\nspec: {spec}\n"
    )
}

#[test]
fn fields_not_served_yet_keep_a_server_out_and_say_which() {
    let yaml = [
        server("openapi", r#"{openapi: {inline: "openapi: 3.1.0", baseUrl: "http://a"}}"#),
        server("served", r#"{remote: {url: "http://a/mcp"}}"#),
        server("old-retry", r#"{remote: {url: "http://a/sse", transport: Sse}, retry: {attempts: 1}}"#),
        server("old-breaker", r#"{remote: {url: "http://a/sse", transport: Sse}, circuitBreaker: {}}"#),
        server("old-limited", r#"{remote: {url: "http://a/sse", transport: Sse}, rateLimits: {perUser: {requests: 1}}}"#),
        "---\napiVersion: mcpgate.dev/v1alpha1\nkind: VirtualMcpServer\nmetadata: {name: bundle, namespace: demo}\nspec: {tools: [{server: served, tools: [\"*\"]}, {server: openapi, tools: [\"*\"]}]}\n".to_owned(),
    ]
    .concat();
    let mut inputs = Inputs::default();
    inputs.add_yaml(&yaml, "demo").unwrap();
    let rendered = render(&inputs);
    let ready = |name: &str| diagnostic(&rendered, name).ready.clone();
    let openapi = ready("openapi");
    assert!(!openapi.ok, "{openapi:?}");
    assert_eq!(openapi.reason, "NotServed");
    assert!(
        openapi.message.starts_with("spec.openapi"),
        "{}",
        openapi.message
    );
    for (name, field) in [
        ("old-retry", "spec.retry (with remote.transport Sse)"),
        (
            "old-breaker",
            "spec.circuitBreaker (with remote.transport Sse)",
        ),
    ] {
        let ready = ready(name);
        assert_eq!(ready.reason, "NotServed", "{name}");
        assert!(
            ready.message.starts_with(field),
            "{name}: {}",
            ready.message
        );
    }
    let served: Vec<_> = rendered
        .config
        .servers
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(served, ["old-limited", "served"]);
    // The bundle serves its served member and names the other.
    let bundle = ready("bundle");
    assert!(!bundle.ok);
    assert_eq!(bundle.reason, "Degraded");
    assert!(
        bundle.message.contains(
            "McpServer demo/openapi is not ready: spec.openapi (OpenAPI sources) is not served"
        ),
        "{}",
        bundle.message
    );
    let members: Vec<_> = rendered.config.virtual_servers[0]
        .members
        .iter()
        .map(|m| m.server.as_str())
        .collect();
    assert_eq!(members, ["served"]);
}

#[test]
fn traffic_policy_is_rendered_as_the_proxy_takes_it() {
    let yaml = [
        server(
            "policy",
            r#"{remote: {url: "http://a/mcp"}, retry: {attempts: 2},
                rateLimits: {perUser: {requests: 5}, perServer: {requests: 100, periodSeconds: 10},
                  perTool: [{tool: zeta, requests: 1}, {tool: alpha, requests: 3, periodSeconds: 3600}]},
                circuitBreaker: {openSeconds: 7}}"#,
        ),
        server("plain", r#"{remote: {url: "http://a/mcp"}}"#),
    ]
    .concat();
    let mut inputs = Inputs::default();
    inputs.add_yaml(&yaml, "demo").unwrap();
    let rendered = render(&inputs);
    assert!(diagnostic(&rendered, "policy").ready.ok);
    let policy = &rendered.config.servers[1];
    assert_eq!(policy.name, "policy");
    assert_eq!(
        policy.retry,
        Some(gc::Retry {
            attempts: 2,
            backoff_ms: 100,
            budget_percent: 20
        })
    );
    let limit = |requests, period_seconds| gc::RateLimit {
        requests,
        period_seconds,
    };
    assert_eq!(
        policy.rate_limits,
        gc::RateLimits {
            per_user: Some(limit(5, 60)),
            per_server: Some(limit(100, 10)),
            per_tool: vec![
                gc::ToolRateLimit {
                    tool: "alpha".into(),
                    limit: limit(3, 3600)
                },
                gc::ToolRateLimit {
                    tool: "zeta".into(),
                    limit: limit(1, 60)
                },
            ],
        }
    );
    assert_eq!(
        policy.circuit_breaker,
        Some(gc::CircuitBreaker {
            consecutive_failures: 5,
            open_ms: 7000
        })
    );
    let plain = &rendered.config.servers[0];
    assert_eq!(
        (
            &plain.retry,
            plain.rate_limits.is_empty(),
            plain.circuit_breaker
        ),
        (&None, true, None)
    );
}

#[test]
fn only_secrets_opted_in_for_the_server_are_read() {
    let rendered = fixture("broken-refs.yaml");
    let resolved = |name: &str| diagnostic(&rendered, name).resolved_refs.clone();
    let unlabelled = resolved("not-opted-in");
    assert_eq!(unlabelled.reason, "SecretNotOptedIn");
    assert!(
        unlabelled.message.contains("label it mcpgate.dev/credential=true and annotate it mcpgate.dev/allowed-servers=\"not-opted-in\""),
        "{}",
        unlabelled.message
    );
    let elsewhere = resolved("not-allowed");
    assert_eq!(elsewhere.reason, "SecretNotOptedIn");
    assert!(
        elsewhere.message.contains("team-a/for-ok-only"),
        "{}",
        elsewhere.message
    );
    let missing = resolved("no-secret");
    assert_eq!(missing.reason, "SecretNotFound");
    assert!(
        missing.message.contains("if it exists, label it"),
        "{}",
        missing.message
    );
    for (name, secret) in &rendered.secrets {
        for value in secret.data.values() {
            let value = String::from_utf8_lossy(value.expose());
            assert!(!value.starts_with("do-not-leak"), "{name} copied {value}");
        }
    }
}

#[test]
fn each_sample_file_parses_on_its_own() {
    for file in samples() {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut inputs = Inputs::default();
        inputs
            .add_yaml(&text, "demo")
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        render(&inputs);
    }
}

/// The diagnostic of the resource named `name` (names are unique in these inputs).
fn diagnostic<'a>(rendered: &'a Rendered, name: &str) -> &'a Diagnostic {
    rendered
        .diagnostics
        .iter()
        .find(|(r, _)| r.key.name == name)
        .map(|(_, d)| d)
        .unwrap_or_else(|| panic!("no diagnostic for {name}"))
}

fn fixture(name: &str) -> Rendered {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    render(&inputs_from(&[&path], "default"))
}

#[test]
fn broken_references_are_reported_and_left_out() {
    let rendered = fixture("broken-refs.yaml");
    let served: Vec<_> = rendered
        .config
        .servers
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert_eq!(served, ["ok"], "only the complete server is served");
    insta::assert_yaml_snapshot!("broken_refs", summary(&rendered));
}

#[test]
fn conflicts_and_collisions_are_reported_not_resolved() {
    let rendered = fixture("conflicts.yaml");
    let virtuals: Vec<_> = rendered
        .config
        .virtual_servers
        .iter()
        .map(|s| s.name.as_str())
        .collect();
    assert!(
        virtuals.is_empty(),
        "neither the conflicting nor the colliding bundle is served: {virtuals:?}"
    );
    insta::assert_yaml_snapshot!("conflicts", summary(&rendered));
}

#[test]
fn secret_values_never_reach_the_configuration_or_debug_output() {
    for name in ["broken-refs.yaml", "conflicts.yaml"] {
        let rendered = fixture(name);
        let config = serde_json::to_string(&rendered.config).unwrap();
        let debug = format!("{rendered:?}");
        for leak in [
            "do-not-leak-1",
            "do-not-leak-2",
            "do-not-leak-3",
            "do-not-leak-4",
            "do-not-leak-5",
        ] {
            assert!(
                !config.contains(leak),
                "{name}: config holds a secret value"
            );
            assert!(!debug.contains(leak), "{name}: Debug prints a secret value");
        }
    }
    // ...but the credential Secret of a served server does carry its key, for the proxy.
    let files = samples();
    let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let rendered = render(&inputs_from(&paths, "demo"));
    let values: Vec<_> = rendered
        .secrets
        .values()
        .flat_map(|s| {
            s.data
                .values()
                .map(|v| String::from_utf8_lossy(v.expose()).into_owned())
        })
        .collect();
    assert_eq!(
        values,
        [
            "example-client-secret",
            "hf_example_not_a_real_token",
            "example-inventory-secret",
            "lin_api_example_alice",
            "example-tickets-secret"
        ]
    );
}

#[test]
fn output_is_deterministic_and_independent_of_input_order() {
    let files = samples();
    let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let forward = render(&inputs_from(&paths, "demo"));
    let mut reversed_paths = paths.clone();
    reversed_paths.reverse();
    let backward = render(&inputs_from(&reversed_paths, "demo"));
    assert_eq!(forward.config, backward.config);
    assert_eq!(forward.secrets, backward.secrets);
    assert_eq!(forward.config.version.len(), 16);

    let mut changed = inputs_from(&paths, "demo");
    let served = changed
        .servers
        .iter()
        .position(|s| s.metadata.name.as_deref() == Some("deepwiki"))
        .unwrap();
    let mut server = (*changed.servers[served]).clone();
    server.spec.timeout_seconds += 1;
    changed.servers[served] = server.into();
    assert_ne!(render(&changed).config.version, forward.config.version);
}

#[test]
fn unknown_kinds_and_nameless_documents_are_rejected_with_their_position() {
    let mut inputs = Inputs::default();
    let err = inputs
        .add_yaml("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n", "x")
        .unwrap_err();
    assert!(
        err.to_string().contains("document 0: unsupported v1/Pod"),
        "{err}"
    );
    let err = inputs
        .add_yaml("---\n---\napiVersion: mcpgate.dev/v1alpha1\nkind: McpServer\nmetadata: {}\nspec: {remote: {url: http://a}}\n", "x")
        .unwrap_err();
    assert!(
        err.to_string().contains("metadata.name is required"),
        "{err}"
    );
}

#[test]
fn discovered_tools_count_and_expand_wildcards() {
    use mcpgate_crds::discovered::DiscoveredTools;
    let files = samples();
    let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let mut inputs = inputs_from(&paths, "demo");
    let record = |inputs: &mut Inputs, name: &str, url: &str, tools: &[&str]| {
        inputs.discovered_tools.insert(
            mcpgate_operator::render::ObjectKey::new("demo", name),
            DiscoveredTools::new(
                "demo",
                name,
                url,
                tools.iter().map(|t| (*t).to_owned()).collect(),
            ),
        );
    };
    record(
        &mut inputs,
        "huggingface",
        "https://huggingface.example/mcp",
        &["model_search", "paper_search"],
    );
    record(
        &mut inputs,
        "deepwiki",
        "https://mcp.deepwiki.example/mcp",
        &["read_wiki_structure"],
    );
    // Listed at another URL than the server's now, or of a server called with each user's
    // key: not used.
    record(
        &mut inputs,
        "linear",
        "https://linear.example/mcp",
        &["a", "b", "c"],
    );
    let rendered = render(&inputs);
    let engineering = diagnostic(&rendered, "engineering");
    // ask_question is not offered by deepwiki any more: reported, the rest served.
    assert!(!engineering.resolved_refs.ok);
    assert_eq!(engineering.resolved_refs.reason, "UnknownTool");
    assert!(engineering.resolved_refs.message.contains("ask_question"));
    // the 2 huggingface tools
    assert_eq!(engineering.tool_count, Some(2));
    assert_eq!(diagnostic(&rendered, "huggingface").tool_count, Some(2));
    assert_eq!(diagnostic(&rendered, "linear").tool_count, None);

    record(
        &mut inputs,
        "deepwiki",
        "https://old.deepwiki.example/mcp",
        &["read_wiki_structure"],
    );
    let rendered = render(&inputs);
    // Counted from its allow list again, and ask_question no longer doubted.
    assert_eq!(diagnostic(&rendered, "deepwiki").tool_count, Some(2));
    assert!(diagnostic(&rendered, "engineering").resolved_refs.ok);

    // The upstream grows a tool whose prefixed name no client accepts: the bundle stays
    // served and says which tool to rename.
    record(
        &mut inputs,
        "huggingface",
        "https://huggingface.example/mcp",
        &["model_search", "odd.name"],
    );
    let rendered = render(&inputs);
    let engineering = diagnostic(&rendered, "engineering");
    assert!(engineering.accepted.ok);
    assert_eq!(engineering.resolved_refs.reason, "InvalidToolName");
    assert!(engineering.resolved_refs.message.contains("odd.name"));
    assert!(
        rendered
            .config
            .virtual_servers
            .iter()
            .any(|v| v.name == "engineering")
    );
}

#[test]
fn a_target_of_the_wrong_kind_gets_a_hint() {
    let mut inputs = Inputs::default();
    inputs
        .add_yaml(
            &format!(
                "{}\n---\napiVersion: mcpgate.dev/v1alpha1\nkind: McpCollaborator\nmetadata: {{name: users}}\nspec:\n  targetRef: {{kind: VirtualMcpServer, name: web}}\n  role: User\n  subjects: [{{kind: User, name: alice}}]\n---\napiVersion: mcpgate.dev/v1alpha1\nkind: McpCollaborator\nmetadata: {{name: lost}}\nspec:\n  targetRef: {{kind: McpServer, name: nowhere}}\n  role: User\n  subjects: [{{kind: User, name: alice}}]\n",
                server("web", "{remote: {url: https://web.example/mcp}}")
            ),
            "demo",
        )
        .unwrap();
    let rendered = render(&inputs);
    let hinted = &diagnostic(&rendered, "users").resolved_refs;
    assert_eq!(hinted.reason, "TargetNotFound");
    assert!(
        hinted
            .message
            .contains("but a McpServer of that name exists: set spec.targetRef.kind to McpServer"),
        "{}",
        hinted.message
    );
    let plain = &diagnostic(&rendered, "lost").resolved_refs;
    assert!(
        plain.message.ends_with("create it or fix the name"),
        "{}",
        plain.message
    );
}
