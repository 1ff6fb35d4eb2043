//! `make bench` (operator part): render time for 1,000 McpServers + 100 VirtualMcpServers +
//! 1,000 McpCollaborators in process; then, on a real kube-apiserver, the time from applying
//! that set to the rendered configuration being complete, and the operator's peak RSS; and its
//! RSS with 150 unrelated 256 KiB Secrets in a namespace it watches. Then the scale of the
//! configuration at 5,000 McpServers: its size raw and packed into ConfigMap parts, the time to
//! pack it and for a proxy to unpack, parse and check it, and the same convergence on a real
//! API server.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::core::{DynamicObject, GroupVersionKind};
use kube::discovery::ApiResource;
use mcpgate_e2e::{ControlPlane, Operator, rss_kib, wait_for};
use mcpgate_operator::render::{Inputs, render};
use serde_json::{Value, json};

const NAMESPACES: usize = 10;
/// The scale run: 5,000 servers.
const SCALE_NAMESPACES: usize = 50;
const SERVERS_PER_NS: usize = 100;
const VIRTUALS_PER_NS: usize = 10;

/// The benchmark set as manifests: 1,000 servers (a quarter with a shared key Secret, a
/// quarter with token passthrough), 100 virtual servers of 5 servers x 2 tools, 1,000 collaborators
/// (one in ten a Manager).
fn manifests(namespaces: usize) -> Vec<Value> {
    let mut objects = Vec::new();
    for n in 0..namespaces {
        let ns = format!("bench-{n}");
        for i in 0..SERVERS_PER_NS {
            let name = format!("server-{i}");
            let auth = match i % 4 {
                0 => {
                    objects.push(json!({"apiVersion": "v1", "kind": "Secret",
                        "metadata": {"name": format!("key-{i}"), "namespace": ns,
                            "labels": {"mcpgate.dev/credential": "true"},
                            "annotations": {"mcpgate.dev/allowed-servers": name}},
                        "stringData": {"token": format!("token-{n}-{i}")}}));
                    json!({"type": "ApiKey", "apiKey": {"scope": "Shared", "secretKeyRef": {"name": format!("key-{i}"), "key": "token"}}})
                }
                1 => {
                    json!({"type": "Passthrough"})
                }
                _ => json!({"type": "None"}),
            };
            objects.push(json!({"apiVersion": "mcpgate.dev/v1alpha1", "kind": "McpServer",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"remote": {"url": format!("http://upstream-{i}.tools.svc:8080/mcp")}, "auth": auth,
                         "tools": {"allow": ["search", "read", "write"]}}}));
            let manager = i % 10 == 0;
            objects.push(
                json!({"apiVersion": "mcpgate.dev/v1alpha1", "kind": "McpCollaborator",
                "metadata": {"name": format!("collab-{i}"), "namespace": ns},
                "spec": {"targetRef": {"kind": "McpServer", "name": name},
                         "role": if manager { "Manager" } else { "User" },
                         "subjects": [{"kind": "User", "name": format!("user-{i}@example.com")},
                                      {"kind": "Group", "name": format!("team-{}", i % 7)},
                                      {"kind": "ServiceAccount", "name": format!("agent-{i}")}]}}),
            );
        }
        for v in 0..VIRTUALS_PER_NS {
            let tools: Vec<Value> = (0..5)
                .map(|k| json!({"server": format!("server-{}", v * 10 + k), "tools": ["search", "read"]}))
                .collect();
            objects.push(
                json!({"apiVersion": "mcpgate.dev/v1alpha1", "kind": "VirtualMcpServer",
                "metadata": {"name": format!("bundle-{v}"), "namespace": ns},
                "spec": {"tools": tools}}),
            );
        }
    }
    objects
}

/// The renderer's inputs from `objects`, read as a manifest stream.
fn inputs_of(objects: &[Value]) -> Result<Inputs> {
    let mut inputs = Inputs::default();
    let yaml: String = objects
        .iter()
        .map(|o| format!("---\n{}\n", serde_json::to_string(o).unwrap_or_default()))
        .collect();
    inputs.add_yaml(&yaml, "default")?;
    Ok(inputs)
}

fn render_benchmark(objects: &[Value]) -> Result<()> {
    let inputs = inputs_of(objects)?;
    let mut times = Vec::new();
    let mut rendered = render(&inputs);
    for _ in 0..20 {
        let started = Instant::now();
        rendered = render(&inputs);
        times.push(started.elapsed());
    }
    times.sort();
    println!(
        "render: {} servers, {} virtual servers, {} collaborators -> median {:.1?}, min {:.1?}, max {:.1?} (target <= 50 ms); config {} KiB",
        inputs.servers.len(),
        inputs.virtual_servers.len(),
        inputs.collaborators.len(),
        times[times.len() / 2],
        times[0],
        times[times.len() - 1],
        serde_json::to_vec(&rendered.config)?.len() / 1024
    );
    Ok(())
}

fn api_resource(object: &Value) -> Result<ApiResource> {
    let api_version = object["apiVersion"].as_str().context("apiVersion")?;
    let kind = object["kind"].as_str().context("kind")?;
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let plural = match kind {
        "Secret" => "secrets".to_owned(),
        other => format!("{}s", other.to_lowercase()),
    };
    Ok(ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk(group, version, kind),
        &plural,
    ))
}

fn converge_benchmark(objects: Vec<Value>, namespace_count: usize) -> Result<()> {
    let plane = ControlPlane::start()?;
    plane.install_crds()?;
    plane.kubectl(&["create", "namespace", "mcpgate-system"])?;
    for n in 0..namespace_count {
        plane.kubectl(&["create", "namespace", &format!("bench-{n}")])?;
    }
    let namespaces: Vec<String> = (0..namespace_count).map(|n| format!("bench-{n}")).collect();
    let ns_refs: Vec<&str> = namespaces.iter().map(String::as_str).collect();
    let operator = Operator::start(&plane, &ns_refs, "mcpgate-system", "bench")?;
    let idle_rss = rss_kib(operator.process.pid(), "VmRSS:").unwrap_or(0);

    let runtime = tokio::runtime::Runtime::new()?;
    let client = runtime.block_on(plane.client())?;
    let unrelated_rss = unrelated_secrets(&runtime, &client, &operator)?;
    let started = Instant::now();
    let count = objects.len();
    runtime.block_on(async {
        let client = Arc::new(client);
        let results: Vec<Result<()>> = futures::stream::iter(objects)
            .map(|object| {
                let client = client.clone();
                async move {
                    let ar = api_resource(&object)?;
                    let ns = object["metadata"]["namespace"]
                        .as_str()
                        .context("namespace")?
                        .to_owned();
                    let name = object["metadata"]["name"]
                        .as_str()
                        .context("name")?
                        .to_owned();
                    let api: kube::Api<DynamicObject> =
                        kube::Api::namespaced_with((*client).clone(), &ns, &ar);
                    api.patch(&name, &PatchParams::apply("bench"), &Patch::Apply(&object))
                        .await?;
                    Ok(())
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        results.into_iter().collect::<Result<Vec<()>>>()
    })?;
    let applied = started.elapsed();

    let want = namespace_count * SERVERS_PER_NS;
    wait_for(
        "the configuration to hold every server",
        Duration::from_secs(300),
        || {
            let config = plane.gateway_config("mcpgate-system")?;
            (config["servers"].as_array()?.len() == want
                && config["virtualServers"].as_array()?.len() == namespace_count * VIRTUALS_PER_NS)
                .then_some(())
        },
    )
    .map_err(|e| {
        let log = operator.process.log();
        let tail: Vec<&str> = log.lines().rev().take(5).collect();
        e.context(format!("operator log ends with:\n{}", tail.join("\n")))
    })?;
    let converged = started.elapsed();
    wait_for("every status written", Duration::from_secs(600), || {
        let pending = operator
            .metric("mcpgate_operator_writes_total", &[("op", "status")])
            .ok()?;
        (pending >= (namespace_count * (SERVERS_PER_NS * 2 + VIRTUALS_PER_NS)) as f64).then_some(())
    })?;
    let statuses = started.elapsed();
    let peak = rss_kib(operator.process.pid(), "VmHWM:").unwrap_or(0);
    println!("apply: {count} objects with server-side apply (16 in flight) in {applied:.2?}");
    println!(
        "converge: {want} servers, from the first apply to a complete configuration {converged:.2?} (target <= 10 s at 1,000); {:.2?} after the last apply; {} configuration ConfigMaps",
        converged.saturating_sub(applied),
        plane
            .kubectl(&[
                "get",
                "configmaps",
                "-n",
                "mcpgate-system",
                "-l",
                &format!(
                    "{}={}",
                    mcpgate_crds::names::LABEL_COMPONENT,
                    mcpgate_crds::names::COMPONENT_CONFIG
                ),
                "-o",
                "name"
            ])?
            .lines()
            .count()
    );
    println!(
        "status: all {} statuses written after {statuses:.2?}",
        namespace_count * (SERVERS_PER_NS * 2 + VIRTUALS_PER_NS)
    );
    println!(
        "operator RSS: idle {} MiB, peak {} MiB (target <= 100 MB)",
        idle_rss / 1024,
        peak / 1024
    );
    println!(
        "operator RSS with {UNRELATED_SECRETS} unrelated Secrets of {} KiB in a watched namespace: {} MiB (it watches only Secrets opted in as credentials)",
        UNRELATED_SECRET_BYTES / 1024,
        unrelated_rss / 1024
    );
    println!(
        "operator reconciles: {}, API writes: {}",
        operator.metric("mcpgate_operator_reconcile_duration_seconds_count", &[])?,
        operator.metric("mcpgate_operator_writes_total", &[])?
    );
    Ok(())
}

/// Secrets that are not mcpgate credentials, and the size of each.
const UNRELATED_SECRETS: usize = 150;
const UNRELATED_SECRET_BYTES: usize = 256 * 1024;

/// Creates [`UNRELATED_SECRETS`] Secrets the operator has no business reading in a watched
/// namespace, then returns its RSS in KiB: an operator that cached every Secret would hold
/// them all.
fn unrelated_secrets(
    runtime: &tokio::runtime::Runtime,
    client: &kube::Client,
    operator: &Operator,
) -> Result<u64> {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::Secret;
    let api: kube::Api<Secret> = kube::Api::namespaced(client.clone(), "bench-0");
    runtime.block_on(async {
        for i in 0..UNRELATED_SECRETS {
            let secret = Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(format!("unrelated-{i}")),
                    ..Default::default()
                },
                data: Some(
                    [(
                        "blob".to_owned(),
                        ByteString(vec![b'x'; UNRELATED_SECRET_BYTES]),
                    )]
                    .into(),
                ),
                ..Default::default()
            };
            api.create(&Default::default(), &secret).await?;
        }
        Ok::<_, anyhow::Error>(())
    })?;
    // Time for a watch that did select them to receive them.
    std::thread::sleep(Duration::from_secs(5));
    Ok(rss_kib(operator.process.pid(), "VmRSS:").unwrap_or(0))
}

/// The configuration of 5,000 servers: how large, how long to pack (operator) and to unpack,
/// parse and check (proxy).
fn scale_benchmark(objects: &[Value]) -> Result<()> {
    use mcpgate_crds::config_parts;
    let inputs = inputs_of(objects)?;
    let started = Instant::now();
    let rendered = render(&inputs);
    let render_time = started.elapsed();
    let json = serde_json::to_vec(&rendered.config)?;
    let started = Instant::now();
    let (manifest, parts) = config_parts::split(&json, &rendered.config.version, "bench");
    let pack_time = started.elapsed();
    let packed: usize = parts.iter().map(|p| p.bytes.len()).sum();
    let started = Instant::now();
    let joined = config_parts::join(&manifest, |name| {
        parts
            .iter()
            .find(|p| p.config_map == name)
            .map(|p| p.bytes.as_slice())
    })?;
    let config: mcpgate_crds::GatewayConfig = serde_json::from_slice(&joined)?;
    let credentials: mcpgate_proxy::source::snapshot::Credentials = rendered
        .secrets
        .iter()
        .map(|(name, secret)| {
            let keys = secret
                .data
                .iter()
                .map(|(k, v)| {
                    let text = String::from_utf8_lossy(v.expose()).into_owned();
                    (k.clone(), secrecy::SecretString::from(text))
                })
                .collect();
            (name.clone(), keys)
        })
        .collect();
    let snapshot = mcpgate_proxy::source::snapshot::Snapshot::build(config, &credentials);
    let load_time = started.elapsed();
    anyhow::ensure!(snapshot.is_ok(), "the proxy refused the configuration");
    println!(
        "scale: {} servers, {} virtual servers -> render {render_time:.1?}; configuration {} KiB of JSON, packed to {} KiB in {} ConfigMap part(s) of at most {} KiB in {pack_time:.1?}; a proxy unpacks, parses and checks it in {load_time:.1?}",
        inputs.servers.len(),
        inputs.virtual_servers.len(),
        json.len() / 1024,
        packed / 1024,
        parts.len(),
        config_parts::PART_LIMIT / 1024,
    );
    Ok(())
}

fn main() -> Result<()> {
    let objects = manifests(NAMESPACES);
    render_benchmark(&objects)?;
    converge_benchmark(objects, NAMESPACES)?;
    let objects = manifests(SCALE_NAMESPACES);
    scale_benchmark(&objects)?;
    converge_benchmark(objects, SCALE_NAMESPACES)
}
