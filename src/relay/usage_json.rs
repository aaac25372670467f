//! OpenAI's `usage` object, read by hand when it has the shape upstreams send (whole numbers,
//! nulls, flat `*_details` objects) and by serde_json otherwise: the same answer either way, at
//! a fraction of serde's cost on every answer that carries one.

use super::json_scan::{skip_ws, string_end};
use super::record::{TokenDetails, Usage, WireUsage};

/// The usage `raw` (the raw text of a `usage` value) gives, as
/// `serde_json::from_slice::<Option<Usage>>(raw).ok().flatten()` reads it.
pub fn openai_usage(raw: &[u8]) -> Option<Usage> {
    match quick(raw) {
        Some(read) => read,
        None => serde_json::from_slice::<Option<Usage>>(raw).ok()?,
    }
}

/// The index of a `WireUsage` field by its name (`DETAILS` and above: its `*_details`).
fn field(key: &[u8]) -> Option<usize> {
    Some(match key {
        b"prompt_tokens" => 0,
        b"completion_tokens" => 1,
        b"total_tokens" => 2,
        b"input_tokens" => 3,
        b"output_tokens" => 4,
        b"prompt_tokens_details" => DETAILS,
        b"input_tokens_details" => DETAILS + 1,
        _ => return None,
    })
}

const DETAILS: usize = 5;

/// A key serde reads as it stands: printable ASCII without an escape.
fn plain(key: &[u8]) -> bool {
    key.iter().all(|b| (0x20..0x7f).contains(b) && *b != b'\\')
}

/// `raw` read without serde: `Some(answer)` when it is `null` or an object of the shape this
/// reader takes whole, `None` when serde must decide (an escape, a fraction, an exponent, a
/// number past 18 digits, a string, a boolean, a deeper object, a repeated field, anything
/// malformed). Whatever it answers, serde answers the same.
fn quick(raw: &[u8]) -> Option<Option<Usage>> {
    if raw == b"null" {
        return Some(None);
    }
    let mut wire = WireUsage::default();
    let mut seen = 0u8;
    let end = object(raw, 0, |key, at| {
        let Some(field) = field(key) else {
            // Not read (e.g. `completion_tokens_details`): a number, null or a flat object.
            if !plain(key) {
                return None;
            }
            return match raw.get(at)? {
                b'{' => object(raw, at, |key, at| {
                    plain(key).then_some(())?;
                    Some(whole_or_null(raw, at)?.1)
                }),
                _ => Some(whole_or_null(raw, at)?.1),
            };
        };
        // serde refuses an object that repeats a field.
        if seen & (1 << field) != 0 {
            return None;
        }
        seen |= 1 << field;
        if field >= DETAILS {
            let (details, next) = token_details(raw, at)?;
            match field {
                DETAILS => wire.prompt_tokens_details = details,
                _ => wire.input_tokens_details = details,
            }
            return Some(next);
        }
        let (value, next) = whole_or_null(raw, at)?;
        *match field {
            0 => &mut wire.prompt_tokens,
            1 => &mut wire.completion_tokens,
            2 => &mut wire.total_tokens,
            3 => &mut wire.input_tokens,
            _ => &mut wire.output_tokens,
        } = value;
        Some(next)
    })?;
    (end == raw.len()).then(|| Some(Usage::from(wire)))
}

/// A `*_tokens_details` value: null, or a flat object whose `cached_tokens` is read.
fn token_details(json: &[u8], at: usize) -> Option<(Option<TokenDetails>, usize)> {
    if json.get(at) != Some(&b'{') {
        let (value, next) = whole_or_null(json, at)?;
        // A number is not an object: serde refuses it.
        return value.is_none().then_some((None, next));
    }
    let mut cached = None;
    let mut seen = false;
    let end = object(json, at, |key, at| {
        let (value, next) = whole_or_null(json, at)?;
        if key == b"cached_tokens" {
            if seen {
                return None;
            }
            seen = true;
            cached = value;
        } else if !plain(key) {
            return None;
        }
        Some(next)
    })?;
    Some((
        Some(TokenDetails {
            cached_tokens: cached,
        }),
        end,
    ))
}

/// Walks the object at `json[at]`, calling `member(key, value_start)` for each member (its key
/// as it stands between the quotes), which returns the index just past the value; returns the
/// index just past the closing brace.
fn object(
    json: &[u8],
    at: usize,
    mut member: impl FnMut(&[u8], usize) -> Option<usize>,
) -> Option<usize> {
    if json.get(at) != Some(&b'{') {
        return None;
    }
    let mut at = skip_ws(json, at + 1);
    if json.get(at) == Some(&b'}') {
        return Some(at + 1);
    }
    loop {
        if json.get(at) != Some(&b'"') {
            return None;
        }
        let end = string_end(json, at)?;
        let key = &json[at + 1..end - 1];
        at = skip_ws(json, end);
        if json.get(at) != Some(&b':') {
            return None;
        }
        at = skip_ws(json, member(key, skip_ws(json, at + 1))?);
        match json.get(at) {
            Some(b',') => at = skip_ws(json, at + 1),
            Some(b'}') => return Some(at + 1),
            _ => return None,
        }
    }
}

/// The longest run of digits read here: any such number fits an i64.
const MAX_DIGITS: usize = 18;

/// A JSON integer (`0` or `-?[1-9][0-9]*`, at most `MAX_DIGITS` digits) or `null` at `json[at]`,
/// followed by whitespace, a comma or a closing brace; and the index just past it.
fn whole_or_null(json: &[u8], at: usize) -> Option<(Option<i64>, usize)> {
    let rest = json.get(at..)?;
    let (value, len) = if rest.starts_with(b"null") {
        (None, 4)
    } else {
        let negative = rest.first() == Some(&b'-');
        let digits = &rest[usize::from(negative)..];
        let count = digits.iter().take_while(|b| b.is_ascii_digit()).count();
        // serde_json reads `-0` as a float, which no field takes.
        if count == 0 || count > MAX_DIGITS || (digits[0] == b'0' && (count > 1 || negative)) {
            return None;
        }
        let magnitude = digits[..count]
            .iter()
            .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
        let value = if negative { -magnitude } else { magnitude };
        (Some(value), usize::from(negative) + count)
    };
    matches!(
        json.get(at + len),
        Some(b',' | b'}' | b' ' | b'\t' | b'\n' | b'\r')
    )
    .then_some((value, at + len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn serde(raw: &[u8]) -> Option<Usage> {
        serde_json::from_slice::<Option<Usage>>(raw).ok().flatten()
    }

    #[test]
    fn the_shapes_upstreams_send_are_read_without_serde() {
        for raw in [
            &br#"{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}"#[..],
            br#"{ "prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29,
                "prompt_tokens_details": { "cached_tokens": 0, "audio_tokens": 0 },
                "completion_tokens_details": { "reasoning_tokens": 0, "audio_tokens": 0,
                "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0 } }"#,
            br#"{"input_tokens":36,"input_tokens_details":{"cached_tokens":8},"output_tokens":87,
                "output_tokens_details":{"reasoning_tokens":0},"total_tokens":123}"#,
            br#"{"prompt_tokens":3,"completion_tokens":null,"prompt_tokens_details":null}"#,
            b"{}",
            b"null",
        ] {
            let read = quick(raw).unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(raw)));
            assert_eq!(read, serde(raw), "{}", String::from_utf8_lossy(raw));
        }
        let raw = br#"{"prompt_tokens":19,"completion_tokens":10,"prompt_tokens_details":{"cached_tokens":4}}"#;
        assert_eq!(
            quick(raw),
            Some(Some(Usage {
                prompt_tokens: Some(19),
                completion_tokens: Some(10),
                total_tokens: Some(29),
                cache_read_tokens: Some(4),
                cache_write_tokens: None,
            }))
        );
    }

    #[test]
    fn what_serde_must_decide_is_left_to_it() {
        for raw in [
            &br#"{"prompt_tokens":1.0}"#[..],
            br#"{"prompt_tokens":1e3}"#,
            br#"{"prompt_tokens":01}"#,
            br#"{"prompt_tokens":-0}"#,
            br#"{"prompt_tokens":-}"#,
            br#"{"prompt_tokens":1234567890123456789}"#,
            br#"{"prompt_tokens":"5"}"#,
            br#"{"prompt_tokens":5,"prompt_tokens":6}"#,
            br#"{"prompt_tokens_details":{"cached_tokens":1,"cached_tokens":2}}"#,
            br#"{"prompt_tokens_details":5}"#,
            br#"{"prompt\u005ftokens":5}"#,
            br#"{"extra":true}"#,
            br#"{"extra":{"deeper":{}}}"#,
            br#"{"prompt_tokens":5,}"#,
            br#"{"prompt_tokens":5} x"#,
            b"[1]",
            b"nul",
        ] {
            assert_eq!(quick(raw), None, "{}", String::from_utf8_lossy(raw));
        }
    }

    /// A member of a usage-like object: a key (read, unread, escaped) and a value of any kind.
    fn member() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec![
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
            "input_tokens",
            "output_tokens",
            "prompt_tokens_details",
            "input_tokens_details",
            "completion_tokens_details",
            "cached_tokens",
            "other",
            "prompt\\u005ftokens",
            "",
        ]);
        let value = prop::sample::select(vec![
            "0",
            "-0",
            "7",
            "-12",
            "01",
            "1.5",
            "2e2",
            "999999999999999999",
            "1000000000000000000",
            "99999999999999999999",
            "-9223372036854775808",
            "null",
            "true",
            "\"5\"",
            "{}",
            "[]",
            "{\"cached_tokens\":3}",
            "{\"cached_tokens\":null,\"audio_tokens\":1}",
            "{\"cached_tokens\":1,\"cached_tokens\":2}",
            "{\"cached_tokens\":1.0}",
            "{\"a\":{}}",
            "-",
            "",
        ]);
        let space = prop::sample::select(vec!["", " ", "\n\t", "\u{b}"]);
        (key, space.clone(), value, space)
            .prop_map(|(key, before, value, after)| format!("\"{key}\"{before}:{after}{value}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 5000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Whenever the reader answers, serde answers the same.
        #[test]
        fn answers_as_serde_does(members in prop::collection::vec(member(), 0..6), comma in any::<bool>(), tail in prop::sample::select(vec!["", " ", "}", ","])) {
            let raw = format!("{{{}{}}}{}", members.join(","), if comma { "," } else { "" }, tail);
            if let Some(read) = quick(raw.as_bytes()) {
                prop_assert_eq!(read, serde(raw.as_bytes()), "{}", raw);
            }
            prop_assert_eq!(openai_usage(raw.as_bytes()), serde(raw.as_bytes()), "{}", raw);
        }
    }
}
