//! Finds the raw values of a few top-level fields of a JSON object, skipping the rest without
//! parsing it: the relay needs `model`, `stream`, `usage` and `error` out of bodies it only
//! forwards, and a full parse of a long conversation costs far more than a skim.

use std::borrow::Cow;
use std::ops::Range;

use memchr::memchr2;

use super::json_runs::special_in_blocks;

/// The raw JSON text of each `names[i]` at the top level of the object `json` (the first
/// occurrence wins); `None` if `json` is not an object this skim can walk (the caller then
/// has nothing to read). Values are checked only for their extent, not their validity.
pub fn top_level_fields<'a, const N: usize>(
    json: &'a [u8],
    names: [&str; N],
) -> Option<[Option<&'a [u8]>; N]> {
    let mut found = [None; N];
    walk_object(json, |member| {
        // An escaped key would need decoding to compare; no field we look for has one.
        if let Some(i) = names.iter().position(|name| name.as_bytes() == member.key) {
            found[i].get_or_insert(&json[member.value.clone()]);
        }
    })?;
    Some(found)
}

/// One member of an object, as byte ranges of the text walked.
#[derive(Clone, Debug)]
pub struct Member<'a> {
    /// The key's raw text between its quotes (escapes not decoded).
    pub key: &'a [u8],
    /// From the key's opening quote to the end of the value.
    pub span: Range<usize>,
    /// The value's raw text.
    pub value: Range<usize>,
}

/// Calls `visit` with each member of the object at the start of `json` (after whitespace), in
/// order; returns the index of the object's closing brace, or `None` if `json` does not start
/// with an object this skim can walk (members already visited were still visited).
pub fn walk_object<'a>(json: &'a [u8], visit: impl FnMut(Member<'a>)) -> Option<usize> {
    walk_members(json, string_end, value_end, visit)
}

/// The walk of `walk_object` with the given scans: `string_end` for keys and `value_end` for
/// values (each the index just past what starts at `json[at]`, or None).
pub(super) fn walk_members<'a>(
    json: &'a [u8],
    string_end: impl Fn(&[u8], usize) -> Option<usize>,
    value_end: impl Fn(&[u8], usize) -> Option<usize>,
    mut visit: impl FnMut(Member<'a>),
) -> Option<usize> {
    let mut at = skip_ws(json, 0);
    if json.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_ws(json, at + 1);
    if json.get(at) == Some(&b'}') {
        return Some(at);
    }
    loop {
        if json.get(at) != Some(&b'"') {
            return None;
        }
        let key_start = at;
        let key_end = string_end(json, at)?;
        at = skip_ws(json, key_end);
        if json.get(at) != Some(&b':') {
            return None;
        }
        let start = skip_ws(json, at + 1);
        let end = value_end(json, start)?;
        visit(Member {
            key: &json[key_start + 1..key_end - 1],
            span: key_start..end,
            value: start..end,
        });
        at = skip_ws(json, end);
        match json.get(at) {
            Some(b',') => at = skip_ws(json, at + 1),
            Some(b'}') => return Some(at),
            _ => return None,
        }
    }
}

/// A member's key with its escapes decoded: borrowed unless it has a backslash (then decoded
/// into a copy; a key that does not decode is left as it is).
pub fn key_text(key: &[u8]) -> Cow<'_, [u8]> {
    decoded_key(key).unwrap_or(Cow::Borrowed(key))
}

/// A member's key decoded (borrowed unless it has an escape); `None` if an escape does not
/// decode (a lone surrogate): a strict parser refuses the text then.
pub fn decoded_key(key: &[u8]) -> Option<Cow<'_, [u8]>> {
    if memchr::memchr(b'\\', key).is_none() {
        return Some(Cow::Borrowed(key));
    }
    decode_string(key).map(|text| Cow::Owned(text.into_bytes()))
}

/// The text between a string's quotes, its escapes decoded (by serde_json, which refuses a
/// lone surrogate).
pub(super) fn decode_string(inner: &[u8]) -> Option<String> {
    let mut quoted = Vec::with_capacity(inner.len() + 2);
    quoted.push(b'"');
    quoted.extend_from_slice(inner);
    quoted.push(b'"');
    serde_json::from_slice(&quoted).ok()
}

/// JSON's whitespace (not form feed).
pub(super) fn is_ws(byte: u8) -> bool {
    matches!(byte, b' ' | b'\t' | b'\n' | b'\r')
}

pub fn skip_ws(json: &[u8], mut at: usize) -> usize {
    while json.get(at).is_some_and(|&b| is_ws(b)) {
        at += 1;
    }
    at
}

/// `json[at]` opens a string: the index just past its closing quote.
pub(super) fn string_end(json: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    loop {
        i = quote_or_backslash(json, i)?;
        if json[i] == b'"' {
            return Some(i + 1);
        }
        i += 2; // an escape: the backslash and the character it escapes
    }
}

/// Bytes looked at sixteen (or, near the end, eight) at a time before `memchr2` takes over:
/// most strings in a request or an answer are shorter (keys, roles, ids), and `memchr2` costs
/// more to set up than that.
const SHORT_SCAN: usize = 32;

/// The index of the first quote or backslash from `i` on.
fn quote_or_backslash(json: &[u8], i: usize) -> Option<usize> {
    let stop = i + SHORT_SCAN;
    // Whether the string is ASCII is not the skim's concern.
    let mut i = match special_in_blocks(json, i, stop, false, &mut true) {
        Ok(special) => return Some(special),
        Err(rest) => rest,
    };
    while i < stop {
        let Some(word) = word_at(json, i) else { break };
        let found = zero_byte(word ^ splat(b'"')) | zero_byte(word ^ splat(b'\\'));
        if found != 0 {
            return Some(i + first_flagged(found));
        }
        i += 8;
    }
    Some(i + memchr2(b'"', b'\\', json.get(i..)?)?)
}

/// The eight bytes of `json` from `i`, little-endian (the first byte lowest); None past the end.
pub(super) fn word_at(json: &[u8], i: usize) -> Option<u64> {
    let bytes: [u8; 8] = json.get(i..i + 8)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes))
}

/// `byte` in each of a word's eight bytes.
pub(super) const fn splat(byte: u8) -> u64 {
    0x0101_0101_0101_0101 * byte as u64
}

/// Flags (high bit) the zero bytes of `word`. Exact for the lowest flagged byte (a borrow can
/// only flag bytes above a zero one), which is all `first_flagged` reads.
pub(super) const fn zero_byte(word: u64) -> u64 {
    word.wrapping_sub(splat(1)) & !word & splat(0x80)
}

/// Flags the bytes of `word` below `limit` (at most 0x80), with `zero_byte`'s exactness.
pub(super) const fn byte_below(word: u64, limit: u8) -> u64 {
    word.wrapping_sub(splat(limit)) & !word & splat(0x80)
}

/// The position of the lowest flagged byte of a non-zero `flags`.
pub(super) fn first_flagged(flags: u64) -> usize {
    (flags.trailing_zeros() / 8) as usize
}

/// The index just past the value starting at `json[at]`.
fn value_end(json: &[u8], at: usize) -> Option<usize> {
    match json.get(at)? {
        b'"' => string_end(json, at),
        b'{' | b'[' => super::json_nested::nested_end(json, at),
        _ => {
            let len = json[at..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(json.len() - at);
            (len > 0).then_some(at + len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(found: Option<&[u8]>) -> Option<&str> {
        found.map(|raw| std::str::from_utf8(raw).unwrap())
    }

    #[test]
    fn finds_top_level_fields_only() {
        let json =
            br#" { "messages": [{"role":"user","model":"inner","content":"a \"quoted\" } ] {"}],
            "model" : "gpt-4o", "n": -1.5e3, "stream":true, "usage": {"total_tokens": 3},
            "model": "second" } "#;
        let [model, stream, usage, missing] =
            top_level_fields(json, ["model", "stream", "usage", "error"]).unwrap();
        assert_eq!(text(model), Some(r#""gpt-4o""#));
        assert_eq!(text(stream), Some("true"));
        assert_eq!(text(usage), Some(r#"{"total_tokens": 3}"#));
        assert_eq!(missing, None);
    }

    #[test]
    fn escapes_and_empty_objects() {
        let json = br#"{"a\\":"\\","model":"x\"y"}"#;
        let [model] = top_level_fields(json, ["model"]).unwrap();
        assert_eq!(text(model), Some(r#""x\"y""#));
        assert_eq!(top_level_fields(b"{}", ["model"]), Some([None]));
    }

    #[test]
    fn strings_end_at_their_closing_quote_whatever_their_length() {
        // Quotes and escapes at every offset of the first 48 bytes of a string (`memchr2`
        // looks at 16 or 32 bytes at a time).
        for len in 0..48 {
            let pad = "p".repeat(len);
            for value in [
                format!(r#""{pad}""#),
                format!(r#""{pad}\"x""#),
                format!(r#""{pad}\\""#),
                format!(r#""{pad}\u0022{pad}""#),
            ] {
                let key = format!("k{pad}");
                let json = format!(r#"{{"{key}":{value},"model":"m"}}"#);
                let [k, model] = top_level_fields(json.as_bytes(), [key.as_str(), "model"])
                    .unwrap_or_else(|| panic!("{json}"));
                assert_eq!(text(k), Some(value.as_str()), "{json}");
                assert_eq!(text(model), Some(r#""m""#), "{json}");
                // Cut anywhere inside the value: not a whole object.
                let cut = &json.as_bytes()[..key.len() + 4 + value.len() - 1];
                assert_eq!(top_level_fields(cut, ["model"]), None, "{json}");
            }
        }
    }

    #[test]
    fn nested_values_end_at_their_closing_bracket_at_any_offset() {
        // Brackets, quotes and braces inside strings at every offset of the 8-byte words.
        for len in 0..20 {
            let pad = "1,".repeat(len);
            for value in [
                format!("[{pad}0]"),
                format!(r#"{{"a":[{pad}{{}}],"b":"]}}{pad}"}}"#),
                format!(r#"[[{pad}"[", {{"x":"\"}}"}}], [] ]"#),
                format!("{{\"k\":{{\"k\":[{pad}[]]}}}}"),
            ] {
                let json = format!(r#"{{"v":{value},"model":"m"}}"#);
                let [v, model] = top_level_fields(json.as_bytes(), ["v", "model"])
                    .unwrap_or_else(|| panic!("{json}"));
                assert_eq!(text(v), Some(value.as_str()), "{json}");
                assert_eq!(text(model), Some(r#""m""#), "{json}");
                let cut = &json.as_bytes()[..5 + value.len() - 1];
                assert_eq!(top_level_fields(cut, ["model"]), None, "{json}");
            }
        }
    }

    #[test]
    fn not_an_object_or_cut_short() {
        for json in [
            &b"[1,2]"[..],
            b"not json",
            b"",
            br#"{"model":"gpt"#,
            br#"{"messages":[{"a":1}"#,
            br#"{"model" "x"}"#,
            br#"{"model":}"#,
        ] {
            assert_eq!(top_level_fields(json, ["model"]), None, "{json:?}");
        }
    }
}
