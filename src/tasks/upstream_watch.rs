//! Notices upstream changes another process made (the CLI, an import): once a second it reads
//! the change count the store keeps beside `upstreams` and reloads the registry when it moved.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use sqlx::SqlitePool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::store;
use crate::upstreams::Registry;

/// How often the change count is read (one small query, off the request path).
pub const EVERY: Duration = Duration::from_secs(1);

pub fn spawn(pool: SqlitePool, registry: Arc<Registry>, stop: CancellationToken) -> JoinHandle<()> {
    // The count the registry was last loaded at (none yet: the first look loads it again, so a
    // change made while the server started is not missed).
    let seen = Arc::new(AtomicI64::new(i64::MIN));
    super::every("upstream reload", EVERY, stop, move || {
        let (pool, registry, seen) = (pool.clone(), registry.clone(), seen.clone());
        async move {
            let generation = store::upstreams::generation(&pool).await?;
            if generation != seen.load(Ordering::Relaxed) {
                // Marked seen only once loaded: a failed reload is tried again next time.
                registry.reload().await?;
                seen.store(generation, Ordering::Relaxed);
            }
            Ok(())
        }
    })
}
