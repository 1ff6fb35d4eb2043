//! Leases that make a refresh single-flight across replicas: a provider that rotates refresh
//! tokens may revoke the whole grant when a rotated one is used twice, so two replicas must
//! never both refresh a user's tokens. Within a replica a lock per record already holds
//! every waiting call back; between replicas the first to create the record's lease in the
//! shared store refreshes, and the others wait for the tokens it stores. A lease ends when
//! its holder releases it or after its time, so a replica that died holding one delays the
//! next refresh by that time at most.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::signin::store::{Kind, Store, StoreError, Write};

/// A lease as stored.
#[derive(Serialize, Deserialize)]
struct Lease {
    /// The replica holding it.
    holder: String,
    /// Seconds since the epoch.
    until: u64,
}

/// A lease this replica holds; give it back with [`Leases::release`].
#[must_use]
pub struct Held {
    id: String,
}

/// This replica's side of the leases in `store`.
pub struct Leases {
    store: Arc<Store>,
    /// Names this replica (random per process).
    holder: String,
}

impl Leases {
    /// Leases in `store`, held in the name `holder`.
    pub fn new(store: Arc<Store>, holder: String) -> Self {
        Self { store, holder }
    }

    /// The lease on `id` for `time`, unless another replica holds it (`Ok(None)`).
    pub async fn take(&self, id: &str, time: Duration) -> Result<Option<Held>, StoreError> {
        let lease = Lease {
            holder: self.holder.clone(),
            until: now() + time.as_secs(),
        };
        // A lease left by a replica that died is taken over once, after its time.
        for _ in 0..2 {
            if self.store.create(Kind::Lease, id, &lease).await? == Write::Done {
                return Ok(Some(Held { id: id.to_owned() }));
            }
            match self.store.get::<Lease>(Kind::Lease, id).await? {
                Some(found) if found.value.until >= now() => return Ok(None),
                Some(found) => {
                    self.store
                        .delete_if(Kind::Lease, id, &found.version)
                        .await?
                }
                None => {}
            }
        }
        Ok(None)
    }

    /// Gives `held` back (unless it ran out and another replica took it since).
    pub async fn release(&self, held: Held) {
        let mine = match self.store.get::<Lease>(Kind::Lease, &held.id).await {
            Ok(Some(found)) if found.value.holder == self.holder => found.version,
            Ok(_) => return,
            Err(error) => {
                tracing::warn!(%error, "reading a refresh lease to release it failed");
                return;
            }
        };
        if let Err(error) = self.store.delete_if(Kind::Lease, &held.id, &mine).await {
            tracing::warn!(%error, "releasing a refresh lease failed: it ends with its time");
        }
    }
}

fn now() -> u64 {
    crate::auth::now().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signin::store::FileStore;

    #[tokio::test]
    async fn one_replica_at_a_time_holds_a_lease_and_a_dead_ones_runs_out() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::Files(FileStore::open(dir.path()).unwrap()));
        let a = Leases::new(store.clone(), "a".into());
        let b = Leases::new(store.clone(), "b".into());
        let minute = Duration::from_secs(60);
        let held = a.take("alice-docs", minute).await.unwrap().expect("free");
        assert!(b.take("alice-docs", minute).await.unwrap().is_none());
        // Other records are not held.
        let other = b.take("bob-docs", minute).await.unwrap().expect("free");
        // Only its holder gives a lease back.
        b.release(Held {
            id: "alice-docs".into(),
        })
        .await;
        assert!(b.take("alice-docs", minute).await.unwrap().is_none());
        a.release(held).await;
        let taken = b
            .take("alice-docs", minute)
            .await
            .unwrap()
            .expect("released");
        b.release(taken).await;
        b.release(other).await;
        // A holder that died: its lease is taken over once its time has passed.
        let _lost = a
            .take("carol-docs", Duration::ZERO)
            .await
            .unwrap()
            .expect("free");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert!(b.take("carol-docs", minute).await.unwrap().is_some());
        assert!(a.take("carol-docs", minute).await.unwrap().is_none());
    }
}
