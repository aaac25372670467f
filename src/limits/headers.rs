//! OpenAI's `x-ratelimit-*` response headers, from a key's window quotas.

use axum::http::{HeaderMap, HeaderName, HeaderValue};

use super::meter::{Quota, RateQuotas};

const REQUESTS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-requests"),
    HeaderName::from_static("x-ratelimit-remaining-requests"),
    HeaderName::from_static("x-ratelimit-reset-requests"),
];
const TOKENS: [HeaderName; 3] = [
    HeaderName::from_static("x-ratelimit-limit-tokens"),
    HeaderName::from_static("x-ratelimit-remaining-tokens"),
    HeaderName::from_static("x-ratelimit-reset-tokens"),
];

/// Sets the key's quotas on a response. When the key has a window, the upstream's own
/// `x-ratelimit-*` headers (which describe keygate's upstream account, not this key) go.
pub fn apply(headers: &mut HeaderMap, quotas: &RateQuotas) {
    if quotas.requests.is_none() && quotas.tokens.is_none() {
        return;
    }
    for name in REQUESTS.iter().chain(&TOKENS) {
        headers.remove(name);
    }
    for (names, quota) in [(&REQUESTS, quotas.requests), (&TOKENS, quotas.tokens)] {
        if let Some(quota) = quota {
            insert(headers, names, &quota);
        }
    }
}

fn insert(headers: &mut HeaderMap, [limit, remaining, reset]: &[HeaderName; 3], quota: &Quota) {
    headers.insert(limit.clone(), HeaderValue::from(quota.limit));
    headers.insert(remaining.clone(), HeaderValue::from(quota.remaining));
    if let Ok(value) = HeaderValue::from_str(&duration(quota.reset_ms)) {
        headers.insert(reset.clone(), value);
    }
}

/// A duration as OpenAI writes it: `20ms`, `59s`, `6m0s`, `1h0m0s` (whole seconds rounded up).
pub fn duration(ms: i64) -> String {
    if ms < 1000 {
        return format!("{}ms", ms.max(0));
    }
    let secs = (ms + 999) / 1000;
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_openai_s() {
        assert_eq!(duration(20), "20ms");
        assert_eq!(duration(1_000), "1s");
        assert_eq!(duration(59_001), "1m0s");
        assert_eq!(duration(360_000), "6m0s");
        assert_eq!(duration(3_600_000), "1h0m0s");
    }

    #[test]
    fn the_key_s_quotas_replace_the_upstream_s() {
        let mut headers = HeaderMap::new();
        headers.insert("x-ratelimit-limit-tokens", HeaderValue::from(90_000));
        headers.insert("x-ratelimit-limit-requests", HeaderValue::from(5_000));
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
        assert_eq!(headers["x-ratelimit-limit-requests"], "10");
        assert_eq!(headers["x-ratelimit-remaining-requests"], "9");
        assert_eq!(headers["x-ratelimit-reset-requests"], "1m0s");
        assert!(headers.get("x-ratelimit-limit-tokens").is_none());
        // No window: the upstream's headers pass.
        let mut upstream = HeaderMap::new();
        upstream.insert("x-ratelimit-limit-tokens", HeaderValue::from(90_000));
        apply(&mut upstream, &RateQuotas::default());
        assert_eq!(upstream["x-ratelimit-limit-tokens"], "90000");
    }
}
