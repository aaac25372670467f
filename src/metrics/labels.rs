//! Bounded label values read from a call record: the route, the status class, and why
//! keygate refused a request (from the reasons the relay stores in the call log).

use crate::limits::{Limits, REFUSAL_PREFIX};
use crate::relay::record::CallRecord;
use crate::relay::upstream::MAX_DURATION_EXCEEDED;
use crate::relay::{CLIENT_CLOSED_REQUEST, CLIENT_LEFT};

/// The routes given a label of their own; any other path is `other`.
const ROUTES: &[&str] = &[
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/responses",
    "/v1/messages",
    "/v1/models",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/images/variations",
    "/v1/audio/speech",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/files",
    "/v1/batches",
    "/v1/rerank",
    "/v1/usage",
    "/v1/dashboard/billing/subscription",
    "/v1/dashboard/billing/usage",
];

/// The label of one model's route (`/v1/models/{id}`).
const MODEL_ROUTE: &str = "/v1/models/{model}";

/// The route label of a request path: a known route (a trailing slash ignored), or `other`.
pub fn route(path: &str) -> &'static str {
    let path = match path.strip_suffix('/') {
        Some(trimmed) if !trimmed.is_empty() => trimmed,
        _ => path,
    };
    if let Some(known) = ROUTES.iter().find(|route| **route == path) {
        return known;
    }
    match path.strip_prefix("/v1/models/") {
        Some(id) if !id.is_empty() && !id.contains('/') => MODEL_ROUTE,
        _ => "other",
    }
}

/// `2xx` … `5xx` (anything else: `other`).
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        500..=599 => "5xx",
        _ => "other",
    }
}

/// Why keygate answered a request itself rather than relay the upstream's answer: the
/// reason, and for a limit the limit's name. None for an answer that came from the upstream.
pub fn refusal(record: &CallRecord) -> Option<(&'static str, Option<&'static str>)> {
    let status = record.http_status;
    if status < 400 {
        return None;
    }
    let message = record.error_message.as_deref().unwrap_or("");
    // An upstream's own error status, relayed.
    if message.starts_with("upstream returned HTTP") {
        return None;
    }
    let reason = match status {
        401 => "invalid_key",
        403 => "restriction",
        405 => "method_not_allowed",
        413 => "body_too_large",
        429 if message.starts_with(REFUSAL_PREFIX) => {
            // "key limit reached: this key may … (rate_limit_requests); …"
            let named = |field: &&str| {
                message.match_indices(*field).any(|(at, _)| {
                    message[..at].ends_with('(') && message[at + field.len()..].starts_with(')')
                })
            };
            let limit = Limits::FIELDS.iter().copied().find(named);
            return Some(("limit", Some(limit.unwrap_or("other"))));
        }
        400 if message.starts_with("path refused") => "bad_path",
        400 => "bad_request",
        CLIENT_CLOSED_REQUEST if message == CLIENT_LEFT => "client_left",
        502 if message.starts_with("upstream connect failed") => "upstream_unreachable",
        502 => "upstream_failed",
        504 if message == MAX_DURATION_EXCEEDED => "upstream_max_duration",
        504 => "upstream_timeout",
        503 if message.starts_with("limits unchecked") => "limits_unavailable",
        503 => "upstream_busy",
        500 => "internal",
        _ => "other",
    };
    Some((reason, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16, message: &str) -> Option<(&'static str, Option<&'static str>)> {
        refusal(&CallRecord {
            http_status: status,
            error_message: Some(message.into()),
            ..CallRecord::default()
        })
    }

    #[test]
    fn routes_are_bounded() {
        assert_eq!(route("/v1/chat/completions"), "/v1/chat/completions");
        assert_eq!(route("/v1/chat/completions/"), "/v1/chat/completions");
        assert_eq!(route("/v1/models/gpt-4o"), MODEL_ROUTE);
        assert_eq!(route("/v1/models/a/b"), "other");
        assert_eq!(route("/v1/anything-a-client-sends"), "other");
        assert_eq!(route("/v1/files/file-123"), "other");
    }

    #[test]
    fn refusal_reasons_come_from_the_stored_reason() {
        assert_eq!(
            refused(429, "key limit reached: this key may make 1 requests per 1 min (rate_limit_requests); retry"),
            Some(("limit", Some("rate_limit_requests")))
        );
        assert_eq!(
            refused(
                429,
                "key limit reached: this key may spend $1 per UTC day (daily_cost_limit)"
            ),
            Some(("limit", Some("daily_cost_limit")))
        );
        assert_eq!(
            refused(
                429,
                "key limit reached: rate_limit_requests without parentheses"
            ),
            Some(("limit", Some("other")))
        );
        assert_eq!(refused(401, "unknown API key"), Some(("invalid_key", None)));
        assert_eq!(
            refused(400, "path refused: dot segment"),
            Some(("bad_path", None))
        );
        assert_eq!(refused(499, CLIENT_LEFT), Some(("client_left", None)));
        assert_eq!(
            refused(502, "upstream connect failed: refused"),
            Some(("upstream_unreachable", None))
        );
        assert_eq!(refused(429, "upstream returned HTTP 429: slow down"), None);
        assert_eq!(
            refused(200, "client disconnected before the response was complete"),
            None
        );
        assert_eq!(status_class(499), "4xx");
    }
}
