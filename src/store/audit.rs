//! SQL for `audit_log`: append an entry, list entries (filtered, newest first).

use serde::Serialize;
use sqlx::{QueryBuilder, Sqlite, SqliteExecutor, SqlitePool};

use super::Page;
use crate::clock::ser_ms;

/// An entry to append (see `crate::audit` for how one is made).
#[derive(Clone, Debug)]
pub struct NewEntry<'a> {
    pub at: i64,
    pub via: &'a str,
    pub os_user: Option<&'a str>,
    pub ip: Option<String>,
    pub action: &'a str,
    pub key_id: Option<i64>,
    pub key_name: Option<&'a str>,
    /// JSON text.
    pub details: String,
}

/// One stored entry, as the API and the CLI show it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct AuditRow {
    pub id: i64,
    #[serde(serialize_with = "ser_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub at: i64,
    pub via: String,
    pub os_user: Option<String>,
    pub ip: Option<String>,
    pub action: String,
    pub key_id: Option<i64>,
    pub key_name: Option<String>,
    /// What changed (`changes`: field → {old, new}), or the action's figures; never a secret.
    #[serde(serialize_with = "raw_json")]
    #[schema(value_type = Object)]
    pub details: String,
}

/// `details` as the JSON it holds (an object), not as a string.
fn raw_json<S: serde::Serializer>(text: &str, s: S) -> Result<S::Ok, S::Error> {
    let value: serde_json::Value =
        serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.into()));
    value.serialize(s)
}

pub async fn insert<'e>(db: impl SqliteExecutor<'e>, entry: &NewEntry<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO audit_log (at, via, os_user, ip, action, key_id, key_name, details) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(entry.at)
    .bind(entry.via)
    .bind(entry.os_user)
    .bind(entry.ip.as_deref())
    .bind(entry.action)
    .bind(entry.key_id)
    .bind(entry.key_name)
    .bind(&entry.details)
    .execute(db)
    .await?;
    Ok(())
}

/// What to list: every given filter must hold (`since` inclusive, `until` exclusive, UTC ms).
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    pub action: Option<String>,
    pub key_id: Option<i64>,
    pub since: Option<i64>,
    pub until: Option<i64>,
}

fn push_filter(query: &mut QueryBuilder<'_, Sqlite>, filter: &AuditFilter) {
    query.push(" WHERE 1 = 1");
    if let Some(action) = &filter.action {
        query.push(" AND action = ").push_bind(action.clone());
    }
    if let Some(key_id) = filter.key_id {
        query.push(" AND key_id = ").push_bind(key_id);
    }
    if let Some(since) = filter.since {
        query.push(" AND at >= ").push_bind(since);
    }
    if let Some(until) = filter.until {
        query.push(" AND at < ").push_bind(until);
    }
}

/// A page of entries, newest first, and how many match.
pub async fn list(
    pool: &SqlitePool,
    filter: &AuditFilter,
    page: Page,
) -> sqlx::Result<(Vec<AuditRow>, i64)> {
    let mut count = QueryBuilder::new("SELECT COUNT(*) FROM audit_log");
    push_filter(&mut count, filter);
    let total: i64 = count.build_query_scalar().fetch_one(pool).await?;
    let mut select = QueryBuilder::new(
        "SELECT id, at, via, os_user, ip, action, key_id, key_name, details FROM audit_log",
    );
    push_filter(&mut select, filter);
    select
        .push(" ORDER BY at DESC, id DESC LIMIT ")
        .push_bind(page.page_size)
        .push(" OFFSET ")
        .push_bind(page.offset());
    let rows = select.build_query_as().fetch_all(pool).await?;
    Ok((rows, total))
}
