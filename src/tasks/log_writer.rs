//! The call-log writer: records queue up without waking anyone, and a low-priority thread
//! writes them in batches every tick, at once on a flush, and all of them on shutdown.

use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::{self, Thread};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::oneshot;

use crate::relay::record::CallRecord;
use crate::store::log_batch::LogStore;

/// Pending rows are written at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// Batches up to this size yield the CPU every few rows; larger ones mean the writer is
/// behind (over 20,000 rows/s at the 50 ms tick) and run without yielding.
const YIELD_UP_TO_ROWS: usize = 1_000;
/// Attempts at a batch before its rows are given up (and the loss logged).
const ATTEMPTS: u32 = 3;
/// The writer's niceness: when the CPU is contended, relaying goes first and the rows a
/// moment later (at nice 5 the writer still gets ~1/4 of a busy request thread's share).
/// The scheduler does not preempt a running thread for a waking one at once, so the writer
/// also yields every few rows: a request arriving mid-batch waits microseconds, not the batch.
#[cfg(target_os = "linux")]
const WRITER_NICE: libc::c_int = 5;

enum Msg {
    Record(CallRecord),
    /// Write everything received so far, then answer.
    Flush(oneshot::Sender<()>),
    /// Write everything, answer, and stop.
    Close(oneshot::Sender<()>),
}

/// The request path's handle to the writer: sending never blocks, never wakes a thread and
/// never touches the database.
#[derive(Clone, Debug)]
pub struct LogSink {
    tx: Sender<Msg>,
    writer: Thread,
}

impl LogSink {
    /// Opens the writer's connection to the (already migrated) database file and starts it.
    pub fn spawn(database: &Path) -> anyhow::Result<LogSink> {
        let store = LogStore::open(database)
            .with_context(|| format!("cannot open {} for call logs", database.display()))?;
        let (tx, rx) = mpsc::channel();
        let handle = thread::Builder::new()
            .name("keygate-log-writer".into())
            .spawn(move || run(store, rx))
            .context("cannot start the call-log writer thread")?;
        Ok(LogSink {
            tx,
            writer: handle.thread().clone(),
        })
    }

    pub fn record(&self, record: CallRecord) {
        if self.tx.send(Msg::Record(record)).is_err() {
            tracing::error!("call-log writer has stopped; a call-log row was lost");
        }
    }

    /// Returns once every record sent before this call is in the database.
    pub async fn flush(&self) {
        self.ask(Msg::Flush).await;
    }

    /// Writes every pending record and stops the writer.
    pub async fn close(&self) {
        self.ask(Msg::Close).await;
    }

    async fn ask(&self, msg: fn(oneshot::Sender<()>) -> Msg) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(msg(ack)).is_ok() {
            self.writer.unpark();
            let _ = done.await;
        }
    }
}

fn run(mut store: LogStore, rx: Receiver<Msg>) {
    lower_priority();
    let mut pending: Vec<CallRecord> = Vec::new();
    let mut acks = Vec::new();
    loop {
        thread::park_timeout(FLUSH_EVERY);
        let mut closing = false;
        loop {
            match rx.try_recv() {
                Ok(Msg::Record(record)) => pending.push(record),
                Ok(Msg::Flush(ack)) => acks.push(ack),
                Ok(Msg::Close(ack)) => {
                    acks.push(ack);
                    closing = true;
                }
                Err(TryRecvError::Empty) => break,
                // Every sink is gone: write what is left and stop.
                Err(TryRecvError::Disconnected) => {
                    closing = true;
                    break;
                }
            }
        }
        write(&mut store, &mut pending);
        for ack in acks.drain(..) {
            let _ = ack.send(());
        }
        if closing {
            tracing::info!("call-log writer flushed and stopped");
            return;
        }
    }
}

fn write(store: &mut LogStore, pending: &mut Vec<CallRecord>) {
    if pending.is_empty() {
        return;
    }
    for attempt in 1..=ATTEMPTS {
        // Yielding costs the writer its turn whenever requests wait: only while it keeps up.
        let keeping_up = pending.len() <= YIELD_UP_TO_ROWS;
        let pause = || {
            if keeping_up {
                thread::yield_now();
            }
        };
        match store.write(pending, pause) {
            Ok(written) => {
                tracing::debug!(rows = written, "call logs written");
                pending.clear();
                return;
            }
            Err(err) if attempt < ATTEMPTS => {
                tracing::warn!(error = %err, attempt, "call-log batch failed; retrying");
                thread::sleep(Duration::from_millis(100 * attempt as u64));
            }
            Err(err) => {
                tracing::error!(error = %err, rows = pending.len(), "call-log batch failed; rows lost");
                pending.clear();
            }
        }
    }
}

/// Lowers this thread's CPU priority (Linux: niceness is per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread; no memory is shared with them.
        let result = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, WRITER_NICE)
        };
        if result != 0 {
            tracing::debug!("cannot lower the call-log writer's priority");
        }
    }
}
