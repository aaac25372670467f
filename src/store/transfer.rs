//! SQL for `keygate data export|import`: rows streamed from one snapshot, and rows written back
//! with their own ids (inserted, or written over an existing row) inside the import's transaction.

use futures_util::Stream;
use sqlx::{Sqlite, SqliteConnection, SqlitePool, Transaction};

use super::keys::KeyRow;
use super::logs::LogRow;

macro_rules! select_keys {
    () => {
        "SELECT id, key_hash, encrypted_key, key_preview, name, description, created_at, updated_at, \
         expires_at, expiration_mode, activation_period, activation_unit, activated_at, is_active, \
         revoked_at, usage_count, last_used_at FROM api_keys"
    };
}

macro_rules! select_logs {
    () => {
        "SELECT id, api_key_id, timestamp, model, status, http_status, response_time, ip_address, \
         endpoint, error_message, request_size, response_size, prompt_tokens, completion_tokens, \
         total_tokens, stream FROM api_call_logs"
    };
}

/// A read transaction: counts and rows read in it all come from one snapshot, so an export
/// taken while the server writes is consistent.
pub async fn begin_read(pool: &SqlitePool) -> sqlx::Result<Transaction<'static, Sqlite>> {
    pool.begin().await
}

pub async fn count_keys(conn: &mut SqliteConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
        .fetch_one(conn)
        .await
}

pub async fn count_logs(conn: &mut SqliteConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM api_call_logs")
        .fetch_one(conn)
        .await
}

/// Keys with ids above `after`, by id, at most `limit` of them, one row at a time. Exports
/// read in such slices so that no statement runs for the whole export.
pub fn keys_after(
    conn: &mut SqliteConnection,
    after: i64,
    limit: i64,
) -> impl Stream<Item = sqlx::Result<KeyRow>> + '_ {
    sqlx::query_as(concat!(select_keys!(), " WHERE id > ? ORDER BY id LIMIT ?"))
        .bind(after)
        .bind(limit)
        .fetch(conn)
}

/// Call logs with ids above `after`, by id, at most `limit` of them, one row at a time.
pub fn logs_after(
    conn: &mut SqliteConnection,
    after: i64,
    limit: i64,
) -> impl Stream<Item = sqlx::Result<LogRow>> + '_ {
    sqlx::query_as(concat!(select_logs!(), " WHERE id > ? ORDER BY id LIMIT ?"))
        .bind(after)
        .bind(limit)
        .fetch(conn)
}

/// The existing keys an imported key collides with: the one with its id, and another one
/// (a different id) holding the same secret.
#[derive(Debug, Default)]
pub struct KeyClash {
    pub same_id: Option<KeyRow>,
    pub same_secret: Option<KeyRow>,
}

impl KeyClash {
    pub fn is_none(&self) -> bool {
        self.same_id.is_none() && self.same_secret.is_none()
    }
}

pub async fn key_clash(
    conn: &mut SqliteConnection,
    id: i64,
    key_hash: &str,
) -> sqlx::Result<KeyClash> {
    let rows: Vec<KeyRow> = sqlx::query_as(concat!(
        select_keys!(),
        " WHERE id = ?1 OR key_hash = ?2 ORDER BY id"
    ))
    .bind(id)
    .bind(key_hash)
    .fetch_all(conn)
    .await?;
    let mut clash = KeyClash::default();
    for row in rows {
        if row.id == id {
            clash.same_id = Some(row);
        } else {
            clash.same_secret = Some(row);
        }
    }
    Ok(clash)
}

pub async fn key_exists(conn: &mut SqliteConnection, id: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_keys WHERE id = ?)")
        .bind(id)
        .fetch_one(conn)
        .await
}

pub async fn log_exists(conn: &mut SqliteConnection, id: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM api_call_logs WHERE id = ?)")
        .bind(id)
        .fetch_one(conn)
        .await
}

/// Writes `key` under `id`: inserted (AUTOINCREMENT's sequence follows a larger explicit id),
/// or every column written over the existing key `id`. An upsert, never a delete and insert,
/// so an overwritten key's call logs stay (deleting would cascade to them).
pub async fn put_key(conn: &mut SqliteConnection, id: i64, key: &KeyRow) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO api_keys (key_hash, encrypted_key, key_preview, name, description, created_at, \
         updated_at, expires_at, expiration_mode, activation_period, activation_unit, activated_at, \
         is_active, revoked_at, usage_count, last_used_at, id) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (id) DO UPDATE SET key_hash = excluded.key_hash, encrypted_key = excluded.encrypted_key, \
         key_preview = excluded.key_preview, name = excluded.name, description = excluded.description, \
         created_at = excluded.created_at, updated_at = excluded.updated_at, expires_at = excluded.expires_at, \
         expiration_mode = excluded.expiration_mode, activation_period = excluded.activation_period, \
         activation_unit = excluded.activation_unit, activated_at = excluded.activated_at, \
         is_active = excluded.is_active, revoked_at = excluded.revoked_at, \
         usage_count = excluded.usage_count, last_used_at = excluded.last_used_at",
    )
    .bind(&key.key_hash)
    .bind(&key.encrypted_key)
    .bind(&key.key_preview)
    .bind(&key.name)
    .bind(&key.description)
    .bind(key.created_at)
    .bind(key.updated_at)
    .bind(key.expires_at)
    .bind(&key.expiration_mode)
    .bind(key.activation_period)
    .bind(&key.activation_unit)
    .bind(key.activated_at)
    .bind(key.is_active)
    .bind(key.revoked_at)
    .bind(key.usage_count)
    .bind(key.last_used_at)
    .bind(id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes `log` with its own id: inserted, or every column written over the existing row.
pub async fn put_log(conn: &mut SqliteConnection, log: &LogRow) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO api_call_logs (api_key_id, timestamp, model, status, http_status, response_time, \
         ip_address, endpoint, error_message, request_size, response_size, prompt_tokens, \
         completion_tokens, total_tokens, stream, id) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) \
         ON CONFLICT (id) DO UPDATE SET api_key_id = excluded.api_key_id, timestamp = excluded.timestamp, \
         model = excluded.model, status = excluded.status, http_status = excluded.http_status, \
         response_time = excluded.response_time, ip_address = excluded.ip_address, \
         endpoint = excluded.endpoint, error_message = excluded.error_message, \
         request_size = excluded.request_size, response_size = excluded.response_size, \
         prompt_tokens = excluded.prompt_tokens, completion_tokens = excluded.completion_tokens, \
         total_tokens = excluded.total_tokens, stream = excluded.stream",
    )
    .bind(log.api_key_id)
    .bind(log.timestamp)
    .bind(&log.model)
    .bind(&log.status)
    .bind(log.http_status)
    .bind(log.response_time)
    .bind(&log.ip_address)
    .bind(&log.endpoint)
    .bind(&log.error_message)
    .bind(log.request_size)
    .bind(log.response_size)
    .bind(log.prompt_tokens)
    .bind(log.completion_tokens)
    .bind(log.total_tokens)
    .bind(log.stream)
    .bind(log.id)
    .execute(conn)
    .await?;
    Ok(())
}
