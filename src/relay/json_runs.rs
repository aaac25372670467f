//! Where a run of plain bytes inside a JSON string ends (its next quote or backslash, and, read
//! strictly, control character), looked for sixteen bytes at a time.

/// Bytes per block.
const BLOCK: usize = 16;

/// The index of the first quote or backslash (and, with `controls`, byte below 0x20) in the
/// whole 16-byte blocks of `json` from `i`, looking no further than the block that starts
/// before `stop`; `Err` with where the blocks ended (the caller looks at what is left its own
/// way: fewer than 16 bytes, or past `stop`). `ascii` is cleared if a block looked at holds a
/// byte from 0x80 up (which may lie past the special byte found).
#[cfg(target_arch = "x86_64")]
pub(super) fn special_in_blocks(
    json: &[u8],
    mut i: usize,
    stop: usize,
    controls: bool,
    ascii: &mut bool,
) -> Result<usize, usize> {
    use std::arch::x86_64::{
        __m128i, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_setzero_si128,
    };
    // SAFETY (each `unsafe` below): SSE2 is part of x86_64, so its intrinsics can always run;
    // each load reads 16 bytes of `json` that the loop's condition checked are there.
    let load = |at: usize| unsafe { _mm_loadu_si128(json.as_ptr().add(at).cast::<__m128i>()) };
    // Every byte looked at, ORed: its high bits say whether any was past ASCII.
    let mut seen = unsafe { _mm_setzero_si128() };
    let mut found = None;
    // One block first: most runs are short (a key, an id, the text between two escapes).
    let block_at = |i: usize, seen: &mut __m128i| {
        let block = load(i);
        unsafe {
            *seen = _mm_or_si128(*seen, block);
            _mm_movemask_epi8(special(block, controls)) as u32
        }
    };
    if i < stop && i + BLOCK <= json.len() {
        let flags = block_at(i, &mut seen);
        if flags != 0 {
            found = Some(i + flags.trailing_zeros() as usize);
        } else {
            i += BLOCK;
        }
    }
    // A long run (a message's text): four blocks at once, their finds merged into one test.
    while found.is_none() && i + 4 * BLOCK <= json.len().min(stop) {
        let blocks = [0, 1, 2, 3].map(|k| load(i + k * BLOCK));
        let any = unsafe {
            let [a, b, c, d] = blocks.map(|block| special(block, controls));
            seen = _mm_or_si128(
                seen,
                _mm_or_si128(
                    _mm_or_si128(blocks[0], blocks[1]),
                    _mm_or_si128(blocks[2], blocks[3]),
                ),
            );
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, d)))
        };
        if any != 0 {
            break; // the block that holds it is found below
        }
        i += 4 * BLOCK;
    }
    while found.is_none() && i < stop && i + BLOCK <= json.len() {
        let flags = block_at(i, &mut seen);
        if flags != 0 {
            found = Some(i + flags.trailing_zeros() as usize);
            break;
        }
        i += BLOCK;
    }
    if unsafe { _mm_movemask_epi8(seen) } != 0 {
        *ascii = false;
    }
    found.ok_or(i)
}

/// The bytes of a block that are quotes or backslashes (and, with `controls`, below 0x20), as
/// 0xff; the others 0.
#[cfg(target_arch = "x86_64")]
fn special(bytes: std::arch::x86_64::__m128i, controls: bool) -> std::arch::x86_64::__m128i {
    use std::arch::x86_64::{_mm_cmpeq_epi8, _mm_max_epu8, _mm_or_si128, _mm_set1_epi8};
    // SAFETY: SSE2 is part of x86_64, so its intrinsics can always run.
    unsafe {
        let equal = |byte: u8| _mm_cmpeq_epi8(bytes, _mm_set1_epi8(byte as i8));
        let quotes = _mm_or_si128(equal(b'"'), equal(b'\\'));
        if !controls {
            return quotes;
        }
        // Below 0x20, unsigned: the larger of the byte and 0x1f is 0x1f.
        let highest = _mm_set1_epi8(0x1f);
        _mm_or_si128(
            quotes,
            _mm_cmpeq_epi8(_mm_max_epu8(bytes, highest), highest),
        )
    }
}

/// Elsewhere the callers' own word-at-a-time scans do it all.
#[cfg(not(target_arch = "x86_64"))]
pub(super) fn special_in_blocks(
    _json: &[u8],
    i: usize,
    _stop: usize,
    _controls: bool,
    _ascii: &mut bool,
) -> Result<usize, usize> {
    Err(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every special byte (and a few that are not) at every offset of 160 bytes (past the
    /// four-block steps), from every start within the first block, against a byte-by-byte look.
    #[test]
    fn finds_the_first_special_byte_of_the_blocks() {
        const LEN: usize = 160;
        for controls in [false, true] {
            let special = |b: u8| b == b'"' || b == b'\\' || (controls && b < 0x20);
            for byte in [b'"', b'\\', 0x00, 0x01, 0x1f, 0x20, 0x7f, 0x80, 0xff, b'a'] {
                for at in 0..LEN {
                    let mut json = vec![b'x'; LEN];
                    json[at] = byte;
                    for start in 0..16 {
                        let whole_blocks_end = start + (LEN - start) / BLOCK * BLOCK;
                        let expected = (start..whole_blocks_end).find(|&k| special(json[k]));
                        let mut ascii = true;
                        let found =
                            special_in_blocks(&json, start, usize::MAX, controls, &mut ascii);
                        // Cleared only for a byte from 0x80 up in a block looked at.
                        let looked_to = match found {
                            Ok(k) => start + (k - start) / BLOCK * BLOCK + BLOCK,
                            Err(end) => end,
                        };
                        let wide = json[start..looked_to].iter().any(|&b| b >= 0x80);
                        assert_eq!(ascii, !wide, "{byte:#x} at {at} from {start}");
                        match expected {
                            Some(k) if cfg!(target_arch = "x86_64") => {
                                assert_eq!(found, Ok(k), "{byte:#x} at {at} from {start}")
                            }
                            _ => assert!(found.is_err(), "{byte:#x} at {at} from {start}"),
                        }
                        // `stop` ends the look at the block that starts before it.
                        let stopped =
                            special_in_blocks(&json, start, start + 1, controls, &mut true);
                        match expected.filter(|&k| k < start + BLOCK) {
                            Some(k) if cfg!(target_arch = "x86_64") => {
                                assert_eq!(stopped, Ok(k))
                            }
                            _ => assert!(stopped.is_err()),
                        }
                    }
                }
            }
        }
    }
}
