//! Webhook work off the request path: limit refusals become events, the expiry scan queues
//! each notice once, and the outbox is delivered, signed, with retries and backoff.

use std::time::Duration;

use sqlx::SqlitePool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, MS_PER_DAY};
use crate::store;
use crate::webhooks::{sign, Event, EventLimit, EventType, LimitHit, Webhooks};

/// Attempts of one delivery before it is given up (and logged as such).
pub const MAX_ATTEMPTS: i64 = 10;
/// The wait after the first failed attempt; it doubles after each, up to `MAX_BACKOFF_MS`.
pub const FIRST_BACKOFF_MS: i64 = 30_000;
pub const MAX_BACKOFF_MS: i64 = 3_600_000;
/// How long one delivery may take.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Deliveries taken from the outbox at once.
const BATCH: i64 = 32;
/// How long after its expiry a key still gets its `key.expired` event (so that webhooks
/// turned on later do not announce every key that expired long ago).
pub const EXPIRED_CATCH_UP_MS: i64 = 7 * MS_PER_DAY;

/// The wait before attempt `attempts + 1`, after `attempts` failed ones.
pub fn backoff_ms(attempts: i64) -> i64 {
    let doublings = (attempts - 1).clamp(0, 20) as u32;
    FIRST_BACKOFF_MS
        .saturating_mul(1i64 << doublings)
        .min(MAX_BACKOFF_MS)
}

/// Starts the delivery loop (woken by new events, and every `poll` for retries that came due
/// and rows other processes queued) and the intake of limit events. None without webhooks.
pub fn spawn(
    pool: SqlitePool,
    clock: Clock,
    webhooks: Webhooks,
    poll: Duration,
    stop: CancellationToken,
) -> Option<JoinHandle<()>> {
    if !webhooks.enabled() {
        return None;
    }
    if let Some(mut hits) = webhooks.take_limit_hits() {
        let (pool, webhooks, stop) = (pool.clone(), webhooks.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                let hit = tokio::select! {
                    _ = stop.cancelled() => return,
                    hit = hits.recv() => match hit { Some(hit) => hit, None => return },
                };
                if let Err(err) = queue_limit_event(&pool, &webhooks, hit).await {
                    tracing::error!(key_id = hit.key_id, error = %err, "cannot queue a limit webhook");
                }
            }
        });
    }
    Some(tokio::spawn(async move {
        let Some(outlet) = webhooks.outlet() else {
            return;
        };
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
                _ = outlet.wake.notified() => {}
            }
            if let Err(err) = deliver_due(&pool, &clock, &webhooks).await {
                tracing::error!(error = %err, "webhook delivery failed; retrying at the next poll");
            }
        }
    }))
}

async fn queue_limit_event(
    pool: &SqlitePool,
    webhooks: &Webhooks,
    hit: LimitHit,
) -> sqlx::Result<()> {
    let Some(key) = store::keys::get(pool, hit.key_id).await? else {
        return Ok(());
    };
    let mut event = Event::new(EventType::LimitReached, &key, hit.at);
    event.limit = Some(EventLimit {
        name: hit.limit,
        retry_after_seconds: hit.retry_after,
    });
    let mut tx = store::begin_write(pool).await?;
    webhooks.queue(&mut tx, &event).await?;
    tx.commit().await?;
    webhooks.wake();
    Ok(())
}

/// Makes every delivery that is due; a failed one is retried after its backoff (by the
/// clock), up to `MAX_ATTEMPTS`.
pub async fn deliver_due(
    pool: &SqlitePool,
    clock: &Clock,
    webhooks: &Webhooks,
) -> sqlx::Result<()> {
    let Some(outlet) = webhooks.outlet() else {
        return Ok(());
    };
    loop {
        let due = store::webhooks::due(pool, clock.now_ms(), BATCH).await?;
        if due.is_empty() {
            return Ok(());
        }
        let outlet = &outlet;
        let attempts = due.iter().map(|delivery| async move {
            let Some(target) = outlet.target(&delivery.target) else {
                return (
                    delivery,
                    Err("its URL is no longer in KEYGATE_WEBHOOK_URL".to_string()),
                    false,
                );
            };
            let timestamp = clock.now_ms().div_euclid(1000);
            let signature = sign::signature(outlet.secret, timestamp, delivery.body.as_bytes());
            let event_id = event_id(&delivery.body);
            let headers = [
                (sign::HEADER, signature.as_str()),
                ("X-Keygate-Event", delivery.event_type.as_str()),
                ("X-Keygate-Delivery", event_id.as_str()),
            ];
            let outcome = match target
                .post(&headers, delivery.body.as_bytes(), DELIVERY_TIMEOUT)
                .await
            {
                Ok(status) if (200..300).contains(&status) => Ok(()),
                Ok(status) => Err(format!("{} answered {status}", target.host())),
                Err(err) => Err(format!("{}: {err:#}", target.host())),
            };
            (delivery, outcome, true)
        });
        let outcomes = futures_util::future::join_all(attempts).await;
        let mut retried_all = true;
        for (delivery, outcome, configured) in outcomes {
            match outcome {
                Ok(()) => {
                    store::webhooks::remove(pool, delivery.id).await?;
                    retried_all = false;
                    tracing::debug!(id = delivery.id, event = %delivery.event_type, "webhook delivered");
                }
                Err(cause) if !configured || delivery.attempts + 1 >= MAX_ATTEMPTS => {
                    store::webhooks::remove(pool, delivery.id).await?;
                    retried_all = false;
                    tracing::error!(
                        event = %delivery.event_type,
                        attempts = delivery.attempts + 1,
                        %cause,
                        "webhook given up"
                    );
                }
                Err(cause) => {
                    let attempts = delivery.attempts + 1;
                    let at = clock.now_ms() + backoff_ms(attempts);
                    store::webhooks::retry_at(pool, delivery.id, at, &cause).await?;
                    tracing::warn!(
                        event = %delivery.event_type,
                        attempts,
                        %cause,
                        "webhook delivery failed; it will be retried"
                    );
                }
            }
        }
        if retried_all {
            // Everything due was rescheduled: nothing more is due now.
            return Ok(());
        }
    }
}

/// The event id inside a queued body (for the `X-Keygate-Delivery` header).
fn event_id(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["id"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The expiry scan (run by the sweeper): queues, once per key and expiry, `key.expiring_soon`
/// 7 days and 1 day before it, and `key.expired` once it has passed. Returns how many.
pub async fn scan_expiry(
    pool: &SqlitePool,
    clock: &Clock,
    webhooks: &Webhooks,
) -> sqlx::Result<usize> {
    if !webhooks.enabled() {
        return Ok(0);
    }
    let now = clock.now_ms();
    // Read first, without the write lock: most scans find nothing new.
    let due: Vec<_> =
        store::webhooks::expiring(pool, now - EXPIRED_CATCH_UP_MS, now + 7 * MS_PER_DAY)
            .await?
            .into_iter()
            .filter_map(|candidate| {
                let left = candidate.expires_at - now;
                let notice = if left <= 0 {
                    ("expired", EventType::Expired, None)
                } else if !candidate.is_active {
                    // Disabled by an administrator: no reminder to renew.
                    return None;
                } else if left <= MS_PER_DAY {
                    ("expiring_1d", EventType::ExpiringSoon, Some(1))
                } else {
                    ("expiring_7d", EventType::ExpiringSoon, Some(7))
                };
                (!candidate.noticed(notice.0)).then_some((candidate, notice))
            })
            .collect();
    if due.is_empty() {
        return Ok(0);
    }
    let mut tx = store::begin_write(pool).await?;
    let mut queued = 0;
    for (candidate, (notice, kind, within_days)) in due {
        // Recorded under the lock: a notice another scan queued meanwhile is not sent twice.
        if !store::webhooks::note(&mut *tx, candidate.id, notice, candidate.expires_at).await? {
            continue;
        }
        let Some(key) = store::keys::get(&mut *tx, candidate.id).await? else {
            continue;
        };
        let mut event = Event::new(kind, &key, now);
        event.within_days = within_days;
        webhooks.queue(&mut tx, &event).await?;
        queued += 1;
    }
    tx.commit().await?;
    if queued > 0 {
        webhooks.wake();
        tracing::info!(events = queued, "expiry webhooks queued");
    }
    Ok(queued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_thirty_seconds_up_to_an_hour() {
        assert_eq!(backoff_ms(1), 30_000);
        assert_eq!(backoff_ms(2), 60_000);
        assert_eq!(backoff_ms(3), 120_000);
        assert_eq!(backoff_ms(8), 3_600_000);
        assert_eq!(backoff_ms(40), 3_600_000);
    }
}
