//! The meters of all metered keys, by key id: each started once per process from what the
//! store says the key has spent, then kept in memory (the request path never reads the store).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::SqlitePool;

use super::meter::{day_of, Meter};
use crate::store;
use crate::tasks::log_writer::LogSink;

/// How long starting a meter waits for the call-log writer to write the rows queued before it.
const FLUSH_WAIT: Duration = Duration::from_secs(5);

/// Why a key's meter could not be started (the request gets a 503: without its meter a
/// limited key would get a fresh allowance).
#[derive(Debug)]
pub struct Unmetered(pub String);

#[derive(Debug, Default)]
pub struct Meters {
    meters: RwLock<HashMap<i64, Arc<Meter>>>,
}

impl Meters {
    pub fn get(&self, key_id: i64) -> Option<Arc<Meter>> {
        let meters = self.meters.read().unwrap_or_else(|p| p.into_inner());
        meters.get(&key_id).cloned()
    }

    /// The key's meter, started at `now` if it has none yet: the call-log rows queued so far
    /// are written first, then what the key has spent is read from the store. Concurrent
    /// first requests of a key may both read; the first meter stored is the one all use.
    pub async fn get_or_start(
        &self,
        key_id: i64,
        pool: &SqlitePool,
        logs: &LogSink,
        now: i64,
    ) -> Result<Arc<Meter>, Unmetered> {
        if let Some(meter) = self.get(key_id) {
            return Ok(meter);
        }
        tokio::time::timeout(FLUSH_WAIT, logs.flush())
            .await
            .map_err(|_| {
                Unmetered(
                    "the call log could not be written in time to start the key's meter".into(),
                )
            })?;
        let spent = store::usage::spent(pool, key_id, day_of(now))
            .await
            .map_err(|err| Unmetered(format!("reading what the key has spent failed: {err}")))?;
        let mut meters = self.meters.write().unwrap_or_else(|p| p.into_inner());
        let meter = meters
            .entry(key_id)
            .or_insert_with(|| {
                tracing::debug!(key_id, "meter started");
                Arc::new(Meter::new(spent))
            })
            .clone();
        Ok(meter)
    }

    /// Drops a deleted key's meter.
    pub fn forget(&self, key_id: i64) {
        let mut meters = self.meters.write().unwrap_or_else(|p| p.into_inner());
        meters.remove(&key_id);
    }
}
