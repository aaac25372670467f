//! The call-log writer: records queue up without waking anyone, and a low-priority thread
//! (`writer_priority`) writes them in batches every tick, at once on a flush, and all of them
//! on shutdown. The queue is bounded (new requests wait for room), and a failed batch is
//! retried until it is written: no row is ever dropped.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::sync::{oneshot, Notify};

use crate::metrics::Metrics;
use crate::relay::record::CallRecord;
use crate::store::log_batch::{Checkpointer, LogStore};
use crate::tasks::writer_priority::{Priority, Role};

/// Rows that may wait for the writer by default. A `kill -9` loses at most the queued rows,
/// so the bound is the loss: 4096 rows are ~100 ms of traffic at ~35k requests/s (the relay's
/// measured peak on two cores), and 2.5 of the writer's 50 ms ticks at that rate, so requests
/// wait only when the writer really falls behind. The writer is also woken as soon as a
/// quarter of the bound is queued (`WAKE_AT`): at the peak rate it then writes every ~30 ms
/// instead of every tick, which kept the queue off its bound (at half: the bound was hit
/// under load, p99 at c=64 went 5 → 8–14 ms and kill -9 lost up to 1,900 rows instead of ~700).
pub const DEFAULT_QUEUE_ROWS: usize = 4096;
/// The writer is woken when this fraction (1/WAKE_AT) of the queue's bound is queued.
const WAKE_AT: usize = 4;
/// Pending rows are written at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// How often the WAL is moved into the database (off the writer's thread).
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// Batches up to this size yield the CPU after every group of rows the store inserts at once;
/// larger ones mean a busy core (over 20,000 rows/s at the 50 ms tick, or woken at a quarter
/// of the bound) and yield after every `YIELD_EVERY_GROUPS` groups.
const YIELD_UP_TO_ROWS: usize = 1_000;
/// Under a full load a batch is ~1,000+ rows, ~2.5 ms of the core. Run straight through, every
/// request on the core waited that long behind it; yielding after every 16-row group made the
/// p99 worse still. Measured at c=64 (side-by-side A/B, 8 rounds, restricted key) against never
/// yielding: every 4 groups (64 rows, `ROWS_PER_INSERT` being 16) p99 4.9 → 4.1 ms and +4%
/// throughput (28.9k → 30.2k rps); every 2 groups 5.5 ms, every 8 groups 4.4 ms.
const YIELD_EVERY_GROUPS: usize = 4;
/// The longest the checkpointer holds the writer's next batch back (and waits for the one under
/// way) for a pass that completes: at 35k requests/s that queues ~1,750 rows, under the bound.
const HOLD_AT_MOST: Duration = Duration::from_millis(50);
/// A failed batch is retried after this pause, doubled after each failure up to the maximum.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);

/// The writer's settings (from KEYGATE_LOG_QUEUE_ROWS and KEYGATE_LOG_BUSY_TIMEOUT).
#[derive(Clone, Copy, Debug)]
pub struct WriterSettings {
    pub queue_rows: usize,
    pub busy_timeout: Duration,
}

/// What the request path hands the writer, behind one lock that each side holds only to push
/// or to take it all. The writer takes the rows by swapping in its own emptied batch, so in a
/// steady state neither side allocates for them (a channel allocated and zeroed a block of
/// 31 rows every 31 rows, on the request path).
#[derive(Debug, Default)]
struct Inbox {
    records: Vec<CallRecord>,
    /// Flushes and a close asked for: answered once every row pushed before them is written.
    acks: Vec<oneshot::Sender<()>>,
    /// A close was asked for: the writer stops after writing everything.
    closing: bool,
    /// The writer has taken its last rows: nothing more is taken.
    closed: bool,
}

/// What the request path and the writer share.
#[derive(Debug)]
struct Shared {
    writer: Thread,
    /// Rows sent and not yet committed (in the channel, or in the batch being written).
    queued: AtomicUsize,
    bound: usize,
    /// `bound / WAKE_AT`: the queue length at which `record` wakes the writer.
    wake_at: usize,
    /// Signalled after every written batch, for requests waiting for room.
    room: Notify,
    /// Set while batches fail; `last_error` says why.
    failing: AtomicBool,
    last_error: Mutex<Option<String>>,
    /// Set when the writer has stopped: the checkpointer stops too.
    stopped: AtomicBool,
    /// Between the writer's batches and the checkpointer's passes: see `Turns`.
    turns: Turns,
    /// Counts every record as the writer takes it, and every batch.
    metrics: Arc<Metrics>,
    /// The writer's scheduling: idle while it keeps up, hurried when it falls behind.
    priority: Priority,
}

/// The request path's handle to the writer: sending never blocks, never wakes a thread
/// (except once when the queue reaches a quarter of its bound) and never touches the database.
#[derive(Clone, Debug)]
pub struct LogSink {
    /// Shared with the writer, which stops once it holds the only reference (every sink gone).
    inbox: Arc<Mutex<Inbox>>,
    shared: Arc<Shared>,
}

impl LogSink {
    /// Opens the writer's connection to the (already migrated) database file and starts it;
    /// the writer counts what it takes and writes into `metrics`.
    pub fn spawn(
        database: &Path,
        settings: WriterSettings,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<LogSink> {
        let store = LogStore::open(database, settings.busy_timeout)
            .with_context(|| format!("cannot open {} for call logs", database.display()))?;
        let inbox = Arc::new(Mutex::new(Inbox::default()));
        let writer_inbox = inbox.clone();
        let (thread_tx, thread_rx) = std::sync::mpsc::sync_channel::<Arc<Shared>>(1);
        let handle = thread::Builder::new()
            .name("keygate-log-writer".into())
            .spawn(move || {
                if let Ok(shared) = thread_rx.recv() {
                    run(store, &writer_inbox, &shared);
                }
            })
            .context("cannot start the call-log writer thread")?;
        let shared = Arc::new(Shared {
            writer: handle.thread().clone(),
            queued: AtomicUsize::new(0),
            bound: settings.queue_rows.max(1),
            wake_at: settings.queue_rows.max(1) / WAKE_AT,
            room: Notify::new(),
            failing: AtomicBool::new(false),
            last_error: Mutex::new(None),
            stopped: AtomicBool::new(false),
            turns: Turns::default(),
            metrics,
            priority: Priority::probe(),
        });
        thread_tx
            .send(shared.clone())
            .context("the call-log writer thread stopped at start")?;
        let checkpointer = Checkpointer::open(database)
            .with_context(|| format!("cannot open {} for checkpoints", database.display()))?;
        let watched = shared.clone();
        thread::Builder::new()
            .name("keygate-checkpoint".into())
            .spawn(move || checkpoints(checkpointer, &watched))
            .context("cannot start the WAL checkpoint thread")?;
        Ok(LogSink { inbox, shared })
    }

    /// Queues a row. Never blocks (it is called from `Drop`): rows of requests already under
    /// way are always taken; the bound is kept by `wait_for_room` before requests start.
    pub fn record(&self, record: CallRecord) {
        // SeqCst: see `Priority::relax`.
        let before = self.shared.queued.fetch_add(1, SeqCst);
        if before == self.shared.wake_at {
            // A quarter full before the next tick: write now, at the writer's full share of the
            // core, rather than make requests wait.
            self.shared.priority.hurry(Instant::now());
            self.shared.writer.unpark();
        }
        let mut inbox = lock(&self.inbox);
        if inbox.closed {
            drop(inbox);
            self.shared.queued.fetch_sub(1, Relaxed);
            tracing::error!("call-log writer has stopped; a call-log row was lost");
            return;
        }
        inbox.records.push(record);
    }

    /// Whether a new request may start now: one relaxed load.
    #[inline]
    pub fn has_room(&self) -> bool {
        self.shared.queued.load(Relaxed) < self.shared.bound
    }

    /// Returns once the queue is below its bound (at once if it is), or the store's error when
    /// the queue is full and the store is failing (no room is coming soon).
    pub async fn wait_for_room(&self) -> Result<(), String> {
        loop {
            let notified = self.shared.room.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.has_room() {
                return Ok(());
            }
            // A full queue that the store cannot empty: waiting would hang the client.
            if let Some(cause) = self.failing() {
                return Err(cause);
            }
            self.shared.priority.hurry(Instant::now());
            self.shared.writer.unpark();
            notified.await;
        }
    }

    pub fn queued(&self) -> usize {
        self.shared.queued.load(Relaxed)
    }

    /// The queue's bound (KEYGATE_LOG_QUEUE_ROWS).
    pub fn bound(&self) -> usize {
        self.shared.bound
    }

    /// Why the last batch failed, while the writer is failing to write (it retries until
    /// it succeeds); `None` when it is healthy.
    pub fn failing(&self) -> Option<String> {
        if !self.shared.failing.load(Relaxed) {
            return None;
        }
        lock(&self.shared.last_error).clone()
    }

    /// Returns once every record sent before this call is in the database.
    pub async fn flush(&self) {
        self.ask(false).await;
    }

    /// Writes every pending record and stops the writer.
    pub async fn close(&self) {
        self.ask(true).await;
    }

    async fn ask(&self, close: bool) {
        let (ack, done) = oneshot::channel();
        {
            let mut inbox = lock(&self.inbox);
            if inbox.closed {
                return;
            }
            inbox.acks.push(ack);
            inbox.closing |= close;
        }
        self.shared.priority.hurry(Instant::now());
        self.shared.writer.unpark();
        let _ = done.await;
    }
}

/// The lock, whether or not a thread panicked holding it (neither side leaves it half-changed).
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A run of failed batches: logged once when it starts and once when it ends.
struct Streak {
    since: Instant,
    attempts: u32,
    retry_in: Duration,
}

fn run(mut store: LogStore, inbox: &Arc<Mutex<Inbox>>, shared: &Shared) {
    shared.priority.enter(Role::Writer);
    let mut pending: Vec<CallRecord> = Vec::new();
    let mut acks = Vec::new();
    let mut closing = false;
    let mut streak: Option<Streak> = None;
    // Ticks are counted from the start of the last batch, not its end: a batch that took a
    // while is followed by the next one sooner, so a row waits at most a tick plus a batch.
    let mut batch_started = Instant::now();
    loop {
        let wait = match &streak {
            Some(streak) => streak.retry_in,
            None => FLUSH_EVERY.saturating_sub(batch_started.elapsed()),
        };
        if !wait.is_zero() {
            thread::park_timeout(wait);
        }
        batch_started = Instant::now();
        let received = pending.len();
        {
            let mut taken = lock(inbox);
            if pending.is_empty() {
                // The emptied batch goes back, with its room, for the next rows.
                std::mem::swap(&mut pending, &mut taken.records);
            } else {
                pending.append(&mut taken.records);
            }
            acks.append(&mut taken.acks);
            // Asked to, or every sink is gone: write what is left and stop.
            closing |= taken.closing || Arc::strong_count(inbox) == 1;
            taken.closed = closing;
        }
        // Counted once, as they arrive (a batch that fails is retried, not counted again).
        if pending.len() > received {
            shared.metrics.observe(&pending[received..]);
        }
        let batch = pending.len();
        if !pending.is_empty() {
            let turn = shared.turns.batch();
            let writing = Instant::now();
            let written = write(&mut store, &pending);
            drop(turn);
            match written {
                Ok(()) => {
                    shared
                        .metrics
                        .batch_written(pending.len(), writing.elapsed());
                    shared.queued.fetch_sub(pending.len(), Relaxed);
                    pending.clear();
                    shared.room.notify_waiters();
                    if let Some(ended) = streak.take() {
                        shared.failing.store(false, Relaxed);
                        tracing::info!(
                            attempts = ended.attempts,
                            failing_for = ?ended.since.elapsed(),
                            "call-log writer recovered; no row was lost"
                        );
                    }
                }
                Err(err) => {
                    shared.metrics.batch_failed();
                    let message = err.to_string();
                    match &mut streak {
                        Some(streak) => {
                            streak.attempts += 1;
                            streak.retry_in = (streak.retry_in * 2).min(RETRY_MAX);
                        }
                        None => {
                            tracing::error!(
                                error = %message,
                                rows = pending.len(),
                                "call-log batch failed; keeping the rows and retrying until it succeeds"
                            );
                            streak = Some(Streak {
                                since: Instant::now(),
                                attempts: 1,
                                retry_in: RETRY_FIRST,
                            });
                        }
                    }
                    *lock(&shared.last_error) = Some(message);
                    shared.failing.store(true, Relaxed);
                    // Requests waiting for room learn that none is coming soon.
                    shared.room.notify_waiters();
                    // Flushes are answered once their rows are written.
                    continue;
                }
            }
        }
        if batch < shared.wake_at {
            // Kept up (an empty tick too): not woken for a quarter of the bound, nor that much
            // by the tick. Back to the core's idle time, if not hurried too recently.
            shared
                .priority
                .relax(&shared.queued, shared.wake_at, Instant::now());
        }
        if closing {
            // Before the answer: the process may exit as soon as it has it.
            tracing::info!("call-log writer flushed and stopped");
        }
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        if closing {
            shared.stopped.store(true, Relaxed);
            return;
        }
    }
}

/// Moves the WAL into the database every `CHECKPOINT_EVERY` until the writer stops, an idle or a
/// batch thread as the writer is (`writer_priority`); a failed checkpoint is only retried (the
/// rows are safe in the WAL).
fn checkpoints(checkpointer: Checkpointer, shared: &Shared) {
    shared.priority.enter(Role::Checkpointer);
    while !shared.stopped.load(Relaxed) {
        thread::park_timeout(CHECKPOINT_EVERY);
        match checkpoint(&checkpointer, &shared.turns, &shared.writer) {
            Ok(frames) => tracing::trace!(frames, "WAL checkpoint"),
            Err(err) => tracing::debug!(error = %err, "WAL checkpoint failed; retrying later"),
        }
    }
}

/// One checkpoint; returns the WAL's frames after it.
///
/// The WAL starts over at its beginning (in the same file) only when a write transaction
/// begins after a pass that copied every frame. Under load a batch was always under way during
/// a pass, and committed after it: the WAL never started over and only grew (each append taking
/// new blocks of the file system) until a TRUNCATE emptied it, holding the writer back through
/// its copy and sync. So a first pass copies the bulk while the writer goes on, and a second
/// one, with the writer between batches and held there (at most `HOLD_AT_MOST`), copies the
/// few frames the first missed: the writer's next batch then starts the WAL over.
fn checkpoint(
    checkpointer: &Checkpointer,
    turns: &Turns,
    writer: &Thread,
) -> rusqlite::Result<i64> {
    let first = checkpointer.passive()?;
    if first.frames == 0 {
        return Ok(0);
    }
    let hold = turns.hold(writer);
    let pass = checkpointer.passive();
    drop(hold);
    checkpointer.truncate_if_large(pass?)
}

/// The writer's batches and the checkpointer's held passes take turns: while `held` is set the
/// writer starts no batch (for at most `HOLD_AT_MOST`), and the checkpointer waits for the
/// batch under way (`writing`) to end. Each side sets its own flag, then reads the other's
/// (`SeqCst`), so they cannot both go ahead.
#[derive(Debug, Default)]
struct Turns {
    held: AtomicBool,
    writing: AtomicBool,
}

/// A batch under way (`Turns::batch`); it ends when this is dropped.
struct Batch<'a>(&'a Turns);

/// A held pass (`Turns::hold`); the writer goes on when this is dropped.
struct Hold<'a> {
    turns: &'a Turns,
    writer: &'a Thread,
}

impl Turns {
    /// The writer, before a batch: waits while a pass holds it (at most `HOLD_AT_MOST`).
    fn batch(&self) -> Batch<'_> {
        let asked = Instant::now();
        loop {
            self.writing.store(true, SeqCst);
            let waited = asked.elapsed();
            if !self.held.load(SeqCst) || waited >= HOLD_AT_MOST {
                return Batch(self);
            }
            self.writing.store(false, SeqCst);
            thread::park_timeout(HOLD_AT_MOST - waited);
        }
    }

    /// The checkpointer: holds the writer's next batch and waits for the one under way (at
    /// most `HOLD_AT_MOST`).
    fn hold<'a>(&'a self, writer: &'a Thread) -> Hold<'a> {
        self.held.store(true, SeqCst);
        let asked = Instant::now();
        while self.writing.load(SeqCst) && asked.elapsed() < HOLD_AT_MOST {
            thread::sleep(Duration::from_micros(200));
        }
        Hold {
            turns: self,
            writer,
        }
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        self.0.writing.store(false, SeqCst);
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        self.turns.held.store(false, SeqCst);
        self.writer.unpark();
    }
}

fn write(store: &mut LogStore, pending: &[CallRecord]) -> rusqlite::Result<()> {
    // Yielding costs the writer its turn whenever requests wait: after every group while it
    // keeps up, after every few groups on a busy core.
    let every = if pending.len() <= YIELD_UP_TO_ROWS {
        1
    } else {
        YIELD_EVERY_GROUPS
    };
    let mut groups = 0usize;
    let pause = || {
        groups += 1;
        if groups.is_multiple_of(every) {
            thread::yield_now();
        }
    };
    let written = store.write(pending, pause)?;
    tracing::debug!(rows = written, "call logs written");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Under back-to-back commits the WAL started over only after a held pass; without it, it
    /// grew past what was written. It stays a fraction of that now, and is reused rather than
    /// emptied (no TRUNCATE).
    #[test]
    fn held_passes_let_the_wal_start_over_under_continuous_writes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("turns.db");
        let setup = rusqlite::Connection::open(&path).unwrap();
        setup
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
                 CREATE TABLE t (b BLOB);",
            )
            .unwrap();
        let turns = Arc::new(Turns::default());
        let done = Arc::new(AtomicBool::new(false));
        const ROWS: usize = 3000;
        let writer = {
            let (turns, done, path) = (turns.clone(), done.clone(), path.clone());
            thread::spawn(move || {
                let conn = rusqlite::Connection::open(&path).unwrap();
                conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
                for _ in 0..ROWS {
                    let batch = turns.batch();
                    conn.execute("INSERT INTO t (b) VALUES (zeroblob(3500))", [])
                        .unwrap();
                    drop(batch);
                }
                done.store(true, SeqCst);
            })
        };
        let checkpointer = Checkpointer::open(&path).unwrap();
        let mut passes = 0;
        while !done.load(SeqCst) {
            checkpoint(&checkpointer, &turns, writer.thread()).unwrap();
            passes += 1;
            // Paced, as the checkpointer is (every `CHECKPOINT_EVERY`).
            thread::sleep(Duration::from_millis(5));
        }
        writer.join().unwrap();
        let rows: usize = setup
            .query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(rows, ROWS);
        let wal = std::fs::metadata(dir.path().join("turns.db-wal"))
            .unwrap()
            .len();
        let written = (ROWS * 4096) as u64;
        assert!(wal > 0, "the WAL file is reused, not emptied");
        assert!(
            wal < written / 2,
            "the WAL holds {wal} bytes of {written} written over {passes} passes: it did not start over"
        );
    }
}
