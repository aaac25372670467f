//! What a key has left under each of its limits, for its own `GET /v1/usage`.

use serde::Serialize;

use super::meter::{week_start_day, Spent};
use super::Limits;
use crate::clock::{rfc3339, MS_PER_DAY};

/// One set limit: its value, what is used of it, what is left, and when it starts afresh.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Standing {
    pub limit: f64,
    pub used: f64,
    pub remaining: f64,
    /// RFC 3339; None for lifetime limits and concurrency.
    pub resets_at: Option<String>,
}

/// Each set limit by its field name, from `spent` (rolled to the present).
pub fn standings(limits: &Limits, spent: &Spent) -> Vec<(&'static str, Standing)> {
    let window = spent.window.unwrap_or_default();
    let window_end = spent
        .window
        .map(|w| rfc3339(w.start.saturating_add(limits.window_ms())));
    let next_day = Some(rfc3339((spent.day + 1) * MS_PER_DAY));
    let next_week = Some(rfc3339(week_start_day(spent.week + 1) * MS_PER_DAY));
    let used = |field: &str| -> (f64, Option<String>) {
        match field {
            "rate_limit_requests" => (window.requests as f64, window_end.clone()),
            "rate_limit_tokens" => (window.tokens as f64, window_end.clone()),
            "rate_limit_cost" => (window.cost, window_end.clone()),
            "concurrency_limit" => (spent.in_flight as f64, None),
            "token_limit" => (spent.total_tokens as f64, None),
            "daily_cost_limit" => (spent.daily_cost, next_day.clone()),
            "weekly_cost_limit" => (spent.weekly_cost, next_week.clone()),
            "total_cost_limit" => (spent.total_cost, None),
            _ => (0.0, None),
        }
    };
    limits
        .entries()
        .into_iter()
        .filter(|(field, limit)| *limit > 0.0 && *field != "rate_limit_window")
        .map(|(field, limit)| {
            let (used, resets_at) = used(field);
            (
                field,
                Standing {
                    limit,
                    used,
                    remaining: (limit - used).max(0.0),
                    resets_at,
                },
            )
        })
        .collect()
}
