//! The CallRecord of one relayed request, and the scanner that reads `usage` out of the tee.

use bytes::Bytes;
use memchr::memmem;

use std::ops::Range;

use super::json_back::last_top_level_field;
use super::json_scan::{decoded_key, key_text, top_level_fields, walk_object};
use super::json_valid::{string_value, walk_valid_object};
use crate::upstreams::spec::Kind;
use serde::de::IgnoredAny;
use serde::Deserialize;

/// The longest text each stored column holds, in bytes: longer text is cut at capture time
/// (on a char boundary), so a record never holds more than these whatever the client sent.
pub const ENDPOINT_MAX_BYTES: usize = 1024;
pub const MODEL_MAX_BYTES: usize = 256;
pub const ERROR_MESSAGE_MAX_BYTES: usize = 1024;

/// The first `max` bytes of `text` at most, cut on a char boundary; copies only what is kept.
pub fn capped(text: &str, max: usize) -> String {
    text[..floor_char_boundary(text, max)].to_string()
}

/// `text` cut to `max` bytes at most, on a char boundary, in place.
pub fn cap(text: &mut String, max: usize) {
    let end = floor_char_boundary(text, max);
    text.truncate(end);
}

fn floor_char_boundary(text: &str, max: usize) -> usize {
    if text.len() <= max {
        return text.len();
    }
    (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

/// One future `api_call_logs` row. Its texts are capped (the `*_MAX_BYTES` above).
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
    /// USD, from the price table when the call ends (0 without usage or a price).
    pub cost: f64,
    pub stream: bool,
    /// The meter of a key with limits that admitted this request: the call-log writer saves
    /// its window with the row (`rate_windows`).
    pub meter: Option<std::sync::Arc<crate::limits::meter::Meter>>,
    /// Microseconds from sending the request upstream (getting a connection included) to the
    /// upstream's response head or failure; None when it was not sent. For metrics only.
    pub upstream_us: Option<u32>,
    /// Microseconds keygate itself took until the answer's head (all but `upstream_us`);
    /// None when no answer was given (the client left). For metrics only.
    pub overhead_us: Option<u32>,
    /// The upstream that answered, or was tried last (`upstreams::spec::DEFAULT_ID` for the
    /// built-in one); None when none was tried (a refused request).
    pub upstream_id: Option<i64>,
    /// The upstreams tried for this request (0: none).
    pub attempts: u8,
}

/// A duration in whole microseconds, saturated at `u32::MAX` (71 minutes).
pub fn micros(duration: std::time::Duration) -> u32 {
    u32::try_from(duration.as_micros()).unwrap_or(u32::MAX)
}

impl CallRecord {
    /// Sets `error_message`, capped at `ERROR_MESSAGE_MAX_BYTES`; after the failures of
    /// earlier upstreams when the request failed over.
    pub fn set_error(&mut self, mut message: String) {
        if let Some(earlier) = self.error_message.take() {
            message = format!("{earlier}; then {message}");
        }
        cap(&mut message, ERROR_MESSAGE_MAX_BYTES);
        self.error_message = Some(message);
    }

    /// Sets `overhead_us`: the time since `started` less the upstream's.
    pub fn answered(&mut self, started: std::time::Instant) {
        let total = micros(started.elapsed());
        self.overhead_us = Some(total.saturating_sub(self.upstream_us.unwrap_or(0)));
    }

    pub fn status(&self) -> &'static str {
        if self.success {
            "success"
        } else {
            "error"
        }
    }
}

/// The token counts of one response: OpenAI's `usage` (or the Responses API's
/// `input_tokens`/`output_tokens`), or Anthropic's (`AnthropicUsage`), with the cached parts
/// of the prompt.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "WireUsage")]
pub struct Usage {
    /// All input the model saw, cached parts included (Anthropic's input, cache write and
    /// cache read tokens together, as OpenAI counts them).
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub total_tokens: Option<i64>,
    /// Prompt tokens read from the provider's cache (OpenAI's
    /// `prompt_tokens_details.cached_tokens`, Anthropic's `cache_read_input_tokens`), part of
    /// `prompt_tokens`.
    pub cache_read_tokens: Option<i64>,
    /// Prompt tokens written to the provider's cache (Anthropic's
    /// `cache_creation_input_tokens`), part of `prompt_tokens`.
    pub cache_write_tokens: Option<i64>,
}

impl Usage {
    /// The tokens a key's limits count: the total (cache reads and writes included).
    pub fn tokens(&self) -> i64 {
        self.total_tokens.unwrap_or(0)
    }
}

/// `usage` as answers spell it; the Responses API's names are read when OpenAI's are absent
/// (separate fields, not aliases: an answer carrying both names still parses). Read by
/// `usage_json` in the common shapes, by serde in the others.
#[derive(Default, Deserialize)]
pub(super) struct WireUsage {
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub total_tokens: Option<i64>,
    pub prompt_tokens_details: Option<TokenDetails>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub input_tokens_details: Option<TokenDetails>,
}

#[derive(Deserialize)]
pub(super) struct TokenDetails {
    pub cached_tokens: Option<i64>,
}

impl From<WireUsage> for Usage {
    fn from(wire: WireUsage) -> Self {
        let cached = |details: Option<TokenDetails>| details.and_then(|d| d.cached_tokens);
        let prompt_tokens = wire.prompt_tokens.or(wire.input_tokens);
        let completion_tokens = wire.completion_tokens.or(wire.output_tokens);
        Usage {
            prompt_tokens,
            completion_tokens,
            // An answer without the total (some OpenAI-compatible servers) still counts.
            total_tokens: wire.total_tokens.or_else(|| {
                prompt_tokens.map(|p| p.saturating_add(completion_tokens.unwrap_or(0)))
            }),
            cache_read_tokens: cached(wire.prompt_tokens_details)
                .or_else(|| cached(wire.input_tokens_details)),
            cache_write_tokens: None,
        }
    }
}

/// Anthropic's `usage` (a Messages answer's, `message_start`'s `message.usage`, or a
/// `message_delta`'s): any field may be absent or null. A stream's parts are merged field by
/// field, the last value given winning (`message_delta` carries the cumulative
/// `output_tokens`, and may repeat the input and cache counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct AnthropicUsage {
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cache_creation_input_tokens: Option<i64>,
    pub cache_read_input_tokens: Option<i64>,
}

impl AnthropicUsage {
    /// `later`'s fields over these, where `later` gives them.
    fn merge(&mut self, later: AnthropicUsage) {
        let fields = [
            (&mut self.input_tokens, later.input_tokens),
            (&mut self.output_tokens, later.output_tokens),
            (
                &mut self.cache_creation_input_tokens,
                later.cache_creation_input_tokens,
            ),
            (
                &mut self.cache_read_input_tokens,
                later.cache_read_input_tokens,
            ),
        ];
        for (field, later) in fields {
            if later.is_some() {
                *field = later;
            }
        }
    }

    /// As keygate counts it: `prompt_tokens` all input the model saw (input, cache write and
    /// cache read tokens), `completion_tokens` the output, the total both. None when it gave
    /// no count at all.
    pub fn usage(self) -> Option<Usage> {
        let inputs = [
            self.input_tokens,
            self.cache_creation_input_tokens,
            self.cache_read_input_tokens,
        ];
        let prompt_tokens = inputs
            .iter()
            .flatten()
            .map(|n| (*n).max(0))
            .reduce(i64::saturating_add);
        if prompt_tokens.is_none() && self.output_tokens.is_none() {
            return None;
        }
        let completion_tokens = self.output_tokens;
        Some(Usage {
            prompt_tokens,
            completion_tokens,
            total_tokens: Some(
                prompt_tokens
                    .unwrap_or(0)
                    .saturating_add(completion_tokens.unwrap_or(0).max(0)),
            ),
            cache_read_tokens: self.cache_read_input_tokens,
            cache_write_tokens: self.cache_creation_input_tokens,
        })
    }
}

/// What a request body says about itself: `model` (capped at `MODEL_MAX_BYTES`), `stream`,
/// and where `stream_options` and the object's end are (for the streamed-usage splice), all
/// from one skim of the top level. Keys are compared with their escapes decoded; `stream` and
/// `stream_options` are the last occurrence, as upstream JSON parsers take them.
#[derive(Clone, Debug, Default)]
pub struct RequestSummary {
    pub model: Option<String>,
    /// Byte range of the value of the top-level `model` (a `model_map` renames it there).
    pub model_at: Option<Range<usize>>,
    pub stream: Option<bool>,
    /// Byte range of the value of the top-level `stream_options`.
    pub stream_options: Option<Range<usize>>,
    /// Index of the top-level object's closing brace (None: the body is not a JSON object).
    pub end: Option<usize>,
}

impl RequestSummary {
    pub fn read(body: &[u8]) -> Self {
        let mut fields = Fields::default();
        let end = walk_object(body, |member| {
            fields.add(&key_text(member.key), member.value)
        });
        fields.summary(body, end)
    }

    /// As `read`, and the model the body names as the upstream will read it, for keys whose
    /// models are restricted: one strict pass over the whole body (`json_valid`), its keys
    /// decoded (`"mod\u0065l"` is `model`). The model is None when the body is not valid JSON
    /// (its summary is then `read`'s), when its top-level object has no `model` or more than
    /// one (parsers differ on which one wins), or when `model` is not a string.
    pub fn read_checked(body: &[u8]) -> (Self, Option<String>) {
        let mut fields = Fields::default();
        let mut decodes = true;
        let end = walk_valid_object(body, |member| match decoded_key(member.key) {
            Some(key) => fields.add(&key, member.value),
            None => decodes = false,
        });
        if end.is_none() || !decodes {
            return (RequestSummary::read(body), None);
        }
        let sole_raw = (fields.models == 1).then(|| fields.model.clone()).flatten();
        let summary = fields.summary(body, end);
        let sole = sole_raw.and_then(|raw| match &summary.model {
            // Too short to have been capped: the summary's model is the whole text.
            Some(model) if raw.len() < MODEL_MAX_BYTES + 2 => Some(model.clone()),
            _ => string_value(&body[raw]),
        });
        (summary, sole)
    }
}

/// The top-level members a request summary reads, as a walk finds them.
#[derive(Default)]
struct Fields {
    /// The last of duplicate keys, as most upstream JSON parsers take it.
    model: Option<Range<usize>>,
    models: usize,
    stream: Option<Range<usize>>,
    stream_options: Option<Range<usize>>,
}

impl Fields {
    fn add(&mut self, key: &[u8], value: Range<usize>) {
        match key {
            b"model" => {
                self.model = Some(value);
                self.models += 1;
            }
            b"stream" => self.stream = Some(value),
            b"stream_options" => self.stream_options = Some(value),
            _ => {}
        }
    }

    fn summary(self, body: &[u8], end: Option<usize>) -> RequestSummary {
        if end.is_none() {
            return RequestSummary::default();
        }
        RequestSummary {
            model: self
                .model
                .clone()
                .and_then(|raw| json_string_prefix(&body[raw], MODEL_MAX_BYTES)),
            model_at: self.model,
            stream: self
                .stream
                .and_then(|raw| serde_json::from_slice(&body[raw]).ok()),
            stream_options: self.stream_options,
            end,
        }
    }
}

/// The JSON string `raw` decoded and capped at `max` bytes; a long string is decoded from a
/// prefix only, so a megabyte of `model` costs no megabyte of memory. `None` if not a string.
fn json_string_prefix(raw: &[u8], max: usize) -> Option<String> {
    // One byte of text takes at most 6 bytes of JSON (`\u0001`), so this much JSON holds at
    // least `max` bytes of text when the string is longer.
    let enough = 6 * max + 2;
    if raw.len() <= enough {
        let mut text = string_value(raw)?;
        cap(&mut text, max);
        return Some(text);
    }
    if raw.first() != Some(&b'"') {
        return None;
    }
    // Cut before `enough` at the start of a character that is not inside an escape.
    let mut cut = 1;
    let mut at = 1;
    while at < enough {
        cut = at;
        let unicode_escape = raw[at] == b'\\' && raw.get(at + 1) == Some(&b'u');
        at += match raw[at] {
            // A surrogate pair is one character: never cut between its two escapes.
            b'\\' if unicode_escape && is_high_surrogate(&raw[at + 2..]) => 12,
            b'\\' if unicode_escape => 6,
            b'\\' => 2,
            byte if byte < 0x80 => 1,
            byte if byte >= 0xF0 => 4,
            byte if byte >= 0xE0 => 3,
            _ => 2,
        };
    }
    let mut prefix = Vec::with_capacity(cut + 1);
    prefix.extend_from_slice(&raw[..cut]);
    prefix.push(b'"');
    let mut text: String = serde_json::from_slice(&prefix).ok()?;
    cap(&mut text, max);
    Some(text)
}

/// `hex` starts with the four hex digits of a UTF-16 high surrogate (D800–DBFF).
fn is_high_surrogate(hex: &[u8]) -> bool {
    matches!(
        hex,
        [b'd' | b'D', b'8' | b'9' | b'a' | b'b' | b'A' | b'B', ..]
    )
}

/// The `usage` of a response object (or OpenAI SSE event) in `kind`'s spelling, and the
/// message of its `error` (OpenAI's `{"error":{"message":…}}`, or Anthropic's
/// `{"type":"error","error":{"type":…,"message":…}}`).
fn usage_and_error(json: &[u8], kind: Kind) -> (Option<Usage>, Option<String>) {
    let Some([usage, error]) = top_level_fields(json, ["usage", "error"]) else {
        return (None, None);
    };
    let usage = usage.and_then(|raw| parse_usage(raw, kind));
    let message = error
        .and_then(|raw| serde_json::from_slice::<UpstreamError>(raw).ok())
        .and_then(|error| match error {
            UpstreamError::Object { message } => message,
            UpstreamError::Text(text) => Some(text),
            UpstreamError::Other(_) => None,
        });
    (usage, message)
}

/// A `usage` object's counts, in `kind`'s spelling.
fn parse_usage(raw: &[u8], kind: Kind) -> Option<Usage> {
    match kind {
        Kind::OpenAi => super::usage_json::openai_usage(raw),
        Kind::Anthropic => anthropic_usage(raw)?.usage(),
    }
}

/// An Anthropic `usage` object; None when it is null or not one.
fn anthropic_usage(raw: &[u8]) -> Option<AnthropicUsage> {
    serde_json::from_slice::<Option<AnthropicUsage>>(raw).ok()?
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

/// The longest unfinished SSE line kept to scan; a usage event is a few hundred bytes.
pub const SSE_LINE_LIMIT: usize = 64 * 1024;

/// A JSON body is kept up to this size to read its `usage`; larger ones are only counted.
const JSON_KEEP_LIMIT: usize = 4 * 1024 * 1024;

/// Reads `usage` (and an upstream error message) from the response as it streams past.
#[derive(Debug)]
pub enum UsageScan {
    /// `text/event-stream`: complete `data:` lines that mention usage are parsed; `partial`
    /// holds an unfinished line, up to `SSE_LINE_LIMIT` bytes: past it the line is dropped
    /// and the scan `skipping` to the next newline.
    Sse {
        partial: Vec<u8>,
        usage: StreamUsage,
        /// The message of an error event the stream carried after its 200 (Anthropic's
        /// `event: error`, or a chunk with a top-level `error`).
        error: Option<String>,
        skipping: bool,
    },
    /// JSON: the body is kept (up to a limit) and parsed at the end: a body that came in one
    /// frame is kept as that frame, without a copy.
    Json {
        first: Option<Bytes>,
        rest: Vec<u8>,
        overflow: bool,
        kind: Kind,
    },
    /// Anything else is only counted.
    Opaque,
}

/// The usage a stream has reported so far, as its API reports it.
#[derive(Debug)]
pub enum StreamUsage {
    /// OpenAI's (chat chunks, or the Responses API's `response.completed`): the last non-null
    /// `usage` of an event.
    OpenAi(Option<Usage>),
    /// Anthropic's: `message_start`'s `message.usage`, then each `message_delta`'s `usage`
    /// merged over it field by field.
    Anthropic(AnthropicUsage),
}

impl StreamUsage {
    /// Reads the `data` of one event that mentions usage.
    fn event(&mut self, data: &[u8]) {
        match self {
            StreamUsage::OpenAi(usage) => {
                if let Some(found) = openai_event_usage(data) {
                    *usage = Some(found);
                }
            }
            StreamUsage::Anthropic(usage) => {
                let Some([top, message]) = top_level_fields(data, ["usage", "message"]) else {
                    return;
                };
                // `message_start` has it in its message, `message_delta` at the top level.
                let inner = message
                    .and_then(|message| top_level_fields(message, ["usage"]))
                    .and_then(|[usage]| usage);
                for raw in [inner, top].into_iter().flatten() {
                    if let Some(found) = anthropic_usage(raw) {
                        usage.merge(found);
                    }
                }
            }
        }
    }

    fn usage(&self) -> Option<Usage> {
        match self {
            StreamUsage::OpenAi(usage) => *usage,
            StreamUsage::Anthropic(usage) => usage.usage(),
        }
    }
}

impl UsageScan {
    /// The scan of an answer of this content type to a request of route `kind`.
    pub fn for_content_type(content_type: Option<&str>, kind: Kind) -> Self {
        match content_type {
            Some(ct) if ct.starts_with("text/event-stream") => UsageScan::Sse {
                partial: Vec::new(),
                usage: match kind {
                    Kind::OpenAi => StreamUsage::OpenAi(None),
                    Kind::Anthropic => StreamUsage::Anthropic(AnthropicUsage::default()),
                },
                error: None,
                skipping: false,
            },
            // Not `str::contains`: its searcher costs more to set up than this scan of a short
            // media type.
            Some(ct) if ct.as_bytes().windows(4).any(|w| w == b"json") => UsageScan::Json {
                first: None,
                rest: Vec::new(),
                overflow: false,
                kind,
            },
            _ => UsageScan::Opaque,
        }
    }

    pub fn feed(&mut self, chunk: &Bytes) {
        if chunk.is_empty() {
            return;
        }
        match self {
            UsageScan::Sse {
                partial,
                usage,
                error,
                skipping,
            } => {
                let mut chunk = &chunk[..];
                if *skipping {
                    let Some(newline) = memchr::memchr(b'\n', chunk) else {
                        return;
                    };
                    *skipping = false;
                    chunk = &chunk[newline + 1..];
                }
                let (complete, rest) = match memchr::memrchr(b'\n', chunk) {
                    Some(last_newline) => chunk.split_at(last_newline + 1),
                    None => (&[][..], chunk),
                };
                if !complete.is_empty() {
                    if partial.is_empty() {
                        scan_sse_lines(complete, usage, error);
                    } else {
                        partial.extend_from_slice(complete);
                        scan_sse_lines(partial, usage, error);
                        partial.clear();
                    }
                }
                if partial.len() + rest.len() > SSE_LINE_LIMIT {
                    *partial = Vec::new();
                    *skipping = true;
                } else {
                    partial.extend_from_slice(rest);
                }
            }
            UsageScan::Json {
                first,
                rest,
                overflow,
                ..
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
            UsageScan::Sse {
                partial,
                usage,
                error,
                ..
            } => {
                let rest = std::mem::take(partial);
                scan_sse_lines(&rest, usage, error);
                (usage.usage(), error.take())
            }
            UsageScan::Json {
                first,
                rest,
                overflow: false,
                kind,
            } => usage_and_error(first.as_deref().unwrap_or(rest), *kind),
            _ => (None, None),
        }
    }

    /// The usage found, for an answer whose error message is not read (a success that is not
    /// a stream): a JSON body's `usage` is looked for from its end, where answers put it, so
    /// the long part before it (`choices`, `content`) is not walked. The last `usage` of the
    /// object is read, as the client's parser reads it.
    pub fn finish_usage(&mut self) -> Option<Usage> {
        match self {
            UsageScan::Json {
                first,
                rest,
                overflow: false,
                kind,
            } => {
                let raw = last_top_level_field(first.as_deref().unwrap_or(rest), "usage")?;
                parse_usage(raw, *kind)
            }
            _ => self.finish().0,
        }
    }
}

/// The usage of one OpenAI SSE event: a chunk's top-level `usage`, or that of the Responses
/// API's `response.completed` event, inside its `response` object.
fn openai_event_usage(data: &[u8]) -> Option<Usage> {
    usage_and_error(data, Kind::OpenAi).0.or_else(|| {
        let [response] = top_level_fields(data, ["response"])?;
        usage_and_error(response?, Kind::OpenAi).0
    })
}

/// Parses the `data:` lines of `text` that mention usage, in order.
fn scan_sse_lines(text: &[u8], usage: &mut StreamUsage, error: &mut Option<String>) {
    let mentions_usage = memmem::find(text, b"\"usage\"").is_some();
    let mentions_error = memmem::find(text, b"\"error\"").is_some();
    if !mentions_usage && !mentions_error {
        return;
    }
    for line in text.split(|b| *b == b'\n') {
        let Some(data) = line.strip_prefix(b"data:") else {
            continue;
        };
        if mentions_usage && memmem::find(data, b"\"usage\"").is_some() {
            usage.event(data);
        }
        if mentions_error && error.is_none() && memmem::find(data, b"\"error\"").is_some() {
            // Only an event whose top level has `error` (a delta's text may say "error").
            let [found] = top_level_fields(data, ["error"]).unwrap_or([None]);
            if let Some(raw) = found.filter(|raw| raw.first() == Some(&b'{')) {
                *error = usage_and_error(data, Kind::OpenAi)
                    .1
                    .or_else(|| Some(String::from_utf8_lossy(raw).into_owned()));
            }
        }
    }
}

#[cfg(test)]
mod sole_model_tests {
    use super::RequestSummary;
    use crate::relay::json_scan::decoded_key;
    use crate::relay::json_valid::walk_valid_object;
    use proptest::prelude::*;
    use serde::de::IgnoredAny;

    fn sole_model(body: &[u8]) -> Option<String> {
        RequestSummary::read_checked(body).1
    }

    /// The model as serde_json reads it (the relay's check before `json_valid`): a full parse
    /// of the top-level object, its keys decoded, `model` at most once.
    fn parsed_model(body: &[u8]) -> Option<String> {
        struct SoleModel;

        impl<'de> serde::de::Visitor<'de> for SoleModel {
            type Value = Option<String>;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Option<String>, A::Error> {
                let mut model = None;
                let mut seen = false;
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    if key == "model" {
                        if seen {
                            return Err(serde::de::Error::custom("`model` twice"));
                        }
                        seen = true;
                        model = map
                            .next_value::<serde_json::Value>()?
                            .as_str()
                            .map(String::from);
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(model)
            }
        }

        let mut de = serde_json::Deserializer::from_slice(body);
        let model = serde::Deserializer::deserialize_map(&mut de, SoleModel).ok()?;
        de.end().ok()?;
        model
    }

    /// Both reads of `body` agree, and the summary is the lenient skim's.
    fn agrees(body: &[u8]) -> Result<(), TestCaseError> {
        let (summary, model) = RequestSummary::read_checked(body);
        let text = String::from_utf8_lossy(body);
        if std::str::from_utf8(body).is_ok() {
            prop_assert_eq!(&model, &parsed_model(body), "{}", text);
            let mut keys_decode = true;
            let walked = walk_valid_object(body, |member| {
                keys_decode &= decoded_key(member.key).is_some();
            });
            let mut de = serde_json::Deserializer::from_slice(body);
            let parsed = serde::Deserializer::deserialize_map(&mut de, IgnoredAny).is_ok()
                && de.end().is_ok();
            prop_assert_eq!(walked.is_some() && keys_decode, parsed, "{}", text);
        } else {
            // Not JSON at all: refused, as serde_json refuses it wherever the bad byte is
            // (it checks only the strings it decodes).
            prop_assert_eq!(&model, &None, "{}", text);
        }
        let skimmed = RequestSummary::read(body);
        prop_assert_eq!(format!("{summary:?}"), format!("{skimmed:?}"), "{}", text);
        Ok(())
    }

    #[test]
    fn reads_the_model_as_the_upstream_would() {
        assert_eq!(
            sole_model(br#"{"messages":[],"model":"gpt-4o"}"#).as_deref(),
            Some("gpt-4o")
        );
        assert_eq!(
            sole_model(br#"{"mod\u0065l":"gpt-\u0034o"}"#).as_deref(),
            Some("gpt-4o")
        );
        assert_eq!(
            sole_model(b" {\"model\" :\t\"a\\/b\" ,\"n\":[1,-0.5e+3,{},[],true,null]}\n")
                .as_deref(),
            Some("a/b")
        );
        for refused in [
            &br#"{"model":"a","mod\u0065l":"b"}"#[..],
            br#"{"model":"a","model":"a"}"#,
            br#"{"model":1}"#,
            br#"{"model":null}"#,
            br#"{"model":["gpt-4o"]}"#,
            br#"{"model":{"name":"gpt-4o"}}"#,
            br#"{"model":"a"} x"#,
            b"not json",
            br#"["model"]"#,
            br#"{"model":"a","n":01}"#,
            br#"{"model":"a","n":1.}"#,
            br#"{"model":"a","n":[1,]}"#,
            br#"{"model":"a",}"#,
            br#"{"model":"a","s":"\q"}"#,
            br#"{"model":"a","\ud800":1}"#,
            br#"{"model":"\ud800"}"#,
            br#"{"model":"a","n":tru}"#,
            br#"{"model":"a","n":[}]}"#,
            b"{\"model\":\"a\",\"s\":\"tab\there\"}",
            b"{\"model\":\"a\",\"s\":\"\xff\"}",
        ] {
            assert_eq!(
                sole_model(refused),
                None,
                "{}",
                String::from_utf8_lossy(refused)
            );
            agrees(refused).unwrap();
        }
    }

    #[test]
    fn nesting_has_no_limit_as_for_serde_json_skipping_a_value() {
        for depth in [1, 127, 128, 129, 300, 100_000] {
            let body = format!(
                r#"{{"model":"m","n":{}{}}}"#,
                "[".repeat(depth),
                "]".repeat(depth)
            );
            agrees(body.as_bytes()).unwrap();
            assert_eq!(sole_model(body.as_bytes()).as_deref(), Some("m"), "{depth}");
            let unclosed = &body.as_bytes()[..body.len() - 2];
            agrees(unclosed).unwrap();
            assert_eq!(sole_model(unclosed), None, "{depth}");
        }
    }

    /// A valid JSON value, up to a few levels deep, from pieces that reach every branch of
    /// the grammar.
    fn value() -> impl Strategy<Value = String> {
        let leaf = prop::sample::select(vec![
            "0",
            "-1",
            "12.5e-3",
            "1E+2",
            "true",
            "false",
            "null",
            r#""""#,
            r#""gpt-4o""#,
            r#""a\"b\\c\/\b\f\n\r\t""#,
            r#""\u00e9\u20AC\ud83d\ude00""#,
            "\"é€😀\"",
            r#""model""#,
        ])
        .prop_map(String::from);
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((key(), inner), 0..4).prop_map(|members| {
                    let members: Vec<String> = members
                        .into_iter()
                        .map(|(k, v)| format!("{k}:{v}"))
                        .collect();
                    format!("{{ {} }}", members.join(" , "))
                }),
            ]
        })
    }

    fn key() -> impl Strategy<Value = String> {
        prop::sample::select(vec![
            r#""model""#,
            r#""mod\u0065l""#,
            r#""\u006dodel""#,
            r#""Model""#,
            r#""stream""#,
            r#""stream_options""#,
            r#""messages""#,
            r#""""#,
            r#""\ud800""#,
            r#""model ""#,
        ])
        .prop_map(String::from)
    }

    /// Bytes that break JSON in many ways, to splice into valid bodies.
    fn fault() -> impl Strategy<Value = Vec<u8>> {
        prop::sample::select(vec![
            &b""[..],
            b",",
            b"}",
            b"]",
            b"{",
            b"[",
            b"\"",
            b"\\",
            b":",
            b"0",
            b"-",
            b".",
            b"e",
            b"\x01",
            b"\xff",
            b"\xc3",
            b" ",
            b"\\u12",
            b"\\x",
            b"tru",
            b"nul",
            b"01",
            b"1.",
        ])
        .prop_map(<[u8]>::to_vec)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn valid_bodies_are_read_as_serde_json_reads_them(
            members in prop::collection::vec((key(), value()), 0..6),
            spaces in prop::sample::select(vec!["", " ", "\n\t ", "\r\n"]),
        ) {
            let members: Vec<String> = members.iter().map(|(k, v)| format!("{k}{spaces}:{spaces}{v}")).collect();
            let body = format!("{spaces}{{{spaces}{}{spaces}}}{spaces}", members.join(","));
            agrees(body.as_bytes())?;
        }

        #[test]
        fn broken_bodies_are_refused_as_serde_json_refuses_them(
            members in prop::collection::vec((key(), value()), 1..5),
            cut in any::<prop::sample::Index>(),
            removed in 0usize..3,
            inserted in fault(),
        ) {
            let members: Vec<String> = members.iter().map(|(k, v)| format!("{k}:{v}")).collect();
            let mut body = format!("{{{}}}", members.join(",")).into_bytes();
            let at = cut.index(body.len() + 1);
            let removed = removed.min(body.len() - at);
            body.splice(at..at + removed, inserted);
            agrees(&body)?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_successful_answer_s_usage_read_from_its_end_is_the_one_read_from_its_start() {
        let openai = concat!(
            r#"{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"gpt-4o-mini","#,
            r#""choices":[{"index":0,"message":{"role":"assistant","content":"\"usage\":{\"prompt_tokens\":99}\\"},"#,
            r#""finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"#,
            r#""prompt_tokens_details":{"cached_tokens":4}},"system_fingerprint":"fp_1"}"#,
            "\n"
        );
        let anthropic = concat!(
            r#"{"id":"msg_1","type":"message","role":"assistant","content":[{"type":"text","text":"}"}],"#,
            r#""model":"claude","stop_reason":"end_turn","stop_sequence":null,"#,
            r#""usage":{"input_tokens":12,"cache_read_input_tokens":5,"output_tokens":6}}"#
        );
        for (body, kind, total) in [
            (openai, Kind::OpenAi, Some(29)),
            (anthropic, Kind::Anthropic, Some(23)),
            (r#"{"object":"list","data":[]}"#, Kind::OpenAi, None),
            (r#"{"usage":null}"#, Kind::OpenAi, None),
            ("not json", Kind::OpenAi, None),
        ] {
            for cut in [1, 5, body.len()] {
                let scan = || {
                    let mut scan = UsageScan::for_content_type(Some("application/json"), kind);
                    for piece in body.as_bytes().chunks(cut) {
                        scan.feed(&Bytes::copy_from_slice(piece));
                    }
                    scan
                };
                let usage = scan().finish_usage();
                assert_eq!(usage, scan().finish().0, "{body} in pieces of {cut}");
                assert_eq!(usage.and_then(|u| u.total_tokens), total, "{body}");
            }
        }
    }

    #[test]
    fn a_responses_api_stream_is_counted_from_its_completed_event() {
        let mut scan = UsageScan::for_content_type(Some("text/event-stream"), Kind::OpenAi);
        scan.feed(&Bytes::from_static(
            b"event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"r\",\"usage\":null}}\n\n\
              event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"usage\"}\n\n\
              event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"r\",\"output\":[],\"usage\":{\"input_tokens\":9,\"output_tokens\":4,\"total_tokens\":13,\"input_tokens_details\":{\"cached_tokens\":2}}}}\n\n",
        ));
        let (usage, _) = scan.finish();
        let usage = usage.unwrap();
        assert_eq!(
            (
                usage.prompt_tokens,
                usage.completion_tokens,
                usage.total_tokens,
                usage.cache_read_tokens
            ),
            (Some(9), Some(4), Some(13), Some(2))
        );
    }

    #[test]
    fn an_error_event_after_a_streams_start_is_kept_and_a_delta_saying_error_is_not() {
        let stream = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":9,\"output_tokens\":1}}}\n\n",
            "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"an \\\"error\\\": x\"}}\n\n",
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        );
        for cut in [1, 7, 64] {
            let mut scan = UsageScan::for_content_type(Some("text/event-stream"), Kind::Anthropic);
            for piece in stream.as_bytes().chunks(cut) {
                scan.feed(&Bytes::copy_from_slice(piece));
            }
            let (usage, error) = scan.finish();
            assert_eq!(error.as_deref(), Some("Overloaded"), "cut {cut}");
            assert_eq!(usage.and_then(|u| u.prompt_tokens), Some(9));
        }
        // A delta whose text says "error" is no error.
        let mut scan = UsageScan::for_content_type(Some("text/event-stream"), Kind::OpenAi);
        scan.feed(&Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"\\\"error\\\": 1\"}}],\"usage\":null}\n\ndata: [DONE]\n\n",
        ));
        assert_eq!(scan.finish().1, None);
        // OpenAI-compatible servers that report a failure as a chunk with a top-level `error`.
        let mut scan = UsageScan::for_content_type(Some("text/event-stream"), Kind::OpenAi);
        scan.feed(&Bytes::from_static(
            b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\ndata: {\"error\":{\"message\":\"model crashed\",\"type\":\"server_error\"}}\n\n",
        ));
        assert_eq!(scan.finish().1.as_deref(), Some("model crashed"));
    }

    #[test]
    fn sse_usage_split_across_chunks() {
        let mut scan =
            UsageScan::for_content_type(Some("text/event-stream; charset=utf-8"), Kind::OpenAi);
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
                total_tokens: Some(7),
                cache_read_tokens: None,
                cache_write_tokens: None,
            })
        );
    }

    #[test]
    fn cached_prompt_tokens_are_read_from_json_and_sse() {
        let body = br#"{"usage":{"prompt_tokens":20,"completion_tokens":2,"total_tokens":22,"prompt_tokens_details":{"cached_tokens":16,"audio_tokens":0}}}"#;
        let mut scan = UsageScan::for_content_type(Some("application/json"), Kind::OpenAi);
        scan.feed(&Bytes::from_static(body));
        let usage = scan.finish().0.unwrap();
        assert_eq!(
            (usage.prompt_tokens, usage.cache_read_tokens),
            (Some(20), Some(16))
        );
        let mut scan = UsageScan::for_content_type(Some("text/event-stream"), Kind::OpenAi);
        scan.feed(&Bytes::from_static(
            b"data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":1,\"total_tokens\":10,\"prompt_tokens_details\":{\"cached_tokens\":8}}}\n\n",
        ));
        assert_eq!(scan.finish().0.and_then(|u| u.cache_read_tokens), Some(8));
        // No details, or null ones: no cached count, the rest still read.
        for usage in [
            r#"{"prompt_tokens":3}"#,
            r#"{"prompt_tokens":3,"prompt_tokens_details":null}"#,
            r#"{"prompt_tokens":3,"prompt_tokens_details":{"cached_tokens":null}}"#,
        ] {
            let usage: Usage = serde_json::from_str(usage).unwrap();
            assert_eq!(
                (usage.prompt_tokens, usage.cache_read_tokens),
                (Some(3), None)
            );
        }
        // The Responses API's names.
        let usage: Usage = serde_json::from_str(
            r#"{"input_tokens":30,"output_tokens":5,"total_tokens":35,"input_tokens_details":{"cached_tokens":12}}"#,
        )
        .unwrap();
        assert_eq!(
            usage,
            Usage {
                prompt_tokens: Some(30),
                completion_tokens: Some(5),
                total_tokens: Some(35),
                cache_read_tokens: Some(12),
                cache_write_tokens: None,
            }
        );
        let both: Usage = serde_json::from_str(
            r#"{"prompt_tokens":7,"input_tokens":6,"completion_tokens":1,"output_tokens":1}"#,
        )
        .unwrap();
        assert_eq!(
            (both.prompt_tokens, both.completion_tokens),
            (Some(7), Some(1))
        );
    }

    #[test]
    fn json_usage_and_error_message() {
        let body =
            br#"{"id":"x","usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        for split in [body.len(), 10] {
            let mut scan = UsageScan::for_content_type(Some("application/json"), Kind::OpenAi);
            scan.feed(&Bytes::from_static(&body[..split]));
            scan.feed(&Bytes::from_static(&body[split..]));
            assert_eq!(scan.finish().0.and_then(|u| u.total_tokens), Some(3));
        }
        let mut scan = UsageScan::for_content_type(Some("application/json"), Kind::OpenAi);
        scan.feed(&Bytes::from_static(
            br#"{"error":{"message":"Rate limit reached","type":"x"}}"#,
        ));
        assert_eq!(scan.finish().1.as_deref(), Some("Rate limit reached"));
        let mut scan = UsageScan::for_content_type(Some("text/plain"), Kind::OpenAi);
        scan.feed(&Bytes::from_static(b"hello"));
        assert_eq!(scan.finish(), (None, None));
    }

    #[test]
    fn an_endless_sse_line_is_dropped_at_the_limit_and_the_scan_goes_on() {
        let mut scan = UsageScan::for_content_type(Some("text/event-stream"), Kind::OpenAi);
        let junk = Bytes::from(vec![b'x'; 16 * 1024]);
        scan.feed(&Bytes::from_static(b"data: {\"usage\":"));
        for _ in 0..64 {
            scan.feed(&junk);
            let UsageScan::Sse { partial, .. } = &scan else {
                unreachable!()
            };
            assert!(partial.len() <= SSE_LINE_LIMIT, "{}", partial.len());
        }
        scan.feed(&Bytes::from_static(
            b"xx\n\ndata: {\"usage\":{\"total_tokens\":9}}",
        ));
        scan.feed(&Bytes::from_static(b"\n\n"));
        assert_eq!(scan.finish().0.and_then(|u| u.total_tokens), Some(9));
    }

    /// An Anthropic Messages stream as the API sends it, with `message_delta` as given.
    fn anthropic_stream(message_delta_usage: &str) -> Vec<u8> {
        format!(
            "event: message_start\n\
             data: {{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5-20250929\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{{\"input_tokens\":25,\"cache_creation_input_tokens\":1200,\"cache_read_input_tokens\":3000,\"cache_creation\":{{\"ephemeral_5m_input_tokens\":1200,\"ephemeral_1h_input_tokens\":0}},\"output_tokens\":1,\"service_tier\":\"standard\"}}}}}}\n\n\
             event: content_block_start\n\
             data: {{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{{\"type\":\"text\",\"text\":\"\"}}}}\n\n\
             event: ping\n\
             data: {{\"type\": \"ping\"}}\n\n\
             event: content_block_delta\n\
             data: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"Hello\"}}}}\n\n\
             event: content_block_delta\n\
             data: {{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":\"! Your \\\"usage\\\": {{\\\"output_tokens\\\": 999}}\"}}}}\n\n\
             event: content_block_stop\n\
             data: {{\"type\":\"content_block_stop\",\"index\":0}}\n\n\
             event: message_delta\n\
             data: {{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"end_turn\",\"stop_sequence\":null}},\"usage\":{message_delta_usage}}}\n\n\
             event: message_stop\n\
             data: {{\"type\":\"message_stop\"}}\n\n"
        )
        .into_bytes()
    }

    fn anthropic_scan() -> UsageScan {
        UsageScan::for_content_type(Some("text/event-stream; charset=utf-8"), Kind::Anthropic)
    }

    /// 25 input, 1200 written to the cache, 3000 read from it, 15 output.
    const CLAUDE_USAGE: Usage = Usage {
        prompt_tokens: Some(25 + 1200 + 3000),
        completion_tokens: Some(15),
        total_tokens: Some(25 + 1200 + 3000 + 15),
        cache_read_tokens: Some(3000),
        cache_write_tokens: Some(1200),
    };

    #[test]
    fn an_anthropic_stream_is_counted_from_message_start_and_the_last_message_delta() {
        // The classic `message_delta` gives only the cumulative output; newer APIs repeat the
        // input and cache counts there.
        for delta in [
            r#"{"output_tokens":15}"#,
            r#"{"input_tokens":25,"cache_creation_input_tokens":1200,"cache_read_input_tokens":3000,"output_tokens":15,"server_tool_use":null}"#,
            r#"{"input_tokens":null,"output_tokens":15}"#,
        ] {
            let stream = anthropic_stream(delta);
            let mut scan = anthropic_scan();
            scan.feed(&Bytes::from(stream.clone()));
            assert_eq!(scan.finish(), (Some(CLAUDE_USAGE), None), "{delta}");
            // Cut in two at every byte, and fed a byte at a time: the same count.
            for at in 0..=stream.len() {
                let mut scan = anthropic_scan();
                scan.feed(&Bytes::copy_from_slice(&stream[..at]));
                scan.feed(&Bytes::copy_from_slice(&stream[at..]));
                assert_eq!(scan.finish().0, Some(CLAUDE_USAGE), "{delta} cut at {at}");
            }
            let mut scan = anthropic_scan();
            for byte in &stream {
                scan.feed(&Bytes::copy_from_slice(&[*byte]));
            }
            assert_eq!(scan.finish().0, Some(CLAUDE_USAGE), "{delta} byte by byte");
        }
    }

    #[test]
    fn anthropic_stream_fields_are_merged_the_last_value_winning() {
        // Several deltas (a tool-use turn, say): each field is the last one given.
        let mut scan = anthropic_scan();
        scan.feed(&Bytes::from_static(
            b"event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":10,\"cache_creation_input_tokens\":null,\"cache_read_input_tokens\":null,\"output_tokens\":1}}}\n\n\
              event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":5}}\n\n\
              event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":9,\"cache_read_input_tokens\":4}}\n\n",
        ));
        assert_eq!(
            scan.finish().0,
            Some(Usage {
                prompt_tokens: Some(14),
                completion_tokens: Some(9),
                total_tokens: Some(23),
                cache_read_tokens: Some(4),
                cache_write_tokens: None,
            })
        );
        // A stream cut before any usage (an overloaded_error event, say) counts nothing, and
        // says why it ended.
        let mut scan = anthropic_scan();
        scan.feed(&Bytes::from_static(
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}\n\n",
        ));
        assert_eq!(scan.finish(), (None, Some("Overloaded".into())));
        // Read as OpenAI's (as every route was before), only the message_delta's top-level
        // usage is seen, and no cache counts: why the scan must know the route's kind.
        let mut scan = UsageScan::for_content_type(Some("text/event-stream"), Kind::OpenAi);
        scan.feed(&Bytes::from(anthropic_stream(r#"{"output_tokens":15}"#)));
        assert_eq!(
            scan.finish()
                .0
                .map(|u| (u.completion_tokens, u.cache_read_tokens)),
            Some((Some(15), None))
        );
    }

    #[test]
    fn an_anthropic_json_answer_and_error() {
        let body = br#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hi"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":1200,"cache_read_input_tokens":3000,"cache_creation":{"ephemeral_5m_input_tokens":1200},"output_tokens":15,"service_tier":"standard"}}"#;
        for at in [body.len(), 1, 100] {
            let mut scan = UsageScan::for_content_type(Some("application/json"), Kind::Anthropic);
            scan.feed(&Bytes::from_static(&body[..at]));
            scan.feed(&Bytes::from_static(&body[at..]));
            assert_eq!(scan.finish(), (Some(CLAUDE_USAGE), None));
        }
        // Absent and null fields: what is given counts.
        let read = |usage: &str| {
            let mut scan = UsageScan::for_content_type(Some("application/json"), Kind::Anthropic);
            scan.feed(&Bytes::from(format!(
                r#"{{"type":"message","usage":{usage}}}"#
            )));
            scan.finish().0
        };
        assert_eq!(
            read(r#"{"input_tokens":7,"output_tokens":3}"#),
            Some(Usage {
                prompt_tokens: Some(7),
                completion_tokens: Some(3),
                total_tokens: Some(10),
                cache_read_tokens: None,
                cache_write_tokens: None,
            })
        );
        assert_eq!(
            read(
                r#"{"input_tokens":7,"cache_creation_input_tokens":null,"cache_read_input_tokens":0,"output_tokens":null}"#
            ),
            Some(Usage {
                prompt_tokens: Some(7),
                completion_tokens: None,
                total_tokens: Some(7),
                cache_read_tokens: Some(0),
                cache_write_tokens: None,
            })
        );
        assert_eq!(read("null"), None);
        assert_eq!(read("{}"), None);
        assert_eq!(read(r#""many""#), None);
        // count_tokens answers its count at the top level: not a call's usage.
        let mut scan = UsageScan::for_content_type(Some("application/json"), Kind::Anthropic);
        scan.feed(&Bytes::from_static(br#"{"input_tokens":2095}"#));
        assert_eq!(scan.finish(), (None, None));
        // Anthropic's error envelope gives the row its message.
        let mut scan = UsageScan::for_content_type(Some("application/json"), Kind::Anthropic);
        scan.feed(&Bytes::from_static(
            br#"{"type":"error","error":{"type":"rate_limit_error","message":"Number of request tokens has exceeded your per-minute rate limit"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#,
        ));
        assert_eq!(
            scan.finish(),
            (
                None,
                Some("Number of request tokens has exceeded your per-minute rate limit".into())
            )
        );
    }

    #[test]
    fn anthropic_limits_count_every_token_the_model_saw() {
        assert_eq!(CLAUDE_USAGE.tokens(), 25 + 1200 + 3000 + 15);
    }

    #[test]
    fn stored_texts_are_capped_on_char_boundaries() {
        assert_eq!(capped("héllo", 2), "h");
        assert_eq!(capped("héllo", 3), "hé");
        assert_eq!(capped("abc", 10), "abc");
        let mut record = CallRecord::default();
        record.set_error("é".repeat(1000));
        assert_eq!(record.error_message.unwrap().len(), ERROR_MESSAGE_MAX_BYTES);
    }

    #[test]
    fn a_long_model_is_read_from_a_prefix_and_capped() {
        let long = format!(r#"{{"model":"{}","stream":true}}"#, "m".repeat(1 << 20));
        let s = RequestSummary::read(long.as_bytes());
        assert_eq!(s.model.unwrap(), "m".repeat(MODEL_MAX_BYTES));
        assert_eq!(s.stream, Some(true));
        // Escapes and multi-byte characters are never cut in the middle.
        for unit in [r"\u00e9", r"\ud83d\ude00", r#"\""#, "é", "😀", r"\u0001"] {
            let json = format!(r#"{{"model":"a{}"}}"#, unit.repeat(2000));
            let model = RequestSummary::read(json.as_bytes()).model.unwrap();
            assert!(model.len() <= MODEL_MAX_BYTES && model.len() > MODEL_MAX_BYTES - 4);
        }
        let number = format!(r#"{{"model":{}}}"#, "1".repeat(5000));
        assert_eq!(RequestSummary::read(number.as_bytes()).model, None);
    }

    #[test]
    fn request_summary() {
        let s = RequestSummary::read(br#"{"model":"gpt-4o","stream":true,"messages":[]}"#);
        assert_eq!(s.model.as_deref(), Some("gpt-4o"));
        assert_eq!(s.stream, Some(true));
        assert!(RequestSummary::read(b"not json").model.is_none());
        // `stream` and `stream_options` as a last-wins parser upstream reads them, escaped
        // keys included: what decides whether keygate asks for a stream's usage.
        let body =
            br#"{"stream":false,"str\u0065am":true,"stream_options":1,"stream_option\u0073":{}}"#;
        let s = RequestSummary::read(body);
        assert_eq!(s.stream, Some(true));
        assert_eq!(&body[s.stream_options.unwrap()], b"{}");
        assert_eq!(s.end, Some(body.len() - 1));
    }
}
