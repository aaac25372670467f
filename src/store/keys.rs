//! SQL for `api_keys`: insert, fetch, list with status filters, save, delete, activation, expiry sweep.

use sqlx::{SqliteExecutor, SqlitePool};

use super::Page;
use crate::keys::{ActivationUnit, ExpirationMode, Lifecycle, Status};
use crate::limits::Limits;
use crate::policy::{IdList, KindList, Lists, TextList};

/// One `api_keys` row as stored.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct KeyRow {
    pub id: i64,
    pub key_hash: String,
    pub encrypted_key: Option<String>,
    pub key_preview: String,
    pub name: String,
    pub description: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub expires_at: Option<i64>,
    pub expiration_mode: String,
    pub activation_period: Option<i64>,
    pub activation_unit: Option<String>,
    pub activated_at: Option<i64>,
    pub is_active: bool,
    pub revoked_at: Option<i64>,
    pub usage_count: i64,
    pub last_used_at: Option<i64>,
    /// The sum of `total_tokens` over the key's calls (kept by the log writer).
    pub total_tokens_used: i64,
    /// USD, the sum of the cost of the key's calls (kept by the log writer).
    pub total_cost: f64,
    #[sqlx(flatten)]
    pub restrictions: Restrictions,
    /// The upstreams and route kinds it may use.
    #[sqlx(flatten)]
    pub binding: Binding,
    /// Its limits, by the column names of `Limits::FIELDS`.
    #[sqlx(flatten)]
    pub limits: Limits,
}

impl KeyRow {
    pub fn mode(&self) -> ExpirationMode {
        ExpirationMode::parse(&self.expiration_mode)
    }

    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle {
            is_active: self.is_active,
            revoked_at: self.revoked_at,
            expires_at: self.expires_at,
            expiration_mode: self.mode(),
            activated_at: self.activated_at,
        }
    }

    /// The lists `Policy` reads.
    pub fn policy_lists(&self) -> Lists<'_> {
        let r = &self.restrictions;
        Lists {
            allowed_models: &r.allowed_models.0,
            allowed_clients: &r.allowed_clients.0,
            allowed_ips: &r.allowed_ips.0,
            allowed_endpoints: &r.allowed_endpoints.0,
            upstream_ids: &self.binding.upstream_ids.0,
            permissions: &self.binding.permissions.0,
        }
    }

    /// How long an activation-mode key lives once first used.
    pub fn activation_millis(&self) -> Option<i64> {
        let unit = ActivationUnit::parse(self.activation_unit.as_deref()?)?;
        Some(unit.millis(self.activation_period?))
    }
}

/// A key to insert; the secret is already hashed and encrypted.
#[derive(Clone, Debug)]
pub struct NewKey {
    pub key_hash: String,
    pub encrypted_key: Option<String>,
    pub key_preview: String,
    pub name: String,
    pub description: Option<String>,
    pub expires_at: Option<i64>,
    pub expiration_mode: ExpirationMode,
    pub activation_period: Option<i64>,
    pub activation_unit: Option<ActivationUnit>,
}

/// The restriction lists and tags of a key (validated when written), by their column names.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema,
)]
pub struct Restrictions {
    /// Model names or `prefix*` patterns; empty: any model.
    #[sqlx(try_from = "String")]
    #[schema(value_type = Vec<String>)]
    pub allowed_models: TextList,
    /// User-Agent patterns (exact or `prefix*`, case-insensitive); empty: any client.
    #[sqlx(try_from = "String")]
    #[schema(value_type = Vec<String>)]
    pub allowed_clients: TextList,
    /// IP addresses or CIDRs; empty: any address.
    #[sqlx(try_from = "String")]
    #[schema(value_type = Vec<String>)]
    pub allowed_ips: TextList,
    /// Paths under /v1/ (exact or `prefix*`); empty: any endpoint.
    #[sqlx(try_from = "String")]
    #[schema(value_type = Vec<String>)]
    pub allowed_endpoints: TextList,
    /// Labels the key list filters by.
    #[sqlx(try_from = "String")]
    #[schema(value_type = Vec<String>)]
    pub tags: TextList,
}

impl Restrictions {
    /// Each list by its column name.
    pub fn entries(&self) -> [(&'static str, &TextList); 5] {
        [
            ("allowed_models", &self.allowed_models),
            ("allowed_clients", &self.allowed_clients),
            ("allowed_ips", &self.allowed_ips),
            ("allowed_endpoints", &self.allowed_endpoints),
            ("tags", &self.tags),
        ]
    }
}

/// The upstreams (SPEC §12) and route kinds a key may use, by their column names (validated
/// when written: every id names an upstream, every permission a kind).
#[derive(
    Clone, Debug, Default, PartialEq, Eq, sqlx::FromRow, serde::Serialize, utoipa::ToSchema,
)]
pub struct Binding {
    /// Upstream ids (0: the built-in `default`); empty: any upstream.
    #[sqlx(try_from = "String")]
    #[schema(value_type = Vec<i64>)]
    pub upstream_ids: IdList,
    /// `openai`, `anthropic`; empty: both.
    #[sqlx(try_from = "String")]
    #[schema(value_type = Vec<crate::upstreams::spec::Kind>)]
    pub permissions: KindList,
}

/// Every column of `api_keys` but `id` and the limits, in the order `bind_key!` binds them
/// (`?1`, `?2`, …; the limits, `Limits::FIELDS`, follow them, then `id`). Adding a column: its
/// migration, a `KeyRow` field, this list and `bind_key!` (a limit: its migration and its line
/// in `limits::limit_fields!`); every statement of `store` (insert, save, selects, the
/// import's upserts and staging table) is built from them.
pub const KEY_COLUMNS: &[&str] = &[
    "key_hash",
    "encrypted_key",
    "key_preview",
    "name",
    "description",
    "created_at",
    "updated_at",
    "expires_at",
    "expiration_mode",
    "activation_period",
    "activation_unit",
    "activated_at",
    "is_active",
    "revoked_at",
    "usage_count",
    "last_used_at",
    "total_tokens_used",
    "total_cost",
    "allowed_models",
    "allowed_clients",
    "allowed_ips",
    "allowed_endpoints",
    "tags",
    "upstream_ids",
    "permissions",
];

/// Columns `save` leaves alone: set once at creation, or kept by the log writer.
const NOT_SAVED: &[&str] = &[
    "created_at",
    "usage_count",
    "last_used_at",
    "total_tokens_used",
    "total_cost",
];

/// SQL fragments built once from `KEY_COLUMNS`.
pub struct KeySql {
    /// `id, key_hash, …`: a full `KeyRow`.
    pub select: String,
    /// `key_hash, …`: every column but `id`.
    pub data: String,
    /// `?1, ?2, …`: one placeholder per data column, in `bind_key!`'s order.
    pub params: String,
    /// The placeholder number of whatever is bound after the data columns (`id`).
    pub id_param: usize,
    /// `key_hash = excluded.key_hash, …`: an upsert overwriting every data column.
    pub overwrite: String,
    /// `key_hash = ?1, …`: what `save` writes.
    save_set: String,
}

/// The SQL fragments of `api_keys`.
pub fn key_sql() -> &'static KeySql {
    static SQL: std::sync::LazyLock<KeySql> = std::sync::LazyLock::new(|| {
        let columns: Vec<&str> = KEY_COLUMNS.iter().chain(Limits::FIELDS).copied().collect();
        let numbered = || columns.iter().zip(1..);
        KeySql {
            select: format!("id, {}", columns.join(", ")),
            data: columns.join(", "),
            params: numbered()
                .map(|(_, n)| format!("?{n}"))
                .collect::<Vec<_>>()
                .join(", "),
            id_param: columns.len() + 1,
            overwrite: columns
                .iter()
                .map(|c| format!("{c} = excluded.{c}"))
                .collect::<Vec<_>>()
                .join(", "),
            save_set: numbered()
                .filter(|(c, _)| !NOT_SAVED.contains(c))
                .map(|(c, n)| format!("{c} = ?{n}"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    });
    &SQL
}

/// Binds the data columns of a `&KeyRow`, in the order of `KEY_COLUMNS` then
/// `Limits::FIELDS`, to a query or query_as (the caller binds `id`, or nothing, after them).
/// Each limit is bound with its own type (a count as INTEGER, USD as REAL).
macro_rules! bind_key {
    ($query:expr, $key:expr) => {{
        let key: &$crate::store::keys::KeyRow = $key;
        key.limits.values().into_iter().fold(
            $query
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
                .bind(key.total_tokens_used)
                .bind(key.total_cost)
                .bind(key.restrictions.allowed_models.to_json())
                .bind(key.restrictions.allowed_clients.to_json())
                .bind(key.restrictions.allowed_ips.to_json())
                .bind(key.restrictions.allowed_endpoints.to_json())
                .bind(key.restrictions.tags.to_json())
                .bind(key.binding.upstream_ids.to_json())
                .bind(key.binding.permissions.to_json()),
            |query, value| match value {
                $crate::limits::LimitValue::Count(count) => query.bind(count),
                $crate::limits::LimitValue::Usd(usd) => query.bind(usd),
            },
        )
    }};
}
pub(crate) use bind_key;

impl NewKey {
    /// The row this key is inserted as at `now` (its id is given by the database).
    fn row(
        &self,
        restrictions: &Restrictions,
        binding: &Binding,
        limits: &Limits,
        now: i64,
    ) -> KeyRow {
        KeyRow {
            id: 0,
            key_hash: self.key_hash.clone(),
            encrypted_key: self.encrypted_key.clone(),
            key_preview: self.key_preview.clone(),
            name: self.name.clone(),
            description: self.description.clone(),
            created_at: now,
            updated_at: now,
            expires_at: self.expires_at,
            expiration_mode: self.expiration_mode.as_str().to_string(),
            activation_period: self.activation_period,
            activation_unit: self.activation_unit.map(|u| u.as_str().to_string()),
            activated_at: (self.expiration_mode == ExpirationMode::Fixed).then_some(now),
            is_active: true,
            revoked_at: None,
            usage_count: 0,
            last_used_at: None,
            total_tokens_used: 0,
            total_cost: 0.0,
            restrictions: restrictions.clone(),
            binding: binding.clone(),
            limits: *limits,
        }
    }
}

/// Inserts a key without restrictions or limits.
pub async fn insert<'e>(
    db: impl SqliteExecutor<'e>,
    key: &NewKey,
    now: i64,
) -> sqlx::Result<KeyRow> {
    let none = (
        Restrictions::default(),
        Binding::default(),
        Limits::default(),
    );
    insert_restricted(db, key, (&none.0, &none.1, &none.2), now).await
}

/// Inserts a key with its restrictions, binding and limits.
pub async fn insert_restricted<'e>(
    db: impl SqliteExecutor<'e>,
    key: &NewKey,
    (restrictions, binding, limits): (&Restrictions, &Binding, &Limits),
    now: i64,
) -> sqlx::Result<KeyRow> {
    let sql = key_sql();
    let row = key.row(restrictions, binding, limits, now);
    bind_key!(
        sqlx::query_as(&format!(
            "INSERT INTO api_keys ({}) VALUES ({}) RETURNING {}",
            sql.data, sql.params, sql.select
        )),
        &row
    )
    .fetch_one(db)
    .await
}

pub async fn get<'e>(db: impl SqliteExecutor<'e>, id: i64) -> sqlx::Result<Option<KeyRow>> {
    let columns = &key_sql().select;
    sqlx::query_as(&format!("SELECT {columns} FROM api_keys WHERE id = ?"))
        .bind(id)
        .fetch_optional(db)
        .await
}

pub async fn find_by_hash<'e>(
    db: impl SqliteExecutor<'e>,
    key_hash: &str,
) -> sqlx::Result<Option<KeyRow>> {
    let columns = &key_sql().select;
    sqlx::query_as(&format!(
        "SELECT {columns} FROM api_keys WHERE key_hash = ?"
    ))
    .bind(key_hash)
    .fetch_optional(db)
    .await
}

/// The key whose replaced secret (kept by `regenerate` with a grace period) has this hash,
/// while its grace lasts at `now`; with the grace's end.
pub async fn find_by_previous_hash<'e>(
    db: impl SqliteExecutor<'e>,
    key_hash: &str,
    now: i64,
) -> sqlx::Result<Option<(KeyRow, i64)>> {
    use sqlx::{FromRow, Row};
    let columns = &key_sql().select;
    let found = sqlx::query(&format!(
        "SELECT {columns}, previous_key_expires_at AS grace_until FROM api_keys \
         WHERE previous_key_hash = ?1 AND previous_key_expires_at > ?2"
    ))
    .bind(key_hash)
    .bind(now)
    .fetch_optional(db)
    .await?;
    found
        .map(|row| Ok((KeyRow::from_row(&row)?, row.try_get("grace_until")?)))
        .transpose()
}

/// Keeps `previous_hash` working until `until` (None: the key has no previous secret).
pub async fn set_previous_secret<'e>(
    db: impl SqliteExecutor<'e>,
    id: i64,
    previous: Option<(&str, i64)>,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE api_keys SET previous_key_hash = ?1, previous_key_expires_at = ?2 WHERE id = ?3",
    )
    .bind(previous.map(|(hash, _)| hash))
    .bind(previous.map(|(_, until)| until))
    .bind(id)
    .execute(db)
    .await?;
    Ok(())
}

/// What a key list is narrowed to, and its order.
#[derive(Clone, Debug, Default)]
pub struct KeyFilter {
    pub status: Option<Status>,
    /// Matched case-insensitively against name and description.
    pub search: Option<String>,
    /// Keys carrying this tag (exactly).
    pub tag: Option<String>,
    /// None: newest first.
    pub sort: Option<KeySort>,
}

/// A column a key list can be ordered by, and the direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeySort {
    pub column: SortColumn,
    pub descending: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortColumn {
    Name,
    CreatedAt,
    /// Keys that never expire come after every date (before, descending).
    ExpiresAt,
    UsageCount,
    /// Keys never used count as the oldest use.
    LastUsedAt,
}

impl SortColumn {
    pub const NAMES: &'static str = "name, created_at, expires_at, usage_count, last_used_at";

    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "name" => SortColumn::Name,
            "created_at" => SortColumn::CreatedAt,
            "expires_at" => SortColumn::ExpiresAt,
            "usage_count" => SortColumn::UsageCount,
            "last_used_at" => SortColumn::LastUsedAt,
            _ => return None,
        })
    }

    /// The ORDER BY terms, each followed by the direction.
    fn terms(self) -> &'static [&'static str] {
        match self {
            SortColumn::Name => &["name COLLATE NOCASE"],
            SortColumn::CreatedAt => &["created_at"],
            SortColumn::ExpiresAt => &["expires_at IS NULL", "expires_at"],
            SortColumn::UsageCount => &["usage_count"],
            SortColumn::LastUsedAt => &["COALESCE(last_used_at, 0)"],
        }
    }
}

/// `ORDER BY …` of a key list: the chosen column, then the id (newest first by default).
fn order_by(sort: Option<KeySort>) -> String {
    let Some(sort) = sort else {
        return "ORDER BY id DESC".into();
    };
    let direction = if sort.descending { "DESC" } else { "ASC" };
    let terms: Vec<String> = sort
        .column
        .terms()
        .iter()
        .chain(&["id"])
        .map(|term| format!("{term} {direction}"))
        .collect();
    format!("ORDER BY {}", terms.join(", "))
}

/// The condition of a key that is neither revoked nor expired (?1 = now).
macro_rules! live {
    () => {
        "revoked_at IS NULL AND (expires_at IS NULL OR expires_at > ?1)"
    };
}

/// SQL for each derived status, mirroring `Lifecycle::status` (?1 = now).
fn status_sql(status: Option<Status>) -> &'static str {
    match status {
        None => "?1 IS NOT NULL",
        Some(Status::Revoked) => "revoked_at IS NOT NULL",
        Some(Status::Expired) => {
            "revoked_at IS NULL AND expires_at IS NOT NULL AND expires_at <= ?1"
        }
        Some(Status::Disabled) => concat!(live!(), " AND is_active = 0"),
        Some(Status::Pending) => concat!(
            live!(),
            " AND is_active = 1 AND expiration_mode = 'activation' AND activated_at IS NULL"
        ),
        Some(Status::Active) => concat!(
            live!(),
            " AND is_active = 1 AND NOT (expiration_mode = 'activation' AND activated_at IS NULL)"
        ),
    }
}

/// One page of keys, newest first, and the total matching the filter.
pub async fn list(
    pool: &SqlitePool,
    filter: &KeyFilter,
    now: i64,
    page: Page,
) -> sqlx::Result<(Vec<KeyRow>, i64)> {
    let pattern = filter.search.as_ref().map(|s| {
        let escaped = s
            .replace('\\', "\\\\")
            .replace('%', "\\%")
            .replace('_', "\\_");
        format!("%{escaped}%")
    });
    let condition = format!(
        "({}) AND (?2 IS NULL OR name LIKE ?2 ESCAPE '\\' OR description LIKE ?2 ESCAPE '\\') \
         AND (?3 IS NULL OR EXISTS (SELECT 1 FROM json_each(tags) WHERE value = ?3))",
        status_sql(filter.status)
    );
    let total: i64 =
        sqlx::query_scalar(&format!("SELECT COUNT(*) FROM api_keys WHERE {condition}"))
            .bind(now)
            .bind(&pattern)
            .bind(&filter.tag)
            .fetch_one(pool)
            .await?;
    let columns = &key_sql().select;
    let order = order_by(filter.sort);
    let rows = sqlx::query_as(&format!(
        "SELECT {columns} FROM api_keys WHERE {condition} {order} LIMIT ?4 OFFSET ?5"
    ))
    .bind(now)
    .bind(&pattern)
    .bind(&filter.tag)
    .bind(page.page_size)
    .bind(page.offset())
    .fetch_all(pool)
    .await?;
    Ok((rows, total))
}

/// Every key, oldest first (exports and the CLI).
pub async fn all<'e>(db: impl SqliteExecutor<'e>) -> sqlx::Result<Vec<KeyRow>> {
    let columns = &key_sql().select;
    sqlx::query_as(&format!("SELECT {columns} FROM api_keys ORDER BY id"))
        .fetch_all(db)
        .await
}

/// Writes every mutable column of `key` back (usage counters are the log writer's).
pub async fn save<'e>(db: impl SqliteExecutor<'e>, key: &KeyRow) -> sqlx::Result<KeyRow> {
    let sql = key_sql();
    bind_key!(
        sqlx::query_as(&format!(
            "UPDATE api_keys SET {} WHERE id = ?{} RETURNING {}",
            sql.save_set, sql.id_param, sql.select
        )),
        key
    )
    .bind(key.id)
    .fetch_one(db)
    .await
}

/// Deletes a key; its call logs go with it (ON DELETE CASCADE). False if there was none.
pub async fn delete<'e>(db: impl SqliteExecutor<'e>, id: i64) -> sqlx::Result<bool> {
    let done = sqlx::query("DELETE FROM api_keys WHERE id = ?")
        .bind(id)
        .execute(db)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// Starts an activation-mode key's clock at its first use. One conditional UPDATE, so
/// concurrent first uses agree: whoever loses reads the winner's `activated_at`.
pub async fn activate(
    pool: &SqlitePool,
    id: i64,
    now: i64,
    lifetime_ms: i64,
) -> sqlx::Result<Option<KeyRow>> {
    sqlx::query(
        "UPDATE api_keys SET activated_at = ?1, expires_at = ?1 + ?2, updated_at = ?1 \
         WHERE id = ?3 AND activated_at IS NULL AND expiration_mode = 'activation'",
    )
    .bind(now)
    .bind(lifetime_ms)
    .bind(id)
    .execute(pool)
    .await?;
    get(pool, id).await
}

/// Live keys whose expiry falls in `(from, to]`, soonest first.
pub async fn expiring_between<'e>(
    db: impl SqliteExecutor<'e>,
    from: i64,
    to: i64,
) -> sqlx::Result<Vec<KeyRow>> {
    let columns = &key_sql().select;
    sqlx::query_as(&format!(
        "SELECT {columns} FROM api_keys WHERE revoked_at IS NULL AND expires_at > ? AND expires_at <= ? \
         ORDER BY expires_at, id"
    ))
    .bind(from)
    .bind(to)
    .fetch_all(db)
    .await
}

/// Unrevoked fixed-mode keys that never expire.
pub async fn without_expiry<'e>(db: impl SqliteExecutor<'e>) -> sqlx::Result<Vec<KeyRow>> {
    let columns = &key_sql().select;
    sqlx::query_as(&format!(
        "SELECT {columns} FROM api_keys WHERE expires_at IS NULL AND expiration_mode = 'fixed' \
         AND revoked_at IS NULL ORDER BY id"
    ))
    .fetch_all(db)
    .await
}

/// Marks keys whose expiry has passed inactive (never deletes). Returns how many changed.
pub async fn deactivate_expired<'e>(db: impl SqliteExecutor<'e>, now: i64) -> sqlx::Result<u64> {
    let done = sqlx::query(
        "UPDATE api_keys SET is_active = 0, updated_at = ?1 \
         WHERE is_active = 1 AND expires_at IS NOT NULL AND expires_at <= ?1",
    )
    .bind(now)
    .execute(db)
    .await?;
    Ok(done.rows_affected())
}
