//! The reconcile loop: wait for caches, then on every change (debounced) render everything
//! and apply it, while this replica holds the lease.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::future::join_all;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use mcpgate_crds::names::MANAGED_BY;
use tokio::sync::{Notify, watch};
use tracing::{Instrument, info, info_span, warn};

use crate::error::Result;
use crate::metrics::Metrics;
use crate::render::{ObjectKey, render};
use crate::watch::{Caches, Scope};
use crate::{apply, bootstrap, rbac, status};

/// What the loop needs.
pub struct Settings {
    /// Where mcpgate resources are read from.
    pub scope: Scope,
    /// Where configuration and credentials are written.
    pub gateway_namespace: String,
    /// Quiet time after a change before rendering, so bursts render once.
    pub debounce: Duration,
    /// Full re-render even without changes, to repair drift.
    pub resync: Duration,
    /// The gateway's external base URL: status URLs are absolute when it is known.
    pub public_url: Option<String>,
    /// The ClusterRole that owns what the operator creates (none: nothing is owned, and
    /// deleting the installation leaves those objects behind). Read at every reconcile.
    pub owner_cluster_role: Option<String>,
    /// The leader election Lease, owned like the rest.
    pub lease_name: Option<String>,
    /// The Secret holding the proxy's session key, created in the gateway namespace when
    /// missing (none: the installation provides it).
    pub session_key_secret: Option<String>,
    /// This replica's name in the Events it records.
    pub identity: String,
}

/// Shared with `/readyz`.
pub struct Context {
    client: Client,
    caches: Caches,
    metrics: Metrics,
    gateway_namespace: String,
    public_url: Option<String>,
    owner_cluster_role: Option<String>,
    lease_name: Option<String>,
    /// Set once the Lease carries the owner.
    lease_owned: std::sync::Mutex<Option<String>>,
    session_key_secret: Option<String>,
    recorder: Recorder,
}

/// Runs until `shutdown` resolves. `leader` says whether this replica may write.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Metrics,
    ready: Arc<AtomicBool>,
    mut leader: watch::Receiver<bool>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let trigger = Arc::new(Notify::new());
    let (caches, tasks) = Caches::start(
        &client,
        &settings.scope,
        &settings.gateway_namespace,
        trigger.clone(),
    );
    let reflectors = tokio::spawn(join_all(tasks));
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: MANAGED_BY.to_owned(),
            instance: Some(settings.identity.clone()),
        },
    );
    let ctx = Context {
        recorder,
        client,
        caches,
        metrics,
        gateway_namespace: settings.gateway_namespace,
        public_url: settings.public_url,
        owner_cluster_role: settings.owner_cluster_role,
        lease_name: settings.lease_name,
        lease_owned: std::sync::Mutex::new(None),
        session_key_secret: settings.session_key_secret,
    };
    tokio::pin!(shutdown);

    tokio::select! {
        () = ctx.caches.wait_until_ready() => {}
        () = &mut shutdown => { reflectors.abort(); return; }
    }
    info!("caches synced");
    ready.store(true, Ordering::Relaxed);

    let mut backoff = Duration::from_millis(250);
    let mut retry_at: Option<Instant> = None;
    loop {
        let is_leader = *leader.borrow_and_update();
        ctx.metrics.leader.set(i64::from(is_leader));
        if is_leader {
            tokio::select! {
                () = tokio::time::sleep(settings.debounce) => {}
                () = &mut shutdown => break,
            }
            match reconcile(&ctx).await {
                Ok(()) => {
                    backoff = Duration::from_millis(250);
                    retry_at = None;
                }
                Err(error) => {
                    // error_policy: log, count, retry with backoff.
                    warn!(%error, retry_in = ?backoff, "reconcile failed");
                    ctx.metrics
                        .failures
                        .with_label_values(&[error.metric_label()])
                        .inc();
                    retry_at = Some(Instant::now() + backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
        let wait_retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = trigger.notified() => {}
            changed = leader.changed() => if changed.is_err() { break },
            () = tokio::time::sleep(settings.resync) => {}
            () = wait_retry => {}
            () = &mut shutdown => break,
        }
    }
    reflectors.abort();
}

/// Render everything, then write what changed: credentials and configuration, RBAC, status.
async fn reconcile(ctx: &Context) -> Result<()> {
    let span = info_span!("reconcile", version = tracing::field::Empty);
    async {
        let started = Instant::now();
        ctx.metrics.reconciles.inc();
        let inputs = ctx.caches.inputs();
        let rendered = render(&inputs);
        tracing::Span::current().record("version", rendered.config.version.as_str());
        // Read every time: a recreated owner has a new UID to follow, and a deleted one (the
        // release is being uninstalled) must not get new dependents.
        let owner = match &ctx.owner_cluster_role {
            Some(name) => Some(bootstrap::owner(&ctx.client, name).await?),
            None => None,
        };
        if let (Some(owner), Some(lease)) = (&owner, &ctx.lease_name) {
            let done = ctx
                .lease_owned
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if done.as_deref() != Some(owner.uid.as_str()) {
                bootstrap::own_lease(&ctx.client, &ctx.gateway_namespace, lease, owner).await?;
                *ctx.lease_owned
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(owner.uid.clone());
            }
        }
        if let Some(name) = &ctx.session_key_secret {
            let cached = ctx
                .caches
                .owned_secrets
                .get(&ObjectKey::new(&ctx.gateway_namespace, name));
            if cached.is_none()
                && bootstrap::session_key(&ctx.client, &ctx.gateway_namespace, name).await?
            {
                info!(secret = %name, "created the proxy's session key");
                ctx.metrics.write("Secret", "create");
            }
        }
        apply::gateway(
            &ctx.client,
            &ctx.caches,
            &ctx.metrics,
            &rendered,
            &ctx.gateway_namespace,
            owner.as_ref(),
        )
        .await?;
        rbac::apply(
            &ctx.client,
            &ctx.caches,
            &ctx.metrics,
            &rendered,
            owner.as_ref(),
        )
        .await?;
        status::apply(
            &ctx.client,
            &ctx.caches,
            &ctx.metrics,
            &rendered,
            ctx.public_url.as_deref(),
            &ctx.recorder,
        )
        .await?;
        let elapsed = started.elapsed();
        ctx.metrics.duration.observe(elapsed.as_secs_f64());
        info!(
            servers = rendered.config.servers.len(),
            virtual_servers = rendered.config.virtual_servers.len(),
            ms = elapsed.as_millis() as u64,
            "reconciled"
        );
        Ok(())
    }
    .instrument(span)
    .await
}
