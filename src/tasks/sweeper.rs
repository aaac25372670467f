//! The expiry sweeper: every cleanup interval, marks keys whose expiry has passed inactive and
//! queues the expiry webhooks that came due.

use std::time::Duration;

use sqlx::SqlitePool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::store;
use crate::webhooks::Webhooks;

/// One sweep: the stored flag catches up with expiry (which is enforced at request time anyway).
pub async fn sweep_once(pool: &SqlitePool, clock: &Clock) -> anyhow::Result<u64> {
    let changed = store::keys::deactivate_expired(pool, clock.now_ms()).await?;
    if changed > 0 {
        tracing::info!(
            keys = changed,
            "expiry sweeper marked expired keys inactive"
        );
    } else {
        tracing::debug!("expiry sweeper found no newly expired keys");
    }
    Ok(changed)
}

/// Sweeps (and scans for expiry webhooks) now and then every `every`, until `stop` is cancelled.
pub fn spawn(
    pool: SqlitePool,
    clock: Clock,
    webhooks: Webhooks,
    every: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    super::every("expiry sweep", every, stop, move || {
        let (pool, clock, webhooks) = (pool.clone(), clock.clone(), webhooks.clone());
        async move {
            if let Err(err) = crate::tasks::webhooks::scan_expiry(&pool, &clock, &webhooks).await {
                tracing::error!(error = %err, "expiry webhook scan failed");
            }
            sweep_once(&pool, &clock).await.map(drop)
        }
    })
}
