//! A JSON object skimmed from its end: the last top-level member of a name, for an answer's
//! `usage`, which follows the long part of the answer (`choices`, `content`).

use super::json_scan::is_ws;

/// The raw text of the last member `name` at the top level of the object that `json` ends
/// with (whitespace after it allowed); `None` if it has none, or if the text, read from its
/// end, is not an object this skim can walk back over. As with `json_scan::top_level_fields`,
/// values are checked for their extent only and keys compared as written (escapes not
/// decoded); unlike it, the last of duplicate keys is the one read (as Python's `json` and
/// JavaScript's `JSON.parse` read them), and nothing before that member is looked at.
pub fn last_top_level_field<'a>(json: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let close = last_non_ws(json, json.len())?;
    if json[close] != b'}' {
        return None;
    }
    // Members are walked from the last: `end` is where the text left to walk ends.
    let mut end = close;
    loop {
        let value_last = last_non_ws(json, end)?;
        let value_start = value_start(json, value_last)?;
        let colon = last_non_ws(json, value_start)?;
        if json[colon] != b':' {
            return None;
        }
        let key_close = last_non_ws(json, colon)?;
        if json[key_close] != b'"' {
            return None;
        }
        let key_open = string_start(json, key_close)?;
        // A member follows a comma or the object's brace.
        let before = last_non_ws(json, key_open)?;
        if !matches!(json[before], b',' | b'{') {
            return None;
        }
        if &json[key_open + 1..key_close] == name.as_bytes() {
            return Some(&json[value_start..=value_last]);
        }
        if json[before] == b'{' {
            return None; // that was the first member
        }
        end = before;
    }
}

/// The index of the last byte of `json[..end]` that is not whitespace.
fn last_non_ws(json: &[u8], end: usize) -> Option<usize> {
    json[..end].iter().rposition(|&b| !is_ws(b))
}

/// The index where the value whose last byte is `json[last]` starts.
fn value_start(json: &[u8], last: usize) -> Option<usize> {
    match json[last] {
        b'"' => string_start(json, last),
        b'}' | b']' => container_start(json, last),
        _ => {
            // A number or a literal: its bytes are among these (its grammar is not checked).
            let scalar = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.');
            let start = json[..=last]
                .iter()
                .rposition(|&b| !scalar(b))
                .map_or(0, |i| i + 1);
            (start <= last).then_some(start)
        }
    }
}

/// The index of the quote that opens the string closed by the quote at `json[close]`: the
/// nearest quote before it that no backslash escapes (one preceded by an even run of them).
fn string_start(json: &[u8], close: usize) -> Option<usize> {
    let mut at = close;
    loop {
        at = memchr::memrchr(b'"', &json[..at])?;
        let backslashes = json[..at].iter().rev().take_while(|&&b| b == b'\\').count();
        if backslashes % 2 == 0 {
            return Some(at);
        }
    }
}

/// The index of the bracket or brace that opens the container closed at `json[close]`
/// (brackets are counted, not paired by kind: its extent is all this skim needs).
fn container_start(json: &[u8], close: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut at = close;
    loop {
        match json[at] {
            b'}' | b']' => depth += 1,
            b'{' | b'[' => {
                depth -= 1;
                if depth == 0 {
                    return Some(at);
                }
            }
            b'"' => at = string_start(json, at)?,
            _ => {}
        }
        at = at.checked_sub(1)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relay::json_scan::top_level_fields;
    use proptest::prelude::*;
    use serde_json::Value;

    fn usage(json: &str) -> Option<&str> {
        last_top_level_field(json.as_bytes(), "usage").map(|raw| std::str::from_utf8(raw).unwrap())
    }

    #[test]
    fn the_usage_of_an_answer_is_found_from_its_end() {
        let answer = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"gpt-4o-mini",
            "choices":[{"index":0,"message":{"role":"assistant","content":"a \"usage\": {} b\\"},
            "finish_reason":"stop"}],
            "usage": {"prompt_tokens":5,"completion_tokens":7,"total_tokens":12,
                "prompt_tokens_details":{"cached_tokens":0}} ,
            "system_fingerprint":"fp_\\\"x\"", "n": -1.5e+3, "t": true, "e": [], "o": {} }
        "#;
        assert_eq!(
            usage(answer),
            Some(
                r#"{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12,
                "prompt_tokens_details":{"cached_tokens":0}}"#
            )
        );
        // The last of two, as the client's parser reads it; one inside a value is not the
        // object's; an escaped key is not compared decoded.
        assert_eq!(usage(r#"{"usage":1,"x":{"usage":3},"usage":2}"#), Some("2"));
        assert_eq!(usage(r#"{"x":{"usage":3},"y":[{"usage":4}]}"#), None);
        assert_eq!(usage(r#"{"us\u0061ge":1}"#), None);
        assert_eq!(usage(r#"{"usage":null}"#), Some("null"));
        assert_eq!(usage(r#"{"usage":"a\\"}"#), Some(r#""a\\""#));
    }

    #[test]
    fn what_is_not_an_object_read_from_its_end_has_none() {
        for json in [
            "",
            "   ",
            "{}",
            "}",
            "[]",
            r#"["usage",1]"#,
            r#"{"usage":1"#,
            r#"{"usage":1,}"#,
            r#"{"usage":}"#,
            r#"{"usage"1}"#,
            r#"{usage:1}"#,
            r#"{"x":1 "y":2}"#,
            r#"{"x":1}x"#,
            r#""usage":1}"#,
            r#"{"x":"unterminated}"#,
            r#"{"x":]}"#,
            r#"{"x":{}}}"#,
        ] {
            assert_eq!(usage(json), None, "{json}");
        }
    }

    /// A JSON value of any kind, nested a few levels, with keys (`usage` among them) and
    /// strings full of what a backward reader could mistake for structure.
    fn value() -> impl Strategy<Value = Value> {
        let text = prop::sample::select(vec![
            "",
            "usage",
            "\"",
            "\\",
            "\\\"",
            "\"usage\":{",
            "}",
            "]",
            ",",
            "é€😀",
            "a\nb",
        ])
        .prop_map(String::from);
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e9f64..1e9).prop_map(Value::from),
            text.clone().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 5, move |inner| {
            let key = prop_oneof![
                Just("usage".to_string()),
                text.clone(),
                Just("usage\\".to_string())
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::vec((key, inner), 0..5)
                    .prop_map(|members| Value::Object(members.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 5000, failure_persistence: None, ..ProptestConfig::default() })]

        /// On valid JSON (keys unique, as serde_json writes it, compact or pretty), the
        /// backward skim finds what the forward one and a parser find.
        #[test]
        fn reads_valid_objects_as_the_forward_skim_does(
            members in prop::collection::vec((prop::sample::select(vec!["usage", "id", "choices", "x"]), value()), 0..6),
            pretty in any::<bool>(),
        ) {
            let object = Value::Object(members.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
            let text = if pretty { serde_json::to_string_pretty(&object) } else { serde_json::to_string(&object) }.unwrap();
            let back = last_top_level_field(text.as_bytes(), "usage");
            let [forward] = top_level_fields(text.as_bytes(), ["usage"]).unwrap();
            prop_assert_eq!(back, forward, "{}", text);
            // Compared with the text parsed whole (floats need not survive a round trip).
            let whole: Value = serde_json::from_str(&text).unwrap();
            let parsed = back.map(|raw| serde_json::from_slice::<Value>(raw).unwrap());
            prop_assert_eq!(parsed.as_ref(), whole.get("usage"), "{}", text);
        }

        /// Any bytes at all: an answer or none, never a panic; an answer is a member's value,
        /// after a colon and before a comma or the closing brace.
        #[test]
        fn any_bytes_are_skimmed_without_a_panic(
            pieces in prop::collection::vec(prop::sample::select(vec![
                &b"{"[..], b"}", b"[", b"]", b"\"", b"\\", b":", b",", b" ", b"\"usage\"", b"\"usage\":",
                b"1", b"-", b"null", b"\xff", b"x",
            ]), 0..24),
        ) {
            let json = pieces.concat();
            if let Some(raw) = last_top_level_field(&json, "usage") {
                let start = raw.as_ptr() as usize - json.as_ptr() as usize;
                let end = start + raw.len();
                prop_assert!(!raw.is_empty());
                let before = json[..start].iter().rposition(|&b| !is_ws(b)).map(|i| json[i]);
                let after = json[end..].iter().find(|&&b| !is_ws(b)).copied();
                prop_assert_eq!(before, Some(b':'), "{:?}", String::from_utf8_lossy(&json));
                prop_assert!(matches!(after, Some(b',' | b'}')), "{:?}", String::from_utf8_lossy(&json));
            }
        }
    }
}
