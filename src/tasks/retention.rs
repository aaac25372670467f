//! Call-log retention: deletes rows older than the retention in small batches, off the
//! request path, then gives the freed pages back; the usage rollup stays.

use std::time::Duration;

use sqlx::SqlitePool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, MS_PER_DAY};
use crate::store::retention;

/// Rows deleted per write transaction: a few milliseconds of the write lock, so the call-log
/// writer (and an admin write) waits at most that long behind a batch.
pub const ROWS_PER_BATCH: i64 = 2_000;
/// Free pages given back per transaction (4 KiB each).
const PAGES_PER_VACUUM: i64 = 2_048;
/// Between two batches: the writer and admin writes get the lock in between.
const PAUSE: Duration = Duration::from_millis(5);

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub rows: u64,
    /// Pages given back to the file system (0 unless the database is in incremental
    /// auto-vacuum mode).
    pub pages_freed: i64,
}

/// Deletes every call-log row with a timestamp before `before` (UTC ms), `ROWS_PER_BATCH` at a
/// time, pausing between batches; then gives the freed pages back. `stop` ends it between
/// batches (what was deleted stays deleted).
pub async fn prune_before(
    pool: &SqlitePool,
    before: i64,
    stop: &CancellationToken,
) -> anyhow::Result<Pruned> {
    let mut pruned = Pruned::default();
    loop {
        let rows = retention::delete_older(pool, before, ROWS_PER_BATCH).await?;
        pruned.rows += rows;
        if rows < ROWS_PER_BATCH as u64 || stop.is_cancelled() {
            break;
        }
        tokio::time::sleep(PAUSE).await;
    }
    if pruned.rows > 0 && retention::is_incremental(pool).await? {
        let mut free = retention::free_pages(pool).await?;
        while free > 0 && !stop.is_cancelled() {
            retention::incremental_vacuum(pool, PAGES_PER_VACUUM).await?;
            let left = retention::free_pages(pool).await?;
            if left >= free {
                break;
            }
            pruned.pages_freed += free - left;
            free = left;
            tokio::time::sleep(PAUSE).await;
        }
    }
    Ok(pruned)
}

/// One retention pass: rows older than `days` days before the clock's now.
pub async fn prune_once(
    pool: &SqlitePool,
    clock: &Clock,
    days: u32,
    stop: &CancellationToken,
) -> anyhow::Result<Pruned> {
    let before = clock.now_ms() - i64::from(days) * MS_PER_DAY;
    let pruned = prune_before(pool, before, stop).await?;
    if pruned.rows > 0 {
        tracing::info!(
            rows = pruned.rows,
            pages_freed = pruned.pages_freed,
            retention_days = days,
            "call-log retention deleted old rows"
        );
    }
    Ok(pruned)
}

/// Prunes now and then every `every`, until `stop` is cancelled.
pub fn spawn(
    pool: SqlitePool,
    clock: Clock,
    days: u32,
    every: Duration,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let stop_pruning = stop.clone();
    super::every("call-log retention", every, stop, move || {
        let (pool, clock, stop) = (pool.clone(), clock.clone(), stop_pruning.clone());
        async move { prune_once(&pool, &clock, days, &stop).await.map(drop) }
    })
}
