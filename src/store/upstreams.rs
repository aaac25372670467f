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

/// The columns `insert` and `update` write (all but `id`), in their bind order (`bind_upstream`).
pub const DATA: &str = "name, kind, base_url, encrypted_api_key, auth_header, models, model_map, \
     priority, weight, enabled, timeout_seconds, stream_usage, extra_headers, created_at, updated_at";

/// Binds `DATA`'s columns of `row`, in order (`?1` to `?15`).
pub(crate) fn bind_upstream<'q>(
    query: sqlx::query::QueryAs<'q, sqlx::Sqlite, UpstreamRow, sqlx::sqlite::SqliteArguments<'q>>,
    row: &'q UpstreamRow,
) -> sqlx::query::QueryAs<'q, sqlx::Sqlite, UpstreamRow, sqlx::sqlite::SqliteArguments<'q>> {
    query
        .bind(&row.name)
        .bind(&row.kind)
        .bind(&row.base_url)
        .bind(&row.encrypted_api_key)
        .bind(&row.auth_header)
        .bind(&row.models)
        .bind(&row.model_map)
        .bind(row.priority)
        .bind(row.weight)
        .bind(row.enabled)
        .bind(row.timeout_seconds)
        .bind(&row.stream_usage)
        .bind(&row.extra_headers)
        .bind(row.created_at)
        .bind(row.updated_at)
}

pub async fn get<'e>(db: impl SqliteExecutor<'e>, id: i64) -> sqlx::Result<Option<UpstreamRow>> {
    sqlx::query_as(&format!("{SELECT} WHERE id = ?"))
        .bind(id)
        .fetch_optional(db)
        .await
}

/// The upstream named `name` (exactly), if any.
pub async fn find_by_name<'e>(
    db: impl SqliteExecutor<'e>,
    name: &str,
) -> sqlx::Result<Option<UpstreamRow>> {
    sqlx::query_as(&format!("{SELECT} WHERE name = ?"))
        .bind(name)
        .fetch_optional(db)
        .await
}

/// `?1, …, ?15`: one placeholder per `DATA` column, in `bind_upstream`'s order.
fn data_params() -> String {
    (1..=15)
        .map(|n| format!("?{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Inserts `row` (its `id` is ignored: the database gives one). A taken name fails with a
/// unique violation.
pub async fn insert<'e>(
    db: impl SqliteExecutor<'e>,
    row: &UpstreamRow,
) -> sqlx::Result<UpstreamRow> {
    bind_upstream(
        sqlx::query_as(&format!(
            "INSERT INTO upstreams ({DATA}) VALUES ({}) RETURNING id, {DATA}",
            data_params()
        )),
        row,
    )
    .fetch_one(db)
    .await
}

/// Inserts `row` under its own `id` (an import keeping the ids of its file).
pub async fn insert_with_id<'e>(
    db: impl SqliteExecutor<'e>,
    row: &UpstreamRow,
) -> sqlx::Result<UpstreamRow> {
    bind_upstream(
        sqlx::query_as(&format!(
            "INSERT INTO upstreams ({DATA}, id) VALUES ({}, ?16) RETURNING id, {DATA}",
            data_params()
        )),
        row,
    )
    .bind(row.id)
    .fetch_one(db)
    .await
}

/// Writes every column of `row` but `created_at` over upstream `row.id`.
pub async fn update<'e>(
    db: impl SqliteExecutor<'e>,
    row: &UpstreamRow,
) -> sqlx::Result<UpstreamRow> {
    let set = DATA
        .split(", ")
        .zip(1..)
        .filter(|(column, _)| *column != "created_at")
        .map(|(column, n)| format!("{column} = ?{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    bind_upstream(
        sqlx::query_as(&format!(
            "UPDATE upstreams SET {set} WHERE id = ?16 RETURNING id, {DATA}"
        )),
        row,
    )
    .bind(row.id)
    .fetch_one(db)
    .await
}

/// Deletes upstream `id`; false if there was none.
pub async fn delete<'e>(db: impl SqliteExecutor<'e>, id: i64) -> sqlx::Result<bool> {
    let done = sqlx::query("DELETE FROM upstreams WHERE id = ?")
        .bind(id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Every configured upstream's id.
pub async fn ids<'e>(db: impl SqliteExecutor<'e>) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar("SELECT id FROM upstreams ORDER BY id")
        .fetch_all(db)
        .await
}

/// The keys bound to upstream `id` (its id in their `upstream_ids`), by id.
pub async fn bound_keys<'e>(db: impl SqliteExecutor<'e>, id: i64) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT id FROM api_keys WHERE EXISTS \
         (SELECT 1 FROM json_each(api_keys.upstream_ids) WHERE value = ?1) ORDER BY id",
    )
    .bind(id)
    .fetch_all(db)
    .await
}

/// How many keys each upstream has bound to it (upstreams with none are absent).
pub async fn bound_key_counts<'e>(
    db: impl SqliteExecutor<'e>,
) -> sqlx::Result<std::collections::HashMap<i64, i64>> {
    let rows: Vec<(i64, i64)> = sqlx::query_as(
        "SELECT j.value, COUNT(DISTINCT k.id) FROM api_keys k, json_each(k.upstream_ids) j \
         GROUP BY j.value",
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Takes upstream `id` out of every key's `upstream_ids` (at `now`); returns how many changed.
pub async fn unbind<'e>(db: impl SqliteExecutor<'e>, id: i64, now: i64) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "UPDATE api_keys SET upstream_ids = (SELECT json_group_array(value) FROM \
         (SELECT value FROM json_each(api_keys.upstream_ids) WHERE value != ?1 ORDER BY key)), \
         updated_at = ?2 \
         WHERE EXISTS (SELECT 1 FROM json_each(api_keys.upstream_ids) WHERE value = ?1)",
    )
    .bind(id)
    .bind(now)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}

/// The setting counting changes to `upstreams`: every change bumps it in its transaction, so
/// a server notices the CLI's changes (`tasks::upstream_watch`).
const GENERATION: &str = "upstreams_generation";

/// The current change count (0 before the first change).
pub async fn generation<'e>(db: impl SqliteExecutor<'e>) -> sqlx::Result<i64> {
    let value: Option<String> = super::setting(db, GENERATION).await?;
    Ok(value.and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Counts a change (in the transaction that makes it).
pub async fn bump_generation<'e>(db: impl SqliteExecutor<'e>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO settings (name, value) VALUES (?1, '1') ON CONFLICT (name) DO UPDATE \
         SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)",
    )
    .bind(GENERATION)
    .execute(db)
    .await?;
    Ok(())
}
