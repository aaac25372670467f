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
    pub cached_tokens: Option<i64>,
}

const COLUMNS: &str = "id, api_key_id, timestamp, model, status, http_status, response_time, ip_address, \
     endpoint, error_message, request_size, response_size, prompt_tokens, completion_tokens, total_tokens, stream, \
     cost, cached_tokens";

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
    /// Exactly this model (served by `idx_logs_model_time`).
    pub model: Option<String>,
}

/// ` WHERE …` for the key, the model and the condition given (if any). Status conditions are SQL
/// literals: only `status = 'error'` written out lets SQLite use the partial `idx_logs_errors`.
fn push_filter<'a>(
    query: &mut QueryBuilder<'a, Sqlite>,
    filter: &'a LogFilter,
    condition: Option<&str>,
) {
    let mut word = " WHERE ";
    if let Some(key_id) = filter.key_id {
        query.push(word).push("api_key_id = ").push_bind(key_id);
        word = " AND ";
    }
    if let Some(model) = &filter.model {
        query.push(word).push("model = ").push_bind(model.as_str());
        word = " AND ";
    }
    if let Some(condition) = condition {
        query.push(word).push(condition);
    }
}

const IS_ERROR: &str = "status = 'error'";
/// `likely`: without it SQLite scans and sorts the whole table instead of walking a time index.
const IS_SUCCESS: &str = "likely(status = 'success')";

/// One page of logs, newest first, and the total matching the filter.
pub async fn list(
    pool: &SqlitePool,
    filter: &LogFilter,
    page: Page,
) -> sqlx::Result<(Vec<LogRow>, i64)> {
    // Success rows have no index of their own: they are all rows but the (indexed) errors,
    // counted in one statement so that both counts see the same rows.
    let mut count = QueryBuilder::<Sqlite>::new("SELECT (SELECT COUNT(*) FROM api_call_logs");
    match filter.status {
        None => push_filter(&mut count, filter, None),
        Some(LogStatus::Error) => push_filter(&mut count, filter, Some(IS_ERROR)),
        Some(LogStatus::Success) => {
            push_filter(&mut count, filter, None);
            count.push(") - (SELECT COUNT(*) FROM api_call_logs");
            push_filter(&mut count, filter, Some(IS_ERROR));
        }
    }
    count.push(")");
    let total: i64 = count.build_query_scalar().fetch_one(pool).await?;
    let condition = filter.status.map(|status| match status {
        LogStatus::Success => IS_SUCCESS,
        LogStatus::Error => IS_ERROR,
    });
    let mut select = QueryBuilder::<Sqlite>::new(format!("SELECT {COLUMNS} FROM api_call_logs"));
    push_filter(&mut select, filter, condition);
    select
        .push(" ORDER BY timestamp DESC, id DESC LIMIT ")
        .push_bind(page.page_size)
        .push(" OFFSET ")
        .push_bind(page.offset());
    let rows = select.build_query_as().fetch_all(pool).await?;
    Ok((rows, total))
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

type Totals = (i64, i64, i64, i64, i64, i64, i64, f64);

/// Reads the key's `usage_daily` rows (never the call log, whose old rows may be pruned): the
/// same figures the rows they sum would give.
pub async fn stats(pool: &SqlitePool, key_id: i64, days: i64, now: i64) -> sqlx::Result<KeyStats> {
    let first_day = now.div_euclid(MS_PER_DAY) - (days - 1);
    let since = day_text(first_day);
    let (total_calls, success_calls, response_time, prompt, completion, tokens, cached, cost): Totals =
        sqlx::query_as(
            "SELECT COALESCE(SUM(calls), 0), COALESCE(SUM(success_calls), 0), \
             COALESCE(SUM(response_time_ms_sum), 0), COALESCE(SUM(prompt_tokens), 0), \
             COALESCE(SUM(completion_tokens), 0), COALESCE(SUM(total_tokens), 0), \
             COALESCE(SUM(cached_tokens), 0), COALESCE(SUM(cost), 0.0) \
             FROM usage_daily WHERE api_key_id = ? AND day >= ?",
        )
        .bind(key_id)
        .bind(&since)
        .fetch_one(pool)
        .await?;
    let by_model = sqlx::query_as::<_, (String, i64, i64, i64, i64, f64)>(
        "SELECT model, SUM(calls) AS n, SUM(success_calls), SUM(response_time_ms_sum), \
         SUM(total_tokens), SUM(cost) FROM usage_daily WHERE api_key_id = ? AND day >= ? \
         GROUP BY model ORDER BY n DESC, model",
    )
    .bind(key_id)
    .bind(&since)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(
        |(model, calls, success, response_time, tokens, cost)| ModelStats {
            // Rows without a model are rolled up under ''.
            model: (!model.is_empty()).then_some(model),
            calls,
            success_calls: success,
            error_calls: calls - success,
            avg_response_time_ms: round2(mean(response_time, calls)),
            total_tokens: tokens,
            cost,
        },
    )
    .collect();
    let counted: HashMap<String, (i64, i64)> = sqlx::query_as::<_, (String, i64, i64)>(
        "SELECT day, SUM(calls), SUM(success_calls) \
         FROM usage_daily WHERE api_key_id = ? AND day >= ? GROUP BY day",
    )
    .bind(key_id)
    .bind(&since)
    .fetch_all(pool)
    .await?
    .into_iter()
    .map(|(day, calls, success)| (day, (calls, success)))
    .collect();
    let by_day = (first_day..first_day + days)
        .map(|day| {
            let date = day_text(day);
            let (calls, success) = counted.get(&date).copied().unwrap_or_default();
            DayStats {
                date,
                calls,
                success_calls: success,
                error_calls: calls - success,
            }
        })
        .collect();
    Ok(KeyStats {
        key_id,
        days,
        total_calls,
        success_calls,
        error_calls: total_calls - success_calls,
        success_rate: if total_calls == 0 {
            0.0
        } else {
            success_calls as f64 / total_calls as f64
        },
        avg_response_time_ms: round2(mean(response_time, total_calls)),
        prompt_tokens: prompt,
        completion_tokens: completion,
        total_tokens: tokens,
        cached_tokens: cached,
        total_cost: cost,
        by_model,
        by_day,
    })
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
