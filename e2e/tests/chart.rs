//! The Helm chart as a platform team meets it: `helm lint` and `helm template` offline, then
//! install, a second release beside the first, the samples, `helm upgrade` (values and a CRD
//! change), RBAC checked with `kubectl auth can-i` for each party, and `helm uninstall`
//! leaving nothing behind, on a real API server with the garbage collector running.
//! The operator and the proxy run as local processes with the chart's ServiceAccounts and the
//! environment the chart's Deployments give them (there is no kubelet); a real MCP call goes
//! through that proxy. `make e2e` builds helm
//! (`e2e/tools/helm.sh`) and passes it in MCPGATE_HELM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use mcpgate_e2e::{ControlPlane, Operator, Proxy, free_port, wait_for, workspace};
use serde::Deserialize as _;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);
/// What the operator created and the release takes with it (the session key stays).
const OPERATOR_MADE: &str =
    "app.kubernetes.io/managed-by=mcpgate-operator,mcpgate.dev/component!=session-key";

fn chart() -> PathBuf {
    workspace().join("charts/mcpgate")
}

/// helm with its own cache and configuration folders, against `kubeconfig` when given.
struct Helm {
    bin: PathBuf,
    home: tempfile::TempDir,
    kubeconfig: Option<PathBuf>,
}

impl Helm {
    fn new(kubeconfig: Option<&Path>) -> Result<Self> {
        let bin = std::env::var_os("MCPGATE_HELM").map(PathBuf::from).context(
            "MCPGATE_HELM is not set: run the tests with `make e2e` (it builds helm with e2e/tools/helm.sh)",
        )?;
        Ok(Self {
            bin,
            home: tempfile::tempdir()?,
            kubeconfig: kubeconfig.map(Path::to_path_buf),
        })
    }

    /// Runs helm; Ok(stdout) on success, Err(stderr) otherwise.
    fn run(&self, args: &[&str]) -> std::result::Result<String, String> {
        let mut command = Command::new(&self.bin);
        command
            .args(args)
            .env("HELM_CACHE_HOME", self.home.path().join("cache"))
            .env("HELM_CONFIG_HOME", self.home.path().join("config"))
            .env("HELM_DATA_HOME", self.home.path().join("data"));
        if let Some(k) = &self.kubeconfig {
            command.env("KUBECONFIG", k);
        }
        let out = command.output().map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn ok(&self, args: &[&str]) -> Result<String> {
        self.run(args)
            .map_err(|e| anyhow::anyhow!("helm {}: {e}", args.join(" ")))
    }
}

/// The documents of a rendered chart, as JSON.
fn documents(yaml: &str) -> Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = serde_json::to_value(serde_yaml::Value::deserialize(doc)?)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .with_context(|| format!("no {kind} {name} rendered"))
}

fn kinds(docs: &[Value]) -> Vec<String> {
    let mut kinds: Vec<String> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap_or_default().to_owned())
        .collect();
    kinds.sort();
    kinds.dedup();
    kinds
}

fn env_of(container: &Value) -> Vec<(String, String)> {
    container["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

#[test]
#[ignore = "needs helm: make e2e"]
fn lint_and_template_offline() -> Result<()> {
    let helm = Helm::new(None)?;
    let chart = chart();
    let chart = chart.to_str().unwrap();
    let full = workspace().join("charts/mcpgate/ci/full-values.yaml");
    let full = full.to_str().unwrap();
    helm.ok(&["lint", "--strict", chart])?;
    helm.ok(&["lint", "--strict", chart, "-f", full])?;

    // Renders without --kube-version, and the same every time: nothing random (an offline
    // renderer such as Argo CD would otherwise see drift on every sync).
    let first = helm.ok(&["template", "r1", chart, "-n", "gw"])?;
    let second = helm.ok(&["template", "r1", chart, "-n", "gw"])?;
    ensure!(first == second, "two renders of the same values differ");
    let docs = documents(&first)?;
    ensure!(
        !docs.iter().any(|d| d["kind"] == "Secret"),
        "the default render holds a Secret: keys must be made by the operator, not rendered"
    );
    for doc in &docs {
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        let kind = doc["kind"].as_str().unwrap_or_default();
        ensure!(
            kind == "CustomResourceDefinition"
                || name.starts_with("r1-mcpgate")
                || name.starts_with("gw-r1-mcpgate"),
            "{kind} {name} is not named after the release"
        );
        ensure!(
            doc["metadata"]["labels"]["app.kubernetes.io/instance"] == "r1",
            "{kind} {name} lacks the release label"
        );
    }
    let crd = find(&docs, "CustomResourceDefinition", "mcpservers.mcpgate.dev")?;
    ensure!(crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep");
    let proxy = find(&docs, "Deployment", "r1-mcpgate-proxy")?;
    let pod = &proxy["spec"]["template"]["spec"];
    ensure!(pod["securityContext"]["runAsUser"] == 65532, "{pod}");
    ensure!(
        pod["volumes"][0]["secret"]["secretName"] == "r1-mcpgate-session-key",
        "{pod}"
    );
    let operator = find(&docs, "Deployment", "r1-mcpgate-operator")?;
    let env = env_of(&operator["spec"]["template"]["spec"]["containers"][0]);
    ensure!(
        env.contains(&(
            "MCPGATE_SESSION_KEY_SECRET".into(),
            "r1-mcpgate-session-key".into()
        )),
        "{env:?}"
    );
    ensure!(
        env.contains(&(
            "MCPGATE_OWNER_CLUSTER_ROLE".into(),
            "gw-r1-mcpgate-operator".into()
        )),
        "{env:?}"
    );
    for kind in [
        "PodDisruptionBudget",
        "ValidatingAdmissionPolicy",
        "ClusterRole",
    ] {
        ensure!(kinds(&docs).contains(&kind.to_owned()), "no {kind}");
    }

    // Every optional part.
    let docs = documents(&helm.ok(&["template", "g", chart, "-n", "gw", "-f", full])?)?;
    for kind in [
        "Ingress",
        "HTTPRoute",
        "ServiceMonitor",
        "PodMonitor",
        "NetworkPolicy",
        "PodDisruptionBudget",
    ] {
        ensure!(
            kinds(&docs).contains(&kind.to_owned()),
            "full values render no {kind}"
        );
    }
    ensure!(
        !docs.iter().any(|d| d["kind"] == "Secret"),
        "existingSecret set: no key Secret"
    );
    let proxy = find(&docs, "Deployment", "gateway-proxy")?;
    let pod = &proxy["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env = env_of(container);
    for (k, v) in [
        ("MCPGATE_TLS_CERT_FILE", "/etc/mcpgate/tls/tls.crt"),
        ("MCPGATE_AUDIT_LOG", "/var/log/mcpgate/audit.jsonl"),
        (
            "MCPGATE_OIDC_ISSUERS_FILE",
            "/etc/mcpgate/oidc/issuers.yaml",
        ),
        ("MCPGATE_LOG_FORMAT", "json"),
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://otel-collector.observability:4318",
        ),
        ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
    ] {
        ensure!(
            env.contains(&(k.into(), v.into())),
            "{k}={v} missing: {env:?}"
        );
    }
    let mounts = container["volumeMounts"].to_string();
    ensure!(
        mounts.contains("/var/log/mcpgate") && mounts.contains("/etc/mcpgate/tls"),
        "{mounts}"
    );
    ensure!(
        pod["volumes"].to_string().contains("mcpgate-audit"),
        "the audit volume is the claim given"
    );
    ensure!(pod["securityContext"]["runAsUser"] == 10002);
    ensure!(pod["imagePullSecrets"][0]["name"] == "regcred");
    ensure!(pod["topologySpreadConstraints"][0]["whenUnsatisfiable"] == "DoNotSchedule");
    ensure!(container["image"] == "registry.example.com/mcpgate-proxy:0.1.0-test");
    let service = find(&docs, "Service", "gateway")?;
    ensure!(
        service["spec"]["type"] == "LoadBalancer" && service["spec"]["ports"][0]["port"] == 443
    );
    ensure!(service["spec"]["externalTrafficPolicy"] == "Local");
    let roles: Vec<&str> = docs
        .iter()
        .filter(|d| d["kind"] == "Role")
        .filter_map(|d| d["metadata"]["namespace"].as_str())
        .collect();
    ensure!(
        roles.contains(&"team-a") && roles.contains(&"team-b"),
        "watched namespaces get Roles: {roles:?}"
    );

    // Alerts and dashboard query only metrics the proxy and the operator export.
    let mut exported = mcpgate_proxy::metrics::Metrics::new()?.names;
    exported.extend(mcpgate_operator::metrics::Metrics::new()?.names);
    let rule = docs
        .iter()
        .find(|d| d["kind"] == "PrometheusRule")
        .context("no PrometheusRule")?;
    let dashboard = find(&docs, "ConfigMap", "gateway-dashboard")?;
    let dashboard: Value = serde_json::from_str(
        dashboard["data"]["mcpgate.json"]
            .as_str()
            .context("the dashboard JSON")?,
    )?;
    let mut queries: Vec<String> = rule["spec"]["groups"][0]["rules"]
        .as_array()
        .context("alert rules")?
        .iter()
        .map(|r| r["expr"].as_str().unwrap_or_default().to_owned())
        .collect();
    let alerts = queries.len();
    for panel in dashboard["panels"].as_array().context("panels")? {
        for target in panel["targets"].as_array().into_iter().flatten() {
            queries.push(target["expr"].as_str().unwrap_or_default().to_owned());
        }
    }
    ensure!(
        alerts >= 8 && queries.len() > alerts + 10,
        "{alerts} alerts, {} queries",
        queries.len()
    );
    let mut queried = std::collections::BTreeSet::new();
    for query in &queries {
        let mut rest = query.as_str();
        while let Some(at) = rest.find("mcpgate_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            queried.insert(name);
        }
    }
    for name in &queried {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| exported.iter().any(|e| e == base))
            .unwrap_or(name);
        ensure!(
            exported.iter().any(|e| e == family),
            "{name} is queried but no component exports it (exported: {exported:?})"
        );
    }
    ensure!(queried.len() >= 15, "queried: {queried:?}");

    // Typos and wrong types fail with a message that names the field.
    let refused = |set: &str, says: &str| -> Result<()> {
        match helm.run(&["template", "r1", chart, "--set", set]) {
            Ok(_) => bail!("--set {set} was accepted"),
            Err(e) if e.contains(says) => Ok(()),
            Err(e) => bail!("--set {set}: expected {says:?} in {e}"),
        }
    };
    refused(
        "proxy.oidc.issuer=https://login.example.com",
        "additional properties 'issuer' not allowed",
    )?;
    refused("operator.replicas=two", "/operator/replicas")?;
    refused("proxy.auditLog=audit.jsonl", "/proxy/auditLog")?;
    refused(
        "proxy.ingress.enabled=true",
        "proxy.ingress.hosts needs at least one host name",
    )?;
    refused(
        "proxy.signin.issuer=https://login.example.com",
        "proxy.signin.issuer needs proxy.publicUrl",
    )?;
    Ok(())
}

/// `kubectl auth can-i` as `user` (a user name or `system:serviceaccount:ns:name`);
/// `resource` is `kind[/name][+subresource]`.
fn can_i(plane: &ControlPlane, user: &str, verb: &str, resource: &str, ns: Option<&str>) -> bool {
    let (resource, subresource) = match resource.split_once('+') {
        Some((r, sub)) => (r, Some(format!("--subresource={sub}"))),
        None => (resource, None),
    };
    let mut args = vec!["auth", "can-i", verb, resource];
    args.extend(subresource.as_deref());
    let ns_arg;
    match ns {
        Some(ns) => {
            ns_arg = ns.to_owned();
            args.extend(["-n", &ns_arg]);
        }
        None => args.push("--all-namespaces"),
    }
    let as_user = format!("--as={user}");
    args.push(&as_user);
    plane.kubectl(&args).is_ok_and(|o| o.trim() == "yes")
}

fn expect_can(
    plane: &ControlPlane,
    user: &str,
    checks: &[(&str, &str, Option<&str>, bool)],
) -> Result<()> {
    for &(verb, resource, ns, want) in checks {
        let got = can_i(plane, user, verb, resource, ns);
        ensure!(
            got == want,
            "{user} can-i {verb} {resource} in {}: {got}, expected {want}",
            ns.unwrap_or("all namespaces")
        );
    }
    Ok(())
}

fn exists(plane: &ControlPlane, what: &str, ns: Option<&str>) -> bool {
    let mut args = vec!["get", what, "-o", "name"];
    if let Some(ns) = ns {
        args.extend(["-n", ns]);
    }
    plane.kubectl(&args).is_ok()
}

fn json(plane: &ControlPlane, what: &str, ns: &str) -> Result<Value> {
    Ok(serde_json::from_str(
        &plane.kubectl(&["get", what, "-n", ns, "-o", "json"])?,
    )?)
}

/// The operator of release `release` in `ns`, as the chart runs it.
fn operator_of(plane: &ControlPlane, release: &str, ns: &str, dir: &Path) -> Result<Operator> {
    let name = format!("{release}-mcpgate-operator");
    let deployment = json(plane, &format!("deployment/{name}"), ns)?;
    let env = env_of(&deployment["spec"]["template"]["spec"]["containers"][0]);
    let sa = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .context("serviceAccountName")?;
    let kubeconfig = plane.service_account_kubeconfig(ns, sa, dir)?;
    Operator::start_with_env(&kubeconfig, &env)
}

/// The proxy of release `release` in `ns`, as the chart runs it: its ServiceAccount, its
/// environment, and the session key Secret where the chart mounts it.
fn proxy_of(plane: &ControlPlane, release: &str, ns: &str, dir: &Path) -> Result<Proxy> {
    use base64::Engine;
    let deployment = json(plane, &format!("deployment/{release}-mcpgate-proxy"), ns)?;
    let pod = &deployment["spec"]["template"]["spec"];
    let sa = pod["serviceAccountName"]
        .as_str()
        .context("serviceAccountName")?;
    let kubeconfig = plane.service_account_kubeconfig(ns, sa, dir)?;
    let key = json(plane, &format!("secret/{release}-mcpgate-session-key"), ns)?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(key["data"]["current"].as_str().context("the session key")?)?;
    let key_file = dir.join(format!("{release}-session-key"));
    std::fs::write(&key_file, key)?;
    let mut env: Vec<(String, std::ffi::OsString)> = env_of(&pod["containers"][0])
        .into_iter()
        .map(|(name, value)| {
            let value = match name.as_str() {
                "MCPGATE_SESSION_KEY_FILE" => key_file.clone().into_os_string(),
                // Mounted only while a rotation is under way.
                "MCPGATE_SESSION_PREVIOUS_KEY_FILE" => dir.join("no-previous-key").into_os_string(),
                _ => value.into(),
            };
            (name, value)
        })
        .collect();
    env.push(("KUBECONFIG".into(), kubeconfig.into_os_string()));
    let env: Vec<(&str, &std::ffi::OsStr)> = env
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_os_str()))
        .collect();
    // The listen addresses become loopback ones (flags win over the environment).
    Proxy::start(&[], &env, dir)
}

#[test]
#[ignore = "needs the test control plane and helm: make e2e"]
fn install_upgrade_and_uninstall() -> Result<()> {
    let plane = ControlPlane::start()?;
    let _kcm = plane.start_controller_manager()?;
    let dir = tempfile::tempdir()?;
    let helm = Helm::new(Some(&plane.kubeconfig))?;
    let chart = chart();
    let chart = chart.to_str().unwrap();
    for ns in ["gw-a", "gw-b", "team-a", "team-b"] {
        plane.kubectl(&["create", "namespace", ns])?;
    }

    // The full values are valid objects to this API server (kinds it serves).
    let full = workspace().join("charts/mcpgate/ci/full-values.yaml");
    let rendered = documents(&helm.ok(&[
        "template",
        "g",
        chart,
        "-n",
        "gw-a",
        "-f",
        full.to_str().unwrap(),
    ])?)?;
    let served: Vec<String> = rendered
        .iter()
        .filter(|d| {
            ![
                "HTTPRoute",
                "ServiceMonitor",
                "PodMonitor",
                "PrometheusRule",
            ]
            .contains(&d["kind"].as_str().unwrap_or_default())
        })
        .map(|d| serde_json::to_string(d).unwrap())
        .collect();
    plane
        .kubectl_stdin(
            &["apply", "--dry-run=server", "-f", "-"],
            Some(&served.join("\n")),
        )
        .context("the full values render objects the API server refuses")?;

    // Two releases side by side: one owns the CRDs and watches every namespace (its rules in
    // a ClusterRole), the other watches team-b only (its rules in a Role there). team-b holds
    // no mcpgate resources, so the two never reconcile the same ones.
    helm.ok(&["install", "a", chart, "-n", "gw-a"])?;
    helm.ok(&[
        "install",
        "b",
        chart,
        "-n",
        "gw-b",
        "--set",
        "crds.enabled=false",
        "--set",
        "operator.watchNamespaces={team-b}",
    ])?;
    plane.kubectl(&[
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/mcpservers.mcpgate.dev",
        "crd/virtualmcpservers.mcpgate.dev",
        "crd/mcpcollaborators.mcpgate.dev",
        "crd/authoverrides.mcpgate.dev",
    ])?;

    let mut operator_a = operator_of(&plane, "a", "gw-a", dir.path())?;
    let operator_b = operator_of(&plane, "b", "gw-b", dir.path())?;

    // The operator makes the proxy's session key (nothing random was rendered). It is not
    // owned: it seals what the proxy stores for people, which outlives a reinstall.
    let key = wait_for("the session key Secret", WAIT, || {
        json(&plane, "secret/a-mcpgate-session-key", "gw-a").ok()
    })?;
    ensure!(
        key["data"]["current"].as_str().map(str::len) == Some(44),
        "32 bytes, base64: {}",
        key["data"]
    );
    ensure!(
        key["metadata"]["ownerReferences"].is_null()
            && key["metadata"]["labels"]["mcpgate.dev/component"] == "session-key",
        "{}",
        key["metadata"]
    );
    wait_for("release b's session key", WAIT, || {
        exists(&plane, "secret/b-mcpgate-session-key", Some("gw-b")).then_some(())
    })?;

    // The samples: rendered into gw-a; the Manager gets its Role.
    for sample in std::fs::read_dir(workspace().join("config/samples"))? {
        let text = std::fs::read_to_string(sample?.path())?;
        plane.apply("team-a", &text)?;
    }
    wait_for("the Manager Role", WAIT, || {
        exists(
            &plane,
            "role/mcpgate-manager.github-managers",
            Some("team-a"),
        )
        .then_some(())
    })?;
    wait_for("the rendered configuration", WAIT, || {
        plane.gateway_config("gw-a")
    })?;
    let config_b = wait_for("release b's configuration", WAIT, || {
        plane.gateway_config("gw-b")
    })?;
    ensure!(
        !config_b.to_string().contains("team-a"),
        "release b watches team-b only: {config_b}"
    );

    // A working gateway with nothing but what the chart gives the proxy: a real MCP call, and
    // the tool census recording the server's tools for the operator.
    {
        let upstream_port = free_port();
        let _upstream = mcpgate_e2e::python_peer("demo_server.py", upstream_port, dir.path())?;
        plane.apply(
            "team-a",
            &format!(
                "apiVersion: mcpgate.dev/v1alpha1\nkind: McpServer\nmetadata: {{name: demo}}\nspec:\n  remote: {{url: \"http://127.0.0.1:{upstream_port}/mcp\"}}\n  public: true\n"
            ),
        )?;
        let proxy = proxy_of(&plane, "a", "gw-a", dir.path())?;
        let url = format!("http://127.0.0.1:{}/team-a/mcp/demo/server", proxy.port);
        let sum = wait_for("a call through the chart's proxy", WAIT, || {
            mcpgate_e2e::run_peer(
                "call.py",
                &[&url, "2026-07-28", "call", "add", r#"{"a": 1, "b": 2}"#],
            )
            .ok()
        })?;
        ensure!(sum["text"][0] == "3", "{sum}");
        wait_for("the census's count in status", WAIT, || {
            let server = json(&plane, "mcpservers/demo", "team-a").ok()?;
            (server["status"]["toolCount"] == 5).then_some(())
        })
        .with_context(|| proxy.process.log())?;
        ensure!(
            exists(&plane, "configmap/mcpgate-tools.team-a.demo", Some("gw-a")),
            "the record the proxy wrote as its ServiceAccount"
        );
    }

    // RBAC, as each party.
    let op_a = "system:serviceaccount:gw-a:a-mcpgate-operator";
    expect_can(
        &plane,
        op_a,
        &[
            ("list", "mcpservers.mcpgate.dev", None, true),
            (
                "patch",
                "mcpservers.mcpgate.dev+status",
                Some("team-a"),
                true,
            ),
            ("create", "mcpservers.mcpgate.dev", Some("team-a"), false),
            ("get", "secrets", Some("team-a"), false),
            ("create", "secrets", Some("team-a"), false),
            ("create", "secrets", Some("gw-a"), true),
            (
                "escalate",
                "roles.rbac.authorization.k8s.io",
                Some("team-a"),
                false,
            ),
            (
                "bind",
                "roles.rbac.authorization.k8s.io",
                Some("team-a"),
                false,
            ),
            (
                "create",
                "clusterroles.rbac.authorization.k8s.io",
                None,
                false,
            ),
            (
                "delete",
                "clusterroles.rbac.authorization.k8s.io",
                None,
                false,
            ),
        ],
    )?;
    let op_b = "system:serviceaccount:gw-b:b-mcpgate-operator";
    expect_can(
        &plane,
        op_b,
        &[
            ("list", "mcpservers.mcpgate.dev", Some("team-b"), true),
            ("list", "mcpservers.mcpgate.dev", Some("team-a"), false),
            ("list", "secrets", Some("team-a"), false),
        ],
    )?;
    let proxy_a = "system:serviceaccount:gw-a:a-mcpgate-proxy";
    expect_can(
        &plane,
        proxy_a,
        &[
            ("get", "configmaps", Some("gw-a"), true),
            ("watch", "secrets", Some("gw-a"), true),
            ("get", "configmaps", Some("team-a"), false),
            ("get", "secrets", Some("gw-b"), false),
            ("create", "secrets", Some("gw-a"), false),
            // Its tool records (proxy.toolCensus), in its own namespace only.
            ("create", "configmaps", Some("gw-a"), true),
            ("patch", "configmaps", Some("gw-a"), true),
            ("delete", "configmaps", Some("gw-a"), false),
            ("create", "configmaps", Some("team-a"), false),
            ("list", "mcpservers.mcpgate.dev", None, false),
        ],
    )?;
    // RBAC cannot limit create by name: the admission policy keeps the proxy's ConfigMap
    // writes to its tool records.
    let as_proxy = format!("--as={proxy_a}");
    let record = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: mcpgate-tools.team-a.deepwiki\n  labels: {mcpgate.dev/component: tools, app.kubernetes.io/managed-by: mcpgate-proxy}\ndata: {tools.json: '{}'}\n";
    plane
        .kubectl_stdin(
            &["create", "-n", "gw-a", &as_proxy, "-f", "-"],
            Some(record),
        )
        .context("the proxy writes a tool record")?;
    for (what, yaml) in [
        (
            "another ConfigMap",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a-mcpgate-oidc-issuers}\ndata: {issuers.yaml: '[]'}\n",
        ),
        (
            "a record without its labels",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: mcpgate-tools.team-a.other}\ndata: {tools.json: '{}'}\n",
        ),
    ] {
        let refused = plane
            .kubectl_stdin(&["create", "-n", "gw-a", &as_proxy, "-f", "-"], Some(yaml))
            .err()
            .with_context(|| format!("the proxy may not create {what}"))?;
        ensure!(
            format!("{refused:#}").contains("its tool records"),
            "{what}: {refused:#}"
        );
    }
    let relabel = plane.kubectl(&[
        "label",
        "configmap",
        "mcpgate-gateway-config",
        "-n",
        "gw-a",
        &as_proxy,
        "--overwrite",
        "mcpgate.dev/component=tools",
    ]);
    match relabel {
        Ok(out) => bail!("the proxy patched the configuration: {out}"),
        Err(e) => ensure!(
            format!("{e:#}").contains("its tool records"),
            "the proxy may not patch the configuration: {e:#}"
        ),
    }
    plane.kubectl(&[
        "delete",
        "configmap",
        "mcpgate-tools.team-a.deepwiki",
        "-n",
        "gw-a",
        // The operator prunes a record that does not read well; it may have already.
        "--ignore-not-found",
    ])?;
    expect_can(
        &plane,
        "bob@example.com",
        &[
            (
                "patch",
                "mcpservers.mcpgate.dev/github",
                Some("team-a"),
                true,
            ),
            (
                "patch",
                "mcpservers.mcpgate.dev/deepwiki",
                Some("team-a"),
                false,
            ),
            ("get", "secrets", Some("team-a"), false),
        ],
    )?;
    // Namespace editors and viewers, through the aggregated ClusterRoles.
    plane.kubectl(&[
        "create",
        "rolebinding",
        "erin-edits",
        "-n",
        "team-a",
        "--clusterrole=edit",
        "--user=erin",
    ])?;
    plane.kubectl(&[
        "create",
        "rolebinding",
        "vic-views",
        "-n",
        "team-a",
        "--clusterrole=view",
        "--user=vic",
    ])?;
    wait_for("edit to aggregate the mcpgate kinds", WAIT, || {
        can_i(
            &plane,
            "erin",
            "create",
            "mcpservers.mcpgate.dev",
            Some("team-a"),
        )
        .then_some(())
    })?;
    expect_can(
        &plane,
        "erin",
        &[
            (
                "create",
                "mcpcollaborators.mcpgate.dev",
                Some("team-a"),
                true,
            ),
            ("delete", "authoverrides.mcpgate.dev", Some("team-a"), true),
            ("create", "mcpservers.mcpgate.dev", Some("team-b"), false),
            (
                "patch",
                "mcpservers.mcpgate.dev+status",
                Some("team-a"),
                false,
            ),
        ],
    )?;
    wait_for("view to aggregate the mcpgate kinds", WAIT, || {
        can_i(
            &plane,
            "vic",
            "list",
            "mcpservers.mcpgate.dev",
            Some("team-a"),
        )
        .then_some(())
    })?;
    expect_can(
        &plane,
        "vic",
        &[("create", "mcpservers.mcpgate.dev", Some("team-a"), false)],
    )?;

    // Upgrade: a newer chart whose CRD changed, with changed values. The session key stays
    // (open sessions survive), and so do the resources.
    let newer = dir.path().join("mcpgate");
    copy_dir(Path::new(chart), &newer)?;
    let crds = newer.join("files/crds.yaml");
    let text = std::fs::read_to_string(&crds)?;
    let marker = "  - additionalPrinterColumns:\n";
    ensure!(text.contains(marker), "the CRDs have printer columns");
    std::fs::write(
        &crds,
        text.replacen(
            marker,
            &format!("{marker}    - {{jsonPath: .metadata.generation, name: Generation, type: integer}}\n"),
            1,
        ),
    )?;
    helm.ok(&[
        "upgrade",
        "a",
        newer.to_str().unwrap(),
        "-n",
        "gw-a",
        "--reuse-values",
        "--set",
        "proxy.replicas=3",
        "--set",
        "proxy.ingress.enabled=true",
        "--set",
        "proxy.ingress.hosts={mcp.example.com}",
    ])?;
    let columns = plane.kubectl(&[
        "get",
        "crd",
        "mcpservers.mcpgate.dev",
        "-o",
        "jsonpath={.spec.versions[0].additionalPrinterColumns[*].name}",
    ])?;
    ensure!(
        columns.contains("Generation"),
        "the CRD was not upgraded: {columns}"
    );
    ensure!(
        json(&plane, "deployment/a-mcpgate-proxy", "gw-a")?["spec"]["replicas"] == 3,
        "replicas changed"
    );
    ensure!(
        exists(&plane, "ingress/a-mcpgate", Some("gw-a")),
        "the Ingress was added"
    );
    let after = json(&plane, "secret/a-mcpgate-session-key", "gw-a")?;
    ensure!(
        after["data"] == key["data"],
        "the upgrade changed the session key"
    );
    ensure!(
        exists(&plane, "mcpserver/github", Some("team-a")),
        "resources survive an upgrade"
    );

    // What the operator made is owned by the release's ClusterRole, its Lease included.
    let owner_uid =
        json(&plane, "clusterrole/gw-a-a-mcpgate-operator", "gw-a")?["metadata"]["uid"].clone();
    for (what, ns) in [
        ("role/mcpgate-manager.github-managers", "team-a"),
        ("configmap/mcpgate-gateway-config", "gw-a"),
        ("lease/a-mcpgate-operator", "gw-a"),
    ] {
        let owned = wait_for(&format!("{what} owned by the release"), WAIT, || {
            let object = json(&plane, what, ns).ok()?;
            (object["metadata"]["ownerReferences"][0]["uid"] == owner_uid).then_some(())
        });
        ensure!(
            owned.is_ok(),
            "{what} is not owned by the release's ClusterRole"
        );
    }

    ensure!(
        exists(&plane, "configmap/mcpgate-tools.team-a.demo", Some("gw-a")),
        "the tool record is there until uninstall"
    );
    // Uninstall: the pods go (here: the operator process), then the release; the garbage
    // collector removes what the operator created, the CRDs, resources and session key stay.
    operator_a.process.terminate();
    helm.ok(&["uninstall", "a", "-n", "gw-a", "--wait", "--timeout=60s"])?;
    wait_for(
        "Manager RBAC and gateway copies to be collected",
        WAIT,
        || {
            let left = [
                ("role/mcpgate-manager.github-managers", "team-a"),
                ("rolebinding/mcpgate-manager.github-managers", "team-a"),
                ("configmap/mcpgate-gateway-config", "gw-a"),
                // The proxy's, owned by the configuration.
                ("configmap/mcpgate-tools.team-a.demo", "gw-a"),
                ("lease/a-mcpgate-operator", "gw-a"),
            ];
            // A kubectl failure keeps waiting: it never reads as "collected".
            for ns in ["gw-a", "team-a"] {
                let made = plane
                    .kubectl(&[
                        "get",
                        "secrets,configmaps,roles,rolebindings",
                        "-n",
                        ns,
                        "-l",
                        OPERATOR_MADE,
                        "-o",
                        "name",
                    ])
                    .ok()?;
                if !made.trim().is_empty() {
                    return None;
                }
            }
            for (what, ns) in left {
                if !plane.absent(what, Some(ns)).ok()? {
                    return None;
                }
            }
            Some(())
        },
    )?;
    expect_can(
        &plane,
        "bob@example.com",
        &[(
            "patch",
            "mcpservers.mcpgate.dev/github",
            Some("team-a"),
            false,
        )],
    )?;
    let chart_made = plane.kubectl(&[
        "get",
        "all,secrets,configmaps,serviceaccounts,roles,rolebindings,clusterroles,clusterrolebindings,validatingadmissionpolicies,validatingadmissionpolicybindings,poddisruptionbudgets,ingresses",
        "-A", "-l", "app.kubernetes.io/instance=a", "-o", "name",
    ])?;
    ensure!(
        chart_made.trim().is_empty(),
        "left behind by uninstall: {chart_made}"
    );
    ensure!(
        exists(&plane, "crd/mcpservers.mcpgate.dev", None),
        "CRDs are kept"
    );
    ensure!(
        exists(&plane, "mcpserver/github", Some("team-a")),
        "resources are kept"
    );
    ensure!(
        exists(&plane, "secret/a-mcpgate-session-key", Some("gw-a")),
        "the session key is kept"
    );
    // Release b is untouched.
    ensure!(exists(&plane, "clusterrole/gw-b-b-mcpgate-operator", None));
    ensure!(exists(&plane, "secret/b-mcpgate-session-key", Some("gw-b")));
    drop(operator_b);
    helm.ok(&["uninstall", "b", "-n", "gw-b", "--wait", "--timeout=60s"])?;
    wait_for("release b's copies to be collected", WAIT, || {
        plane
            .kubectl(&[
                "get",
                "secrets,configmaps,roles,rolebindings",
                "-A",
                "-l",
                OPERATOR_MADE,
                "-o",
                "name",
            ])
            .ok()
            .filter(|o| o.trim().is_empty())
    })?;
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
