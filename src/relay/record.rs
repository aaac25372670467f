//! The CallRecord of one relayed request, and the scanner that reads `usage` out of the tee.

use bytes::Bytes;
use memchr::memmem;

use super::json_scan::top_level_fields;
use serde::de::IgnoredAny;
use serde::Deserialize;

/// One future `api_call_logs` row.
#[derive(Clone, Debug, Default)]
pub struct CallRecord {
    pub api_key_id: Option<i64>,
    /// Counts toward the key's usage_count/last_used_at (the key authenticated).
    pub authenticated: bool,
    pub timestamp: i64,
    pub model: Option<String>,
    pub success: bool,
    pub http_status: u16,
    pub response_time: i64,
    /// Formatted by the log writer, off the request path.
    pub ip_address: Option<std::net::IpAddr>,
    pub endpoint: String,
    pub error_message: Option<String>,
    pub request_size: i64,
    pub response_size: i64,
    pub usage: Option<Usage>,
    pub stream: bool,
}

impl CallRecord {
    pub fn status(&self) -> &'static str {
        if self.success {
            "success"
        } else {
            "error"
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub total_tokens: Option<i64>,
}

/// What a request body says about itself: only `model` and `stream` are read.
#[derive(Debug, Default)]
pub struct RequestSummary {
    pub model: Option<String>,
    pub stream: Option<bool>,
}

impl RequestSummary {
    pub fn read(body: &[u8]) -> Self {
        let Some([model, stream]) = top_level_fields(body, ["model", "stream"]) else {
            return RequestSummary::default();
        };
        RequestSummary {
            model: model.and_then(|raw| serde_json::from_slice(raw).ok()),
            stream: stream.and_then(|raw| serde_json::from_slice(raw).ok()),
        }
    }
}

/// The `usage` of a response object (or SSE event), and the message of its `error`.
fn usage_and_error(json: &[u8]) -> (Option<Usage>, Option<String>) {
    let Some([usage, error]) = top_level_fields(json, ["usage", "error"]) else {
        return (None, None);
    };
    let usage = usage.and_then(|raw| serde_json::from_slice::<Option<Usage>>(raw).ok()?);
    let message = error
        .and_then(|raw| serde_json::from_slice::<UpstreamError>(raw).ok())
        .and_then(|error| match error {
            UpstreamError::Object { message } => message,
            UpstreamError::Text(text) => Some(text),
            UpstreamError::Other(_) => None,
        });
    (usage, message)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum UpstreamError {
    Object {
        message: Option<String>,
    },
    Text(String),
    #[allow(dead_code)]
    Other(IgnoredAny),
}

/// A JSON body is kept up to this size to read its `usage`; larger ones are only counted.
const JSON_KEEP_LIMIT: usize = 4 * 1024 * 1024;

/// Reads `usage` (and an upstream error message) from the response as it streams past.
#[derive(Debug)]
pub enum UsageScan {
    /// `text/event-stream`: complete `data:` lines that mention usage are parsed; `partial`
    /// holds an unfinished line.
    Sse {
        partial: Vec<u8>,
        usage: Option<Usage>,
    },
    /// JSON: the body is kept (up to a limit) and parsed at the end: a body that came in one
    /// frame is kept as that frame, without a copy.
    Json {
        first: Option<Bytes>,
        rest: Vec<u8>,
        overflow: bool,
    },
    /// Anything else is only counted.
    Opaque,
}

impl UsageScan {
    pub fn for_content_type(content_type: Option<&str>) -> Self {
        match content_type {
            Some(ct) if ct.starts_with("text/event-stream") => UsageScan::Sse {
                partial: Vec::new(),
                usage: None,
            },
            Some(ct) if ct.contains("json") => UsageScan::Json {
                first: None,
                rest: Vec::new(),
                overflow: false,
            },
            _ => UsageScan::Opaque,
        }
    }

    pub fn feed(&mut self, chunk: &Bytes) {
        if chunk.is_empty() {
            return;
        }
        match self {
            UsageScan::Sse { partial, usage } => {
                let Some(last_newline) = memchr::memrchr(b'\n', chunk) else {
                    partial.extend_from_slice(chunk);
                    return;
                };
                let (complete, rest) = chunk.split_at(last_newline + 1);
                if partial.is_empty() {
                    scan_sse_lines(complete, usage);
                } else {
                    partial.extend_from_slice(complete);
                    scan_sse_lines(partial, usage);
                    partial.clear();
                }
                partial.extend_from_slice(rest);
            }
            UsageScan::Json {
                first,
                rest,
                overflow,
            } => {
                let kept = first.as_ref().map_or(0, Bytes::len) + rest.len();
                if *overflow || kept + chunk.len() > JSON_KEEP_LIMIT {
                    *overflow = true;
                    *first = None;
                    *rest = Vec::new();
                } else if kept == 0 {
                    *first = Some(chunk.clone());
                } else {
                    if let Some(first) = first.take() {
                        rest.extend_from_slice(&first);
                    }
                    rest.extend_from_slice(chunk);
                }
            }
            UsageScan::Opaque => {}
        }
    }

    /// The usage found, and the upstream's error message if the body carried one.
    pub fn finish(&mut self) -> (Option<Usage>, Option<String>) {
        match self {
            UsageScan::Sse { partial, usage } => {
                let rest = std::mem::take(partial);
                scan_sse_lines(&rest, usage);
                (*usage, None)
            }
            UsageScan::Json {
                first,
                rest,
                overflow: false,
            } => usage_and_error(first.as_deref().unwrap_or(rest)),
            _ => (None, None),
        }
    }
}

/// Parses the `data:` lines of `text` that mention usage; the last non-null usage wins.
fn scan_sse_lines(text: &[u8], usage: &mut Option<Usage>) {
    if memmem::find(text, b"\"usage\"").is_none() {
        return;
    }
    for line in text.split(|b| *b == b'\n') {
        let Some(data) = line.strip_prefix(b"data:") else {
            continue;
        };
        if memmem::find(data, b"\"usage\"").is_none() {
            continue;
        }
        if let (Some(found), _) = usage_and_error(data) {
            *usage = Some(found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_usage_split_across_chunks() {
        let mut scan = UsageScan::for_content_type(Some("text/event-stream; charset=utf-8"));
        let stream = b"data: {\"choices\":[],\"usage\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4,\"total_tokens\":7}}\n\ndata: [DONE]\n\n";
        for piece in stream.chunks(7) {
            scan.feed(&Bytes::copy_from_slice(piece));
        }
        let (usage, _) = scan.finish();
        assert_eq!(
            usage,
            Some(Usage {
                prompt_tokens: Some(3),
                completion_tokens: Some(4),
                total_tokens: Some(7)
            })
        );
    }

    #[test]
    fn json_usage_and_error_message() {
        let body =
            br#"{"id":"x","usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        for split in [body.len(), 10] {
            let mut scan = UsageScan::for_content_type(Some("application/json"));
            scan.feed(&Bytes::from_static(&body[..split]));
            scan.feed(&Bytes::from_static(&body[split..]));
            assert_eq!(scan.finish().0.and_then(|u| u.total_tokens), Some(3));
        }
        let mut scan = UsageScan::for_content_type(Some("application/json"));
        scan.feed(&Bytes::from_static(
            br#"{"error":{"message":"Rate limit reached","type":"x"}}"#,
        ));
        assert_eq!(scan.finish().1.as_deref(), Some("Rate limit reached"));
        let mut scan = UsageScan::for_content_type(Some("text/plain"));
        scan.feed(&Bytes::from_static(b"hello"));
        assert_eq!(scan.finish(), (None, None));
    }

    #[test]
    fn request_summary() {
        let s = RequestSummary::read(br#"{"model":"gpt-4o","stream":true,"messages":[]}"#);
        assert_eq!(s.model.as_deref(), Some("gpt-4o"));
        assert_eq!(s.stream, Some(true));
        assert!(RequestSummary::read(b"not json").model.is_none());
    }
}
