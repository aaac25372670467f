//! The injectable clock (system time, or a manual one tests set) and UTC-millisecond helpers.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serializer;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Where "now" comes from. Cheap to clone; the manual clock is shared by its clones.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    #[default]
    System,
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A manual clock starting at `start`; it only moves when `set` or `advance` is called.
    pub fn manual(start: OffsetDateTime) -> Self {
        Clock::Manual(Arc::new(AtomicI64::new(to_ms(start))))
    }

    /// Now, in UTC milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => system_ms(),
            Clock::Manual(ms) => ms.load(Ordering::SeqCst),
        }
    }

    pub fn now(&self) -> OffsetDateTime {
        from_ms(self.now_ms())
    }

    /// Sets a manual clock; a no-op on the system clock.
    pub fn set(&self, at: OffsetDateTime) {
        if let Clock::Manual(ms) = self {
            ms.store(to_ms(at), Ordering::SeqCst);
        }
    }

    /// Moves a manual clock forward; a no-op on the system clock.
    pub fn advance(&self, by: time::Duration) {
        if let Clock::Manual(ms) = self {
            ms.fetch_add(by.whole_milliseconds() as i64, Ordering::SeqCst);
        }
    }
}

/// The system clock in UTC milliseconds, read without building a calendar date (twice per
/// request: `OffsetDateTime::now_utc` computed one each time, ~4× the cost of this).
fn system_ms() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
        // A clock set before 1970.
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

pub const MS_PER_HOUR: i64 = 3_600_000;
pub const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;

pub fn to_ms(t: OffsetDateTime) -> i64 {
    let seconds = t.unix_timestamp();
    if seconds >= 0 {
        // Without the 128-bit division below (this runs twice per request).
        seconds * 1000 + i64::from(t.millisecond())
    } else {
        (t.unix_timestamp_nanos() / 1_000_000) as i64
    }
}

pub fn from_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// RFC 3339 UTC text of a millisecond timestamp, always with milliseconds so that texts sort
/// like times: `2026-11-24T05:45:02.123Z`.
pub fn rfc3339(ms: i64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'static>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    from_ms(ms)
        .format(FORMAT)
        .unwrap_or_else(|_| ms.to_string())
}

/// The UTC date (`YYYY-MM-DD`) of day `day` since the Unix epoch (`ms.div_euclid(MS_PER_DAY)`).
pub fn day_text(day: i64) -> String {
    let ms = day.saturating_mul(MS_PER_DAY);
    rfc3339(ms)
        .get(..10)
        .map_or_else(|| ms.to_string(), str::to_string)
}

/// Parses an RFC 3339 date-time into UTC milliseconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    OffsetDateTime::parse(text.trim(), &Rfc3339).ok().map(to_ms)
}

/// serde: a millisecond timestamp as RFC 3339.
pub fn ser_ms<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*ms))
}

/// serde: an optional millisecond timestamp as RFC 3339 or null.
pub fn ser_opt_ms<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.serialize_str(&rfc3339(*ms)),
        None => s.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_text_is_the_utc_date_sqlite_gives() {
        assert_eq!(day_text(0), "1970-01-01");
        assert_eq!(day_text(1), "1970-01-02");
        // 2026-12-01T23:59:59.999Z and the next millisecond.
        let ms = 1_796_169_599_999;
        assert_eq!(day_text(ms / MS_PER_DAY), "2026-12-01");
        assert_eq!(day_text((ms + 1) / MS_PER_DAY), "2026-12-02");
    }

    #[test]
    fn the_system_clock_reads_as_the_calendar_does() {
        let before = to_ms(OffsetDateTime::now_utc());
        let read = Clock::System.now_ms();
        let after = to_ms(OffsetDateTime::now_utc());
        assert!(before <= read && read <= after, "{before} {read} {after}");
    }

    #[test]
    fn milliseconds_are_the_nanoseconds_truncated() {
        for nanos in [
            0i128,
            999_999,
            1_000_000,
            1_796_169_599_999_999_999,
            -1,
            -999_999,
            -1_000_000,
            -1_000_500_000,
        ] {
            let t = OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap();
            assert_eq!(to_ms(t), (nanos / 1_000_000) as i64, "{nanos}");
            assert_eq!(to_ms(from_ms(to_ms(t))), to_ms(t), "{nanos}");
        }
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = Clock::manual(time::macros::datetime!(2026-01-01 00:00 UTC));
        let t0 = clock.now_ms();
        assert_eq!(clock.now_ms(), t0);
        clock.advance(time::Duration::hours(1));
        assert_eq!(clock.now_ms(), t0 + MS_PER_HOUR);
        assert_eq!(rfc3339(t0), "2026-01-01T00:00:00.000Z");
        assert_eq!(parse_rfc3339("2026-01-01T01:00:00+01:00"), Some(t0));
    }
}
