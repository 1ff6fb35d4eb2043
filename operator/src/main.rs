//! `mcpgate-operator`: reconcile mcpgate resources on a cluster (`run`), or render manifests
//! from a directory without one (`standalone`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use mcpgate_operator::controller::{self, Settings};
use mcpgate_operator::metrics::Metrics;
use mcpgate_operator::watch::Scope;
use mcpgate_operator::{bootstrap, http, standalone};

#[derive(Parser)]
#[command(
    name = "mcpgate-operator",
    version,
    about = "Renders mcpgate resources into gateway configuration, credentials and RBAC"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "MCPGATE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Watch the cluster (kubeconfig or in-cluster service account) and reconcile.
    Run(RunArgs),
    /// Render manifests from a directory into a directory, without a cluster.
    Standalone(StandaloneArgs),
}

#[derive(Parser)]
struct RunArgs {
    /// Namespace the gateway runs in: the rendered ConfigMap and credential Secrets go here.
    #[arg(long, env = "MCPGATE_GATEWAY_NAMESPACE")]
    gateway_namespace: String,
    /// Namespaces to read mcpgate resources from (comma-separated); all when empty.
    #[arg(long, env = "MCPGATE_WATCH_NAMESPACES", value_delimiter = ',')]
    watch_namespaces: Vec<String>,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, env = "MCPGATE_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Elect a leader with a coordination.k8s.io Lease so only one replica writes.
    #[arg(long, env = "MCPGATE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    leader_election: bool,
    /// Name of the Lease (in the gateway namespace).
    #[arg(long, env = "MCPGATE_LEASE_NAME", default_value = "mcpgate-operator")]
    lease_name: String,
    /// This replica's identity in the Lease; defaults to the host name.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Seconds a Lease stays valid without renewal.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Quiet time after a change before rendering, in milliseconds.
    #[arg(long, default_value_t = 200)]
    debounce_ms: u64,
    /// Full re-render interval without changes, in seconds (repairs drift).
    #[arg(long, default_value_t = 300)]
    resync_seconds: u64,
    /// The gateway's external base URL (`https://mcp.example.com`), the proxy's --public-url:
    /// McpServer and VirtualMcpServer `status.url` is then the absolute URL clients use.
    #[arg(long, env = "MCPGATE_PUBLIC_URL")]
    public_url: Option<String>,
    /// A ClusterRole that owns the Manager Roles and the gateway namespace's copies the
    /// operator creates (the chart's own), so that deleting it (uninstalling) deletes them.
    #[arg(long, env = "MCPGATE_OWNER_CLUSTER_ROLE")]
    owner_cluster_role: Option<String>,
    /// Create this Secret in the gateway namespace, holding a random session key for the
    /// proxy (key `current`), when it does not exist. Never replaced once there.
    #[arg(long, env = "MCPGATE_SESSION_KEY_SECRET")]
    session_key_secret: Option<String>,
}

#[derive(Parser)]
struct StandaloneArgs {
    /// Directory of manifests (the YAML you would `kubectl apply`), read recursively.
    #[arg(long)]
    input: PathBuf,
    /// Directory to write `config.json` and `credentials/` into.
    #[arg(long)]
    output: PathBuf,
    /// Namespace for manifests that do not name one.
    #[arg(long, default_value = "default")]
    namespace: String,
    /// Keep running and re-render when files change.
    #[arg(long)]
    watch: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run_cli(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run_cli(cli: Cli) -> anyhow::Result<()> {
    let telemetry = mcpgate_telemetry::init("mcpgate-operator", cli.log_format == LogFormat::Json);
    let result = match cli.command {
        Command::Run(args) => run(args).await,
        Command::Standalone(args) => {
            if args.watch {
                standalone::watch(args.input, args.output, args.namespace, shutdown_signal())
                    .await?;
            } else {
                standalone::render_once(&args.input, &args.output, &args.namespace)?;
            }
            Ok(())
        }
    };
    telemetry.shutdown();
    result
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.public_url {
        anyhow::ensure!(
            (url.starts_with("https://") || url.starts_with("http://"))
                && url.parse::<hyper::Uri>().is_ok_and(|u| u.host().is_some()),
            "--public-url {url:?} must be an absolute http(s) URL such as https://mcp.example.com"
        );
    }
    let client = kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API")?;
    let owner_cluster_role = args.owner_cluster_role.clone().filter(|n| !n.is_empty());
    if let Some(name) = &owner_cluster_role {
        // Fail fast on a name that does not resolve; reconciles read it again each time.
        bootstrap::owner(&client, name).await?;
    }
    let metrics = Metrics::new().context("registering metrics")?;
    let ready = Arc::new(AtomicBool::new(false));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("binding {}", args.metrics_addr))?;
    tracing::info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    let http = tokio::spawn(http::serve(
        listener,
        metrics.clone(),
        ready.clone(),
        stopped(stop_rx.clone()),
    ));

    let identity = args
        .identity
        .clone()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("mcpgate-operator-{}", std::process::id()));
    let (leader, lease_task) = if args.leader_election {
        let manager =
            kube_lease_manager::LeaseManagerBuilder::new(client.clone(), &args.lease_name)
                .with_namespace(&args.gateway_namespace)
                .with_identity(&identity)
                .with_duration(args.lease_duration_seconds)
                .with_grace(args.lease_duration_seconds.div_ceil(3).max(1))
                .build()
                .await
                .context("creating the leader election Lease manager")?;
        tracing::info!(%identity, lease = %args.lease_name, "leader election enabled");
        let (rx, task) = manager.watch().await;
        (rx, Some(task))
    } else {
        let (tx, rx) = tokio::sync::watch::channel(true);
        // Kept alive for the life of the process: this replica always leads.
        std::mem::forget(tx);
        (rx, None)
    };

    // An empty MCPGATE_WATCH_NAMESPACES (as the chart sets by default) means all.
    let watch_namespaces: Vec<String> = args
        .watch_namespaces
        .iter()
        .filter(|n| !n.trim().is_empty())
        .cloned()
        .collect();
    let settings = Settings {
        scope: if watch_namespaces.is_empty() {
            Scope::All
        } else {
            Scope::Namespaces(watch_namespaces)
        },
        gateway_namespace: args.gateway_namespace.clone(),
        debounce: Duration::from_millis(args.debounce_ms),
        resync: Duration::from_secs(args.resync_seconds),
        public_url: args.public_url.clone(),
        owner_cluster_role,
        lease_name: args.leader_election.then(|| args.lease_name.clone()),
        session_key_secret: args.session_key_secret.clone().filter(|n| !n.is_empty()),
        identity,
    };
    let signal = tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    controller::run(client, settings, metrics, ready, leader, stopped(stop_rx)).await;
    signal.abort();
    // Dropping the receiver (inside run) makes the lease task release the Lease, so another
    // replica takes over at once instead of after the lease expires.
    if let Some(task) = lease_task {
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Ok(_))) => tracing::info!("lease released"),
            Ok(Ok(Err(error))) => tracing::warn!(%error, "releasing the lease failed"),
            Ok(Err(error)) => tracing::warn!(%error, "lease task panicked"),
            Err(_) => tracing::warn!("timed out releasing the lease"),
        }
    }
    http.abort();
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return ctrl_c.await.unwrap_or(()),
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
