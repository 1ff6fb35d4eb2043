//! `mcpgate-proxy`: serves the MCP routes of the operator's configuration, read from the
//! Kubernetes API (`--config-namespace`) or a directory (`--config-dir`, as written by
//! `mcpgate-operator standalone`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mcpgate_proxy::audit::Audit;
use mcpgate_proxy::auth::cache::TokenCache;
use mcpgate_proxy::auth::inbound::Inbound;
use mcpgate_proxy::auth::oidc::{
    IssuerConfig, IssuerDefaults, IssuerEntry, OidcVerifier, issuer_configs,
};
use mcpgate_proxy::auth::service_account::TokenReviewer;
use mcpgate_proxy::guard::RequestGuard;
use mcpgate_proxy::listener::{self, Limits};
use mcpgate_proxy::mcp::shared::Shared;
use mcpgate_proxy::mcp::upstream::reply::ReadLimits;
use mcpgate_proxy::mcp::upstream::sse_bridge::SseBridge;
use mcpgate_proxy::metrics::Metrics;
use mcpgate_proxy::outbound::Outbound;
use mcpgate_proxy::outbound::vault::Vault;
use mcpgate_proxy::server::{self, App};
use mcpgate_proxy::session::{SessionKeys, Sessions};
use mcpgate_proxy::signin::SignIn;
use mcpgate_proxy::signin::clients::{Clients, RateLimit};
use mcpgate_proxy::signin::fetch::Fetcher;
use mcpgate_proxy::signin::login::IdentityProvider;
use mcpgate_proxy::signin::store::{FileStore, SecretStore, Store};
use mcpgate_proxy::signin::tokens::Tokens;
use mcpgate_proxy::source::{self, Current};
use secrecy::SecretString;

#[derive(Parser)]
#[command(name = "mcpgate-proxy", version, about = "The mcpgate MCP gateway")]
struct Args {
    /// Directory with `config.json` and `credentials/` (re-read when it changes).
    #[arg(
        long,
        env = "MCPGATE_CONFIG_DIR",
        conflicts_with = "config_namespace",
        required_unless_present = "config_namespace"
    )]
    config_dir: Option<PathBuf>,
    /// Namespace holding the operator's ConfigMap and credential Secrets, read through the
    /// Kubernetes API (kubeconfig or in-cluster service account).
    #[arg(long, env = "MCPGATE_CONFIG_NAMESPACE")]
    config_namespace: Option<String>,
    /// Address MCP clients connect to.
    #[arg(long, env = "MCPGATE_LISTEN", default_value = "0.0.0.0:8000")]
    listen: SocketAddr,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(long, env = "MCPGATE_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    admin_listen: SocketAddr,
    /// Largest request body accepted, in bytes (larger ones get 413).
    #[arg(long, env = "MCPGATE_MAX_BODY_BYTES", default_value_t = 4 * 1024 * 1024)]
    max_body_bytes: usize,
    /// Largest upstream JSON answer the gateway reads whole (to rewrite or filter it), in
    /// bytes; a larger one becomes a JSON-RPC error naming the server.
    #[arg(long, env = "MCPGATE_MAX_UPSTREAM_REPLY_BYTES", default_value_t = 16 * 1024 * 1024)]
    max_upstream_reply_bytes: usize,
    /// Largest upstream SSE event, in bytes; a larger one ends the stream with an error
    /// message in its place.
    #[arg(long, env = "MCPGATE_MAX_SSE_EVENT_BYTES", default_value_t = 16 * 1024 * 1024)]
    max_sse_event_bytes: usize,
    /// Pages of one member's list a virtual server fetches at most.
    #[arg(long, env = "MCPGATE_MAX_LIST_PAGES", default_value_t = 100)]
    max_list_pages: usize,
    /// Items of one member's list a virtual server gathers at most.
    #[arg(long, env = "MCPGATE_MAX_LIST_ITEMS", default_value_t = 10_000)]
    max_list_items: usize,
    /// Seconds a client has to send its whole request body (else 408).
    #[arg(
        long,
        env = "MCPGATE_REQUEST_BODY_TIMEOUT_SECONDS",
        default_value_t = 30
    )]
    request_body_timeout_seconds: u64,
    /// Seconds a client has to send a request's headers; an HTTP/1 connection idle this long
    /// is closed too.
    #[arg(
        long,
        env = "MCPGATE_HEADER_READ_TIMEOUT_SECONDS",
        default_value_t = 30
    )]
    header_read_timeout_seconds: u64,
    /// Largest request head (request line and headers) in bytes; larger ones get 431.
    #[arg(long, env = "MCPGATE_MAX_HEADER_BYTES", default_value_t = 64 * 1024)]
    max_header_bytes: usize,
    /// Most header fields in one request (HTTP/1); more get 431.
    #[arg(long, env = "MCPGATE_MAX_HEADERS", default_value_t = 100)]
    max_headers: usize,
    /// Open connections at most; more get 503 with Retry-After and are closed.
    #[arg(long, env = "MCPGATE_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,
    /// Requests handled at once (until their response starts) at most; more get 503 with
    /// Retry-After.
    #[arg(long, env = "MCPGATE_MAX_IN_FLIGHT", default_value_t = 4096)]
    max_in_flight: usize,
    /// Concurrent streams per HTTP/2 connection.
    #[arg(long, env = "MCPGATE_HTTP2_MAX_STREAMS", default_value_t = 100)]
    http2_max_streams: u32,
    /// Browser origins allowed to call the gateway, besides its own host (comma-separated).
    #[arg(long, env = "MCPGATE_ALLOWED_ORIGINS", value_delimiter = ',')]
    allowed_origins: Vec<String>,
    /// Host names a loopback-only gateway answers besides localhost and loopback addresses
    /// (comma-separated); other names are refused against DNS rebinding.
    #[arg(long, env = "MCPGATE_ALLOWED_HOSTS", value_delimiter = ',')]
    allowed_hosts: Vec<String>,
    /// File with the 32-byte key that seals session ids (raw, hex or base64). Replicas that
    /// share it continue each other's sessions; without it a random key is used and sessions
    /// end with the process.
    #[arg(long, env = "MCPGATE_SESSION_KEY_FILE")]
    session_key_file: Option<PathBuf>,
    /// The key used before the last rotation: ids it sealed are still accepted. A file that
    /// does not exist means no previous key (a mounted Secret has it only while rotating).
    #[arg(
        long,
        env = "MCPGATE_SESSION_PREVIOUS_KEY_FILE",
        requires = "session_key_file"
    )]
    session_previous_key_file: Option<PathBuf>,
    /// PEM certificate chain: the MCP port then serves HTTPS (HTTP/2 and HTTP/1.1 by ALPN).
    #[arg(long, env = "MCPGATE_TLS_CERT_FILE", requires = "tls_key_file")]
    tls_cert_file: Option<PathBuf>,
    /// PEM private key of `--tls-cert-file`.
    #[arg(long, env = "MCPGATE_TLS_KEY_FILE", requires = "tls_cert_file")]
    tls_key_file: Option<PathBuf>,
    /// Seconds a session lives after `initialize`; older ids get 404 and the client
    /// initializes again.
    #[arg(
        long,
        env = "MCPGATE_SESSION_MAX_AGE_SECONDS",
        default_value_t = 86_400
    )]
    session_max_age_seconds: u64,
    /// Seconds open connections may take to finish after SIGTERM.
    #[arg(long, default_value_t = 25)]
    drain_seconds: u64,
    /// OIDC issuers whose tokens are accepted on servers that are not public (repeat the flag
    /// or separate with commas). Each is discovered at `<issuer>/.well-known/openid-configuration`.
    #[arg(
        long = "oidc-issuer",
        env = "MCPGATE_OIDC_ISSUERS",
        value_delimiter = ','
    )]
    oidc_issuers: Vec<String>,
    /// Token audiences accepted (the gateway's URL or the client id tokens are minted for).
    #[arg(
        long = "oidc-audience",
        env = "MCPGATE_OIDC_AUDIENCES",
        value_delimiter = ','
    )]
    oidc_audiences: Vec<String>,
    /// The claim that names the user.
    #[arg(long, env = "MCPGATE_OIDC_USER_CLAIM", default_value = "sub")]
    oidc_user_claim: String,
    /// The claim that lists the user's groups.
    #[arg(long, env = "MCPGATE_OIDC_GROUPS_CLAIM", default_value = "groups")]
    oidc_groups_claim: String,
    /// Count the `email` claim only when `email_verified` is true. Set to false only for an
    /// identity provider that verifies every address and omits `email_verified`.
    #[arg(
        long,
        env = "MCPGATE_OIDC_REQUIRE_VERIFIED_EMAIL",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    oidc_require_verified_email: bool,
    /// A YAML or JSON list of issuers with their own settings, for when issuers differ:
    /// `- {issuer: URL, audiences: [..], userClaim: .., groupsClaim: .., userPrefix: ..,
    /// requireVerifiedEmail: ..}`; unset fields take the flags' values. Adds to --oidc-issuer.
    #[arg(long, env = "MCPGATE_OIDC_ISSUERS_FILE")]
    oidc_issuers_file: Option<PathBuf>,
    /// The gateway's external base URL (`https://mcp.example.com`), used in resource metadata
    /// and challenges; without it, the request's Host.
    #[arg(long, env = "MCPGATE_PUBLIC_URL")]
    public_url: Option<String>,
    /// Accept Kubernetes ServiceAccount tokens minted for this audience (repeat or separate
    /// with commas), checked with the API server's TokenReview. Agents mount a projected
    /// token with this audience; tokens for other audiences are refused.
    #[arg(
        long = "serviceaccount-audience",
        env = "MCPGATE_SERVICEACCOUNT_AUDIENCES",
        value_delimiter = ','
    )]
    serviceaccount_audiences: Vec<String>,
    /// Authorization servers named in resource metadata (default: the OIDC issuers).
    #[arg(
        long = "authorization-server",
        env = "MCPGATE_AUTHORIZATION_SERVERS",
        value_delimiter = ','
    )]
    authorization_servers: Vec<String>,
    /// Where the audit trail goes, one JSON line per tool call: `-` for stdout (the
    /// diagnostic log is on stderr), a file path (appended to), or `off`.
    #[arg(long, env = "MCPGATE_AUDIT_LOG", default_value = "-")]
    audit_log: String,
    /// Enables sign-in at the gateway with this OIDC issuer: people sign in with it in the
    /// browser, and MCP clients get the gateway's own tokens through its OAuth authorization
    /// server. Needs --public-url and --signin-client-id.
    #[arg(long, env = "MCPGATE_SIGNIN_ISSUER", requires_all = ["signin_client_id", "public_url"])]
    signin_issuer: Option<String>,
    /// The gateway's client id at the sign-in issuer (register `<public-url>/-/signin/callback`
    /// as its redirect URI there).
    #[arg(long, env = "MCPGATE_SIGNIN_CLIENT_ID")]
    signin_client_id: Option<String>,
    /// File holding the gateway's client secret at the sign-in issuer (without it, the gateway
    /// signs in as a public client with PKCE only).
    #[arg(long, env = "MCPGATE_SIGNIN_CLIENT_SECRET_FILE")]
    signin_client_secret_file: Option<PathBuf>,
    /// Scopes asked of the sign-in issuer (space-separated); add the one that puts groups
    /// into ID tokens if your provider has one.
    #[arg(
        long,
        env = "MCPGATE_SIGNIN_SCOPES",
        default_value = "openid email profile"
    )]
    signin_scopes: String,
    /// Directory for sign-in state: the token signing keys, registered clients, refresh-token
    /// families and personal access tokens (0600 files), for --config-dir. With
    /// --config-namespace and no directory, the state lives in Secrets of that namespace,
    /// shared by every replica.
    #[arg(long, env = "MCPGATE_SIGNIN_STATE_DIR")]
    signin_state_dir: Option<PathBuf>,
    /// Seconds the gateway's access tokens live.
    #[arg(
        long,
        env = "MCPGATE_ACCESS_TOKEN_LIFETIME_SECONDS",
        default_value_t = 3600
    )]
    access_token_lifetime_seconds: u64,
    /// Seconds an MCP client's authorization lasts (its refresh tokens work until then).
    #[arg(long, env = "MCPGATE_REFRESH_TOKEN_LIFETIME_SECONDS", default_value_t = 30 * 86_400)]
    refresh_token_lifetime_seconds: u64,
    /// Seconds a credential a user stored may go unused by the configuration (its server
    /// gone, or the user no longer granted it) before it is deleted.
    #[arg(
        long,
        env = "MCPGATE_STORED_CREDENTIAL_GRACE_SECONDS",
        default_value_t = 3600
    )]
    stored_credential_grace_seconds: u64,
    /// Days between rotations of the token signing key (the previous key keeps verifying).
    #[arg(long, env = "MCPGATE_SIGNING_KEY_ROTATION_DAYS", default_value_t = 30)]
    signing_key_rotation_days: u64,
    /// Hours a browser session at the gateway lasts.
    #[arg(long, env = "MCPGATE_SIGNIN_SESSION_HOURS", default_value_t = 12)]
    signin_session_hours: u64,
    /// Client registrations (RFC 7591) accepted per minute from one address.
    #[arg(
        long,
        env = "MCPGATE_CLIENT_REGISTRATIONS_PER_ADDRESS",
        default_value_t = 10
    )]
    client_registrations_per_address: u32,
    /// Client registrations accepted per minute in all.
    #[arg(
        long,
        env = "MCPGATE_CLIENT_REGISTRATIONS_PER_MINUTE",
        default_value_t = 100
    )]
    client_registrations_per_minute: u32,
    /// Client registrations no token was issued to yet, at most (each is deleted a day after
    /// registering if still unused); more are refused until some are used or expire.
    #[arg(
        long,
        env = "MCPGATE_MAX_PENDING_CLIENT_REGISTRATIONS",
        default_value_t = 10_000
    )]
    max_pending_client_registrations: usize,
    /// Let client metadata documents be fetched from private and loopback addresses and over
    /// plain http. For tests only: it lets any client make the gateway fetch internal URLs.
    #[arg(long, env = "MCPGATE_INSECURE_CLIENT_METADATA_ON_PRIVATE_ADDRESSES")]
    insecure_client_metadata_on_private_addresses: bool,
    /// Threads serving requests; 0 means one per CPU. One thread spends the least CPU per
    /// request when the proxy shares a small node with its upstreams.
    #[arg(long, env = "MCPGATE_WORKER_THREADS", default_value_t = 0)]
    worker_threads: usize,
    /// With --config-namespace: list the tools of every server listable with the gateway's own
    /// credential and record them in ConfigMaps of that namespace, for the operator's
    /// `status.toolCount` and tool checks (needs create and patch on ConfigMaps there).
    #[arg(
        long,
        env = "MCPGATE_TOOL_CENSUS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    tool_census: bool,
    /// Diagnostic log format, on stderr (the audit log has its own, JSON always). Spans also
    /// go to an OTLP collector when OTEL_EXPORTER_OTLP_ENDPOINT (http://...) is set.
    #[arg(long, env = "MCPGATE_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let telemetry = mcpgate_telemetry::init("mcpgate-proxy", args.log_format == LogFormat::Json);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if args.worker_threads > 0 {
        runtime.worker_threads(args.worker_threads);
    }
    let result = runtime
        .enable_all()
        .build()
        .context("starting the runtime")
        .and_then(|runtime| runtime.block_on(run(args)));
    telemetry.shutdown();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let metrics = Metrics::new().context("registering metrics")?;
    let current = Arc::new(Current::default());
    let mut census = None;
    let watcher = match (&args.config_dir, &args.config_namespace) {
        (Some(dir), _) => tokio::spawn(source::watch_dir(
            dir.clone(),
            current.clone(),
            metrics.clone(),
        )),
        (None, Some(namespace)) => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the Kubernetes API")?;
            if args.tool_census {
                census = Some((client.clone(), namespace.clone()));
            }
            let (namespace, current, metrics) =
                (namespace.clone(), current.clone(), metrics.clone());
            tokio::spawn(async move {
                source::kube::watch(client, namespace, current, metrics).await;
                Ok(())
            })
        }
        (None, None) => anyhow::bail!("set --config-dir or --config-namespace"),
    };

    let keys = match &args.session_key_file {
        Some(path) => {
            let previous = args
                .session_previous_key_file
                .as_deref()
                .filter(|p| p.exists());
            SessionKeys::load(path, previous)?
        }
        None => {
            tracing::warn!(
                "no --session-key-file: sessions are sealed with a random key and end when this process does"
            );
            SessionKeys::generate()?
        }
    };
    let keys = Arc::new(keys);
    let (mut inbound, issuers) = inbound(&args).await?;
    let signin = signin(&args, keys.clone(), &issuers).await?;
    if let Some(signin) = &signin {
        inbound.gateway = Some(signin.tokens.clone());
        if args.authorization_servers.is_empty() {
            inbound.authorization_servers = vec![signin.issuer.clone()];
        }
        tokio::spawn(maintain(
            signin.clone(),
            Duration::from_secs(args.signing_key_rotation_days.max(1) * 86_400),
            Duration::from_secs(args.refresh_token_lifetime_seconds),
        ));
    }
    let grace = Duration::from_secs(args.stored_credential_grace_seconds);
    let vault = signin
        .as_ref()
        .map(|s| Vault::new(s.store.clone(), keys.clone(), grace));
    if let Some(vault) = &vault {
        if args.session_key_file.is_none() {
            tracing::warn!(
                "no --session-key-file: the credentials users store are sealed with a random key and cannot be opened after a restart"
            );
        }
        tokio::spawn(vault.clone().listen());
        tokio::spawn(sweep_vault(vault.clone(), current.clone(), grace));
    }
    let http = mcpgate_proxy::upstream::client().context("loading TLS roots")?;
    let outbound = Outbound::new(http.clone(), vault, args.public_url.clone());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let audit = audit(&args.audit_log, &metrics)?;
    let limits = Limits {
        header_read_timeout: Duration::from_secs(args.header_read_timeout_seconds.max(1)),
        max_header_bytes: args.max_header_bytes,
        max_headers: args.max_headers,
        max_connections: args.max_connections.max(1),
        max_in_flight: args.max_in_flight.max(1),
        max_concurrent_streams: args.http2_max_streams.max(1),
        ..Limits::default()
    };
    let app = Arc::new(App {
        current: current.clone(),
        forwarder: Shared {
            client: http,
            outbound,
            max_body: args.max_body_bytes,
            body_timeout: Duration::from_secs(args.request_body_timeout_seconds.max(1)),
            read_limits: ReadLimits {
                reply_bytes: args.max_upstream_reply_bytes.max(1024),
                event_bytes: args.max_sse_event_bytes.max(1024),
                list_pages: args.max_list_pages.max(1),
                list_items: args.max_list_items.max(1),
            },
            sessions: Sessions::new(keys)
                .with_max_age(Duration::from_secs(args.session_max_age_seconds.max(1))),
            eras: Default::default(),
            listed: Default::default(),
            traffic: mcpgate_proxy::traffic::Traffic::new(metrics.clone(), current.clone()),
            bridge: SseBridge::new(args.max_sse_event_bytes.max(1024)),
            current: current.clone(),
            stopping: stop_rx.clone(),
            audit: audit.clone(),
        },
        metrics: metrics.clone(),
        guard: RequestGuard::new(args.listen, &args.allowed_origins, &args.allowed_hosts),
        inbound,
        in_flight: tokio::sync::Semaphore::new(limits.max_in_flight),
        limits,
        signin,
    });
    if let Some((client, namespace)) = census {
        tokio::spawn(mcpgate_proxy::census::run(app.clone(), client, namespace));
    }
    let tls = match (&args.tls_cert_file, &args.tls_key_file) {
        (Some(cert), Some(key)) => Some(mcpgate_proxy::tls::acceptor(cert, key)?),
        _ => None,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let admin = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding {}", args.admin_listen))?;
    tracing::info!(mcp = %listener.local_addr()?, admin = %admin.local_addr()?, tls = tls.is_some(), "listening");

    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let admin_task = tokio::spawn(server::serve_admin(
        admin,
        metrics,
        current,
        stopped(stop_rx.clone()),
    ));
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });
    listener::serve(
        listener,
        app,
        tls,
        stopped(stop_rx),
        Duration::from_secs(args.drain_seconds),
    )
    .await;
    watcher.abort();
    admin_task.abort();
    audit.flush();
    Ok(())
}

/// Inbound authentication from the flags, checked with messages that say what to fix, and
/// the trusted issuers.
async fn inbound(args: &Args) -> anyhow::Result<(Inbound, Vec<IssuerConfig>)> {
    let mut entries: Vec<IssuerEntry> = args
        .oidc_issuers
        .iter()
        .filter(|i| !i.trim().is_empty())
        .map(|issuer| IssuerEntry::plain(issuer))
        .collect();
    if let Some(path) = &args.oidc_issuers_file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --oidc-issuers-file {}", path.display()))?;
        let listed: Vec<IssuerEntry> = serde_yaml::from_str(&text).with_context(|| {
            format!(
                "--oidc-issuers-file {}: expected a list of {{issuer, audiences, userClaim, groupsClaim, userPrefix, requireVerifiedEmail}}",
                path.display()
            )
        })?;
        entries.extend(listed);
    }
    let defaults = IssuerDefaults {
        audiences: args.oidc_audiences.clone(),
        user_claim: args.oidc_user_claim.clone(),
        groups_claim: args.oidc_groups_claim.clone(),
        require_verified_email: args.oidc_require_verified_email,
    };
    let issuers = issuer_configs(entries, &defaults).map_err(anyhow::Error::msg)?;
    if let Some(url) = &args.public_url {
        let parsed: http::Uri = url
            .parse()
            .with_context(|| format!("--public-url {url:?} is not a URL"))?;
        anyhow::ensure!(
            matches!(parsed.scheme_str(), Some("https" | "http")) && parsed.host().is_some(),
            "--public-url {url:?} must be an absolute http(s) URL such as https://mcp.example.com"
        );
    }
    let authorization_servers = if args.authorization_servers.is_empty() {
        issuers.iter().map(|i| i.issuer.clone()).collect()
    } else {
        args.authorization_servers.clone()
    };
    let audiences: Vec<String> = args
        .serviceaccount_audiences
        .iter()
        .map(|a| a.trim().to_owned())
        .filter(|a| !a.is_empty())
        .collect();
    let service_accounts = if audiences.is_empty() {
        None
    } else {
        let client = kube::Client::try_default().await.context(
            "--serviceaccount-audience needs the Kubernetes API to review tokens (run in a cluster or set KUBECONFIG)",
        )?;
        Some(TokenReviewer::new(client, audiences))
    };
    if issuers.is_empty() && service_accounts.is_none() {
        tracing::info!(
            "no --oidc-issuer or --serviceaccount-audience: only servers marked public can be called"
        );
    }
    Ok((
        Inbound {
            service_accounts,
            cache: TokenCache::default(),
            oidc: OidcVerifier::new(
                mcpgate_proxy::upstream::client().context("loading TLS roots")?,
                issuers.clone(),
            ),
            public_url: args.public_url.clone(),
            authorization_servers,
            scheme: if args.tls_cert_file.is_some() {
                "https"
            } else {
                "http"
            },
            gateway: None,
        },
        issuers,
    ))
}

/// Sign-in at the gateway, when --signin-issuer is set.
async fn signin(
    args: &Args,
    seal: Arc<SessionKeys>,
    issuers: &[IssuerConfig],
) -> anyhow::Result<Option<Arc<SignIn>>> {
    let (Some(issuer), Some(client_id), Some(public_url)) = (
        &args.signin_issuer,
        &args.signin_client_id,
        &args.public_url,
    ) else {
        return Ok(None);
    };
    let issuer = issuer.trim().to_owned();
    // The same person is the same user whether they sign in here or bring the provider's
    // own token: a configured issuer's claim settings apply to its ID tokens too.
    let mut id_tokens = match issuers.iter().find(|i| i.issuer == issuer) {
        Some(configured) => configured.clone(),
        None => issuer_configs(
            vec![IssuerEntry::plain(&issuer)],
            &IssuerDefaults {
                audiences: vec![client_id.clone()],
                user_claim: args.oidc_user_claim.clone(),
                groups_claim: args.oidc_groups_claim.clone(),
                require_verified_email: args.oidc_require_verified_email,
            },
        )
        .map_err(anyhow::Error::msg)?
        .remove(0),
    };
    id_tokens.audiences = vec![client_id.clone()];
    id_tokens.validate().map_err(anyhow::Error::msg)?;
    let client_secret = match &args.signin_client_secret_file {
        Some(path) => Some(SecretString::from(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading --signin-client-secret-file {}", path.display()))?
                .trim()
                .to_owned(),
        )),
        None => None,
    };
    let http = mcpgate_proxy::upstream::client().context("loading TLS roots")?;
    let store = Arc::new(match (&args.signin_state_dir, &args.config_namespace) {
        (Some(dir), _) => Store::Files(
            FileStore::open(dir)
                .with_context(|| format!("--signin-state-dir {}", dir.display()))?,
        ),
        (None, Some(namespace)) => Store::Secrets(Box::new(SecretStore::new(
            kube::Client::try_default()
                .await
                .context("sign-in state lives in Secrets: connecting to the Kubernetes API")?,
            namespace,
        ))),
        (None, None) => anyhow::bail!(
            "--signin-issuer with --config-dir needs --signin-state-dir (where the signing keys and sign-in state are kept)"
        ),
    });
    let public_url = public_url.trim_end_matches('/').to_owned();
    anyhow::ensure!(
        issuers
            .iter()
            .all(|i| i.issuer.trim_end_matches('/') != public_url),
        "--public-url {public_url} is also an --oidc-issuer: the gateway's own tokens would shadow that provider's; give the gateway its own URL"
    );
    let tokens = Tokens::open(
        public_url.clone(),
        store.clone(),
        Duration::from_secs(args.access_token_lifetime_seconds.max(60)),
        Duration::from_secs(args.refresh_token_lifetime_seconds.max(60)),
    )
    .await
    .context("loading the token signing keys")?;
    Ok(Some(Arc::new(SignIn {
        secure: public_url.starts_with("https://"),
        issuer: public_url,
        tokens: Arc::new(tokens),
        store: store.clone(),
        clients: Clients::new(
            store,
            Fetcher::new(args.insecure_client_metadata_on_private_addresses)
                .context("loading TLS roots")?,
            RateLimit::new(
                args.client_registrations_per_address.max(1),
                args.client_registrations_per_minute.max(1),
                Duration::from_secs(60),
            ),
            args.max_pending_client_registrations.max(1),
        ),
        idp: IdentityProvider::new(
            issuer,
            client_id.clone(),
            client_secret,
            args.signin_scopes.clone(),
            OidcVerifier::new(http.clone(), vec![id_tokens]),
            http,
        ),
        seal,
        code_lifetime: Duration::from_secs(60),
        session_lifetime: Duration::from_secs(args.signin_session_hours.max(1) * 3600),
    })))
}

/// Keeps sign-in state in shape: picks up (and makes) key rotations, deletes what expired.
async fn maintain(signin: Arc<SignIn>, rotation: Duration, idle_client: Duration) {
    let mut tick = tokio::time::interval(Duration::from_secs(60));
    let mut round: u64 = 0;
    loop {
        tick.tick().await;
        if let Err(error) = signin.tokens.refresh_keys(rotation).await {
            tracing::warn!(%error, "could not refresh the token signing keys");
        }
        round += 1;
        if round % 10 == 1 {
            let swept = signin.tokens.sweep().await;
            let clients = signin.clients.sweep(idle_client).await;
            match (swept, clients) {
                (Ok(a), Ok(b)) if a + b > 0 => {
                    tracing::info!(removed = a + b, "deleted expired sign-in state");
                }
                (Err(error), _) => tracing::warn!(%error, "sweeping sign-in state failed"),
                (_, Err(error)) => tracing::warn!(%error, "sweeping client registrations failed"),
                _ => {}
            }
        }
    }
}

/// Deletes the credentials users stored for servers that left the configuration or no longer
/// grant them, whenever the configuration changes.
async fn sweep_vault(vault: Arc<Vault>, current: Arc<Current>, grace: Duration) {
    let mut changes = current.subscribe();
    let period = grace.clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        if let Some(snapshot) = current.load() {
            match vault.sweep(&snapshot).await {
                Ok(0) => {}
                Ok(removed) => {
                    tracing::info!(removed, "deleted stored credentials no longer in use")
                }
                Err(error) => tracing::warn!(%error, "sweeping stored credentials failed"),
            }
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return },
            () = tokio::time::sleep(period) => {}
        }
    }
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// The audit trail's sink, from `--audit-log`.
fn audit(target: &str, metrics: &Metrics) -> anyhow::Result<Audit> {
    let sink: Box<dyn std::io::Write + Send> = match target {
        "off" => return Ok(Audit::metrics_only(metrics.clone())),
        "-" => Box::new(std::io::stdout()),
        path => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening the audit log {path} (--audit-log)"))?,
        ),
    };
    Audit::new(sink, metrics.clone()).context("starting the audit log writer")
}
