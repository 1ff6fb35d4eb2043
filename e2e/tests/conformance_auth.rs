//! The MCP conformance suite's client `auth/*` scenarios (`@modelcontextprotocol/conformance`)
//! against the gateway's upstream OAuth client: for each scenario the suite starts an MCP
//! server and its authorization server and runs `e2e/peers/conformance_auth_client.py`,
//! which points a standalone gateway at that server (an McpServer with
//! `OAuth2AuthorizationCode` and nothing else, or the scenario's pre-registered client) and
//! plays alice: her calls through the gateway, and her browser session pressing Connect
//! whenever the gateway answers that her authorization is needed. Every check must pass,
//! except the ones listed in [`KNOWN`] with the reason. Ignored by plain `cargo test`;
//! `make e2e` runs it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use mcpgate_e2e::{
    IdentityProvider, Proxy, built_bin, conformance_suite, free_port, python, render, signin_args,
    workspace,
};
use serde_json::{Value, json};

/// The scenarios of the authorization code flow, with the protocol revision each runs at
/// (`None`: the suite's default for it). The suite's extension scenarios (client
/// credentials with JWT or Basic client authentication, enterprise-managed authorization,
/// DPoP, workload identity federation) are grants the gateway's per-user client does not
/// make; `OAuth2ClientCredentials` and `TokenExchange` cover the gateway's own tokens.
const SCENARIOS: &[(&str, Option<&str>)] = &[
    ("auth/metadata-default", None),
    ("auth/metadata-var1", None),
    ("auth/metadata-var2", None),
    ("auth/metadata-var3", None),
    ("auth/basic-cimd", None),
    ("auth/scope-from-www-authenticate", None),
    ("auth/scope-from-scopes-supported", None),
    ("auth/scope-omitted-when-undefined", None),
    ("auth/scope-step-up", None),
    ("auth/scope-step-up", Some("2026-07-28")),
    ("auth/scope-retry-limit", None),
    ("auth/token-endpoint-auth-basic", None),
    ("auth/token-endpoint-auth-post", None),
    ("auth/token-endpoint-auth-none", None),
    ("auth/pre-registration", None),
    ("auth/2025-03-26-oauth-metadata-backcompat", None),
    ("auth/2025-03-26-oauth-endpoint-fallback", None),
    ("auth/resource-mismatch", None),
    ("auth/offline-access-scope", None),
    ("auth/offline-access-not-supported", None),
    ("auth/authorization-server-migration", None),
    ("auth/iss-supported", None),
    ("auth/iss-not-advertised", None),
    ("auth/iss-supported-missing", None),
    ("auth/iss-wrong-issuer", None),
    ("auth/iss-unexpected", None),
    ("auth/iss-normalized", None),
    ("auth/metadata-issuer-mismatch", None),
];

/// Checks that do not pass, each with why: (scenario, check id, reason).
const KNOWN: &[(&str, &str, &str)] = &[(
    "auth/basic-cimd",
    "cimd-client-id-used",
    "a warning that the client ID is not the suite's own fixed document URL: the gateway \
     uses the client ID metadata document it serves itself (`/-/connections/client-metadata`)",
)];

#[test]
#[ignore = "needs the conformance suite, the OpenID provider and the Python peers: run `make e2e`"]
fn the_gateway_passes_the_client_auth_scenarios() -> Result<()> {
    let (node, suite) = conformance_suite()?;
    let dir = tempfile::tempdir()?;
    let (port, admin) = (free_port(), free_port());
    let url = format!("http://127.0.0.1:{port}");
    let idp = IdentityProvider::start_for(
        dir.path(),
        "https://unused.example",
        &[format!("{url}/-/signin/callback")],
    )?;
    let manifests = dir.path().join("manifests");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&manifests)?;
    render(&manifests, &config)?;
    let mut args = signin_args(dir.path(), &url, &idp.issuer)?;
    for arg in [
        "--config-dir",
        &config.display().to_string(),
        "--signin-state-dir",
        &dir.path().join("state").display().to_string(),
    ] {
        args.push(arg.to_owned());
    }
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    let proxy = Proxy::start_at(port, admin, &args, &[], dir.path())?;
    let setup = json!({
        "gateway": url,
        "manifests": manifests,
        "config": config,
        "operator": built_bin("mcpgate-operator")?,
        "bearer": idp.password_token("alice", "alice-pw")?,
        "user": "alice",
        "password": "alice-pw",
    });
    let driver = format!(
        "{} {}",
        python()?.display(),
        workspace()
            .join("e2e/peers/conformance_auth_client.py")
            .display()
    );

    let mut failing = Vec::new();
    let mut report = Vec::new();
    // MCPGATE_AUTH_SCENARIO=<name> runs only that one (while working on it).
    let only = std::env::var("MCPGATE_AUTH_SCENARIO").ok();
    for (scenario, revision) in SCENARIOS {
        if only.as_deref().is_some_and(|o| o != *scenario) {
            continue;
        }
        let results = dir
            .path()
            .join(format!("results-{}", scenario.replace('/', "-")))
            .join(revision.unwrap_or("default"));
        let mut command = Command::new(&node);
        command
            .arg(&suite)
            .args(["client", "--command", &driver, "--scenario", scenario])
            .args(["--timeout", "60000"])
            .arg("--output-dir")
            .arg(&results)
            .env("NO_COLOR", "1")
            .env("MCPGATE_DRIVER", setup.to_string());
        if let Some(revision) = revision {
            command.args(["--spec-version", revision]);
        }
        let out = command.output()?;
        let output = format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let checks = checks(&results).with_context(|| format!("{scenario}: {output}"))?;
        let mut passed = 0;
        let mut failed = Vec::new();
        for check in &checks {
            let id = check["id"].as_str().unwrap_or_default();
            match check["status"].as_str() {
                Some("SUCCESS") => passed += 1,
                Some("FAILURE" | "WARNING")
                    if !KNOWN.iter().any(|(s, c, _)| s == scenario && *c == id) =>
                {
                    failed.push(format!(
                        "  {id}: {} {}",
                        check["description"].as_str().unwrap_or_default(),
                        check["details"]
                    ));
                }
                _ => {}
            }
        }
        if passed == 0 {
            failed.push("  no check passed".into());
        }
        if !failed.is_empty() {
            failing.push(format!(
                "{scenario} ({}):\n{}\n{output}",
                revision.unwrap_or("default"),
                failed.join("\n")
            ));
        }
        report.push(format!(
            "{scenario} {}: {passed} checks passed",
            revision.unwrap_or("")
        ));
    }
    ensure!(
        !report.is_empty(),
        "no scenario ran (MCPGATE_AUTH_SCENARIO names none?)"
    );
    ensure!(
        failing.is_empty(),
        "failing checks:\n{}\n\ngateway log:\n{}",
        failing.join("\n"),
        proxy.process.log()
    );
    for (scenario, check, _) in KNOWN {
        ensure!(
            SCENARIOS.iter().any(|(s, _)| s == scenario),
            "{scenario} ({check}) is listed as known but not run"
        );
    }
    println!(
        "client auth scenarios through mcpgate:\n  {}",
        report.join("\n  ")
    );
    Ok(())
}

/// The checks in the one `checks.json` under `results`.
fn checks(results: &Path) -> Result<Vec<Value>> {
    let found = find(results, "checks.json")?.context("the suite wrote no checks.json")?;
    Ok(serde_json::from_str(&std::fs::read_to_string(found)?)?)
}

fn find(dir: &Path, name: &str) -> Result<Option<PathBuf>> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if let Some(found) = find(&path, name)? {
                return Ok(Some(found));
            }
        } else if path.file_name() == Some(OsStr::new(name)) {
            return Ok(Some(path));
        }
    }
    Ok(None)
}
