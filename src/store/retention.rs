//! SQL for call-log retention: counting and deleting old rows in small batches, giving the
//! freed pages back (incremental vacuum), converting a database to incremental auto-vacuum,
//! and the online backup. The usage rollup is never touched here.

use std::path::Path;

use sqlx::SqlitePool;

/// Call-log rows with a `timestamp` before `before` (UTC ms): an index-only count.
pub async fn count_older(pool: &SqlitePool, before: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM api_call_logs WHERE timestamp < ?")
        .bind(before)
        .fetch_one(pool)
        .await
}

/// Deletes up to `limit` of the oldest call-log rows before `before` (one short write
/// transaction, walking the time index from its oldest end); returns how many.
pub async fn delete_older(pool: &SqlitePool, before: i64, limit: i64) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "DELETE FROM api_call_logs WHERE id IN \
         (SELECT id FROM api_call_logs WHERE timestamp < ? ORDER BY timestamp LIMIT ?)",
    )
    .bind(before)
    .bind(limit)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Whether the database gives freed pages back to the file system on `incremental_vacuum`
/// (`auto_vacuum = INCREMENTAL`, set when the file was created, or by `convert_to_incremental`).
pub async fn is_incremental(pool: &SqlitePool) -> sqlx::Result<bool> {
    let mode: i64 = sqlx::query_scalar("PRAGMA auto_vacuum")
        .fetch_one(pool)
        .await?;
    Ok(mode == 2)
}

/// Free pages inside the file (reused by new rows; given back by `incremental_vacuum`).
pub async fn free_pages(pool: &SqlitePool) -> sqlx::Result<i64> {
    sqlx::query_scalar("PRAGMA freelist_count")
        .fetch_one(pool)
        .await
}

/// Gives up to `pages` free pages back to the file system (a no-op unless the database is in
/// incremental auto-vacuum mode); one short write transaction on one connection.
pub async fn incremental_vacuum(pool: &SqlitePool, pages: i64) -> sqlx::Result<()> {
    let mut conn = pool.acquire().await?;
    // The pragma frees pages as its rows are stepped through: read them all.
    sqlx::query(&format!("PRAGMA incremental_vacuum({pages})"))
        .fetch_all(&mut *conn)
        .await?;
    Ok(())
}

/// Sets `auto_vacuum = INCREMENTAL` on an existing database and rewrites it (VACUUM), which is
/// what SQLite requires for the mode to take effect on a file that already has tables. It
/// needs free disk space about the size of the database, and holds the write lock until done.
pub async fn convert_to_incremental(pool: &SqlitePool) -> sqlx::Result<()> {
    let mut conn = pool.acquire().await?;
    sqlx::query("PRAGMA auto_vacuum = INCREMENTAL")
        .execute(&mut *conn)
        .await?;
    sqlx::query("VACUUM").execute(&mut *conn).await?;
    Ok(())
}

/// Writes a consistent snapshot of the database into `target`, which must be an empty file
/// (its mode is kept): `VACUUM INTO` reads in one transaction, so the server keeps writing
/// meanwhile and the snapshot is the database as of its start.
pub async fn snapshot_into(pool: &SqlitePool, target: &Path) -> sqlx::Result<()> {
    sqlx::query("VACUUM INTO ?")
        .bind(target.to_string_lossy().as_ref())
        .execute(pool)
        .await?;
    Ok(())
}

/// A snapshot file's check (`quick_check`: "ok" when sound) and its keys and call logs,
/// read through a read-only connection of its own.
pub async fn snapshot_summary(path: &Path) -> sqlx::Result<(String, i64, i64)> {
    use sqlx::ConnectOptions;
    let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .connect()
        .await?;
    let check: String = sqlx::query_scalar("PRAGMA quick_check")
        .fetch_one(&mut conn)
        .await?;
    let (keys, logs): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT COUNT(*) FROM api_keys), (SELECT COUNT(*) FROM api_call_logs)",
    )
    .fetch_one(&mut conn)
    .await?;
    Ok((check, keys, logs))
}
