//! SQL for webhooks: the outbox of deliveries (queue, due, done, retry later) and the expiry
//! notices already queued.

use sqlx::{SqliteExecutor, SqlitePool};

/// One delivery waiting to be made.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Delivery {
    pub id: i64,
    /// SHA-256 (hex) of the URL it goes to.
    pub target: String,
    pub event_type: String,
    pub body: String,
    pub attempts: i64,
}

pub async fn queue<'e>(
    db: impl SqliteExecutor<'e>,
    target: &str,
    event_type: &str,
    body: &str,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO webhook_outbox (target, event_type, body, created_at, next_attempt_at) \
         VALUES (?1, ?2, ?3, ?4, ?4)",
    )
    .bind(target)
    .bind(event_type)
    .bind(body)
    .bind(now)
    .execute(db)
    .await?;
    Ok(())
}

/// Deliveries due at `now`, oldest first.
pub async fn due(pool: &SqlitePool, now: i64, limit: i64) -> sqlx::Result<Vec<Delivery>> {
    sqlx::query_as(
        "SELECT id, target, event_type, body, attempts FROM webhook_outbox \
         WHERE next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Removes a delivery (made, or given up).
pub async fn remove(pool: &SqlitePool, id: i64) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM webhook_outbox WHERE id = ?")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Counts a failed attempt and sets when the next one is due.
pub async fn retry_at(pool: &SqlitePool, id: i64, at: i64, error: &str) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE webhook_outbox SET attempts = attempts + 1, next_attempt_at = ?, last_error = ? \
         WHERE id = ?",
    )
    .bind(at)
    .bind(error)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Deliveries waiting (for tests and the health of the queue).
pub async fn pending(pool: &SqlitePool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM webhook_outbox")
        .fetch_one(pool)
        .await
}

/// A key whose expiry is near or just past, as the expiry scan sees it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct ExpiryCandidate {
    pub id: i64,
    pub expires_at: i64,
    pub is_active: bool,
    /// The notices already queued about this expiry, comma-separated.
    noticed: Option<String>,
}

impl ExpiryCandidate {
    /// Whether `notice` about this expiry was already queued.
    pub fn noticed(&self, notice: &str) -> bool {
        self.noticed
            .as_deref()
            .is_some_and(|all| all.split(',').any(|n| n == notice))
    }
}

/// Unrevoked keys whose expiry lies in `(from, to]`, with the notices queued about it.
pub async fn expiring<'e>(
    db: impl SqliteExecutor<'e>,
    from: i64,
    to: i64,
) -> sqlx::Result<Vec<ExpiryCandidate>> {
    sqlx::query_as(
        "SELECT k.id, k.expires_at, k.is_active, group_concat(n.notice) AS noticed \
         FROM api_keys k LEFT JOIN webhook_notices n \
           ON n.api_key_id = k.id AND n.expires_at = k.expires_at \
         WHERE k.revoked_at IS NULL AND k.expires_at > ? AND k.expires_at <= ? \
         GROUP BY k.id ORDER BY k.expires_at, k.id",
    )
    .bind(from)
    .bind(to)
    .fetch_all(db)
    .await
}

/// Records that `notice` about the key's expiry `expires_at` is queued; false if it already was.
pub async fn note<'e>(
    db: impl SqliteExecutor<'e>,
    key_id: i64,
    notice: &str,
    expires_at: i64,
) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT OR IGNORE INTO webhook_notices (api_key_id, notice, expires_at) VALUES (?, ?, ?)",
    )
    .bind(key_id)
    .bind(notice)
    .bind(expires_at)
    .execute(db)
    .await?;
    Ok(done.rows_affected() == 1)
}
