//! Header → key → cache or database → AuthedKey, or a refusal (the 401 of SPEC §3).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use sqlx::SqlitePool;

use crate::keys::{self, KeyHash, Lifecycle};
use crate::limits::meter::Meter;
use crate::limits::Limits;
use crate::policy::Policy;
use crate::store;

/// A cached lookup is trusted this long; then it is read again, so a change made by another
/// process (the CLI) is in force within this time. Changes made through this server's admin
/// API clear the cache at once.
const CACHE_TTL: Duration = Duration::from_secs(1);
/// The cache is cleared when it grows past this many entries (e.g. a flood of unknown keys).
const CACHE_MAX_ENTRIES: usize = 100_000;

/// What the relay needs to know about a key that matched.
#[derive(Clone, Debug)]
pub struct AuthedKey {
    pub id: i64,
    pub lifecycle: Lifecycle,
    pub activation_ms: Option<i64>,
    /// Its restrictions, parsed when the key was loaded; None: it has none.
    pub policy: Option<Box<Policy>>,
    /// Its limits; None: it has none (no meter, no headers).
    pub limits: Option<Limits>,
    /// Its meter, found on the first request after the key was loaded (the meter outlives
    /// this cached copy: it is kept by key id in `limits::meters`).
    pub meter: OnceLock<Arc<Meter>>,
    /// Set when the presented secret is the one `regenerate` replaced: it works until then
    /// (UTC ms), the rotation's grace period.
    pub grace_until: Option<i64>,
}

/// Why a request did not authenticate (for its call-log row).
#[derive(Debug)]
pub struct AuthFailure {
    pub key_id: Option<i64>,
    pub reason: &'static str,
    /// The store failed: a server error, not the client's key.
    pub internal: bool,
}

impl AuthFailure {
    fn anonymous(reason: &'static str) -> Self {
        AuthFailure {
            key_id: None,
            reason,
            internal: false,
        }
    }

    pub fn internal(key_id: Option<i64>, reason: &'static str) -> Self {
        AuthFailure {
            key_id,
            reason,
            internal: true,
        }
    }
}

struct Entry {
    /// None: no key has this hash.
    key: Option<Arc<AuthedKey>>,
    fetched: Instant,
}

/// Keys by hash, so a cached key authenticates without a database round trip.
#[derive(Default)]
pub struct KeyCache {
    /// foldhash, not SipHash: one lookup per request (the hashes are SHA-256 of secrets;
    /// foldhash is seeded per process all the same).
    entries: RwLock<foldhash::HashMap<KeyHash, Entry>>,
    /// Lookups answered from the cache, and read from the database (for metrics).
    hits: AtomicU64,
    misses: AtomicU64,
}

impl KeyCache {
    /// Lookups answered from the cache and lookups that read the database, since start.
    pub fn lookups(&self) -> (u64, u64) {
        (self.hits.load(Relaxed), self.misses.load(Relaxed))
    }

    /// Forgets every cached key; called after any change to keys.
    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.write() {
            entries.clear();
        }
    }

    /// The cached lookup of `hash`, if it is younger than the TTL at `now`.
    fn get(&self, hash: &KeyHash, now: Instant) -> Option<Option<Arc<AuthedKey>>> {
        let entries = self.entries.read().ok()?;
        let entry = entries.get(hash)?;
        (now.saturating_duration_since(entry.fetched) < CACHE_TTL).then(|| entry.key.clone())
    }

    fn put(&self, hash: KeyHash, key: Option<Arc<AuthedKey>>) {
        if let Ok(mut entries) = self.entries.write() {
            if entries.len() >= CACHE_MAX_ENTRIES {
                entries.clear();
            }
            entries.insert(
                hash,
                Entry {
                    key,
                    fetched: Instant::now(),
                },
            );
        }
    }
}

/// The key presented in `Authorization: Bearer KEY` or `X-API-Key: KEY`.
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let value = value.trim();
        // The usual `Bearer KEY`, without a search for the space.
        if let Some(token) = value
            .get(7..)
            .filter(|_| value.as_bytes()[..7].eq_ignore_ascii_case(b"bearer "))
        {
            return Some(token.trim());
        }
        let (scheme, token) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| token.trim());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Finds the key the request presents (received at `now`, `now_ms` by the clock). A
/// malformed key is refused before any lookup; a replaced secret past its grace is unknown.
pub async fn authenticate(
    pool: &SqlitePool,
    cache: &KeyCache,
    headers: &HeaderMap,
    now: Instant,
    now_ms: i64,
) -> Result<Arc<AuthedKey>, AuthFailure> {
    let presented = presented_key(headers).ok_or(AuthFailure::anonymous("missing API key"))?;
    let canonical =
        keys::canonical(presented).ok_or(AuthFailure::anonymous("malformed API key"))?;
    let hash = keys::hash(canonical);
    let found = match cache.get(&hash, now) {
        Some(found) => {
            cache.hits.fetch_add(1, Relaxed);
            found
        }
        None => {
            cache.misses.fetch_add(1, Relaxed);
            let found = lookup(pool, &hash, now_ms).await?;
            cache.put(hash, found.clone());
            found
        }
    };
    found
        .filter(|key| key.grace_until.is_none_or(|until| now_ms < until))
        .ok_or(AuthFailure::anonymous("unknown API key"))
}

async fn lookup(
    pool: &SqlitePool,
    hash: &KeyHash,
    now_ms: i64,
) -> Result<Option<Arc<AuthedKey>>, AuthFailure> {
    let failed = |err: sqlx::Error| {
        tracing::error!(error = %err, "key lookup failed");
        AuthFailure::internal(None, "key lookup failed")
    };
    let hex_hash = hex::encode(hash);
    let (row, grace_until) = match store::keys::find_by_hash(pool, &hex_hash)
        .await
        .map_err(failed)?
    {
        Some(row) => (Some(row), None),
        None => match store::keys::find_by_previous_hash(pool, &hex_hash, now_ms)
            .await
            .map_err(failed)?
        {
            Some((row, until)) => {
                tracing::info!(
                    key_id = row.id,
                    grace_until = %crate::clock::rfc3339(until),
                    "a key authenticated with the secret regenerate replaced (rotation grace period)"
                );
                (Some(row), Some(until))
            }
            None => (None, None),
        },
    };
    let Some(row) = row else {
        return Ok(None);
    };
    let current =
        keys::decode_hash(&row.key_hash).is_some_and(|stored| keys::hashes_match(&stored, hash));
    if grace_until.is_none() && !current {
        return Ok(None);
    }
    // A stored list that does not parse (a database edited by hand) refuses the key rather
    // than letting it through with less restriction than it says.
    let policy = Policy::from_lists(&row.policy_lists()).map_err(|invalid| {
        tracing::error!(key_id = row.id, field = %invalid.field, "a key's stored restrictions do not parse: {}", invalid.message);
        AuthFailure::internal(Some(row.id), "the key's stored restrictions do not parse")
    })?;
    Ok(Some(Arc::new(AuthedKey {
        id: row.id,
        lifecycle: row.lifecycle(),
        activation_ms: row.activation_millis(),
        policy: policy.map(Box::new),
        limits: row.limits.any().then_some(row.limits),
        meter: OnceLock::new(),
        grace_until,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_headers_are_read() {
        let mut headers = HeaderMap::new();
        headers.insert("x-api-key", "abc".parse().unwrap());
        assert_eq!(presented_key(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, "bearer  xyz ".parse().unwrap());
        assert_eq!(presented_key(&headers), Some("xyz"));
        headers.insert(header::AUTHORIZATION, "Basic xyz".parse().unwrap());
        assert_eq!(presented_key(&headers), None);
        headers.insert(header::AUTHORIZATION, "BEARER kg-1".parse().unwrap());
        assert_eq!(presented_key(&headers), Some("kg-1"));
        headers.insert(header::AUTHORIZATION, "Bearer".parse().unwrap());
        assert_eq!(presented_key(&headers), None);
        headers.insert(header::AUTHORIZATION, "Bearerx y".parse().unwrap());
        assert_eq!(presented_key(&headers), None);
    }
}
