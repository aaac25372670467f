//! Failed admin authentications counted per client IP (IPv6 per /64) and in total, in
//! one-minute windows: past the limits, 429 with Retry-After; logged once per window.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::ApiError;

pub const WINDOW: Duration = Duration::from_secs(60);
/// Client addresses tracked at once; past it, new addresses are held by the total limit only.
const MAX_TRACKED: usize = 10_000;

/// A burst of failed authentications that just reached a limit: reported once per window
/// (the audit log gets one entry per burst, never one per failed try).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Burst {
    /// This address reached its failures per window.
    Address { failures: u32 },
    /// All addresses together went over the total per window.
    Total { failures: u32 },
}

pub struct Throttle {
    per_ip: u32,
    total: u32,
    state: Mutex<State>,
}

struct State {
    ips: HashMap<IpAddr, Window>,
    total: Window,
}

/// Failures since `start`, and attempts refused unchecked since the limit was reached.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    failures: u32,
    refused: u32,
}

impl Window {
    fn new(now: Instant) -> Self {
        Window {
            start: now,
            failures: 0,
            refused: 0,
        }
    }

    /// Starts a new window if this one is over; returns how many attempts the old one refused.
    fn roll(&mut self, now: Instant) -> u32 {
        if now.saturating_duration_since(self.start) < WINDOW {
            return 0;
        }
        let refused = self.refused;
        *self = Window::new(now);
        refused
    }

    /// Whole seconds until the window ends, at least 1.
    fn retry_after(&self, now: Instant) -> u64 {
        let left = (self.start + WINDOW).saturating_duration_since(now);
        (left.as_millis().div_ceil(1000) as u64).max(1)
    }
}

impl Throttle {
    pub fn new(per_ip: u32, total: u32) -> Self {
        Throttle {
            per_ip,
            total,
            state: Mutex::new(State {
                ips: HashMap::new(),
                total: Window::new(Instant::now()),
            }),
        }
    }

    /// Before checking a credential: 429 when `ip` has used up its failures in this window.
    pub fn admit(&self, ip: IpAddr, now: Instant) -> Result<(), ApiError> {
        let Ok(mut state) = self.state.lock() else {
            return Ok(());
        };
        let Some(window) = state.ips.get_mut(&bucket(ip)) else {
            return Ok(());
        };
        log_refused(Some(ip), window.roll(now));
        if window.failures < self.per_ip {
            return Ok(());
        }
        window.refused += 1;
        Err(too_many(
            "Too many failed admin authentications from this address",
            window.retry_after(now),
        ))
    }

    /// After a wrong credential: counts it; 429 instead of 401 when this address or all of them
    /// together are now over their limit. Also says when this failure made a burst reach a limit.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> (ApiError, Option<Burst>) {
        let Ok(mut state) = self.state.lock() else {
            return (ApiError::AdminAuth, None);
        };
        let mut burst = None;
        let State { ips, total } = &mut *state;
        log_refused(None, total.roll(now));
        total.failures = total.failures.saturating_add(1);
        if total.failures == self.total + 1 {
            burst = Some(Burst::Total {
                failures: total.failures,
            });
            tracing::warn!(
                limit = self.total,
                "admin authentication: over {} failures in {}s from all addresses; wrong attempts get 429 until the window ends",
                self.total,
                WINDOW.as_secs()
            );
        }
        let key = bucket(ip);
        if !ips.contains_key(&key) && ips.len() >= MAX_TRACKED {
            ips.retain(|_, w| now.saturating_duration_since(w.start) < WINDOW);
        }
        let window = if ips.len() < MAX_TRACKED || ips.contains_key(&key) {
            let window = ips.entry(key).or_insert_with(|| Window::new(now));
            log_refused(Some(ip), window.roll(now));
            window.failures = window.failures.saturating_add(1);
            if window.failures == self.per_ip {
                burst = burst.or(Some(Burst::Address {
                    failures: window.failures,
                }));
                tracing::warn!(
                    %ip,
                    "admin authentication: {} failures in {}s from this address; it gets 429 until the window ends",
                    self.per_ip,
                    WINDOW.as_secs()
                );
            } else if window.failures < self.per_ip {
                tracing::debug!(%ip, failures = window.failures, "admin authentication failed");
            }
            Some(*window)
        } else {
            None
        };
        if total.failures > self.total {
            total.refused += 1;
            let error = too_many(
                "Too many failed admin authentications; the right token still works",
                total.retry_after(now),
            );
            return (error, burst);
        }
        let error = match window {
            Some(window) if window.failures > self.per_ip => too_many(
                "Too many failed admin authentications from this address",
                window.retry_after(now),
            ),
            _ => ApiError::AdminAuth,
        };
        (error, burst)
    }
}

/// The count of a throttled window, logged once when it ends (at the next attempt).
fn log_refused(ip: Option<IpAddr>, refused: u32) {
    if refused == 0 {
        return;
    }
    match ip {
        Some(ip) => tracing::info!(%ip, refused, "admin authentication: attempts refused with 429 from this address in the last window"),
        None => tracing::info!(refused, "admin authentication: wrong attempts refused with 429 over the total limit in the last window"),
    }
}

/// IPv6 clients usually hold a whole /64: count them as one.
fn bucket(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(prefix.into())
        }
        v4 => v4,
    }
}

fn too_many(message: &str, retry_after: u64) -> ApiError {
    ApiError::TooManyRequests {
        message: message.into(),
        retry_after,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn is_429(err: &ApiError) -> bool {
        matches!(err, ApiError::TooManyRequests { .. })
    }

    #[test]
    fn an_address_is_refused_after_its_failures_until_the_window_ends() {
        let throttle = Throttle::new(3, 100);
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert!(throttle.admit(a, t0).is_ok());
            assert!(matches!(throttle.failed(a, t0).0, ApiError::AdminAuth));
        }
        let refused = throttle.admit(a, t0 + Duration::from_secs(20)).unwrap_err();
        assert!(
            matches!(
                refused,
                ApiError::TooManyRequests {
                    retry_after: 40,
                    ..
                }
            ),
            "{refused:?}"
        );
        assert!(throttle.admit(ip("192.0.2.2"), t0).is_ok());
        assert!(throttle.admit(a, t0 + WINDOW).is_ok(), "a new window");
    }

    #[test]
    fn past_the_total_wrong_attempts_get_429_from_anywhere() {
        let throttle = Throttle::new(10, 4);
        let t0 = Instant::now();
        for n in 0..4 {
            let from = ip(&format!("192.0.2.{n}"));
            assert!(matches!(throttle.failed(from, t0).0, ApiError::AdminAuth));
        }
        let fresh = ip("198.51.100.1");
        assert!(
            throttle.admit(fresh, t0).is_ok(),
            "the right token may still pass"
        );
        let (error, burst) = throttle.failed(fresh, t0);
        assert!(is_429(&error));
        assert_eq!(burst, Some(Burst::Total { failures: 5 }), "reported once");
        assert_eq!(throttle.failed(fresh, t0).1, None);
        assert!(matches!(
            throttle.failed(fresh, t0 + WINDOW).0,
            ApiError::AdminAuth
        ));
    }

    #[test]
    fn ipv6_addresses_count_per_64() {
        let throttle = Throttle::new(2, 100);
        let t0 = Instant::now();
        throttle.failed(ip("2001:db8::1"), t0);
        throttle.failed(ip("2001:db8::2"), t0);
        assert!(throttle.admit(ip("2001:db8::3"), t0).is_err());
        assert!(throttle.admit(ip("2001:db8:0:1::1"), t0).is_ok());
        assert_eq!(bucket(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }
}
