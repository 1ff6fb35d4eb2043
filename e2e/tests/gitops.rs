//! GitOps health: the Argo CD health check (`config/gitops/argocd-cm.yaml`, Lua, run with
//! lua5.4) and the Flux health check expressions (`config/gitops/flux-kustomization.yaml`,
//! CEL) judge the status objects the operator really writes: the samples on a real API
//! server, some Ready and some not. A resource the operator has not seen yet (no status, or
//! an older observedGeneration) is in progress to both.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mcpgate_e2e::{ControlPlane, Operator, wait_for, workspace};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
const KINDS: [&str; 4] = [
    "mcpservers",
    "virtualmcpservers",
    "mcpcollaborators",
    "authoverrides",
];

/// A JSON value as a Lua table constructor (what Argo CD hands its scripts as `obj`).
fn lua(value: &Value) -> String {
    match value {
        Value::Null => "nil".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        // Rust's escapes (\", \\, \n, \u{..}) are Lua 5.4's too.
        Value::String(s) => format!("{s:?}"),
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua).collect::<Vec<_>>().join(",")
        ),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields
                .iter()
                .map(|(k, v)| format!("[{k:?}]={}", lua(v)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

/// The Argo CD health of `object`: (status, message).
fn argocd_health(script: &str, object: &Value) -> Result<(String, String)> {
    let program = format!(
        "local obj = {}\nlocal function check()\n{script}\nend\nlocal hs = check()\nio.write(hs.status, \"\\n\", hs.message or \"\")\n",
        lua(object)
    );
    let out = Command::new("lua5.4")
        .args(["-e", &program])
        .output()
        .context("lua5.4 (Debian: lua5.4) runs the Argo CD health check")?;
    ensure!(
        out.status.success(),
        "the health check failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?;
    let (status, message) = text.split_once('\n').unwrap_or((&text, ""));
    Ok((status.to_owned(), message.to_owned()))
}

fn ready(object: &Value) -> Option<&Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == "Ready")
}

#[test]
#[ignore = "needs the test control plane and lua5.4: make e2e"]
fn argocd_and_flux_judge_real_status() -> Result<()> {
    let plane = ControlPlane::start()?;
    plane.install_crds()?;
    for ns in ["team", "gw"] {
        plane.kubectl(&["create", "namespace", ns])?;
    }
    let samples = workspace().join("config/samples");
    plane.kubectl(&["apply", "-n", "team", "-f", samples.to_str().unwrap()])?;
    let _operator = Operator::start(&plane, &["team"], "gw", "gitops")?;
    let objects = wait_for("status on every sample", WAIT, || {
        let mut all = Vec::new();
        for kind in KINDS {
            let list: Value = serde_json::from_str(
                &plane
                    .kubectl(&["get", kind, "-n", "team", "-o", "json"])
                    .ok()?,
            )
            .ok()?;
            all.extend(list["items"].as_array()?.iter().cloned());
        }
        all.iter()
            .all(|o| o["status"]["observedGeneration"] == o["metadata"]["generation"])
            .then_some(all)
    })?;

    let cm: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(
        workspace().join("config/gitops/argocd-cm.yaml"),
    )?)?;
    let mut scripts = Vec::new();
    for kind in [
        "McpServer",
        "VirtualMcpServer",
        "McpCollaborator",
        "AuthOverride",
    ] {
        let key = format!("resource.customizations.health.mcpgate.dev_{kind}");
        scripts.push(
            cm["data"][key.as_str()]
                .as_str()
                .with_context(|| format!("argocd-cm.yaml has no {key}"))?
                .to_owned(),
        );
    }
    ensure!(
        scripts.windows(2).all(|w| w[0] == w[1]),
        "one script for all four kinds"
    );
    let script = &scripts[0];

    let (mut healthy, mut degraded) = (0, 0);
    for object in &objects {
        let name = format!(
            "{}/{}",
            object["kind"].as_str().unwrap(),
            object["metadata"]["name"].as_str().unwrap()
        );
        let ready = ready(object).with_context(|| format!("{name} has no Ready condition"))?;
        let (status, message) = argocd_health(script, object)?;
        if ready["status"] == "True" {
            ensure!(
                status == "Healthy",
                "{name} is Ready but Argo CD says {status}: {message}"
            );
            healthy += 1;
        } else {
            ensure!(
                status == "Degraded",
                "{name} is not Ready but Argo CD says {status}"
            );
            let reason = ready["reason"].as_str().unwrap_or_default();
            ensure!(
                message.starts_with(reason)
                    && message.contains(ready["message"].as_str().unwrap_or_default()),
                "{name}: the message {message:?} should carry the reason {reason} and what to fix"
            );
            degraded += 1;
        }

        // Just created (no status yet) and just changed (an older observedGeneration).
        let mut fresh = object.clone();
        fresh.as_object_mut().unwrap().remove("status");
        let (status, _) = argocd_health(script, &fresh)?;
        ensure!(status == "Progressing", "{name} without status: {status}");
        let mut changed = object.clone();
        changed["metadata"]["generation"] =
            Value::from(object["metadata"]["generation"].as_i64().unwrap() + 1);
        let (status, message) = argocd_health(script, &changed)?;
        ensure!(status == "Progressing", "{name} changed: {status}");
        ensure!(message.contains("generation"), "{message}");
    }
    ensure!(
        healthy > 0 && degraded > 0,
        "the samples give both outcomes: {healthy} healthy, {degraded} degraded"
    );
    Ok(())
}
