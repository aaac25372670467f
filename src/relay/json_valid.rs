//! A strict walk of a JSON object: the members of its top level, found only if the whole text
//! is valid JSON (RFC 8259), so that what it finds is what any conforming parser reads. The
//! relay checks a restricted key's `model` with it, in one pass instead of a parse.

use super::json_runs::special_in_blocks;
use super::json_scan::{
    byte_below, decode_string, first_flagged, is_ws, skip_ws, splat, walk_members, word_at,
    zero_byte, Member,
};

/// Containers open at once that are tracked without allocating (deeper ones spill to the heap:
/// like serde_json skipping a value, the walk sets no limit on nesting).
const INLINE_DEPTH: usize = 128;

/// The containers open around the walk, innermost last (true: an object).
struct Open {
    inline: [bool; INLINE_DEPTH],
    spill: Vec<bool>,
    depth: usize,
}

impl Open {
    fn new() -> Self {
        Open {
            inline: [false; INLINE_DEPTH],
            spill: Vec::new(),
            depth: 0,
        }
    }

    fn push(&mut self, object: bool) {
        match self.inline.get_mut(self.depth) {
            Some(slot) => *slot = object,
            None => self.spill.push(object),
        }
        self.depth += 1;
    }

    fn pop(&mut self) {
        self.depth -= 1;
        if self.depth >= INLINE_DEPTH {
            self.spill.pop();
        }
    }

    /// Whether the innermost container is an object; None outside any.
    fn innermost(&self) -> Option<bool> {
        match self.depth {
            0 => None,
            d if d <= INLINE_DEPTH => Some(self.inline[d - 1]),
            _ => self.spill.last().copied(),
        }
    }
}

/// As `json_scan::walk_object`, for valid JSON only: calls `visit` with each member of the
/// object that `json` holds (whitespace around it allowed, nothing else) and returns the
/// index of its closing brace; `None` if `json` is not exactly one valid JSON object in UTF-8
/// (members visited before the fault was found were still visited: discard them then).
pub fn walk_valid_object<'a>(json: &'a [u8], visit: impl FnMut(Member<'a>)) -> Option<usize> {
    // UTF-8 is checked string by string (`string_end`): outside strings the grammar admits
    // only ASCII.
    let close = walk_members(json, string_end, value_end, visit)?;
    (skip_ws(json, close + 1) == json.len()).then_some(close)
}

/// The text of the JSON string `raw` (with its quotes) decoded, as serde_json reads it into a
/// `String`; `None` if `raw` is not exactly one valid string. Without an escape (most strings)
/// it is copied as it is.
pub fn string_value(raw: &[u8]) -> Option<String> {
    // Whitespace around the string is allowed, as serde_json allows it.
    let start = skip_ws(raw, 0);
    let end = raw
        .iter()
        .rposition(|&b| !is_ws(b))
        .map_or(start, |last| last + 1);
    let inner = raw[start..end.max(start)]
        .strip_prefix(b"\"")?
        .strip_suffix(b"\"")?;
    if plain_run_end(inner, 0, &mut true) == inner.len() {
        return std::str::from_utf8(inner).ok().map(String::from);
    }
    decode_string(inner)
}

/// The index just past the valid JSON value at `json[at]`.
fn value_end(json: &[u8], mut at: usize) -> Option<usize> {
    let mut open = Open::new();
    loop {
        // A value starts at `at`.
        match *json.get(at)? {
            b'"' => at = string_end(json, at)?,
            b'{' | b'[' => {
                let object = json[at] == b'{';
                at = skip_ws(json, at + 1);
                if json.get(at) == Some(if object { &b'}' } else { &b']' }) {
                    // Empty: closed at once, a value like any other.
                    at += 1;
                } else {
                    open.push(object);
                    if object {
                        at = member_value_start(json, at)?;
                    }
                    continue;
                }
            }
            b't' => at = literal_end(json, at, b"true")?,
            b'f' => at = literal_end(json, at, b"false")?,
            b'n' => at = literal_end(json, at, b"null")?,
            b'-' | b'0'..=b'9' => at = number_end(json, at)?,
            _ => return None,
        }
        // After a value: the next member or element, or the end of containers.
        loop {
            let Some(object) = open.innermost() else {
                return Some(at);
            };
            at = skip_ws(json, at);
            match *json.get(at)? {
                b',' if object => {
                    at = member_value_start(json, skip_ws(json, at + 1))?;
                    break;
                }
                b',' => {
                    at = skip_ws(json, at + 1);
                    break;
                }
                b'}' if object => {}
                b']' if !object => {}
                _ => return None,
            }
            open.pop();
            at += 1;
        }
    }
}

/// `json[at]` starts a member (`"key" : value`): the index where its value starts.
fn member_value_start(json: &[u8], at: usize) -> Option<usize> {
    if json.get(at) != Some(&b'"') {
        return None;
    }
    let at = skip_ws(json, string_end(json, at)?);
    if json.get(at) != Some(&b':') {
        return None;
    }
    Some(skip_ws(json, at + 1))
}

fn literal_end(json: &[u8], at: usize, literal: &[u8]) -> Option<usize> {
    json[at..]
        .starts_with(literal)
        .then_some(at + literal.len())
}

/// `json[at]` starts a number: the index just past it, if it is one by JSON's grammar
/// (`-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`).
fn number_end(json: &[u8], mut at: usize) -> Option<usize> {
    let digits = |at: usize| {
        json.get(at..).map_or(0, |rest| {
            rest.iter().take_while(|b| b.is_ascii_digit()).count()
        })
    };
    if json[at] == b'-' {
        at += 1;
    }
    match json.get(at)? {
        b'0' => at += 1,
        b'1'..=b'9' => at += digits(at),
        _ => return None,
    }
    if json.get(at) == Some(&b'.') {
        let n = digits(at + 1);
        if n == 0 {
            return None;
        }
        at += 1 + n;
    }
    if matches!(json.get(at), Some(b'e' | b'E')) {
        at += 1;
        if matches!(json.get(at), Some(b'+' | b'-')) {
            at += 1;
        }
        let n = digits(at);
        if n == 0 {
            return None;
        }
        at += n;
    }
    Some(at)
}

/// `json[at]` opens a string: the index just past its closing quote, if every escape in it is
/// one of JSON's, it holds no control character and it is UTF-8 (looked at only when a byte
/// from 0x80 up was seen on the way).
fn string_end(json: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    let mut ascii = true;
    loop {
        i = plain_run_end(json, i, &mut ascii);
        match *json.get(i)? {
            b'"' => {
                if !ascii {
                    std::str::from_utf8(&json[at + 1..i]).ok()?;
                }
                return Some(i + 1);
            }
            b'\\' => {
                // Escapes often come in a row (text escaped to ASCII, as Python's `json.dumps`
                // does by default: \u4e2d\u6587): taken one after another, without a look for
                // the next special byte between them.
                while json.get(i) == Some(&b'\\') {
                    i = escape_end(json, i)?;
                }
            }
            _ => return None, // a control character
        }
    }
}

/// `json[at]` is a backslash in a string: the index just past the escape it starts, if it is
/// one of JSON's.
fn escape_end(json: &[u8], at: usize) -> Option<usize> {
    match *json.get(at + 1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(at + 2),
        b'u' => {
            let [a, b, c, d] = json.get(at + 2..at + 6)?.try_into().ok()?;
            crate::swar::all_hex_digits(u64::from_le_bytes([a, b, c, d, b'0', b'0', b'0', b'0']))
                .then_some(at + 6)
        }
        _ => None,
    }
}

/// The first index from `i` that holds a quote, a backslash or a control character (or the
/// end): sixteen bytes at a time, then eight, then one. `ascii` is cleared if a byte from 0x80
/// up was looked at (perhaps past the index returned).
fn plain_run_end(json: &[u8], i: usize, ascii: &mut bool) -> usize {
    let mut i = match special_in_blocks(json, i, usize::MAX, true, ascii) {
        Ok(special) => return special,
        Err(rest) => rest,
    };
    while let Some(word) = word_at(json, i) {
        if word & splat(0x80) != 0 {
            *ascii = false;
        }
        let special =
            zero_byte(word ^ splat(b'"')) | zero_byte(word ^ splat(b'\\')) | byte_below(word, 0x20);
        if special != 0 {
            return i + first_flagged(special);
        }
        i += 8;
    }
    while json
        .get(i)
        .is_some_and(|&b| b != b'"' && b != b'\\' && b >= 0x20)
    {
        *ascii &= json[i] < 0x80;
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 5000, failure_persistence: None, ..ProptestConfig::default() })]

        /// A string value is decoded as serde_json decodes it, whatever the bytes around and
        /// inside (long runs of plain bytes reach past the eight-byte steps).
        #[test]
        fn string_values_are_read_as_serde_json_reads_them(
            pieces in prop::collection::vec(prop::sample::select(vec![
                &b"\""[..], b"\\", b"\\\"", b"\\n", b"\\u0041", b"\\ud83d\\ude00", b"\\ud800", b"\\x",
                b"a", b"plain text ", b" ", b"\r\n", b"\x0c", b"\x01", b"\t", b"\x7f", "é€😀".as_bytes(), b"\xff", b"\xe2\x82",
            ]), 0..12),
        ) {
            let raw = pieces.concat();
            prop_assert_eq!(
                string_value(&raw),
                serde_json::from_slice::<String>(&raw).ok(),
                "{}", String::from_utf8_lossy(&raw)
            );
        }
    }
}
