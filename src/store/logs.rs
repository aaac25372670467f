//! SQL for reading `api_call_logs` (filtered pages) and per-key stats from `usage_daily`
//! (both written by `log_batch`).

use std::collections::HashMap;

use serde::Serialize;
use sqlx::{QueryBuilder, Sqlite, SqlitePool};

use super::Page;
use crate::clock::{day_text, ser_ms, MS_PER_DAY};

/// One `api_call_logs` row, as the admin API shows it.
#[derive(Clone, Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct LogRow {
    pub id: i64,
    pub api_key_id: Option<i64>,
    #[serde(serialize_with = "ser_ms")]
    #[schema(value_type = String, format = DateTime)]
    pub timestamp: i64,
    pub model: Option<String>,
    pub status: String,
    pub http_status: i64,
    pub response_time: i64,
    pub ip_address: Option<String>,
    pub endpoint: String,
    pub error_message: Option<String>,
    pub request_size: i64,
    pub response_size: i64,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub total_tokens: Option<i64>,
    pub stream: bool,
    /// USD.
    pub cost: f64,
    /// Prompt tokens read from the provider's cache (part of `prompt_tokens`).
    pub cache_read_tokens: Option<i64>,
    /// Prompt tokens written to the provider's cache (part of `prompt_tokens`; Anthropic).
    pub cache_write_tokens: Option<i64>,
    /// The upstream that answered, or was tried last (0: the built-in `default`); null when
    /// none was tried (a refused request).
    pub upstream_id: Option<i64>,
    /// The upstreams tried for the request (0 when none was); null on rows written before
    /// keygate counted them.
    pub attempts: Option<i64>,
}

/// Every column of `api_call_logs` after `id` and `api_key_id`, in the order `bind_log!`
/// binds them. Adding a column: its migration, a `LogRow` field, this list and `bind_log!`
/// (and where its value comes from: the call-log writer's INSERT, the export, the import's
/// parser); every statement of `store` that reads or copies rows is built from the list.
pub const LOG_COLUMNS: &[&str] = &[
    "timestamp",
    "model",
    "status",
    "http_status",
    "response_time",
    "ip_address",
    "endpoint",
    "error_message",
    "request_size",
    "response_size",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "stream",
    "cost",
    "cache_read_tokens",
    "cache_write_tokens",
    "upstream_id",
    "attempts",
];

/// SQL fragments of `api_call_logs`, built once from `LOG_COLUMNS`.
pub struct LogSql {
    /// `id, api_key_id, timestamp, …`: a full `LogRow`.
    pub select: String,
    /// `api_key_id, timestamp, …`: every column but `id`, in `bind_log!`'s order.
    pub data: String,
    /// `data` of a staged row whose key moved to a fresh id (`temp.key_moves`).
    pub data_moved: String,
    /// `?1, ?2, …`: one placeholder per `data` column (`id` follows as `?{id_param}`).
    pub params: String,
    pub id_param: usize,
    /// ` ON CONFLICT (id) DO UPDATE SET api_key_id = excluded.api_key_id, …`.
    pub overwrite: String,
}

pub fn log_sql() -> &'static LogSql {
    static SQL: std::sync::LazyLock<LogSql> = std::sync::LazyLock::new(|| {
        let tail = LOG_COLUMNS.join(", ");
        let data: Vec<&str> = std::iter::once("api_key_id")
            .chain(LOG_COLUMNS.iter().copied())
            .collect();
        LogSql {
            select: format!("id, api_key_id, {tail}"),
            data: data.join(", "),
            data_moved: format!(
                "COALESCE((SELECT new FROM temp.key_moves WHERE old = api_key_id), api_key_id), {tail}"
            ),
            params: (1..=data.len())
                .map(|n| format!("?{n}"))
                .collect::<Vec<_>>()
                .join(", "),
            id_param: data.len() + 1,
            overwrite: format!(
                " ON CONFLICT (id) DO UPDATE SET {}",
                data.iter()
                    .map(|c| format!("{c} = excluded.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    });
    &SQL
}

/// Binds the `data` columns of a `&LogRow` in `log_sql().data`'s order with `$bind` (`bind`
/// on a query, `push_bind` on a row of a multi-row insert); the caller binds `id` after them.
macro_rules! bind_log {
    ($query:expr, $log:expr, $bind:ident) => {{
        let log: &$crate::store::logs::LogRow = $log;
        $query
            .$bind(log.api_key_id)
            .$bind(log.timestamp)
            .$bind(log.model.as_deref())
            .$bind(log.status.as_str())
            .$bind(log.http_status)
            .$bind(log.response_time)
            .$bind(log.ip_address.as_deref())
            .$bind(log.endpoint.as_str())
            .$bind(log.error_message.as_deref())
            .$bind(log.request_size)
            .$bind(log.response_size)
            .$bind(log.prompt_tokens)
            .$bind(log.completion_tokens)
            .$bind(log.total_tokens)
            .$bind(log.stream)
            .$bind(log.cost)
            .$bind(log.cache_read_tokens)
            .$bind(log.cache_write_tokens)
            .$bind(log.upstream_id)
            .$bind(log.attempts)
    }};
}
pub(crate) use bind_log;

/// Adds an inserted `log_day_counts` row (rows and errors) to the existing one of its key,
/// day and model.
macro_rules! day_counts_add {
    () => {
        " ON CONFLICT (api_key_id, day, model) DO UPDATE SET rows = rows + excluded.rows, \
         errors = errors + excluded.errors"
    };
}
pub(super) use day_counts_add;

/// Adds rows to `log_day_counts` (?1 key id or 0, ?2 UTC day since the epoch, ?3 model or '',
/// ?4 rows, ?5 errors among them): what inserting call logs does once per group, in the
/// transaction of the rows (the call-log writer; an import does it per move-in). Deletions
/// and changes are followed by the table's triggers.
pub const ADD_DAY_COUNTS: &str = concat!(
    "INSERT INTO log_day_counts (api_key_id, day, model, rows, errors) ",
    "VALUES (?1, ?2, ?3, ?4, ?5)",
    day_counts_add!()
);

/// A log row's outcome, as a status filter names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStatus {
    Success,
    Error,
}

impl LogStatus {
    /// `success` or `error`; anything else is not a status.
    pub fn parse(text: &str) -> Option<LogStatus> {
        match text {
            "success" => Some(LogStatus::Success),
            "error" => Some(LogStatus::Error),
            _ => None,
        }
    }
}

/// What a log list is narrowed to.
#[derive(Clone, Debug, Default)]
pub struct LogFilter {
    pub key_id: Option<i64>,
    pub status: Option<LogStatus>,
    pub model: Option<String>,
}

/// Where a page of logs starts.
#[derive(Clone, Copy, Debug)]
pub enum PageAt {
    /// Page numbers: `page_size` rows after skipping `(page - 1) * page_size`.
    Number(Page),
    /// The `page_size` rows older than log row `id` (newest first).
    Before { id: i64, page_size: i64 },
    /// The `page_size` rows newer than log row `id`, the closest first taken (shown newest
    /// first); `id` 0 is the start: the oldest rows.
    After { id: i64, page_size: i64 },
}

impl PageAt {
    pub fn page_size(self) -> i64 {
        match self {
            PageAt::Number(page) => page.page_size,
            PageAt::Before { page_size, .. } | PageAt::After { page_size, .. } => page_size,
        }
    }
}

/// One page of logs, newest first.
#[derive(Debug)]
pub struct LogPage {
    pub rows: Vec<LogRow>,
    /// Rows matching the filter (exact: from `log_day_counts`).
    pub total: i64,
    /// Older rows exist: the id to pass as `before` for the next page.
    pub next_before: Option<i64>,
    /// Newer rows exist: the id to pass as `after` for the previous page.
    pub prev_after: Option<i64>,
}

/// Where a page's walk of its index begins.
#[derive(Clone, Copy, Debug)]
enum Start {
    /// At an end: the newest row, or the oldest after `after=0`.
    End,
    /// Next to a cursor row `(timestamp, id)`.
    Row(i64, i64),
    /// `skip` rows into those older than `before` (UTC ms; None: all): a page by number, its
    /// first row's day found from the day counts, so the walk skips at most one day's rows.
    Skip { before: Option<i64>, skip: i64 },
}

/// The conditions of a filter, ANDed after ` WHERE `. Status conditions are SQL literals: only
/// `status = 'error'` written out lets SQLite use the partial error indexes.
fn push_filter(query: &mut QueryBuilder<'_, Sqlite>, filter: &LogFilter) {
    query.push(" WHERE true");
    if let Some(key_id) = filter.key_id {
        query.push(" AND api_key_id = ").push_bind(key_id);
    }
    if let Some(model) = &filter.model {
        query.push(" AND model = ").push_bind(model.clone());
    }
    match filter.status {
        None => {}
        Some(LogStatus::Error) => {
            query.push(" AND status = 'error'");
        }
        // `likely`: without it SQLite may scan and sort the whole table instead of walking a
        // time index (nearly every row is a success).
        Some(LogStatus::Success) => {
            query.push(" AND likely(status = 'success')");
        }
    }
}

/// One page of logs and the total matching the filter; None when the cursor's row does not
/// exist (deleted or pruned). The counts and the page are read in one transaction (one
/// snapshot), so they agree while the call-log writer goes on.
pub async fn list(
    pool: &SqlitePool,
    filter: &LogFilter,
    at: PageAt,
) -> sqlx::Result<Option<LogPage>> {
    let page_size = at.page_size();
    let mut tx = pool.begin().await?;
    let days: Vec<(i64, i64)> = day_counts_query(filter)
        .build_query_as()
        .fetch_all(&mut *tx)
        .await?;
    let total = days.iter().map(|(_, rows)| rows).sum();
    let start = match at {
        PageAt::Number(page) => match seek(&days, page.offset()) {
            Some(start) => start,
            // Past the last row: an empty page.
            None => {
                return Ok(Some(LogPage {
                    rows: Vec::new(),
                    total,
                    next_before: None,
                    prev_after: None,
                }))
            }
        },
        PageAt::After { id: 0, .. } => Start::End,
        PageAt::Before { id, .. } | PageAt::After { id, .. } => {
            let timestamp: Option<i64> =
                sqlx::query_scalar("SELECT timestamp FROM api_call_logs WHERE id = ?")
                    .bind(id)
                    .fetch_optional(&mut *tx)
                    .await?;
            match timestamp {
                Some(timestamp) => Start::Row(timestamp, id),
                None => return Ok(None),
            }
        }
    };
    let newest_first = !matches!(at, PageAt::After { .. });
    let mut select = page_query(filter, at, start);
    let mut rows: Vec<LogRow> = select.build_query_as().fetch_all(&mut *tx).await?;
    tx.commit().await?;
    let more = rows.len() as i64 > page_size;
    rows.truncate(page_size as usize);
    if !newest_first {
        rows.reverse();
    }
    let first = rows.first().map(|row| row.id);
    let last = rows.last().map(|row| row.id);
    let (next_before, prev_after) = match at {
        PageAt::Number(page) => (last.filter(|_| more), first.filter(|_| page.page > 1)),
        PageAt::Before { .. } => (last.filter(|_| more), first),
        PageAt::After { id, .. } => (last.filter(|_| id > 0), first.filter(|_| more)),
    };
    Ok(Some(LogPage {
        rows,
        total,
        next_before,
        prev_after,
    }))
}

/// Where the walk for the rows past `offset` (newest first) starts: in the day holding row
/// `offset`, after the rows of the newer days; None past the last row.
fn seek(days: &[(i64, i64)], offset: i64) -> Option<Start> {
    if offset == 0 {
        return Some(Start::Skip {
            before: None,
            skip: 0,
        });
    }
    let mut newer = 0;
    for &(day, rows) in days {
        if newer + rows > offset {
            return Some(Start::Skip {
                before: Some((day + 1) * MS_PER_DAY),
                skip: offset - newer,
            });
        }
        newer += rows;
    }
    None
}

/// The rows of a page (one more than the page: it tells whether the walk goes on past it),
/// in the order of the index that serves the filter: newest first, or oldest first after a
/// cursor row or from the oldest end.
fn page_query<'a>(filter: &LogFilter, at: PageAt, start: Start) -> QueryBuilder<'a, Sqlite> {
    let mut select =
        QueryBuilder::<Sqlite>::new(format!("SELECT {} FROM api_call_logs", log_sql().select));
    push_filter(&mut select, filter);
    let newest_first = !matches!(at, PageAt::After { .. });
    match start {
        Start::End
        | Start::Skip {
            before: None,
            skip: _,
        } => {}
        Start::Row(timestamp, id) => {
            // The range bound on `timestamp` is what the index serves; ties are few.
            let (bound, strict) = if newest_first {
                ("<=", "<")
            } else {
                (">=", ">")
            };
            select
                .push(format!(" AND timestamp {bound} "))
                .push_bind(timestamp)
                .push(format!(" AND (timestamp {strict} "))
                .push_bind(timestamp)
                .push(format!(" OR id {strict} "))
                .push_bind(id)
                .push(")");
        }
        Start::Skip {
            before: Some(before),
            skip: _,
        } => {
            select.push(" AND timestamp < ").push_bind(before);
        }
    }
    let order = if newest_first { "DESC" } else { "ASC" };
    select
        .push(format!(" ORDER BY timestamp {order}, id {order} LIMIT "))
        .push_bind(at.page_size() + 1);
    if let Start::Skip { skip, .. } = start {
        select.push(" OFFSET ").push_bind(skip);
    }
    select
}

/// The rows matching the filter per UTC day that has any, newest day first, from
/// `log_day_counts` (a few rows per key, day and model, whatever the traffic).
fn day_counts_query<'a>(filter: &LogFilter) -> QueryBuilder<'a, Sqlite> {
    let rows = match filter.status {
        None => "rows",
        Some(LogStatus::Error) => "errors",
        Some(LogStatus::Success) => "rows - errors",
    };
    let mut query = QueryBuilder::<Sqlite>::new(format!(
        "SELECT day, SUM({rows}) AS n FROM log_day_counts WHERE true"
    ));
    if let Some(key_id) = filter.key_id {
        // Rows without a key are counted under 0, which no key filter may reach.
        query
            .push(" AND api_key_id = ")
            .push_bind(if key_id > 0 { key_id } else { -1 });
    }
    if let Some(model) = &filter.model {
        query.push(" AND model = ").push_bind(model.clone());
    }
    query.push(" GROUP BY day HAVING n > 0 ORDER BY day DESC");
    query
}

#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct ModelStats {
    pub model: Option<String>,
    pub calls: i64,
    pub success_calls: i64,
    pub error_calls: i64,
    pub avg_response_time_ms: f64,
    pub total_tokens: i64,
    /// USD.
    pub cost: f64,
}

#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct DayStats {
    pub date: String,
    pub calls: i64,
    pub success_calls: i64,
    pub error_calls: i64,
}

/// A key's calls over the last `days` UTC days (today included).
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct KeyStats {
    pub key_id: i64,
    pub days: i64,
    pub total_calls: i64,
    pub success_calls: i64,
    pub error_calls: i64,
    pub success_rate: f64,
    pub avg_response_time_ms: f64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub total_tokens: i64,
    pub cached_tokens: i64,
    /// USD.
    pub total_cost: f64,
    pub by_model: Vec<ModelStats>,
    pub by_day: Vec<DayStats>,
}

/// One `usage_daily` row of a key, as stats read it.
#[derive(sqlx::FromRow)]
struct UsageRow {
    day: String,
    model: String,
    calls: i64,
    success_calls: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    cached_tokens: i64,
    total_tokens: i64,
    cost: f64,
    response_time_ms_sum: i64,
}

/// Reads the key's `usage_daily` rows of the window once (a range of its primary key, one row
/// per day and model; never the call log, whose old rows may be pruned) and sums them here:
/// the same figures the log rows they sum would give, at a cost independent of the log's size.
pub async fn stats(pool: &SqlitePool, key_id: i64, days: i64, now: i64) -> sqlx::Result<KeyStats> {
    let first_day = now.div_euclid(MS_PER_DAY) - (days - 1);
    let rows: Vec<UsageRow> = sqlx::query_as(
        "SELECT day, model, calls, success_calls, prompt_tokens, completion_tokens, \
         cached_tokens, total_tokens, cost, response_time_ms_sum \
         FROM usage_daily WHERE api_key_id = ? AND day >= ?",
    )
    .bind(key_id)
    .bind(day_text(first_day))
    .fetch_all(pool)
    .await?;
    let mut stats = KeyStats {
        key_id,
        days,
        ..KeyStats::default()
    };
    let mut response_time = 0;
    // model → (calls, successes, response time sum, tokens, cost)
    let mut models: HashMap<&str, (i64, i64, i64, i64, f64)> = HashMap::new();
    let mut counted: HashMap<&str, (i64, i64)> = HashMap::new();
    for row in &rows {
        stats.total_calls += row.calls;
        stats.success_calls += row.success_calls;
        stats.prompt_tokens += row.prompt_tokens;
        stats.completion_tokens += row.completion_tokens;
        stats.cached_tokens += row.cached_tokens;
        stats.total_tokens += row.total_tokens;
        stats.total_cost += row.cost;
        response_time += row.response_time_ms_sum;
        let model = models.entry(row.model.as_str()).or_default();
        model.0 += row.calls;
        model.1 += row.success_calls;
        model.2 += row.response_time_ms_sum;
        model.3 += row.total_tokens;
        model.4 += row.cost;
        let day = counted.entry(row.day.as_str()).or_default();
        day.0 += row.calls;
        day.1 += row.success_calls;
    }
    stats.error_calls = stats.total_calls - stats.success_calls;
    stats.success_rate = if stats.total_calls == 0 {
        0.0
    } else {
        stats.success_calls as f64 / stats.total_calls as f64
    };
    stats.avg_response_time_ms = round2(mean(response_time, stats.total_calls));
    let mut by_model: Vec<ModelStats> = models
        .into_iter()
        .map(
            |(model, (calls, success, response_time, tokens, cost))| ModelStats {
                // Rows without a model are rolled up under ''.
                model: (!model.is_empty()).then(|| model.to_string()),
                calls,
                success_calls: success,
                error_calls: calls - success,
                avg_response_time_ms: round2(mean(response_time, calls)),
                total_tokens: tokens,
                cost,
            },
        )
        .collect();
    // Most calls first; ties by model name ('' first, as SQLite orders it).
    by_model.sort_by(|a, b| {
        b.calls.cmp(&a.calls).then_with(|| {
            a.model
                .as_deref()
                .unwrap_or("")
                .cmp(b.model.as_deref().unwrap_or(""))
        })
    });
    stats.by_model = by_model;
    stats.by_day = (first_day..first_day + days)
        .map(|day| {
            let date = day_text(day);
            let (calls, success) = counted.get(date.as_str()).copied().unwrap_or_default();
            DayStats {
                date,
                calls,
                success_calls: success,
                error_calls: calls - success,
            }
        })
        .collect();
    Ok(stats)
}

fn mean(sum: i64, count: i64) -> f64 {
    if count == 0 {
        0.0
    } else {
        sum as f64 / count as f64
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plan SQLite picks for `query` (its parameters unbound: plans do not depend on them).
    async fn plan(pool: &SqlitePool, query: QueryBuilder<'_, Sqlite>) -> String {
        let rows: Vec<(i64, i64, i64, String)> =
            sqlx::query_as(&format!("EXPLAIN QUERY PLAN {}", query.sql()))
                .fetch_all(pool)
                .await
                .unwrap();
        rows.into_iter()
            .map(|row| row.3)
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Every log page and count is served by its index in page order: no temp B-tree sort and
    /// no table scan, whatever the filter and however the page is reached.
    #[tokio::test]
    async fn every_log_read_walks_an_index_in_page_order() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("plan.db").display());
        let pool = crate::store::connect(&url).await.unwrap();
        let model = || Some("gpt-test".to_string());
        let filters = [
            (LogFilter::default(), "idx_logs_time"),
            (
                LogFilter {
                    key_id: Some(1),
                    ..LogFilter::default()
                },
                "idx_logs_key_time",
            ),
            (
                LogFilter {
                    status: Some(LogStatus::Error),
                    ..LogFilter::default()
                },
                "idx_logs_errors",
            ),
            (
                LogFilter {
                    status: Some(LogStatus::Success),
                    ..LogFilter::default()
                },
                "idx_logs_time",
            ),
            (
                LogFilter {
                    key_id: Some(1),
                    status: Some(LogStatus::Error),
                    ..LogFilter::default()
                },
                "idx_logs_key_errors",
            ),
            (
                LogFilter {
                    key_id: Some(1),
                    status: Some(LogStatus::Success),
                    ..LogFilter::default()
                },
                "idx_logs_key_time",
            ),
            (
                LogFilter {
                    model: model(),
                    ..LogFilter::default()
                },
                "idx_logs_model_time",
            ),
        ];
        let ats = [
            (
                PageAt::Number(Page {
                    page: 1,
                    page_size: 50,
                }),
                Start::Skip {
                    before: None,
                    skip: 0,
                },
            ),
            (
                PageAt::Number(Page {
                    page: 3,
                    page_size: 50,
                }),
                Start::Skip {
                    before: Some(20 * MS_PER_DAY),
                    skip: 100,
                },
            ),
            (
                PageAt::Before {
                    id: 7,
                    page_size: 50,
                },
                Start::Row(1, 7),
            ),
            (
                PageAt::After {
                    id: 7,
                    page_size: 50,
                },
                Start::Row(1, 7),
            ),
            (
                PageAt::After {
                    id: 0,
                    page_size: 50,
                },
                Start::End,
            ),
        ];
        for (filter, index) in &filters {
            for (at, start) in ats {
                let plan = plan(&pool, page_query(filter, at, start)).await;
                assert!(
                    plan.contains(&format!("USING INDEX {index}")) && !plan.contains("TEMP B-TREE"),
                    "{filter:?} {at:?}: {plan}"
                );
            }
            // The day counts: a range of their primary key when a key is given.
            let plan = plan(&pool, day_counts_query(filter)).await;
            assert!(
                filter.key_id.is_none() || plan.contains("SEARCH log_day_counts"),
                "counts {filter:?}: {plan}"
            );
        }
    }
}
