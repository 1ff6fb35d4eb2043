//! Where configuration comes from, and the atomic swap that puts a new version in service.
//! Requests hold the `Arc<Snapshot>` they started with; a failed load keeps the old one.

pub mod dir;
pub mod kube;
pub mod snapshot;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
pub use snapshot::{Member, Route, ServerRoute, Snapshot, VirtualRoute};

use crate::metrics::Metrics;

/// The configuration in service, and a signal each time it is replaced.
pub struct Current {
    snapshot: ArcSwapOption<Snapshot>,
    stored: tokio::sync::watch::Sender<u64>,
}

impl Default for Current {
    fn default() -> Self {
        Self {
            snapshot: ArcSwapOption::default(),
            stored: tokio::sync::watch::channel(0).0,
        }
    }
}

impl Current {
    /// The snapshot in service, if one has loaded.
    pub fn load(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.load_full()
    }

    /// Changes each time a new snapshot goes into service.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.stored.subscribe()
    }

    fn store(&self, snapshot: Snapshot) {
        self.snapshot.store(Some(Arc::new(snapshot)));
        self.stored.send_modify(|n| *n += 1);
    }
}

/// Loads `dir` now and whenever it changes, until the watcher is dropped.
pub async fn watch_dir(
    dir: PathBuf,
    current: Arc<Current>,
    metrics: Metrics,
) -> anyhow::Result<()> {
    use notify::Watcher;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| !e.kind.is_access()) {
            let _ = tx.try_send(());
        }
    })?;
    // Watch the parent too: the directory itself may be replaced (Kubernetes volumes swap a
    // symlink; the standalone renderer may be started after us).
    std::fs::create_dir_all(&dir)?;
    watcher.watch(&dir, notify::RecursiveMode::Recursive)?;
    reload(&dir, &current, &metrics).await;
    loop {
        // Also poll now and then: some volume updates do not produce events.
        tokio::select! {
            got = rx.recv() => if got.is_none() { return Ok(()) },
            () = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        while rx.try_recv().is_ok() {}
        reload(&dir, &current, &metrics).await;
    }
}

/// Reads and builds the directory's snapshot on a blocking thread (file reads and the build
/// never hold up a runtime worker serving requests), then puts it in service.
async fn reload(dir: &std::path::Path, current: &Current, metrics: &Metrics) {
    let dir = dir.to_owned();
    match tokio::task::spawn_blocking(move || dir::load(&dir)).await {
        Ok(loaded) => apply_result(current, metrics, loaded),
        Err(error) => apply_result::<String>(current, metrics, Err(error.to_string())),
    }
}

/// Puts a freshly loaded snapshot in service, or keeps the old one and says why.
fn apply_result<E: std::fmt::Display>(
    current: &Current,
    metrics: &Metrics,
    loaded: Result<Snapshot, E>,
) {
    match loaded {
        Ok(snapshot) => {
            // Stored even when the version is unchanged: credentials may have rotated.
            if current
                .load()
                .is_none_or(|old| old.version != snapshot.version)
            {
                tracing::info!(version = %snapshot.version, routes = snapshot.len(), "configuration loaded");
                metrics.config_reloads.with_label_values(&["ok"]).inc();
            }
            current.store(snapshot);
            metrics.config_synchronized.set(1);
        }
        Err(error) => {
            tracing::warn!(%error, "configuration not loaded; keeping the last good one");
            metrics.config_reloads.with_label_values(&["error"]).inc();
            metrics.config_synchronized.set(0);
        }
    }
}
