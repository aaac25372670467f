//! The end of a nested JSON value (an object or an array) for the skim: its quotes, brackets and
//! braces found sixteen bytes at a time, as bit masks, rather than looked at byte by byte.

/// Bytes per block.
const BLOCK: usize = 16;

/// `json[at]` opens an object or an array: the index just past the brace or bracket that closes
/// it, or `None` if `json` ends first. As the skim needs, braces and brackets are counted alike
/// and strings (with their escapes) are skipped; nothing else is checked.
pub fn nested_end(json: &[u8], at: usize) -> Option<usize> {
    let mut scan = Scan::default();
    let mut i = at;
    while i < json.len() {
        let mut last = [0u8; BLOCK];
        let block: &[u8; BLOCK] = match json.get(i..i + BLOCK) {
            Some(full) => full.try_into().ok()?,
            None => {
                // The last bytes, padded with zeros (which are nothing to the scan).
                let rest = &json[i..];
                last[..rest.len()].copy_from_slice(rest);
                &last
            }
        };
        if let Some(end) = scan.block(block) {
            return Some(i + end);
        }
        i += BLOCK;
    }
    None
}

/// Where a scan stands between blocks.
#[derive(Default)]
struct Scan {
    /// Open braces and brackets.
    depth: usize,
    in_string: bool,
    /// The last block ended on a backslash inside a string: the next byte is escaped.
    escaped: bool,
}

impl Scan {
    /// Scans one block; the offset just past the closing brace or bracket if it is in it.
    fn block(&mut self, block: &[u8; BLOCK]) -> Option<usize> {
        let found = Masks::of(block);
        if found.backslash != 0 || self.escaped {
            // Escapes are rare in the structure the skim walks: byte by byte.
            return self.bytes(block);
        }
        // Bit k: the byte is inside a string, or is the quote that opens one.
        let mut quoted = prefix_xor(found.quote);
        if self.in_string {
            quoted ^= 0xffff;
        }
        self.in_string = quoted & 0x8000 != 0;
        let open = found.open & !quoted;
        let close = found.close & !quoted;
        // Bit by bit, without counting them first: x86-64's baseline has no popcnt, and its
        // software count cost more than the few brackets a block usually has.
        let mut marks = open | close;
        while marks != 0 {
            let k = marks.trailing_zeros();
            if open & (1 << k) != 0 {
                self.depth += 1;
            } else {
                self.depth -= 1;
                if self.depth == 0 {
                    return Some(k as usize + 1);
                }
            }
            marks &= marks - 1;
        }
        None
    }

    /// `block`, a byte at a time.
    fn bytes(&mut self, block: &[u8; BLOCK]) -> Option<usize> {
        for (k, &byte) in block.iter().enumerate() {
            if self.escaped {
                self.escaped = false;
            } else if self.in_string {
                match byte {
                    b'\\' => self.escaped = true,
                    b'"' => self.in_string = false,
                    _ => {}
                }
            } else {
                match byte {
                    b'"' => self.in_string = true,
                    b'{' | b'[' => self.depth += 1,
                    b'}' | b']' => {
                        // The value's first byte opened it: depth is at least 1 here.
                        self.depth -= 1;
                        if self.depth == 0 {
                            return Some(k + 1);
                        }
                    }
                    _ => {}
                }
            }
        }
        None
    }
}

/// Bit k of `x ^ x<<1 ^ … ^ x<<k`: whether an odd number of `x`'s bits are at or below k.
fn prefix_xor(mut x: u32) -> u32 {
    x ^= x << 1;
    x ^= x << 2;
    x ^= x << 4;
    x ^= x << 8;
    x & 0xffff
}

/// A block's special bytes, bit k for byte k.
struct Masks {
    quote: u32,
    backslash: u32,
    /// `{` and `[`.
    open: u32,
    /// `}` and `]`.
    close: u32,
}

impl Masks {
    #[cfg(target_arch = "x86_64")]
    fn of(block: &[u8; BLOCK]) -> Masks {
        use std::arch::x86_64::{
            __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
            _mm_set1_epi8,
        };
        // SAFETY: SSE2 is part of x86_64, so its intrinsics can always run; `block` is 16
        // readable bytes, loaded unaligned.
        unsafe {
            let bytes = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
            let equal = |v, byte: u8| {
                _mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(byte as i8))) as u32
            };
            // `[` and `{`, `]` and `}` differ only in their 0x20 bit.
            let folded = _mm_or_si128(bytes, _mm_set1_epi8(0x20));
            Masks {
                quote: equal(bytes, b'"'),
                backslash: equal(bytes, b'\\'),
                open: equal(folded, b'{'),
                close: equal(folded, b'}'),
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn of(block: &[u8; BLOCK]) -> Masks {
        let mut masks = Masks {
            quote: 0,
            backslash: 0,
            open: 0,
            close: 0,
        };
        for (k, &byte) in block.iter().enumerate() {
            let bit = 1 << k;
            match byte {
                b'"' => masks.quote |= bit,
                b'\\' => masks.backslash |= bit,
                b'{' | b'[' => masks.open |= bit,
                b'}' | b']' => masks.close |= bit,
                _ => {}
            }
        }
        masks
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The scan a byte at a time over the whole text: what `nested_end` must answer.
    fn reference(json: &[u8]) -> Option<usize> {
        let mut scan = Scan::default();
        for (i, chunk) in json.chunks(BLOCK).enumerate() {
            let mut block = [0u8; BLOCK];
            block[..chunk.len()].copy_from_slice(chunk);
            if let Some(end) = scan.bytes(&block) {
                return Some(i * BLOCK + end);
            }
        }
        None
    }

    #[test]
    fn ends_at_the_closing_bracket() {
        for (json, end) in [
            (&b"[]"[..], Some(2)),
            (b"{} trailing", Some(2)),
            (br#"{"a":"}]\"}","b":[1,{"c":[]}]} ,"x":1"#, Some(30)),
            (br#"["\\",["]"]] "#, Some(12)),
            (br#"[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]"#, Some(40)),
            (br#"{"a":"unterminated}"#, None),
            (b"[[]", None),
        ] {
            assert_eq!(
                nested_end(json, 0),
                end,
                "{}",
                String::from_utf8_lossy(json)
            );
            assert_eq!(reference(json), end, "{}", String::from_utf8_lossy(json));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 20000, failure_persistence: None, ..ProptestConfig::default() })]

        /// Quotes, escapes, brackets and braces anywhere in and across blocks: the masks read
        /// what the byte-by-byte scan reads.
        #[test]
        fn blocks_read_as_bytes_do(
            open in prop::sample::select(vec![b'{', b'[']),
            rest in prop::collection::vec(prop::sample::select(b"\"\\{}[]a ,:\"\"]}".to_vec()), 0..120),
        ) {
            let mut json = vec![open];
            json.extend(rest);
            prop_assert_eq!(nested_end(&json, 0), reference(&json), "{}", String::from_utf8_lossy(&json));
        }
    }
}
