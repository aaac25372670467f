//! Redaction of credentials from texts that are stored (upstream error messages) or exported,
//! and masking of the upstream's credential in error answers relayed to the client.

use bytes::Bytes;

/// What a redacted credential is replaced with.
pub const REDACTED: &str = "[redacted]";

/// `text` without credentials: the upstream's own `secret` (also when cut off at the end of
/// a truncated text), anything after `Bearer `, and `sk-…` style keys.
pub fn redact(text: &str, secret: Option<&str>) -> String {
    let mut text = text.to_string();
    if let Some(secret) = secret.filter(|s| s.len() >= MIN_SECRET_LEN) {
        if text.contains(secret) {
            text = text.replace(secret, REDACTED);
        }
        // A text truncated before it was stored may end with the secret's first part.
        if let Some(start) = cut_off_secret(&text, secret) {
            text.replace_range(start.., REDACTED);
        }
    }
    let text = redact_after(&text, "bearer ", |_| true, 1);
    redact_after(
        &text,
        "sk-",
        |b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-',
        8,
    )
}

/// `data` with every occurrence of `secret` overwritten by `*` (same length, so a declared
/// Content-Length still holds); `data` itself when it has none. For upstream error answers: an
/// upstream that echoes the request's Authorization header must not hand the client its key.
pub fn mask(data: Bytes, secret: &str) -> Bytes {
    let secret = secret.as_bytes();
    if secret.len() < MIN_SECRET_LEN || memchr::memmem::find(&data, secret).is_none() {
        return data;
    }
    let mut masked = data.to_vec();
    let mut at = 0;
    while let Some(found) = memchr::memmem::find(&masked[at..], secret) {
        let start = at + found;
        masked[start..start + secret.len()].fill(b'*');
        at = start + secret.len();
    }
    Bytes::from(masked)
}

/// Shorter secrets are not searched for (they would match ordinary words).
const MIN_SECRET_LEN: usize = 8;

/// A text ending with this much of the secret's start is taken to be a cut-off secret.
const MIN_CUT_OFF_LEN: usize = 12;

/// Where `text` ends with at least `MIN_CUT_OFF_LEN` bytes of the start of `secret`.
fn cut_off_secret(text: &str, secret: &str) -> Option<usize> {
    (MIN_CUT_OFF_LEN..secret.len())
        .rev()
        .filter(|&n| secret.is_char_boundary(n))
        .find(|&n| text.ends_with(&secret[..n]))
        .map(|n| text.len() - n)
}

/// Replaces each run of `min` or more bytes that `in_token` accepts (and that is not
/// whitespace) after `marker` (matched ignoring ASCII case, at a word start) with `REDACTED`;
/// the marker stays so the text still says what was there.
fn redact_after(text: &str, marker: &str, in_token: fn(u8) -> bool, min: usize) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut at = 0;
    while let Some(found) = find_ignore_case(&bytes[at..], marker.as_bytes()) {
        let start = at + found;
        let token_start = start + marker.len();
        let at_word_start = start == 0 || !is_token_byte(bytes[start - 1]);
        let token_len = bytes[token_start..]
            .iter()
            .take_while(|&&b| !b.is_ascii_whitespace() && in_token(b))
            .count();
        if at_word_start && token_len >= min {
            out.push_str(&text[copied..token_start]);
            out.push_str(REDACTED);
            copied = token_start + token_len;
            at = copied;
        } else {
            at = token_start;
        }
    }
    out.push_str(&text[copied..]);
    out
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

fn find_ignore_case(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window.eq_ignore_ascii_case(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masking_keeps_the_length_and_hides_every_occurrence() {
        let data = Bytes::from_static(b"got Bearer sk-secret-123456 and sk-secret-123456!");
        let masked = mask(data.clone(), "sk-secret-123456");
        assert_eq!(masked.len(), data.len());
        assert_eq!(
            &masked[..],
            b"got Bearer **************** and ****************!"
        );
        let clean = Bytes::from_static(b"nothing here");
        assert_eq!(mask(clean.clone(), "sk-secret-123456"), clean);
    }

    #[test]
    fn redacts_the_secret_bearer_tokens_and_sk_keys() {
        let secret = Some("upstream-secret-123");
        assert_eq!(
            redact("bad key upstream-secret-123 given", secret),
            "bad key [redacted] given"
        );
        assert_eq!(
            redact("Authorization: Bearer abc.def/ghi= rest", None),
            "Authorization: Bearer [redacted] rest"
        );
        assert_eq!(
            redact("authorization: bearer sk-proj-AbC_123456789", None),
            "authorization: bearer [redacted]"
        );
        assert_eq!(
            redact(
                "Incorrect API key provided: sk-ant-api03-xyzXYZ01234.",
                None
            ),
            "Incorrect API key provided: sk-[redacted]."
        );
        assert_eq!(
            redact("cut off at the end: upstream-secr", secret),
            "cut off at the end: [redacted]"
        );
        // Ordinary words stay.
        for text in ["task-abcdefghijk done", "sk-short", "Bearer", "upstream-se"] {
            assert_eq!(redact(text, secret), text);
        }
        assert_eq!(redact("é Bearer é x", None), "é Bearer [redacted] x");
    }
}
