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
    /// One meter is started at a time, so concurrent first requests start it once.
    starting: tokio::sync::Mutex<()>,
}

impl Meters {
    pub fn get(&self, key_id: i64) -> Option<Arc<Meter>> {
        self.meters.read().ok()?.get(&key_id).cloned()
    }

    /// The key's meter, started at `now` if it has none yet: the call-log rows queued so far
    /// are written first, then what the key has spent is read from the store.
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
        let _starting = self.starting.lock().await;
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
        let meter = Arc::new(Meter::new(key_id, spent));
        if let Ok(mut meters) = self.meters.write() {
            meters.insert(key_id, meter.clone());
        }
        tracing::debug!(key_id, "meter started");
        Ok(meter)
    }

    /// Drops a deleted key's meter.
    pub fn forget(&self, key_id: i64) {
        if let Ok(mut meters) = self.meters.write() {
            meters.remove(&key_id);
        }
    }
}
