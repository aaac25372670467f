//! Reads of what keys have spent: a metered key's saved window and its sums from the usage
//! rollup, the day and week costs shown with keys, and a key's usage per day.

use std::collections::HashMap;

use serde::Serialize;
use sqlx::SqlitePool;

use crate::clock::day_text;
use crate::limits::meter::{week_of, week_start_day, Spent, Window};

/// What `key_id` has spent as of UTC day `today`: the saved window (if any), today's and
/// this week's cost from `usage_daily`, and the lifetime sums from its row.
pub async fn spent(pool: &SqlitePool, key_id: i64, today: i64) -> sqlx::Result<Spent> {
    let window: Option<(i64, i64, i64, f64)> = sqlx::query_as(
        "SELECT window_start, requests, tokens, cost FROM rate_windows WHERE api_key_id = ?",
    )
    .bind(key_id)
    .fetch_optional(pool)
    .await?;
    let (daily_cost, weekly_cost) = day_and_week_costs(pool, &[key_id], today)
        .await?
        .remove(&key_id)
        .unwrap_or_default();
    let (total_tokens, total_cost): (i64, f64) =
        sqlx::query_as("SELECT total_tokens_used, total_cost FROM api_keys WHERE id = ?")
            .bind(key_id)
            .fetch_optional(pool)
            .await?
            .unwrap_or_default();
    Ok(Spent {
        window: window.map(|(start, requests, tokens, cost)| Window {
            start,
            requests,
            tokens,
            cost,
        }),
        day: today,
        daily_cost,
        weekly_cost,
        total_tokens,
        total_cost,
        in_flight: 0,
    })
}

/// Today's and this week's cost (USD) of each of `ids` from `usage_daily` (keys without
/// usage are absent).
pub async fn day_and_week_costs(
    pool: &SqlitePool,
    ids: &[i64],
    today: i64,
) -> sqlx::Result<HashMap<i64, (f64, f64)>> {
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let mut query = sqlx::QueryBuilder::new("SELECT api_key_id, COALESCE(SUM(CASE WHEN day = ");
    query
        .push_bind(day_text(today))
        .push(" THEN cost END), 0.0), COALESCE(SUM(cost), 0.0) FROM usage_daily WHERE day >= ")
        .push_bind(day_text(week_start_day(week_of(today))))
        .push(" AND api_key_id IN (");
    let mut list = query.separated(", ");
    for id in ids {
        list.push_bind(id);
    }
    query.push(") GROUP BY api_key_id");
    let rows: Vec<(i64, f64, f64)> = query.build_query_as().fetch_all(pool).await?;
    Ok(rows
        .into_iter()
        .map(|(id, daily, weekly)| (id, (daily, weekly)))
        .collect())
}

/// One UTC day of a key's usage.
#[derive(Clone, Debug, Default, Serialize, sqlx::FromRow)]
pub struct DayUsage {
    pub date: String,
    pub calls: i64,
    pub success_calls: i64,
    pub error_calls: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cached_tokens: i64,
    pub total_tokens: i64,
    /// USD.
    pub cost: f64,
}

/// The key's usage on each UTC day from `first_day` to `last_day` (days since the epoch),
/// oldest first, days without calls included as zeros.
pub async fn per_day(
    pool: &SqlitePool,
    key_id: i64,
    first_day: i64,
    last_day: i64,
) -> sqlx::Result<Vec<DayUsage>> {
    let rows: Vec<DayUsage> = sqlx::query_as(
        "SELECT day AS date, SUM(calls) AS calls, SUM(success_calls) AS success_calls, \
         SUM(error_calls) AS error_calls, SUM(prompt_tokens) AS prompt_tokens, \
         SUM(completion_tokens) AS completion_tokens, SUM(cached_tokens) AS cached_tokens, \
         SUM(total_tokens) AS total_tokens, SUM(cost) AS cost \
         FROM usage_daily WHERE api_key_id = ? AND day >= ? AND day <= ? GROUP BY day",
    )
    .bind(key_id)
    .bind(day_text(first_day))
    .bind(day_text(last_day))
    .fetch_all(pool)
    .await?;
    let mut by_date: HashMap<String, DayUsage> = rows
        .into_iter()
        .map(|row| (row.date.clone(), row))
        .collect();
    Ok((first_day..=last_day)
        .map(|day| {
            let date = day_text(day);
            by_date.remove(&date).unwrap_or(DayUsage {
                date,
                ..DayUsage::default()
            })
        })
        .collect())
}

/// The key's cost (USD) over the UTC days from `first_day` to `last_day`.
pub async fn cost_between(
    pool: &SqlitePool,
    key_id: i64,
    first_day: i64,
    last_day: i64,
) -> sqlx::Result<f64> {
    sqlx::query_scalar(
        "SELECT COALESCE(SUM(cost), 0.0) FROM usage_daily \
         WHERE api_key_id = ? AND day >= ? AND day <= ?",
    )
    .bind(key_id)
    .bind(day_text(first_day))
    .bind(day_text(last_day))
    .fetch_one(pool)
    .await
}
