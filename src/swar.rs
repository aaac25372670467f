//! Bytes tested eight at a time in a `u64` (SWAR): which of them are hex digits.

/// `byte` in each of a word's eight bytes.
const fn ones(byte: u8) -> u64 {
    u64::from_le_bytes([byte; 8])
}

/// Whether all eight bytes of `word` (little-endian: the first byte lowest) are ASCII hex
/// digits, either case.
pub fn all_hex_digits(word: u64) -> bool {
    // High bit of each byte of `w` in lo..=hi, exact for bytes below 0x80 (no carries between
    // them; a byte from 0x80 up is masked out below and fails the word anyway).
    let within =
        |w: u64, lo: u8, hi: u8| w.wrapping_add(ones(0x80 - lo)) & !w.wrapping_add(ones(0x7f - hi));
    let letters = within(word | ones(0x20), b'a', b'f');
    let hex = (within(word, b'0', b'9') | letters) & !word;
    hex & ones(0x80) == ones(0x80)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every byte value at every position of an otherwise hex word, against the plain rule.
    #[test]
    fn hex_digits_are_told_from_every_other_byte() {
        for base in [*b"0123abcd", *b"89ABCDEF", *b"ffffffff"] {
            for at in 0..8 {
                for byte in 0..=255u8 {
                    let mut word = base;
                    word[at] = byte;
                    assert_eq!(
                        all_hex_digits(u64::from_le_bytes(word)),
                        word.iter().all(u8::is_ascii_hexdigit),
                        "{word:?}"
                    );
                }
            }
        }
    }
}
