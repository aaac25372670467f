//! OpenAI's `x-ratelimit-*` response headers, from a key's window quotas.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use bytes::BytesMut;

use super::meter::RateQuotas;

/// A quota's headers: its limit, what remains and when it resets.
const PER_QUOTA: usize = 3;

const REQUESTS: [HeaderName; PER_QUOTA] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
];
const TOKENS: [HeaderName; PER_QUOTA] = [
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

/// How many headers `apply` may add to an answer.
pub const ADDED: usize = 2 * PER_QUOTA;

/// Sets the key's quotas on a response. When the key has a window, the upstream's own
/// `x-ratelimit-*` headers (which describe keygate's upstream account, not this key) go:
/// `insert` replaces them, and those of a quota the key does not have are removed. On every
/// response of a metered key, so the values are formatted without `String`s, into one buffer
/// that they share (one allocation for all of them, not one each).
pub fn apply(headers: &mut HeaderMap, quotas: &RateQuotas) {
    if quotas.requests.is_none() && quotas.tokens.is_none() {
        return;
    }
    headers.reserve(ADDED);
    // Each value is split off the front of this buffer: they all share its one allocation.
    let mut text = BytesMut::with_capacity(ADDED * MAX_VALUE);
    for (names, quota) in [(&REQUESTS, quotas.requests), (&TOKENS, quotas.tokens)] {
        let Some(quota) = quota else {
            for name in names {
                headers.remove(name);
            }
            continue;
        };
        let (mut limit, mut remaining) = (itoa::Buffer::new(), itoa::Buffer::new());
        let mut reset = [0u8; MAX_VALUE];
        let reset_len = write_duration(&mut reset, quota.reset_ms);
        let values = [
            limit.format(quota.limit).as_bytes(),
            remaining.format(quota.remaining).as_bytes(),
            &reset[..reset_len],
        ];
        for (name, value) in names.iter().zip(values) {
            text.extend_from_slice(value);
            // SAFETY: `itoa`'s digits and sign, and `write_duration`'s digits and unit
            // letters: ASCII, so UTF-8 (the contract), and valid in a header value (which
            // the checked constructor would have tested byte by byte on every response).
            let value = unsafe { HeaderValue::from_maybe_shared_unchecked(text.split().freeze()) };
            headers.insert(name.clone(), value);
        }
    }
}

/// The longest value written: an i64's digits and sign, or `write_duration`'s text.
const MAX_VALUE: usize = 32;

/// A duration as OpenAI writes it: `20ms`, `59s`, `6m0s`, `1h0m0s` (whole seconds rounded up).
pub fn duration(ms: i64) -> String {
    let mut text = [0u8; MAX_VALUE];
    let len = write_duration(&mut text, ms);
    String::from_utf8_lossy(&text[..len]).into_owned()
}

/// Writes `duration`'s text into `out` (32 bytes hold any i64's); returns its length. Digits
/// go through `itoa`: `write!` cost ~1k instructions per response here.
fn write_duration(out: &mut [u8; MAX_VALUE], ms: i64) -> usize {
    let mut len = 0;
    let mut put = |text: &[u8]| {
        out[len..len + text.len()].copy_from_slice(text);
        len += text.len();
    };
    let mut digits = itoa::Buffer::new();
    if ms < 1000 {
        put(digits.format(ms.max(0)).as_bytes());
        put(b"ms");
    } else {
        let secs = ms / 1000 + i64::from(ms % 1000 != 0);
        let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
        if h > 0 {
            put(digits.format(h).as_bytes());
            put(b"h");
        }
        if h > 0 || m > 0 {
            put(digits.format(m).as_bytes());
            put(b"m");
        }
        put(digits.format(s).as_bytes());
        put(b"s");
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::meter::Quota;

    #[test]
    fn durations_read_like_openai_s() {
        assert_eq!(duration(20), "20ms");
        assert_eq!(duration(1_000), "1s");
        assert_eq!(duration(59_001), "1m0s");
        assert_eq!(duration(360_000), "6m0s");
        assert_eq!(duration(3_600_000), "1h0m0s");
        assert_eq!(duration(-5), "0ms");
        assert_eq!(duration(i64::MAX), "2562047788015h12m56s");
    }

    #[test]
    fn the_key_s_quotas_replace_the_upstream_s() {
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-limit-tokens", HeaderValue::from(90_000));
        headers.insert("x-ratelimit-limit-requests", HeaderValue::from(5_000));
        headers.append("x-ratelimit-limit-requests", HeaderValue::from(6_000));
        let quota = Quota {
            limit: 10,
            remaining: 9,
            reset_ms: 60_000,
        };
        apply(
            &mut headers,
            &RateQuotas {
                requests: Some(quota),
                tokens: None,
            },
        );
        let limits: Vec<_> = headers
            .get_all("x-ratelimit-limit-requests")
            .iter()
            .collect();
        assert_eq!(limits, ["10"], "every upstream value replaced");
        assert_eq!(headers["x-ratelimit-remaining-requests"], "9");
        assert_eq!(headers["x-ratelimit-reset-requests"], "1m0s");
        assert!(headers.get("x-ratelimit-limit-tokens").is_none());
        // Both quotas, and the tokens' alone: each value in its own header.
        let requests = Quota {
            limit: 1_000_000_000,
            remaining: 999_907_596,
            reset_ms: 3_024_000,
        };
        let tokens = Quota {
            limit: 7,
            remaining: -1,
            reset_ms: 20,
        };
        apply(
            &mut headers,
            &RateQuotas {
                requests: Some(requests),
                tokens: Some(tokens),
            },
        );
        let shown: Vec<_> = [&REQUESTS, &TOKENS]
            .into_iter()
            .flatten()
            .map(|name| headers[name].to_str().unwrap())
            .collect();
        assert_eq!(
            shown,
            ["1000000000", "999907596", "50m24s", "7", "-1", "20ms"]
        );
        apply(
            &mut headers,
            &RateQuotas {
                requests: None,
                tokens: Some(tokens),
            },
        );
        assert!(REQUESTS.iter().all(|name| headers.get(name).is_none()));
        assert_eq!(headers["x-ratelimit-limit-tokens"], "7");
        assert_eq!(headers["x-ratelimit-remaining-tokens"], "-1");
        assert_eq!(headers["x-ratelimit-reset-tokens"], "20ms");
        // No window: the upstream's headers pass.
        let mut upstream = HeaderMap::new();
        upstream.insert("x-ratelimit-limit-tokens", HeaderValue::from(90_000));
        apply(&mut upstream, &RateQuotas::default());
        assert_eq!(upstream["x-ratelimit-limit-tokens"], "90000");
    }
}
