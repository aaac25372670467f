//! SQL for `upstreams`: the stored rows (credential still encrypted, lists as JSON text).

use sqlx::SqliteExecutor;

/// One stored upstream as SQLite holds it; `upstreams::spec` turns it into an `UpstreamSpec`.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct UpstreamRow {
    pub id: i64,
    pub name: String,
    pub kind: String,
    pub base_url: String,
    pub encrypted_api_key: Option<String>,
    pub auth_header: String,
    /// JSON array.
    pub models: String,
    /// JSON object.
    pub model_map: String,
    pub priority: i64,
    pub weight: i64,
    pub enabled: bool,
    pub timeout_seconds: Option<i64>,
    pub stream_usage: String,
    /// JSON object.
    pub extra_headers: String,
    pub created_at: i64,
    pub updated_at: i64,
}

const SELECT: &str = "SELECT id, name, kind, base_url, encrypted_api_key, auth_header, models, \
     model_map, priority, weight, enabled, timeout_seconds, stream_usage, extra_headers, \
     created_at, updated_at FROM upstreams";

/// Every configured upstream, by id.
pub async fn list<'e>(db: impl SqliteExecutor<'e>) -> sqlx::Result<Vec<UpstreamRow>> {
    sqlx::query_as(&format!("{SELECT} ORDER BY id"))
        .fetch_all(db)
        .await
}
