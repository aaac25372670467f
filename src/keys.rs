//! Pure key logic: generate, hash, constant-time compare, preview, and the one status rule.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::clock::MS_PER_DAY;

/// A key that expires within this window is `expiring_soon`.
pub const EXPIRING_SOON_MS: i64 = 7 * MS_PER_DAY;

pub type KeyHash = [u8; 32];

/// A new key: a UUID v4 (122 random bits from the OS CSPRNG), lowercase, hyphenated.
pub fn generate() -> String {
    uuid::Uuid::new_v4().hyphenated().to_string()
}

/// The canonical form of a presented key, or None when it is not a UUID
/// (rejected before any lookup). Upper-case hex is accepted and lowered.
pub fn canonical(presented: &str) -> Option<[u8; 36]> {
    let mut bytes: [u8; 36] = presented.as_bytes().try_into().ok()?;
    if HYPHENS.iter().any(|&i| bytes[i] != b'-') {
        return None;
    }
    // Eight bytes at a time (on every request; the last word padded with '0's): each byte a
    // hex digit or, where checked above, a hyphen; lowered by setting 0x20, which leaves
    // digits and hyphens as they are.
    for i in 0..WORDS {
        let end = (8 * i + 8).min(36);
        let mut eight = [b'0'; 8];
        eight[..end - 8 * i].copy_from_slice(&bytes[8 * i..end]);
        let word = u64::from_le_bytes(eight);
        if !crate::swar::all_hex_digits(word ^ HYPHENS_TO_DIGITS[i]) {
            return None;
        }
        let lowered = word | u64::from_le_bytes([0x20; 8]);
        bytes[8 * i..end].copy_from_slice(&lowered.to_le_bytes()[..end - 8 * i]);
    }
    Some(bytes)
}

/// Where a UUID's hyphens are.
const HYPHENS: [usize; 4] = [8, 13, 18, 23];
/// The 8-byte words of a 36-byte key.
const WORDS: usize = 5;
/// Per word of a key, what turns its hyphens into '0's (`canonical` checks them apart).
const HYPHENS_TO_DIGITS: [u64; WORDS] = {
    let mut masks = [0u64; WORDS];
    let mut i = 0;
    while i < HYPHENS.len() {
        masks[HYPHENS[i] / 8] |= ((b'-' ^ b'0') as u64) << (8 * (HYPHENS[i] % 8));
        i += 1;
    }
    masks
};

pub fn hash(key: impl AsRef<[u8]>) -> KeyHash {
    Sha256::digest(key.as_ref()).into()
}

pub fn hash_hex(key: &str) -> String {
    hex::encode(hash(key))
}

/// Decodes a stored hex hash; None if the stored text is not a SHA-256 hex digest.
pub fn decode_hash(hex_text: &str) -> Option<KeyHash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut out).ok()?;
    Some(out)
}

/// Constant-time equality of two hashes.
pub fn hashes_match(a: &KeyHash, b: &KeyHash) -> bool {
    a.ct_eq(b).into()
}

/// The masked display form: first and last four characters, never enough to authenticate.
pub fn preview(key: &str) -> String {
    let head: String = key.chars().take(4).collect();
    let tail: String = key
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{head}…{tail}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExpirationMode {
    #[default]
    Fixed,
    Activation,
}

impl ExpirationMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ExpirationMode::Fixed => "fixed",
            ExpirationMode::Activation => "activation",
        }
    }

    pub fn parse(text: &str) -> Self {
        if text == "activation" {
            ExpirationMode::Activation
        } else {
            ExpirationMode::Fixed
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ActivationUnit {
    Hours,
    Days,
}

impl ActivationUnit {
    pub fn as_str(self) -> &'static str {
        match self {
            ActivationUnit::Hours => "hours",
            ActivationUnit::Days => "days",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "hours" => Some(ActivationUnit::Hours),
            "days" => Some(ActivationUnit::Days),
            _ => None,
        }
    }

    pub fn millis(self, period: i64) -> i64 {
        match self {
            ActivationUnit::Hours => period.saturating_mul(crate::clock::MS_PER_HOUR),
            ActivationUnit::Days => period.saturating_mul(MS_PER_DAY),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Active,
    Pending,
    Expired,
    Disabled,
    Revoked,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Pending => "pending",
            Status::Expired => "expired",
            Status::Disabled => "disabled",
            Status::Revoked => "revoked",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [
            Status::Active,
            Status::Pending,
            Status::Expired,
            Status::Disabled,
            Status::Revoked,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }
}

/// The fields of a key that decide whether it may be used.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lifecycle {
    pub is_active: bool,
    pub revoked_at: Option<i64>,
    pub expires_at: Option<i64>,
    pub expiration_mode: ExpirationMode,
    pub activated_at: Option<i64>,
}

impl Lifecycle {
    /// The status, in order of precedence: revoked > expired > disabled > pending > active.
    /// A key is expired from the instant `now >= expires_at`.
    pub fn status(&self, now_ms: i64) -> Status {
        if self.revoked_at.is_some() {
            Status::Revoked
        } else if self.expires_at.is_some_and(|at| now_ms >= at) {
            Status::Expired
        } else if !self.is_active {
            Status::Disabled
        } else if self.expiration_mode == ExpirationMode::Activation && self.activated_at.is_none()
        {
            Status::Pending
        } else {
            Status::Active
        }
    }

    /// True when a usable key expires within the next 7 days.
    pub fn expiring_soon(&self, now_ms: i64) -> bool {
        matches!(self.status(now_ms), Status::Active)
            && self
                .expires_at
                .is_some_and(|at| at - now_ms <= EXPIRING_SOON_MS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifecycle() -> Lifecycle {
        Lifecycle {
            is_active: true,
            revoked_at: None,
            expires_at: None,
            expiration_mode: ExpirationMode::Fixed,
            activated_at: Some(0),
        }
    }

    #[test]
    fn generated_keys_are_canonical_uuids() {
        let key = generate();
        assert_eq!(
            canonical(&key).as_ref().map(|c| &c[..]),
            Some(key.as_bytes())
        );
        assert_eq!(uuid::Uuid::parse_str(&key).unwrap().get_version_num(), 4);
        assert_ne!(generate(), key);
        assert_eq!(
            canonical(&key.to_uppercase()).as_ref().map(|c| &c[..]),
            Some(key.as_bytes())
        );
        assert_eq!(canonical("not-a-key"), None);
        // Every byte value at every position, against the plain definition.
        let reference = |text: &[u8]| -> Option<Vec<u8>> {
            let well_formed = text.len() == 36
                && text.iter().enumerate().all(|(i, b)| match i {
                    8 | 13 | 18 | 23 => *b == b'-',
                    _ => b.is_ascii_hexdigit(),
                });
            well_formed.then(|| text.to_ascii_lowercase())
        };
        let upper = key.to_uppercase().into_bytes();
        for base in [key.as_bytes().to_vec(), upper] {
            for at in 0..36 {
                for byte in 0..=255u8 {
                    let mut text = base.clone();
                    text[at] = byte;
                    let Ok(text) = String::from_utf8(text) else {
                        continue;
                    };
                    assert_eq!(
                        canonical(&text).map(|c| c.to_vec()),
                        reference(text.as_bytes()),
                        "{text:?}"
                    );
                }
            }
        }
        assert_eq!(canonical(&format!("{}x", &key[..35])), None);
    }

    #[test]
    fn hash_compare_and_preview() {
        let key = "3f2a0000-0000-4000-8000-000000009c1e";
        assert_eq!(hash_hex(key).len(), 64);
        assert_eq!(decode_hash(&hash_hex(key)), Some(hash(key)));
        assert!(hashes_match(&hash(key), &hash(key)));
        assert!(!hashes_match(&hash(key), &hash("other")));
        assert_eq!(preview(key), "3f2a…9c1e");
    }

    #[test]
    fn status_precedence_and_boundary() {
        let mut l = lifecycle();
        assert_eq!(l.status(10), Status::Active);
        l.expires_at = Some(100);
        assert_eq!(l.status(99), Status::Active);
        assert!(l.expiring_soon(99));
        assert_eq!(l.status(100), Status::Expired);
        l.is_active = false;
        assert_eq!(l.status(50), Status::Disabled);
        assert_eq!(l.status(100), Status::Expired);
        l.revoked_at = Some(1);
        assert_eq!(l.status(50), Status::Revoked);
        let pending = Lifecycle {
            expiration_mode: ExpirationMode::Activation,
            activated_at: None,
            ..lifecycle()
        };
        assert_eq!(pending.status(0), Status::Pending);
        assert!(!pending.expiring_soon(0));
    }
}
