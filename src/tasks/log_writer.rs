//! The call-log writer: records arrive on a channel, are written in batches, and flushed on shutdown.

use std::time::Duration;

use sqlx::SqlitePool;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::relay::record::CallRecord;
use crate::store;

/// Pending rows are written at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// A batch this large is written at once.
const BATCH_ROWS: usize = 2_000;
/// Attempts at a batch before its rows are given up (and the loss logged).
const ATTEMPTS: u32 = 3;

enum Msg {
    Record(CallRecord),
    /// Write everything received so far, then answer.
    Flush(oneshot::Sender<()>),
    /// Write everything, answer, and stop.
    Close(oneshot::Sender<()>),
}

/// The request path's handle to the writer: sending never blocks and never touches the database.
#[derive(Clone, Debug)]
pub struct LogSink {
    tx: mpsc::UnboundedSender<Msg>,
}

impl LogSink {
    /// Starts the writer task on `pool`.
    pub fn spawn(pool: SqlitePool) -> (LogSink, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (LogSink { tx }, tokio::spawn(run(pool, rx)))
    }

    pub fn record(&self, record: CallRecord) {
        if self.tx.send(Msg::Record(record)).is_err() {
            tracing::error!("call-log writer has stopped; a call-log row was lost");
        }
    }

    /// Returns once every record sent before this call is in the database.
    pub async fn flush(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Flush(ack)).is_ok() {
            let _ = done.await;
        }
    }

    /// Writes every pending record and stops the writer.
    pub async fn close(&self) {
        let (ack, done) = oneshot::channel();
        if self.tx.send(Msg::Close(ack)).is_ok() {
            let _ = done.await;
        }
    }
}

async fn run(pool: SqlitePool, mut rx: mpsc::UnboundedReceiver<Msg>) {
    let mut pending: Vec<CallRecord> = Vec::new();
    let mut inbox: Vec<Msg> = Vec::with_capacity(1024);
    let mut tick = tokio::time::interval(FLUSH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let received = tokio::select! {
            n = rx.recv_many(&mut inbox, 1024) => n,
            _ = tick.tick() => {
                write(&pool, &mut pending).await;
                continue;
            }
        };
        if received == 0 {
            write(&pool, &mut pending).await;
            return;
        }
        let mut acks = Vec::new();
        let mut closing = false;
        for msg in inbox.drain(..) {
            match msg {
                Msg::Record(record) => pending.push(record),
                Msg::Flush(ack) => acks.push(ack),
                Msg::Close(ack) => {
                    acks.push(ack);
                    closing = true;
                }
            }
        }
        if closing {
            // Anything sent before the close is already queued behind it.
            while let Ok(Msg::Record(record)) = rx.try_recv() {
                pending.push(record);
            }
        }
        if pending.len() >= BATCH_ROWS || !acks.is_empty() {
            write(&pool, &mut pending).await;
        }
        for ack in acks {
            let _ = ack.send(());
        }
        if closing {
            tracing::info!("call-log writer flushed and stopped");
            return;
        }
    }
}

async fn write(pool: &SqlitePool, pending: &mut Vec<CallRecord>) {
    if pending.is_empty() {
        return;
    }
    for attempt in 1..=ATTEMPTS {
        match store::logs::insert_batch(pool, pending).await {
            Ok(written) => {
                tracing::debug!(rows = written, "call logs written");
                pending.clear();
                return;
            }
            Err(err) if attempt < ATTEMPTS => {
                tracing::warn!(error = %err, attempt, "call-log batch failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 * attempt as u64)).await;
            }
            Err(err) => {
                tracing::error!(error = %err, rows = pending.len(), "call-log batch failed; rows lost");
                pending.clear();
            }
        }
    }
}
