//! Render is pure: YAML in, configuration + credentials + diagnostics out, snapshotted.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests fail loudly

use std::path::Path;

use mcpgate_operator::render::{Inputs, Rendered, render};
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

#[test]
fn every_sample_renders_ready() {
    let files = samples();
    let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let rendered = render(&inputs_from(&paths, "demo"));
    for (resource, d) in &rendered.diagnostics {
        assert!(d.ready.ok, "{resource:?} is not ready: {d:?}");
    }
    assert_eq!(rendered.config.servers.len(), 7);
    assert_eq!(rendered.config.virtual_servers.len(), 1);
    insta::assert_yaml_snapshot!("samples", summary(&rendered));
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
        for leak in ["do-not-leak-1", "do-not-leak-2", "do-not-leak-3"] {
            assert!(
                !config.contains(leak),
                "{name}: config holds a secret value"
            );
            assert!(!debug.contains(leak), "{name}: Debug prints a secret value");
        }
    }
    // ...but the credential Secret does carry them, for the proxy.
    let rendered = fixture("conflicts.yaml");
    let values: Vec<_> = rendered
        .secrets
        .values()
        .flat_map(|s| {
            s.data
                .values()
                .map(|v| String::from_utf8_lossy(v.expose()).into_owned())
        })
        .collect();
    assert!(values.iter().any(|v| v == "do-not-leak-2"), "{values:?}");
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
    let mut server = (*changed.servers[0]).clone();
    server.spec.timeout_seconds += 1;
    changed.servers[0] = server.into();
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
    let files = samples();
    let paths: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let mut inputs = inputs_from(&paths, "demo");
    let key = |name: &str| mcpgate_operator::render::ObjectKey::new("demo", name);
    inputs.discovered_tools.insert(
        key("huggingface"),
        vec!["model_search".into(), "paper_search".into()],
    );
    inputs.discovered_tools.insert(
        key("github"),
        vec!["create_issue".into(), "list_prs".into()],
    );
    let rendered = render(&inputs);
    let engineering = rendered
        .diagnostics
        .iter()
        .find(|(r, _)| r.key.name == "engineering")
        .map(|(_, d)| d.clone())
        .unwrap();
    // search_code is not offered by github any more: reported, the rest served.
    assert!(!engineering.resolved_refs.ok);
    assert_eq!(engineering.resolved_refs.reason, "UnknownTool");
    assert!(engineering.resolved_refs.message.contains("search_code"));
    // create_issue + 2 huggingface tools + ask_docs
    assert_eq!(engineering.tool_count, Some(4));
}
