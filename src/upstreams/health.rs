//! One upstream's health (SPEC §12): consecutive failures, the cooldown they start (doubling
//! while it keeps failing, at most 10 minutes, or a 429's `Retry-After`), the last error.
//! Lock-free on success, which is what nearly every request reports.

use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

/// The longest cooldown, however long an upstream keeps failing.
pub const MAX_COOLDOWN: Duration = Duration::from_secs(600);

/// When failures cool an upstream (`KEYGATE_COOLDOWN_FAILS`, `KEYGATE_COOLDOWN_SECONDS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CooldownPolicy {
    pub fails: u32,
    pub base: Duration,
}

impl Default for CooldownPolicy {
    fn default() -> Self {
        CooldownPolicy {
            fails: 3,
            base: Duration::from_secs(30),
        }
    }
}

impl CooldownPolicy {
    /// How long the `failures`-th consecutive failure cools the upstream (zero: not yet).
    pub fn cooldown(&self, failures: u32) -> Duration {
        if failures < self.fails.max(1) {
            return Duration::ZERO;
        }
        let doublings = (failures - self.fails.max(1)).min(16);
        self.base.saturating_mul(1 << doublings).min(MAX_COOLDOWN)
    }
}

/// An upstream's health as the admin API and console show it (kept in memory only).
#[derive(Clone, Debug, Default, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Health {
    /// `healthy`, `cooling` (skipped until `cooling_until`) or `disabled`.
    pub state: &'static str,
    /// UTC ms.
    pub cooling_until: Option<i64>,
    pub consecutive_failures: u32,
    /// The last failure, redacted of credentials.
    pub last_error: Option<String>,
}

/// The health state of one upstream, kept with its connections.
#[derive(Debug, Default)]
pub struct HealthState {
    /// Requests sent to it, failures and cooldowns started, since it was configured as it is
    /// (for metrics).
    pub attempts_total: AtomicU64,
    pub failures_total: AtomicU64,
    pub cooldowns_total: AtomicU64,
    failures: AtomicU32,
    /// UTC ms; 0: not cooling.
    cooling_until: AtomicI64,
    last_error: Mutex<Option<String>>,
}

impl HealthState {
    /// Skipped by routing until this time (UTC ms), if later than `now`.
    pub fn cooling_until(&self, now: i64) -> Option<i64> {
        let until = self.cooling_until.load(Ordering::Relaxed);
        (until > now).then_some(until)
    }

    /// A request is sent to it.
    pub fn attempted(&self) {
        self.attempts_total.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was served: the failures are forgotten (one atomic read when there were none).
    pub fn succeeded(&self) {
        if self.failures.load(Ordering::Relaxed) != 0
            || self.cooling_until.load(Ordering::Relaxed) != 0
        {
            self.failures.store(0, Ordering::Relaxed);
            self.cooling_until.store(0, Ordering::Relaxed);
        }
    }

    /// A request failed with `error` (already redacted). Returns the end of the cooldown it
    /// started (UTC ms), if any: `retry_after` (a 429's) cools it for that long at once.
    pub fn failed(
        &self,
        now: i64,
        error: &str,
        retry_after: Option<Duration>,
        policy: &CooldownPolicy,
    ) -> Option<i64> {
        self.failures_total.fetch_add(1, Ordering::Relaxed);
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error.to_owned());
        let cooldown = match retry_after {
            Some(wait) => wait.min(MAX_COOLDOWN),
            None => policy.cooldown(failures),
        };
        if cooldown.is_zero() {
            return None;
        }
        self.cooldowns_total.fetch_add(1, Ordering::Relaxed);
        let until = now.saturating_add(cooldown.as_millis() as i64);
        self.cooling_until.fetch_max(until, Ordering::Relaxed);
        Some(until)
    }

    /// What the admin API shows.
    pub fn snapshot(&self, now: i64) -> Health {
        let cooling_until = self.cooling_until(now);
        Health {
            state: if cooling_until.is_some() {
                "cooling"
            } else {
                "healthy"
            },
            cooling_until,
            consecutive_failures: self.failures.load(Ordering::Relaxed),
            last_error: self
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cools_after_the_third_failure_doubling_up_to_ten_minutes() {
        let policy = CooldownPolicy::default();
        let health = HealthState::default();
        assert_eq!(health.failed(1_000, "a", None, &policy), None);
        assert_eq!(health.failed(1_000, "b", None, &policy), None);
        assert_eq!(health.failed(1_000, "c", None, &policy), Some(31_000));
        assert_eq!(health.cooling_until(30_999), Some(31_000));
        assert_eq!(health.cooling_until(31_000), None);
        assert_eq!(health.failed(40_000, "d", None, &policy), Some(100_000));
        assert_eq!(policy.cooldown(7), Duration::from_secs(480));
        assert_eq!(policy.cooldown(8), MAX_COOLDOWN);
        assert_eq!(policy.cooldown(1000), MAX_COOLDOWN);
        let shown = health.snapshot(50_000);
        assert_eq!(
            (
                shown.state,
                shown.consecutive_failures,
                shown.last_error.as_deref()
            ),
            ("cooling", 4, Some("d"))
        );
        health.succeeded();
        assert_eq!(health.cooling_until(50_000), None);
        assert_eq!(health.snapshot(50_000).consecutive_failures, 0);
    }

    #[test]
    fn a_retry_after_cools_at_once_for_that_long() {
        let health = HealthState::default();
        let until = health.failed(
            0,
            "429",
            Some(Duration::from_secs(7)),
            &CooldownPolicy::default(),
        );
        assert_eq!(until, Some(7_000));
        let until = health.failed(
            0,
            "429",
            Some(Duration::from_secs(9999)),
            &CooldownPolicy::default(),
        );
        assert_eq!(until, Some(600_000));
    }
}
