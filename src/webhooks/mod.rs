//! Webhooks: the events (a key expiring soon, expired, revoked, or at one of its limits), the
//! outbox they are queued in (delivered off the request path by `tasks::webhooks`), and the
//! relay's one cheap, deduplicated call when a limit refuses a request.

pub mod post;
pub mod sign;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, Notify};

use crate::clock::{ser_ms, ser_opt_ms, MS_PER_DAY};
use crate::config::Config;
use crate::store::{self, keys::KeyRow};
use post::Target;

/// Limit refusals waiting to become events; past it they are dropped (a log line says so).
const LIMIT_QUEUE: usize = 1024;
/// Keys × limits remembered for deduplication before old entries are cleared.
const MAX_REMEMBERED: usize = 10_000;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum EventType {
    #[serde(rename = "key.expiring_soon")]
    ExpiringSoon,
    #[serde(rename = "key.expired")]
    Expired,
    #[serde(rename = "key.revoked")]
    Revoked,
    #[serde(rename = "key.limit_reached")]
    LimitReached,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::ExpiringSoon => "key.expiring_soon",
            EventType::Expired => "key.expired",
            EventType::Revoked => "key.revoked",
            EventType::LimitReached => "key.limit_reached",
        }
    }
}

/// The key an event is about: never its secret or hash.
#[derive(Clone, Debug, Serialize)]
pub struct EventKey {
    pub id: i64,
    pub name: String,
    pub key_preview: String,
    #[serde(serialize_with = "ser_opt_ms")]
    pub expires_at: Option<i64>,
}

/// The limit a `key.limit_reached` event is about.
#[derive(Clone, Debug, Serialize)]
pub struct EventLimit {
    /// The limit's field name (`rate_limit_requests`, `daily_cost_limit`, …).
    pub name: &'static str,
    /// When it lets requests through again, in seconds; null for a lifetime limit.
    pub retry_after_seconds: Option<u64>,
}

/// A webhook's JSON body.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Unique per event (the same in every retry): receivers can drop repeats by it.
    pub id: String,
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(serialize_with = "ser_ms")]
    pub created_at: i64,
    pub key: EventKey,
    /// `key.expiring_soon`: the key expires within 7 days (the first notice) or within 1 day
    /// (the second); `key.expires_at` says exactly when.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub within_days: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<EventLimit>,
}

impl Event {
    pub fn new(kind: EventType, key: &KeyRow, now: i64) -> Event {
        Event {
            id: uuid::Uuid::new_v4().to_string(),
            kind,
            created_at: now,
            key: EventKey {
                id: key.id,
                name: key.name.clone(),
                key_preview: key.key_preview.clone(),
                expires_at: key.expires_at,
            },
            within_days: None,
            limit: None,
        }
    }
}

/// A limit refusal, handed from the relay to the webhook task.
#[derive(Clone, Copy, Debug)]
pub struct LimitHit {
    pub key_id: i64,
    pub limit: &'static str,
    pub retry_after: Option<u64>,
    pub at: i64,
}

/// The webhook settings and queues; cheap to clone. Without KEYGATE_WEBHOOK_URL every call is
/// a no-op.
#[derive(Clone, Default)]
pub struct Webhooks {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    /// Each URL's target hash (what the outbox stores) and where it goes.
    targets: Vec<(String, Arc<Target>)>,
    secret: String,
    limits: mpsc::Sender<LimitHit>,
    limits_in: Mutex<Option<mpsc::Receiver<LimitHit>>>,
    /// (key, limit) → until when a repeat is not sent (UTC ms).
    quiet_until: Mutex<HashMap<(i64, &'static str), i64>>,
    wake: Notify,
}

/// What the delivery task needs: where each target goes, the secret, the wake-up signal.
pub struct Outlet<'a> {
    pub secret: &'a str,
    pub wake: &'a Notify,
    targets: &'a [(String, Arc<Target>)],
}

impl Outlet<'_> {
    /// The configured URL with this target hash (None: no longer configured).
    pub fn target(&self, hash: &str) -> Option<&Arc<Target>> {
        self.targets.iter().find(|(h, _)| h == hash).map(|(_, t)| t)
    }
}

/// The outbox's name for a URL: its SHA-256 (the URL itself may carry a token).
pub fn target_hash(url: &str) -> String {
    hex::encode(Sha256::digest(url.as_bytes()))
}

impl Webhooks {
    pub fn new(config: &Config) -> anyhow::Result<Webhooks> {
        let Some(secret) = config.webhook_secret.clone() else {
            return Ok(Webhooks::default());
        };
        if config.webhook_urls.is_empty() {
            return Ok(Webhooks::default());
        }
        let targets = config
            .webhook_urls
            .iter()
            .map(|url| {
                let target = Target::new(url)
                    .map_err(|err| anyhow::anyhow!("KEYGATE_WEBHOOK_URL: `{url}` {err:#}"))?;
                Ok((target_hash(url), Arc::new(target)))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let (limits, limits_in) = mpsc::channel(LIMIT_QUEUE);
        Ok(Webhooks {
            inner: Some(Arc::new(Inner {
                targets,
                secret,
                limits,
                limits_in: Mutex::new(Some(limits_in)),
                quiet_until: Mutex::new(HashMap::new()),
                wake: Notify::new(),
            })),
        })
    }

    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Queues `event` for every URL, in the caller's transaction when it passes one. Call
    /// `wake` once committed.
    pub async fn queue(&self, db: &mut sqlx::SqliteConnection, event: &Event) -> sqlx::Result<()> {
        let Some(inner) = &self.inner else {
            return Ok(());
        };
        let body = serde_json::to_string(event).map_err(|err| sqlx::Error::Encode(err.into()))?;
        for (target, _) in &inner.targets {
            let kind = event.kind.as_str();
            store::webhooks::queue(&mut *db, target, kind, &body, event.created_at).await?;
        }
        Ok(())
    }

    /// Tells the delivery task that something was queued.
    pub fn wake(&self) {
        if let Some(inner) = &self.inner {
            inner.wake.notify_one();
        }
    }

    /// The relay's call when a limit refuses a request: no await, no store access; one short
    /// lock. Sends one event per key and limit until the limit starts afresh (its window or
    /// day), and for a lifetime limit or concurrency at most one a UTC day.
    pub fn limit_reached(
        &self,
        key_id: i64,
        limit: &'static str,
        retry_after: Option<u64>,
        now: i64,
    ) {
        let Some(inner) = &self.inner else {
            return;
        };
        let next_day = (now.div_euclid(MS_PER_DAY) + 1) * MS_PER_DAY;
        let until = match retry_after {
            Some(secs) if limit != "concurrency_limit" => {
                now.saturating_add((secs.max(1) as i64).saturating_mul(1000))
            }
            _ => next_day,
        };
        {
            let mut quiet = inner.quiet_until.lock().unwrap_or_else(|p| p.into_inner());
            if quiet
                .get(&(key_id, limit))
                .is_some_and(|until| *until > now)
            {
                return;
            }
            if quiet.len() >= MAX_REMEMBERED {
                quiet.retain(|_, until| *until > now);
            }
            quiet.insert((key_id, limit), until);
        }
        let hit = LimitHit {
            key_id,
            limit,
            retry_after,
            at: now,
        };
        if inner.limits.try_send(hit).is_err() {
            tracing::warn!(
                key_id,
                limit,
                "webhook queue of limit events is full: event dropped"
            );
        }
    }

    /// The limit refusals, for the one task that turns them into events (None after the first call).
    pub fn take_limit_hits(&self) -> Option<mpsc::Receiver<LimitHit>> {
        let inner = self.inner.as_ref()?;
        inner
            .limits_in
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    pub fn outlet(&self) -> Option<Outlet<'_>> {
        let inner = self.inner.as_ref()?;
        Some(Outlet {
            secret: &inner.secret,
            wake: &inner.wake,
            targets: &inner.targets,
        })
    }
}
