//! OpenTelemetry traces into a real collector (Jaeger, built from its Go module by
//! `e2e/tools/jaeger.sh`; `make e2e` passes it in MCPGATE_JAEGER): the proxy exports a span
//! per request (continuing the caller's W3C trace) and one per upstream hop, whose context a
//! real MCP server (`e2e/peers/headers_server.py`) receives in `traceparent`; the operator
//! exports a span per reconcile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use mcpgate_e2e::{
    ControlPlane, Operator, Process, Proxy, call_in_session, free_port, http_get, python_peer,
    render, wait_for,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

/// Jaeger with in-memory storage, OTLP/HTTP in and its query API out, on free loopback ports.
struct Jaeger {
    _process: Process,
    /// `http://127.0.0.1:<port>`: where OTLP/HTTP goes.
    otlp: String,
    /// `http://127.0.0.1:<port>`: the query API.
    query: String,
}

impl Jaeger {
    fn start(dir: &Path) -> Result<Self> {
        let bin = std::env::var_os("MCPGATE_JAEGER").map(PathBuf::from).context(
            "MCPGATE_JAEGER is not set: run the tests with `make e2e` (it builds Jaeger with e2e/tools/jaeger.sh)",
        )?;
        let (otlp, query, grpc) = (free_port(), free_port(), free_port());
        let config = dir.join("jaeger.yaml");
        std::fs::write(
            &config,
            format!(
                "service:\n  extensions: [jaeger_storage, jaeger_query]\n  pipelines:\n    traces: {{receivers: [otlp], processors: [batch], exporters: [jaeger_storage_exporter]}}\n  telemetry: {{metrics: {{level: none}}, logs: {{level: warn}}}}\nextensions:\n  jaeger_query:\n    storage: {{traces: memory}}\n    http: {{endpoint: \"127.0.0.1:{query}\"}}\n    grpc: {{endpoint: \"127.0.0.1:{grpc}\"}}\n  jaeger_storage:\n    backends: {{memory: {{memory: {{max_traces: 10000}}}}}}\nreceivers:\n  otlp:\n    protocols: {{http: {{endpoint: \"127.0.0.1:{otlp}\"}}}}\nprocessors:\n  batch: {{timeout: 100ms}}\nexporters:\n  jaeger_storage_exporter: {{trace_storage: memory}}\n"
            ),
        )?;
        let mut command = Command::new(bin);
        command.arg(format!("--config=file:{}", config.display()));
        let process = Process::spawn("jaeger", command, dir.join("jaeger.log"))?;
        let jaeger = Self {
            _process: process,
            otlp: format!("http://127.0.0.1:{otlp}"),
            query: format!("http://127.0.0.1:{query}"),
        };
        wait_for("Jaeger's query API", WAIT, || {
            (http_get(&format!("{}/api/services", jaeger.query)).ok()?.0 == 200).then_some(())
        })?;
        Ok(jaeger)
    }

    /// The spans of trace `id` once it holds at least `at_least` of them.
    fn spans(&self, id: &str, complete: impl Fn(&[Value]) -> bool) -> Result<Vec<Value>> {
        let waited = wait_for(&format!("the spans of trace {id}"), WAIT, || {
            let (status, body) = http_get(&format!("{}/api/traces/{id}", self.query)).ok()?;
            if status != 200 {
                return None;
            }
            let trace: Value = serde_json::from_str(&body).ok()?;
            let spans = trace["data"][0]["spans"].as_array()?.clone();
            complete(&spans).then_some(spans)
        });
        waited.map_err(|e| {
            let services = http_get(&format!("{}/api/services", self.query))
                .map(|r| r.1)
                .unwrap_or_default();
            let trace = http_get(&format!("{}/api/traces/{id}", self.query))
                .map(|r| format!("{} {}", r.0, r.1.chars().take(3000).collect::<String>()))
                .unwrap_or_default();
            e.context(format!(
                "services Jaeger knows: {services}; the trace: {trace}"
            ))
        })
    }

    /// The environment that makes a component export here, quickly.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", self.otlp.clone()),
            ("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()),
        ]
    }
}

fn tag<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["tags"]
        .as_array()?
        .iter()
        .find(|t| t["key"] == key)
        .map(|t| &t["value"])
}

fn parent(span: &Value) -> Option<&str> {
    span["references"]
        .as_array()?
        .iter()
        .find(|r| r["refType"] == "CHILD_OF")?["spanID"]
        .as_str()
}

#[test]
#[ignore = "needs Jaeger and the Python MCP peers: make e2e"]
fn a_call_is_one_trace_from_the_caller_through_the_gateway_to_the_upstream() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let jaeger = Jaeger::start(dir.path())?;
    let upstream = free_port();
    let _upstream = python_peer("headers_server.py", upstream, dir.path())?;
    let manifests = dir.path().join("manifests");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(
        manifests.join("echo.yaml"),
        format!(
            "apiVersion: mcpgate.dev/v1alpha1\nkind: McpServer\nmetadata: {{name: echo, namespace: team}}\nspec:\n  remote: {{url: \"http://127.0.0.1:{upstream}/mcp\"}}\n  public: true\n"
        ),
    )?;
    let config = dir.path().join("config");
    render(&manifests, &config)?;
    let env = jaeger.env();
    let env: Vec<(&str, &OsStr)> = env.iter().map(|(k, v)| (*k, OsStr::new(v))).collect();
    let proxy = Proxy::start_at(
        free_port(),
        free_port(),
        &[OsStr::new("--config-dir"), config.as_os_str()],
        &env,
        dir.path(),
    )?;

    // The caller's trace: the gateway continues it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let traceparent = format!("00-{trace_id}-{caller_span}-01");
    let url = format!("http://127.0.0.1:{}/team/mcp/echo/server", proxy.port);
    let (status, _, message) = call_in_session(
        &url,
        &[("traceparent", &traceparent)],
        "header",
        json!({"name": "traceparent"}),
    )?;
    ensure!(status == 200, "{message}");
    let received = message["result"]["content"][0]["text"]
        .as_str()
        .context("the upstream's answer")?
        .to_owned();
    let parts: Vec<&str> = received.split('-').collect();
    ensure!(
        parts.len() == 4 && parts[1] == trace_id && parts[2] != caller_span,
        "the upstream got {received:?}: the caller's trace, with the gateway's hop as parent"
    );
    let hop_span = parts[2];

    // initialize, notifications/initialized and tools/call: a request span and an upstream
    // span each. Exported in batches: wait for the call's hop and the request above it.
    let spans = jaeger.spans(trace_id, |spans| {
        spans
            .iter()
            .find(|s| s["spanID"] == hop_span)
            .and_then(parent)
            .is_some_and(|request| spans.iter().any(|s| s["spanID"] == request))
    })?;
    let hop = spans
        .iter()
        .find(|s| s["spanID"] == hop_span)
        .with_context(|| format!("no exported span {hop_span}: {spans:#?}"))?;
    ensure!(hop["operationName"] == "upstream", "{hop}");
    ensure!(tag(hop, "span.kind") == Some(&json!("client")), "{hop}");
    ensure!(tag(hop, "server") == Some(&json!("team/echo")), "{hop}");
    ensure!(tag(hop, "status") == Some(&json!("200")), "{hop}");
    let request = spans
        .iter()
        .find(|s| Some(s["spanID"].as_str().unwrap_or_default()) == parent(hop))
        .context("the hop's parent span is exported")?;
    ensure!(request["operationName"] == "request", "{request}");
    ensure!(
        parent(request) == Some(caller_span),
        "the request continues the caller's span"
    );
    ensure!(
        tag(request, "span.kind") == Some(&json!("server")),
        "{request}"
    );
    ensure!(
        tag(request, "route") == Some(&json!("team/echo")),
        "{request}"
    );
    ensure!(tag(request, "tool") == Some(&json!("header")), "{request}");
    ensure!(tag(request, "outcome") == Some(&json!("ok")), "{request}");
    ensure!(tag(request, "status") == Some(&json!("200")), "{request}");
    ensure!(
        tag(request, "id").is_some(),
        "the request id is on the span"
    );
    let trace: Value =
        serde_json::from_str(&http_get(&format!("{}/api/traces/{trace_id}", jaeger.query))?.1)?;
    ensure!(
        trace["data"][0]["processes"]
            .as_object()
            .is_some_and(|p| p.values().any(|p| p["serviceName"] == "mcpgate-proxy")),
        "service name: {}",
        trace["data"][0]["processes"]
    );
    Ok(())
}

#[test]
#[ignore = "needs Jaeger and the test control plane: make e2e"]
fn every_reconcile_is_a_span() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let jaeger = Jaeger::start(dir.path())?;
    let plane = ControlPlane::start()?;
    plane.install_crds()?;
    for ns in ["team", "gw"] {
        plane.kubectl(&["create", "namespace", ns])?;
    }
    let mut env: Vec<(String, String)> = jaeger
        .env()
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    env.push(("MCPGATE_GATEWAY_NAMESPACE".into(), "gw".into()));
    env.push(("MCPGATE_WATCH_NAMESPACES".into(), "team".into()));
    let _operator = Operator::start_with_env(&plane.kubeconfig, &env)?;
    plane.apply(
        "team",
        "apiVersion: mcpgate.dev/v1alpha1\nkind: McpServer\nmetadata: {name: web}\nspec:\n  remote: {url: https://web.example/mcp}\n",
    )?;
    // The reconcile that rendered the server is among the spans, named by the version it wrote.
    let version = wait_for("the configuration with the server", WAIT, || {
        let config = plane.gateway_config("gw")?;
        (config.to_string().contains("web.example")).then(|| config["version"].clone())
    })?;
    let span = wait_for("its reconcile span in Jaeger", WAIT, || {
        let (status, body) = http_get(&format!(
            "{}/api/traces?service=mcpgate-operator&operation=reconcile&limit=50",
            jaeger.query
        ))
        .ok()?;
        let found: Value = serde_json::from_str(&body).ok()?;
        if status != 200 {
            return None;
        }
        found["data"]
            .as_array()?
            .iter()
            .flat_map(|trace| trace["spans"].as_array().into_iter().flatten())
            .find(|span| tag(span, "version") == Some(&version))
            .cloned()
    })?;
    ensure!(span["operationName"] == "reconcile", "{span}");
    Ok(())
}
