//! One key's meter: what it has spent in its rate window, today, this week and ever, and its
//! requests under way. Admission checks and counts under one short lock, so concurrent
//! requests never both take the last unit of a limit.

use std::sync::{Arc, Mutex, MutexGuard};

use super::{Exceeded, Limits};
use crate::clock::MS_PER_DAY;

/// The rate window under way: it started at `start` (the first request after the previous
/// one ended) and counts what the requests that started in it spent.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Window {
    pub start: i64,
    pub requests: i64,
    pub tokens: i64,
    pub cost: f64,
}

/// What a key has spent, as the meter starts from it (rebuilt from the store) and keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Spent {
    pub window: Option<Window>,
    /// The UTC day (days since the epoch) `daily_cost` is of.
    pub day: i64,
    pub daily_cost: f64,
    /// The week (`week_of`) `weekly_cost` is of.
    pub week: i64,
    pub weekly_cost: f64,
    pub total_tokens: i64,
    pub total_cost: f64,
    /// Requests admitted and not yet over.
    pub in_flight: i64,
}

/// The week (Monday 00:00 UTC onwards) of UTC day `day`: 1970-01-01 was a Thursday.
pub fn week_of(day: i64) -> i64 {
    (day + 3).div_euclid(7)
}

/// The first UTC day of week `week`.
pub fn week_start_day(week: i64) -> i64 {
    week * 7 - 3
}

pub fn day_of(ms: i64) -> i64 {
    ms.div_euclid(MS_PER_DAY)
}

/// OpenAI's `x-ratelimit-*` numbers of one counted quantity: the limit, what is left, and the
/// milliseconds until the window starts afresh.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Quota {
    pub limit: i64,
    pub remaining: i64,
    pub reset_ms: i64,
}

/// The request and token quotas of a key's window, when those limits are set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateQuotas {
    pub requests: Option<Quota>,
    pub tokens: Option<Quota>,
}

#[derive(Debug)]
pub struct Meter {
    key_id: i64,
    spent: Mutex<Spent>,
}

impl Meter {
    pub fn new(key_id: i64, spent: Spent) -> Self {
        Meter {
            key_id,
            spent: Mutex::new(spent),
        }
    }

    pub fn key_id(&self) -> i64 {
        self.key_id
    }

    fn lock(&self) -> MutexGuard<'_, Spent> {
        // The lock guards plain numbers: a panic elsewhere leaves them usable.
        self.spent.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the key has spent as of `now` under `limits` (an ended window is gone).
    pub fn spent(&self, limits: &Limits, now: i64) -> Spent {
        let mut spent = self.lock();
        spent.roll(limits, now);
        *spent
    }

    /// The window under way, for the store (written with the call-log rows, read at start).
    pub fn window(&self) -> Option<Window> {
        self.lock().window
    }

    /// Admits a request started at `now`, or names the limit it is over. An admitted request
    /// counts in the window at once and holds a concurrency slot until its `Ticket` drops.
    pub fn admit(self: &Arc<Self>, limits: &Limits, now: i64) -> Result<Admitted, Exceeded> {
        let mut spent = self.lock();
        spent.roll(limits, now);
        spent.check(limits, now)?;
        if limits.windowed() {
            spent
                .window
                .get_or_insert(Window {
                    start: now,
                    ..Window::default()
                })
                .requests += 1;
        }
        spent.in_flight += 1;
        let quotas = spent.quotas(limits, now);
        drop(spent);
        Ok(Admitted {
            ticket: Ticket {
                meter: self.clone(),
                started: now,
            },
            quotas,
        })
    }
}

impl Spent {
    /// Ends a window past its length, and starts the day's and week's sums afresh.
    pub fn roll(&mut self, limits: &Limits, now: i64) {
        if let Some(window) = self.window {
            if !limits.windowed() || now >= window.start.saturating_add(limits.window_ms()) {
                self.window = None;
            }
        }
        let day = day_of(now);
        if day != self.day {
            self.day = day;
            self.daily_cost = 0.0;
        }
        let week = week_of(day);
        if week != self.week {
            self.week = week;
            self.weekly_cost = 0.0;
        }
    }

    /// The first limit a new request at `now` would break, checked with what is already
    /// spent (a request under way may overshoot a token or cost limit by its own usage).
    fn check(&self, limits: &Limits, now: i64) -> Result<(), Exceeded> {
        let window_ends = self
            .window
            .map(|w| w.start.saturating_add(limits.window_ms()));
        let in_secs = |at: i64| Some(((at - now).max(1) as u64).div_ceil(1000));
        let window_retry = window_ends.and_then(in_secs);
        let minutes = limits.rate_limit_window;
        let window = self.window.unwrap_or_default();
        let over = |limit: &'static str, message: String, retry_after: Option<u64>| {
            Err(Exceeded {
                limit,
                message,
                retry_after,
            })
        };
        if limits.concurrency_limit > 0 && self.in_flight >= limits.concurrency_limit {
            return over(
                "concurrency_limit",
                format!(
                    "this key may have {} requests under way at once (concurrency_limit); wait for one to finish",
                    limits.concurrency_limit
                ),
                Some(1),
            );
        }
        if limits.rate_limit_requests > 0 && window.requests >= limits.rate_limit_requests {
            return over(
                "rate_limit_requests",
                format!(
                    "this key may make {} requests per {minutes} min (rate_limit_requests)",
                    limits.rate_limit_requests
                ),
                window_retry,
            );
        }
        if limits.rate_limit_tokens > 0 && window.tokens >= limits.rate_limit_tokens {
            return over(
                "rate_limit_tokens",
                format!(
                    "this key may use {} tokens per {minutes} min (rate_limit_tokens) and has used {}",
                    limits.rate_limit_tokens, window.tokens
                ),
                window_retry,
            );
        }
        if limits.rate_limit_cost > 0.0 && window.cost >= limits.rate_limit_cost {
            return over(
                "rate_limit_cost",
                format!(
                    "this key may spend ${} per {minutes} min (rate_limit_cost) and has spent ${:.6}",
                    limits.rate_limit_cost, window.cost
                ),
                window_retry,
            );
        }
        if limits.daily_cost_limit > 0.0 && self.daily_cost >= limits.daily_cost_limit {
            return over(
                "daily_cost_limit",
                format!(
                    "this key may spend ${} per UTC day (daily_cost_limit) and has spent ${:.6} today",
                    limits.daily_cost_limit, self.daily_cost
                ),
                in_secs((self.day + 1) * MS_PER_DAY),
            );
        }
        if limits.weekly_cost_limit > 0.0 && self.weekly_cost >= limits.weekly_cost_limit {
            return over(
                "weekly_cost_limit",
                format!(
                    "this key may spend ${} per week (weekly_cost_limit, weeks start Monday 00:00 UTC) and has spent ${:.6} this week",
                    limits.weekly_cost_limit, self.weekly_cost
                ),
                in_secs(week_start_day(self.week + 1) * MS_PER_DAY),
            );
        }
        if limits.token_limit > 0 && self.total_tokens >= limits.token_limit {
            return over(
                "token_limit",
                format!(
                    "this key has used its {} tokens (token_limit); an administrator can raise the limit",
                    limits.token_limit
                ),
                None,
            );
        }
        if limits.total_cost_limit > 0.0 && self.total_cost >= limits.total_cost_limit {
            return over(
                "total_cost_limit",
                format!(
                    "this key has spent its ${} (total_cost_limit); an administrator can raise the limit",
                    limits.total_cost_limit
                ),
                None,
            );
        }
        Ok(())
    }

    /// The window's request and token quotas at `now`.
    pub fn quotas(&self, limits: &Limits, now: i64) -> RateQuotas {
        if !limits.windowed() {
            return RateQuotas::default();
        }
        let window = self.window.unwrap_or(Window {
            start: now,
            ..Window::default()
        });
        let reset_ms = (window.start.saturating_add(limits.window_ms()) - now).max(0);
        let quota = |limit: i64, used: i64| {
            (limit > 0).then_some(Quota {
                limit,
                remaining: (limit - used).max(0),
                reset_ms,
            })
        };
        RateQuotas {
            requests: quota(limits.rate_limit_requests, window.requests),
            tokens: quota(limits.rate_limit_tokens, window.tokens),
        }
    }

    /// Adds a finished request's usage: to the window, day and week it started in (if they
    /// are still the current ones) and to the lifetime sums.
    fn add(&mut self, started: i64, tokens: i64, cost: f64) {
        if let Some(window) = self.window.as_mut().filter(|w| started >= w.start) {
            window.tokens += tokens;
            window.cost += cost;
        }
        let day = day_of(started);
        if day == self.day {
            self.daily_cost += cost;
        }
        if week_of(day) == self.week {
            self.weekly_cost += cost;
        }
        self.total_tokens += tokens;
        self.total_cost += cost;
    }
}

/// An admitted request: its slot, and the quotas to tell the client.
#[derive(Debug)]
pub struct Admitted {
    pub ticket: Ticket,
    pub quotas: RateQuotas,
}

/// A request under way: holds its concurrency slot until dropped (the response ended, or
/// the client left); `finish` adds what it spent first.
#[derive(Debug)]
pub struct Ticket {
    meter: Arc<Meter>,
    started: i64,
}

impl Ticket {
    pub fn finish(self, tokens: i64, cost: f64) {
        self.meter.lock().add(self.started, tokens, cost);
    }

    pub fn meter(&self) -> &Arc<Meter> {
        &self.meter
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.meter.lock().in_flight -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    /// 2026-12-01T00:00:00Z, a Tuesday.
    const T0: i64 = 1_796_083_200_000;

    fn meter() -> Arc<Meter> {
        Arc::new(Meter::new(1, Spent::default()))
    }

    #[test]
    fn weeks_start_on_monday() {
        let tuesday = day_of(T0);
        assert_eq!(week_start_day(week_of(tuesday)), tuesday - 1);
        assert_eq!(week_of(tuesday - 1), week_of(tuesday));
        assert_eq!(week_of(tuesday - 2), week_of(tuesday) - 1);
    }

    #[test]
    fn the_request_window_counts_from_the_first_request_and_ends_after_its_length() {
        let limits = Limits {
            rate_limit_window: 1,
            rate_limit_requests: 2,
            ..Limits::default()
        };
        let meter = meter();
        let first = meter.admit(&limits, T0).unwrap();
        assert_eq!(
            first.quotas.requests,
            Some(Quota {
                limit: 2,
                remaining: 1,
                reset_ms: MIN
            })
        );
        meter.admit(&limits, T0 + 10_000).unwrap();
        let refused = meter.admit(&limits, T0 + MIN - 1).unwrap_err();
        assert_eq!(refused.limit, "rate_limit_requests");
        assert_eq!(refused.retry_after, Some(1));
        let refused = meter.admit(&limits, T0 + 20_000).unwrap_err();
        assert_eq!(refused.retry_after, Some(40));
        // The window ends a minute after its first request: a new one starts.
        let again = meter.admit(&limits, T0 + MIN).unwrap();
        assert_eq!(again.quotas.requests.unwrap().remaining, 1);
        assert_eq!(meter.window().unwrap().start, T0 + MIN);
    }

    #[test]
    fn the_concurrency_slot_is_held_until_the_ticket_drops() {
        let limits = Limits {
            concurrency_limit: 1,
            ..Limits::default()
        };
        let meter = meter();
        let ticket = meter.admit(&limits, T0).unwrap().ticket;
        assert_eq!(
            meter.admit(&limits, T0).unwrap_err().limit,
            "concurrency_limit"
        );
        ticket.finish(10, 0.0);
        meter.admit(&limits, T0).unwrap();
    }

    #[test]
    fn tokens_and_cost_are_checked_with_what_is_already_spent() {
        let limits = Limits {
            rate_limit_window: 60,
            rate_limit_tokens: 100,
            token_limit: 1_000,
            daily_cost_limit: 1.0,
            ..Limits::default()
        };
        let meter = meter();
        // A request under way may overshoot by its own usage.
        meter.admit(&limits, T0).unwrap().ticket.finish(150, 0.5);
        assert_eq!(
            meter.admit(&limits, T0 + 1).unwrap_err().limit,
            "rate_limit_tokens"
        );
        // The next window: the tokens are forgotten, the day's cost is not.
        meter
            .admit(&limits, T0 + 60 * MIN)
            .unwrap()
            .ticket
            .finish(10, 0.6);
        let refused = meter.admit(&limits, T0 + 60 * MIN + 1).unwrap_err();
        assert_eq!(refused.limit, "daily_cost_limit");
        // Until midnight UTC.
        assert_eq!(
            refused.retry_after,
            Some(((MS_PER_DAY - 60 * MIN - 1) as u64).div_ceil(1000))
        );
        let tomorrow = meter.admit(&limits, T0 + MS_PER_DAY).unwrap();
        tomorrow.ticket.finish(900, 0.0);
        // A later window of the same day: the lifetime tokens are over.
        let refused = meter
            .admit(&limits, T0 + MS_PER_DAY + 60 * MIN)
            .unwrap_err();
        assert_eq!(refused.limit, "token_limit");
        assert_eq!(refused.retry_after, None);
    }

    #[test]
    fn usage_of_a_request_from_an_ended_window_or_day_is_not_added_to_the_new_one() {
        let limits = Limits {
            rate_limit_window: 1,
            rate_limit_cost: 1.0,
            weekly_cost_limit: 10.0,
            ..Limits::default()
        };
        let meter = meter();
        let old = meter.admit(&limits, T0 - 1).unwrap().ticket;
        meter.admit(&limits, T0 + MIN).unwrap();
        old.finish(0, 5.0);
        let spent = meter.spent(&limits, T0 + MIN);
        assert_eq!(spent.window.unwrap().cost, 0.0);
        assert_eq!(spent.daily_cost, 0.0);
        // Monday is the same week as Tuesday.
        assert_eq!(spent.weekly_cost, 5.0);
        assert_eq!(spent.total_cost, 5.0);
    }
}
