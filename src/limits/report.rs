//! What a key has left under each of its limits, for its own `GET /v1/usage`.

use serde::Serialize;

use super::meter::Spent;
use super::Limits;
use crate::clock::rfc3339;

/// One set limit as the key sees it: its value, what is used of it, what is left, and when
/// it starts afresh.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Remaining {
    pub limit: f64,
    pub used: f64,
    pub remaining: f64,
    /// RFC 3339; None for lifetime limits and concurrency.
    pub resets_at: Option<String>,
}

/// Each set limit by its field name, from `spent` (rolled to the present).
pub fn remaining(limits: &Limits, spent: &Spent) -> Vec<(&'static str, Remaining)> {
    spent
        .standings(limits)
        .map(|standing| {
            (
                standing.limit,
                Remaining {
                    limit: standing.max,
                    used: standing.used,
                    remaining: (standing.max - standing.used).max(0.0),
                    resets_at: standing.resets_at.map(rfc3339),
                },
            )
        })
        .collect()
}
