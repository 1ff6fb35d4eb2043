//! `mcpgate-operator standalone`: manifests in a directory -> files, re-rendered on change,
//! keeping the last good output when a manifest breaks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One `standalone` render (no watch): exit status and stderr.
fn render_once(input: &Path, output: &Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mcpgate-operator"))
        .args(["standalone", "--input"])
        .arg(input)
        .arg("--output")
        .arg(output)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read_config(output: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&std::fs::read(output.join("config.json")).ok()?).ok()
}

const SERVER: &str = "apiVersion: mcpgate.dev/v1alpha1
kind: McpServer
metadata: {name: keyed}
spec:
  remote: {url: \"http://127.0.0.1:9/mcp\"}
  auth:
    type: ApiKey
    apiKey: {secretKeyRef: {name: key, key: token}}
---
apiVersion: v1
kind: Secret
metadata: {name: key, labels: {mcpgate.dev/credential: \"true\"}, annotations: {mcpgate.dev/allowed-servers: keyed}}
stringData: {token: s3cret}
";

#[test]
fn renders_on_change_and_keeps_the_last_good_output() {
    let input = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    std::fs::write(input.path().join("server.yaml"), SERVER).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_mcpgate-operator"))
        .args(["standalone", "--watch", "--namespace", "laptop", "--input"])
        .arg(input.path())
        .arg("--output")
        .arg(output.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _child = Killed(child);

    let first = wait_for("first render", || read_config(output.path()));
    assert_eq!(first["servers"][0]["path"], "/laptop/mcp/keyed/server");
    let credential = output
        .path()
        .join("credentials/mcpgate-cred.laptop.keyed/api-key");
    assert_eq!(std::fs::read_to_string(&credential).unwrap(), "s3cret");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&credential).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(
        !std::fs::read_to_string(output.path().join("config.json"))
            .unwrap()
            .contains("s3cret")
    );

    // An edit re-renders.
    std::fs::write(
        input.path().join("server.yaml"),
        SERVER.replace("  remote:", "  timeoutSeconds: 5\n  remote:"),
    )
    .unwrap();
    let second = wait_for("re-render", || {
        read_config(output.path()).filter(|c| c["servers"][0]["timeoutMs"] == 5000)
    });
    assert_ne!(first["version"], second["version"]);

    // A broken manifest leaves the last good output alone.
    std::fs::write(input.path().join("broken.yaml"), "kind: [not, valid").unwrap();
    std::fs::write(
        input.path().join("server.yaml"),
        SERVER.replace("  remote:", "  timeoutSeconds: 6\n  remote:"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        read_config(output.path()).unwrap()["servers"][0]["timeoutMs"],
        5000
    );

    // Fixed again, and the server removed: its credentials go too (after the configuration
    // that stopped naming them is in place).
    std::fs::remove_file(input.path().join("broken.yaml")).unwrap();
    std::fs::write(input.path().join("server.yaml"), "").unwrap();
    wait_for("server removed", || {
        read_config(output.path()).filter(|c| c["servers"].as_array().is_some_and(Vec::is_empty))
    });
    wait_for("stale credentials removed", || {
        (!credential.exists()).then_some(())
    });
}

#[test]
fn one_shot_render_of_the_demo_directory() {
    let output = tempfile::tempdir().unwrap();
    let input = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/standalone");
    let (ok, stderr) = render_once(&input, output.path());
    assert!(ok, "{stderr}");
    let config = read_config(output.path()).unwrap();
    assert_eq!(config["servers"][0]["path"], "/demo/mcp/everything/server");
    assert_eq!(
        config["virtualServers"][0]["members"][0]["tools"]["add"],
        "sum"
    );
}

#[test]
fn invalid_input_fails_with_the_file_and_document() {
    let input = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    std::fs::write(
        input.path().join("pod.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n",
    )
    .unwrap();
    let (ok, stderr) = render_once(input.path(), output.path());
    assert!(!ok);
    assert!(
        stderr.contains("pod.yaml: document 0: unsupported v1/Pod"),
        "{stderr}"
    );
}

#[test]
fn manifests_a_cluster_would_reject_are_rejected_with_the_same_message() {
    let input = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    std::fs::write(
        input.path().join("bad.yaml"),
        "apiVersion: mcpgate.dev/v1alpha1\nkind: McpServer\nmetadata: {name: both}\nspec: {remote: {url: \"http://a/mcp\"}, openapi: {url: \"http://a/o\", baseUrl: \"http://a\"}}\n",
    )
    .unwrap();
    let (ok, stderr) = render_once(input.path(), output.path());
    assert!(!ok);
    assert!(
        stderr.contains("McpServer both") && stderr.contains("set exactly one of spec.remote"),
        "{stderr}"
    );
    assert!(!output.path().join("config.json").exists());
}

#[test]
fn localhost_urls_are_admitted_as_a_cluster_admits_them() {
    // kube-cel reads `http://localhost...` as a path; the API server reads it as a URL.
    let input = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    std::fs::write(
        input.path().join("local.yaml"),
        "apiVersion: mcpgate.dev/v1alpha1\nkind: McpServer\nmetadata: {name: local}\nspec:\n  remote: {url: \"http://localhost:8080/mcp\"}\n  auth: {type: OAuth2AuthorizationCode, oauth2AuthorizationCode: {tokenUrl: \"http://localhost:9000/token\", clientId: c}}\n",
    )
    .unwrap();
    let (ok, stderr) = render_once(input.path(), output.path());
    assert!(ok, "{stderr}");
    let config = std::fs::read_to_string(output.path().join("config.json")).unwrap();
    assert!(
        config.contains("http://localhost:8080/mcp")
            && config.contains("http://localhost:9000/token"),
        "the rendered configuration keeps the URLs as written: {config}"
    );
    // An OAuth endpoint on another plain-http host is still refused.
    std::fs::write(
        input.path().join("local.yaml"),
        "apiVersion: mcpgate.dev/v1alpha1\nkind: McpServer\nmetadata: {name: local}\nspec:\n  remote: {url: \"http://localhost:8080/mcp\"}\n  auth: {type: OAuth2AuthorizationCode, oauth2AuthorizationCode: {tokenUrl: \"http://localhost.example/token\", clientId: c}}\n",
    )
    .unwrap();
    let (ok, stderr) = render_once(input.path(), output.path());
    assert!(!ok && stderr.contains("tokenUrl"), "{stderr}");
}

#[test]
fn a_client_secret_goes_only_to_a_token_endpoint_the_server_names() {
    let input = tempfile::tempdir().unwrap();
    let output = tempfile::tempdir().unwrap();
    for (auth, refused) in [
        (
            "{clientId: c, clientSecretRef: {name: s, key: k}}",
            Some("clientSecretRef needs tokenUrl"),
        ),
        (
            "{tokenUrl: \"https://as.example/token\", clientSecretRef: {name: s, key: k}}",
            Some("clientSecretRef needs the clientId"),
        ),
        ("{}", None),
        ("{clientId: c}", None),
    ] {
        std::fs::write(
            input.path().join("server.yaml"),
            format!("apiVersion: mcpgate.dev/v1alpha1\nkind: McpServer\nmetadata: {{name: s}}\nspec:\n  remote: {{url: \"https://mcp.example/mcp\"}}\n  auth: {{type: OAuth2AuthorizationCode, oauth2AuthorizationCode: {auth}}}\n"),
        )
        .unwrap();
        let (ok, stderr) = render_once(input.path(), output.path());
        match refused {
            Some(why) => assert!(!ok && stderr.contains(why), "{auth}: {stderr}"),
            None => assert!(ok, "{auth}: {stderr}"),
        }
    }
}
