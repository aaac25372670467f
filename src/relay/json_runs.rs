//! Where a run of plain bytes inside a JSON string ends (its next quote or backslash, and, read
//! strictly, control character), looked for sixteen bytes at a time.

/// Bytes per block.
const BLOCK: usize = 16;

/// The index of the first quote or backslash (and, with `controls`, byte below 0x20) in the
/// whole 16-byte blocks of `json` from `i`, looking no further than the block that starts
/// before `stop`; `Err` with where the blocks ended (the caller looks at what is left its own
/// way: fewer than 16 bytes, or past `stop`).
#[cfg(target_arch = "x86_64")]
pub(super) fn special_in_blocks(
    json: &[u8],
    mut i: usize,
    stop: usize,
    controls: bool,
) -> Result<usize, usize> {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    while i < stop {
        let Some(block) = json.get(i..i + BLOCK) else {
            break;
        };
        // SAFETY: SSE2 is part of x86_64, so its intrinsics can always run; `block` is 16
        // readable bytes, loaded unaligned.
        let found = unsafe {
            let bytes = _mm_loadu_si128(block.as_ptr().cast::<__m128i>());
            let equal = |byte: u8| _mm_cmpeq_epi8(bytes, _mm_set1_epi8(byte as i8));
            let mut special = _mm_or_si128(equal(b'"'), equal(b'\\'));
            if controls {
                // Below 0x20, unsigned: the larger of the byte and 0x1f is 0x1f.
                let highest = _mm_set1_epi8(0x1f);
                special = _mm_or_si128(
                    special,
                    _mm_cmpeq_epi8(_mm_max_epu8(bytes, highest), highest),
                );
            }
            _mm_movemask_epi8(special) as u32
        };
        if found != 0 {
            return Ok(i + found.trailing_zeros() as usize);
        }
        i += BLOCK;
    }
    Err(i)
}

/// Elsewhere the callers' own word-at-a-time scans do it all.
#[cfg(not(target_arch = "x86_64"))]
pub(super) fn special_in_blocks(
    _json: &[u8],
    i: usize,
    _stop: usize,
    _controls: bool,
) -> Result<usize, usize> {
    Err(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every special byte (and a few that are not) at every offset of 48 bytes, from every
    /// start within the first block, against a byte-by-byte look.
    #[test]
    fn finds_the_first_special_byte_of_the_blocks() {
        for controls in [false, true] {
            let special = |b: u8| b == b'"' || b == b'\\' || (controls && b < 0x20);
            for byte in [b'"', b'\\', 0x00, 0x01, 0x1f, 0x20, 0x7f, 0x80, 0xff, b'a'] {
                for at in 0..48 {
                    let mut json = vec![b'x'; 48];
                    json[at] = byte;
                    for start in 0..16 {
                        let whole_blocks_end = start + (48 - start) / BLOCK * BLOCK;
                        let expected = (start..whole_blocks_end).find(|&k| special(json[k]));
                        let found = special_in_blocks(&json, start, usize::MAX, controls);
                        match expected {
                            Some(k) if cfg!(target_arch = "x86_64") => {
                                assert_eq!(found, Ok(k), "{byte:#x} at {at} from {start}")
                            }
                            _ => assert!(found.is_err(), "{byte:#x} at {at} from {start}"),
                        }
                        // `stop` ends the look at the block that starts before it.
                        let stopped = special_in_blocks(&json, start, start + 1, controls);
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
