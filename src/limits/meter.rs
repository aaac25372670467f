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
    /// The UTC day (days since the epoch) `daily_cost` is of; `weekly_cost` is of its week.
    pub day: i64,
    pub daily_cost: f64,
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

/// One set limit: its value, what is used of it, and when that starts afresh (ms; None for
/// the lifetime limits and concurrency).
#[derive(Clone, Debug, PartialEq)]
pub struct Standing {
    pub limit: &'static str,
    pub max: f64,
    pub used: f64,
    pub resets_at: Option<i64>,
}

impl Standing {
    /// What the limit allows and what is used of it, for a refusal's message.
    fn describe(&self, window_minutes: i64) -> String {
        let (max, used) = (self.max, self.used);
        let allows = match self.limit {
            "concurrency_limit" => format!("may have {max} requests under way at once"),
            "rate_limit_requests" => format!("may make {max} requests per {window_minutes} min"),
            "rate_limit_tokens" => {
                format!("may use {max} tokens per {window_minutes} min and has used {used}")
            }
            "rate_limit_cost" => format!(
                "may spend ${max} per {window_minutes} min and has spent ${used:.6}"
            ),
            "daily_cost_limit" => {
                format!("may spend ${max} per UTC day and has spent ${used:.6} today")
            }
            "weekly_cost_limit" => format!(
                "may spend ${max} per week (from Monday 00:00 UTC) and has spent ${used:.6} this week"
            ),
            "token_limit" => format!("has used its {max} tokens"),
            _ => format!("has spent its ${max}"),
        };
        let fix = match self.resets_at {
            None if self.limit != "concurrency_limit" => "; an administrator can raise the limit",
            _ => "",
        };
        format!("this key {allows} ({}){fix}", self.limit)
    }
}

/// The request and token quotas of a key's window, when those limits are set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateQuotas {
    pub requests: Option<Quota>,
    pub tokens: Option<Quota>,
}

#[derive(Debug)]
pub struct Meter {
    spent: Mutex<Spent>,
}

impl Meter {
    pub fn new(spent: Spent) -> Self {
        Meter {
            spent: Mutex::new(spent),
        }
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
                released: false,
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
        // Only forward: a clock set back (NTP) must not give a day's allowance again.
        let day = day_of(now);
        if day > self.day {
            if week_of(day) > week_of(self.day) {
                self.weekly_cost = 0.0;
            }
            self.day = day;
            self.daily_cost = 0.0;
        }
    }

    /// Each set limit that counts something (all but `rate_limit_window`), with what is
    /// used of it and when that starts afresh. An iterator, and each limit read from its
    /// field, not by name: `check` runs on every request of a metered key.
    pub fn standings<'a>(&self, limits: &'a Limits) -> impl Iterator<Item = Standing> + 'a {
        let (l, w) = (limits, self.window.unwrap_or_default());
        let end = self.window.map(|on| on.start.saturating_add(l.window_ms()));
        let day = Some((self.day + 1) * MS_PER_DAY);
        let week = Some(week_start_day(week_of(self.day) + 1) * MS_PER_DAY);
        // (limit, its value, what is used of it, when that starts afresh)
        #[rustfmt::skip]
        let rows = [
            ("concurrency_limit", l.concurrency_limit as f64, self.in_flight as f64, None),
            ("rate_limit_requests", l.rate_limit_requests as f64, w.requests as f64, end),
            ("rate_limit_tokens", l.rate_limit_tokens as f64, w.tokens as f64, end),
            ("rate_limit_cost", l.rate_limit_cost, w.cost, end),
            ("daily_cost_limit", l.daily_cost_limit, self.daily_cost, day),
            ("weekly_cost_limit", l.weekly_cost_limit, self.weekly_cost, week),
            ("token_limit", l.token_limit as f64, self.total_tokens as f64, None),
            ("total_cost_limit", l.total_cost_limit, self.total_cost, None),
        ];
        rows.into_iter()
            .filter(|&(_, max, _, _)| max > 0.0)
            .map(|(limit, max, used, resets_at)| Standing {
                limit,
                max,
                used,
                resets_at,
            })
    }

    /// The first limit a new request at `now` would break, checked with what is already
    /// spent (a request under way may overshoot a token or cost limit by its own usage), in
    /// the order of `standings`.
    fn check(&self, limits: &Limits, now: i64) -> Result<(), Exceeded> {
        let Some(over) = self
            .standings(limits)
            .find(|standing| standing.used >= standing.max)
        else {
            return Ok(());
        };
        let retry_after = match over.limit {
            // A slot frees when a request ends: soon, but nobody knows when.
            "concurrency_limit" => Some(1),
            _ => over
                .resets_at
                .map(|at| ((at - now).max(1) as u64).div_ceil(1000)),
        };
        Err(Exceeded {
            limit: over.limit,
            message: over.describe(limits.rate_limit_window),
            retry_after,
        })
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
        if week_of(day) == week_of(self.day) {
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

/// A request under way: holds its concurrency slot until it is finished (its usage added
/// and the slot given back under one lock) or dropped (the client left, the upstream failed).
#[derive(Debug)]
pub struct Ticket {
    meter: Arc<Meter>,
    started: i64,
    released: bool,
}

impl Ticket {
    pub fn finish(mut self, tokens: i64, cost: f64) {
        let mut spent = self.meter.lock();
        spent.add(self.started, tokens, cost);
        spent.in_flight -= 1;
        drop(spent);
        self.released = true;
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !self.released {
            self.meter.lock().in_flight -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: i64 = 60_000;
    /// 2026-12-01T00:00:00Z, a Tuesday.
    const T0: i64 = 1_796_083_200_000;

    fn meter() -> Arc<Meter> {
        Arc::new(Meter::new(Spent::default()))
    }

    #[test]
    fn a_clock_set_back_over_midnight_gives_no_new_day() {
        let limits = Limits {
            daily_cost_limit: 1.0,
            ..Limits::default()
        };
        let meter = meter();
        meter.admit(&limits, T0).unwrap().ticket.finish(0, 1.0);
        assert_eq!(
            meter.admit(&limits, T0 - MS_PER_DAY).unwrap_err().limit,
            "daily_cost_limit"
        );
        assert!(meter.admit(&limits, T0 + MS_PER_DAY).is_ok());
    }

    #[test]
    fn each_standing_is_its_own_limit_and_use() {
        // Every limit a different value, every use a different one.
        let limits = Limits {
            rate_limit_window: 60,
            rate_limit_requests: 11,
            rate_limit_tokens: 12,
            rate_limit_cost: 13.0,
            concurrency_limit: 14,
            token_limit: 15,
            daily_cost_limit: 16.0,
            weekly_cost_limit: 17.0,
            total_cost_limit: 18.0,
        };
        let spent = Spent {
            window: Some(Window {
                start: T0,
                requests: 1,
                tokens: 2,
                cost: 3.0,
            }),
            day: day_of(T0),
            daily_cost: 4.0,
            weekly_cost: 5.0,
            total_tokens: 6,
            total_cost: 7.0,
            in_flight: 8,
        };
        let used = |limit: &str| match limit {
            "rate_limit_requests" => 1.0,
            "rate_limit_tokens" => 2.0,
            "rate_limit_cost" => 3.0,
            "daily_cost_limit" => 4.0,
            "weekly_cost_limit" => 5.0,
            "token_limit" => 6.0,
            "total_cost_limit" => 7.0,
            "concurrency_limit" => 8.0,
            other => panic!("{other} counts nothing"),
        };
        let standings: Vec<Standing> = spent.standings(&limits).collect();
        assert_eq!(standings.len(), Limits::FIELDS.len() - 1);
        for standing in &standings {
            assert_eq!(limits.get(standing.limit), Some(standing.max));
            assert_eq!(standing.used, used(standing.limit), "{}", standing.limit);
        }
        // A limit of 0 is no limit.
        let none = Limits {
            token_limit: 0,
            ..limits
        };
        assert!(spent.standings(&none).all(|s| s.limit != "token_limit"));
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
