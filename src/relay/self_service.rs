//! A key's view of itself, answered by keygate with the key's own credential: `GET /v1/usage`
//! (limits, what is left, expiry, 30 days of usage), and the legacy billing endpoints chat
//! front-ends read a balance from (`/v1/dashboard/billing/subscription` and `/usage`).

use axum::http::request::Parts;
use axum::http::{Method, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use hyper::Response;
use serde_json::{json, Map, Value};

use super::auth::AuthedKey;
use super::ReplyBody;
use crate::app::AppState;
use crate::clock::{rfc3339, MS_PER_DAY};
use crate::error::ApiError;
use crate::key_ops::KeyView;
use crate::limits::meter::day_of;
use crate::limits::report;
use crate::store;

const USAGE: &str = "/v1/usage";
const SUBSCRIPTION: &str = "/v1/dashboard/billing/subscription";
const BILLING_USAGE: &str = "/v1/dashboard/billing/usage";
/// Days of usage `/v1/usage` lists (today included).
const USAGE_DAYS: i64 = 30;
/// The `hard_limit_usd` shown for a key without a total cost limit (as other gateways do).
const UNLIMITED_USD: f64 = 100_000_000.0;
/// The longest date range `/v1/dashboard/billing/usage` sums.
const MAX_RANGE_DAYS: i64 = 3_660;

/// Whether keygate answers this request itself.
pub fn serves(method: &Method, path: &str) -> bool {
    method == Method::GET && matches!(path, USAGE | SUBSCRIPTION | BILLING_USAGE)
}

/// The answer to a request `serves` said yes to, from the key's row, its meter and the
/// usage rollup at `now`.
pub async fn answer(
    state: &AppState,
    key: &AuthedKey,
    parts: &Parts,
    now: i64,
) -> Result<Response<ReplyBody>, ApiError> {
    let row = state.keyring.get(key.id).await?;
    let body = match parts.uri.path() {
        USAGE => usage(state, key, &KeyView::new(&row, now), now).await?,
        SUBSCRIPTION => subscription(&row.limits, row.expires_at),
        _ => billing_usage(state, key.id, parts.uri.query(), row.total_cost).await?,
    };
    Ok((StatusCode::OK, Json(body))
        .into_response()
        .map(ReplyBody::Local))
}

async fn usage(
    state: &AppState,
    key: &AuthedKey,
    view: &KeyView,
    now: i64,
) -> Result<Value, ApiError> {
    let today = day_of(now);
    let mut spent = match state.keyring.meters.get(key.id) {
        Some(meter) => meter.spent(&view.limits, now),
        None => store::usage::spent(&state.pool, key.id, today).await?,
    };
    spent.roll(&view.limits, now);
    let remaining: Map<String, Value> = report::remaining(&view.limits, &spent)
        .into_iter()
        .map(|(field, standing)| (field.to_string(), json!(standing)))
        .collect();
    let daily = store::usage::per_day(&state.pool, key.id, today - (USAGE_DAYS - 1), today).await?;
    Ok(json!({
        "object": "key_usage",
        "key": {
            "id": view.id,
            "name": view.name,
            "key_preview": view.key_preview,
            "status": view.status,
            "expires_at": view.expires_at.map(rfc3339),
            "expires_in_seconds": view.expires_in_seconds,
            "expiration_mode": view.expiration_mode,
        },
        "limits": view.limits,
        "remaining": remaining,
        "usage": {
            "usage_count": view.usage_count,
            "total_tokens_used": spent.total_tokens,
            "total_cost": spent.total_cost,
            "daily_cost": spent.daily_cost,
            "weekly_cost": spent.weekly_cost,
        },
        "daily": daily,
    }))
}

/// OpenAI's old subscription object: the total cost limit as the hard limit, the expiry as
/// `access_until`.
fn subscription(limits: &crate::limits::Limits, expires_at: Option<i64>) -> Value {
    let hard_limit = if limits.total_cost_limit > 0.0 {
        limits.total_cost_limit
    } else {
        UNLIMITED_USD
    };
    json!({
        "object": "billing_subscription",
        "has_payment_method": true,
        "canceled": false,
        "soft_limit_usd": hard_limit,
        "hard_limit_usd": hard_limit,
        "system_hard_limit_usd": hard_limit,
        "access_until": expires_at.map_or(0, |at| at.div_euclid(1000)),
        "plan": { "id": "keygate", "title": "keygate" },
    })
}

/// OpenAI's old usage object, in cents: the cost from `start_date` to before `end_date`
/// (`YYYY-MM-DD`, UTC) when given, else the key's lifetime cost.
async fn billing_usage(
    state: &AppState,
    key_id: i64,
    query: Option<&str>,
    lifetime_cost: f64,
) -> Result<Value, ApiError> {
    let mut start = None;
    let mut end = None;
    for (name, value) in query
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
    {
        match name {
            "start_date" => start = Some(date("start_date", value)?),
            "end_date" => end = Some(date("end_date", value)?),
            _ => {}
        }
    }
    let cost = match (start, end) {
        (None, None) => lifetime_cost,
        (Some(first), Some(end)) if end > first && end - first <= MAX_RANGE_DAYS => {
            store::usage::cost_between(&state.pool, key_id, first, end - 1).await?
        }
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "end_date",
                format!("must be after start_date, at most {MAX_RANGE_DAYS} days later"),
            ))
        }
        (None, Some(_)) => {
            return Err(ApiError::invalid(
                "start_date",
                "give start_date with end_date (YYYY-MM-DD)",
            ))
        }
        (Some(_), None) => {
            return Err(ApiError::invalid(
                "end_date",
                "give end_date with start_date (YYYY-MM-DD, not included)",
            ))
        }
    };
    Ok(json!({ "object": "list", "total_usage": cost * 100.0 }))
}

/// A `YYYY-MM-DD` date as UTC days since the epoch.
fn date(field: &str, text: &str) -> Result<i64, ApiError> {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] =
        time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(text, FORMAT)
        .map(|date| {
            let midnight = date.midnight().assume_utc();
            crate::clock::to_ms(midnight).div_euclid(MS_PER_DAY)
        })
        .map_err(|_| ApiError::invalid(field, "must be a date like 2026-12-01"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_utc_days() {
        assert_eq!(date("start_date", "1970-01-02").unwrap(), 1);
        assert_eq!(date("start_date", "2026-12-01").unwrap(), 20_788);
        assert!(date("start_date", "2026-13-01").is_err());
        assert!(date("start_date", "x").is_err());
    }
}
