//! The call-log writer's own SQLite connection: a batch of rows and the usage it adds to
//! their keys in one transaction, through cached prepared statements.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use foldhash::HashMap;
use rusqlite::{params, Connection, OpenFlags, TransactionBehavior};

use super::logs::ADD_DAY_COUNTS;
use super::raw_statement::{Binder, RawStatement};
use crate::clock::{day_text, MS_PER_DAY};
use crate::limits::meter::Meter;
use crate::relay::record::{CallRecord, Usage};

/// A key's usage: `last_used_at` only moves forward, and stays as it is without a new use (?2
/// NULL; SQLite's MAX of a NULL is NULL).
const ADD_USAGE: &str = "UPDATE api_keys SET usage_count = usage_count + ?1, \
     last_used_at = COALESCE(MAX(last_used_at, ?2), last_used_at, ?2), \
     total_tokens_used = total_tokens_used + ?3, total_cost = total_cost + ?4 WHERE id = ?5";
/// `usage_daily`'s columns, in the order the rollup's inserts give them.
macro_rules! rollup_columns {
    () => {
        "api_key_id, day, model, calls, success_calls, error_calls, prompt_tokens, \
         completion_tokens, cached_tokens, total_tokens, cost, response_time_ms_sum"
    };
}
pub(super) use rollup_columns;

/// Adds an inserted `usage_daily` row to the existing one of its key, day and model.
macro_rules! rollup_add {
    () => {
        " ON CONFLICT (api_key_id, day, model) DO UPDATE SET calls = calls + excluded.calls, \
         success_calls = success_calls + excluded.success_calls, \
         error_calls = error_calls + excluded.error_calls, \
         prompt_tokens = prompt_tokens + excluded.prompt_tokens, \
         completion_tokens = completion_tokens + excluded.completion_tokens, \
         cached_tokens = cached_tokens + excluded.cached_tokens, \
         total_tokens = total_tokens + excluded.total_tokens, cost = cost + excluded.cost, \
         response_time_ms_sum = response_time_ms_sum + excluded.response_time_ms_sum"
    };
}
pub(super) use rollup_add;

const ADD_ROLLUP: &str = concat!(
    "INSERT INTO usage_daily (",
    rollup_columns!(),
    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    rollup_add!()
);
/// The window under way of a metered key (`rate_windows`), as its meter has it now.
const SAVE_WINDOW: &str =
    "INSERT INTO rate_windows (api_key_id, window_start, requests, tokens, cost) \
     VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (api_key_id) DO UPDATE SET \
     window_start = excluded.window_start, requests = excluded.requests, \
     tokens = excluded.tokens, cost = excluded.cost";
const DROP_WINDOW: &str = "DELETE FROM rate_windows WHERE api_key_id = ?1";
const KEY_EXISTS: &str = "SELECT 1 FROM api_keys WHERE id = ?1";
/// Rows per INSERT statement: one statement's cursors, halt and reset serve them all (per
/// single-row statement they were about a sixth of the writer's instructions per row). The
/// writer's `pause` comes after each such group.
const ROWS_PER_INSERT: usize = 16;

/// The call log's columns but `id` (`log_sql().data`), whose parameters come before `id`'s.
fn log_columns() -> usize {
    super::logs::log_sql().id_param - 1
}

/// `INSERT INTO api_call_logs (…) VALUES (…), (…)` for 1 or `ROWS_PER_INSERT` rows, their
/// parameters numbered in order. `OR FAIL`: a row that breaks a constraint fails the statement
/// without undoing its earlier rows, which the whole batch's rollback does anyway; so SQLite
/// keeps no statement journal (a copy of every page the statement changes, spilled to a temp
/// file past 64 KiB) for a multi-row insert.
fn insert_rows(rows: usize) -> &'static str {
    static SQL: std::sync::LazyLock<[String; 2]> = std::sync::LazyLock::new(|| {
        let sql = super::logs::log_sql();
        let row = format!("({})", vec!["?"; log_columns()].join(", "));
        [1, ROWS_PER_INSERT].map(|rows| {
            format!(
                "INSERT OR FAIL INTO api_call_logs ({}) VALUES {}",
                sql.data,
                vec![row.as_str(); rows].join(", ")
            )
        })
    });
    &SQL[usize::from(rows != 1)]
}

/// Binds a row's values, in `log_sql().data`'s order (`ip`: its address as text).
fn bind_row<'a>(b: &mut Binder<'a>, r: &'a CallRecord, ip: Option<&'a str>) {
    let usage = r.usage.unwrap_or_default();
    b.bind(r.api_key_id);
    b.bind(r.timestamp);
    b.bind(r.model.as_deref());
    b.bind(r.status());
    b.bind(i64::from(r.http_status));
    b.bind(r.response_time);
    b.bind(ip);
    b.bind(r.endpoint.as_str());
    b.bind(r.error_message.as_deref());
    b.bind(r.request_size);
    b.bind(r.response_size);
    b.bind(usage.prompt_tokens);
    b.bind(usage.completion_tokens);
    b.bind(usage.total_tokens);
    b.bind(i64::from(r.stream));
    b.bind(r.cost);
    b.bind(usage.cache_read_tokens);
    b.bind(usage.cache_write_tokens);
    b.bind(r.upstream_id);
    b.bind(i64::from(r.attempts));
}

/// The writer's two inserts (of `ROWS_PER_INSERT` rows and of one), prepared once.
struct Inserts {
    many: RawStatement,
    one: RawStatement,
}

impl Inserts {
    /// # Safety
    /// Dropped before `conn` is closed.
    unsafe fn prepare(conn: &Connection) -> rusqlite::Result<Inserts> {
        // SAFETY: passed on to the caller.
        unsafe {
            Ok(Inserts {
                many: RawStatement::prepare(conn, insert_rows(ROWS_PER_INSERT))?,
                one: RawStatement::prepare(conn, insert_rows(1))?,
            })
        }
    }
}

/// Lookaside slots (SQLite's per-connection pool for small allocations) of the writer's
/// connection: a 16-row INSERT holds its cursors and records at once, past the default 30 large
/// and 93 small slots, and each allocation past them went to malloc (103 in a 64-row batch;
/// 179 while its texts were still bound as copies).
const LOOKASIDE_SLOT_BYTES: i32 = 1200;
const LOOKASIDE_SLOTS: i32 = 160;

/// Gives the connection `LOOKASIDE_SLOTS` lookaside slots (~190 KiB), before it holds any.
fn more_lookaside(conn: &Connection) {
    // SAFETY: the handle is the open connection's; this option takes a buffer pointer (null:
    // SQLite allocates it), the slot size and the slot count, and only fails (SQLITE_BUSY) while
    // lookaside memory is in use, which it is not before the first statement.
    let rc = unsafe {
        rusqlite::ffi::sqlite3_db_config(
            conn.handle(),
            rusqlite::ffi::SQLITE_DBCONFIG_LOOKASIDE,
            std::ptr::null_mut::<std::ffi::c_void>(),
            LOOKASIDE_SLOT_BYTES,
            LOOKASIDE_SLOTS,
        )
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        tracing::debug!(rc, "the call-log writer keeps SQLite's default lookaside");
    }
}

/// A connection that moves the WAL's frames into the database, off the call-log writer's
/// thread: a PASSIVE checkpoint waits for no reader or writer, so the writer goes on
/// appending meanwhile. A pass that copied every frame lets the writer's next transaction start
/// the WAL over at its beginning, in the same file; the writer's batches must not commit during
/// such a pass (`tasks::log_writer` holds them back). Past `TRUNCATE_FRAMES` frames that
/// passes did not copy, a TRUNCATE checkpoint copies them (holding writers back that long,
/// within its busy timeout) and empties the file.
pub struct Checkpointer {
    conn: Connection,
}

/// WAL frames (pages of about 4 KiB) past which the WAL is emptied.
const TRUNCATE_FRAMES: i64 = 8192;

/// What a passive pass found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pass {
    /// Frames in the WAL.
    pub frames: i64,
    /// Every frame is in the database: the next write transaction starts the WAL over.
    pub complete: bool,
}

impl Checkpointer {
    pub fn open(path: &Path) -> rusqlite::Result<Checkpointer> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_millis(200))?;
        Ok(Checkpointer { conn })
    }

    /// Copies the WAL's frames into the database, waiting for no one.
    pub fn passive(&self) -> rusqlite::Result<Pass> {
        let (busy, frames, copied): (i64, i64, i64) =
            self.conn
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                    Ok((row.get(0)?, row.get(1)?, row.get(2)?))
                })?;
        Ok(Pass {
            frames,
            complete: busy == 0 && copied == frames,
        })
    }

    /// After `pass`: empties a WAL that passes could not copy whole and that holds more than
    /// `TRUNCATE_FRAMES` frames; returns the frames left.
    pub fn truncate_if_large(&self, pass: Pass) -> rusqlite::Result<i64> {
        if pass.complete || pass.frames <= TRUNCATE_FRAMES {
            return Ok(pass.frames);
        }
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| row.get(1))
    }
}

/// A connection used only for writing call logs (the schema is the sqlx pool's, migrated
/// before this opens). sqlx would send each statement to a worker thread and re-prepare a
/// multi-row INSERT per batch; here the rows go 16 to a step of an INSERT prepared once and
/// bound through SQLite's C API (`raw_statement`).
pub struct LogStore {
    // Before `conn`: fields drop in order, and the statements must go before their connection.
    inserts: Inserts,
    conn: Connection,
}

impl LogStore {
    /// `busy_timeout`: how long a batch waits for another writer's lock before it fails (the
    /// writer then backs off and retries it).
    pub fn open(path: &Path, busy_timeout: Duration) -> rusqlite::Result<LogStore> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        more_lookaside(&conn);
        conn.busy_timeout(busy_timeout)?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Off on this connection only: `write` looks each key up inside its IMMEDIATE
        // transaction and drops the rows of deleted keys itself, so checking the reference
        // again for every row (a lookup in `api_keys` per insert) would only repeat that.
        // Deletions, which cascade, run on the pool's connections.
        conn.pragma_update(None, "foreign_keys", false)?;
        // This connection never checkpoints: a checkpoint copies the WAL into the database and
        // syncs it (tens to hundreds of ms on a large file), and while the writer did that its
        // queue filled and requests waited. `Checkpointer` does it on a thread of its own.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.set_prepared_statement_cache_capacity(6);
        // SAFETY: kept in the `LogStore` beside `conn`, and dropped before it.
        let inserts = unsafe { Inserts::prepare(&conn)? };
        Ok(LogStore { inserts, conn })
    }

    /// Writes the rows and adds their usage to their keys and to `usage_daily`, in one
    /// transaction. Rows of keys deleted meanwhile are dropped, as their logs would have been;
    /// returns the rows written. `pause` is called after every `ROWS_PER_INSERT` rows (where the
    /// writer may yield the CPU).
    pub fn write(
        &mut self,
        records: &[CallRecord],
        mut pause: impl FnMut(),
    ) -> rusqlite::Result<usize> {
        let mut exists: HashMap<i64, bool> = HashMap::default();
        for record in records {
            if let Some(id) = record.api_key_id {
                exists.insert(id, false);
            }
        }
        // Holding the write lock from the start, no key can be deleted between the existence
        // check and the insert.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut key_exists = tx.prepare_cached(KEY_EXISTS)?;
            for (id, found) in exists.iter_mut() {
                *found = key_exists.exists(params![id])?;
            }
        }
        // Summed per key, and per (key, UTC day since the epoch, model): the day's text is
        // formatted once per group, not per row.
        let mut keys: HashMap<i64, KeySums> = HashMap::default();
        let mut rollup: HashMap<(i64, i64, &str), Sums> = HashMap::default();
        // Rows and errors per (key or 0, day, model): `log_day_counts`.
        let mut counts: HashMap<(i64, i64, &str), (i64, i64)> = HashMap::default();
        let mut written = 0;
        // The group's addresses as text, each row's the span of `ip_text` it is in: formatted
        // once per run of rows from the same address, not once per row.
        let mut ip_text = String::new();
        let mut ip_spans = [None::<(usize, usize)>; ROWS_PER_INSERT];
        let mut rows: Vec<&CallRecord> = records
            .iter()
            .filter(|r| r.api_key_id.is_none_or(|id| exists[&id]))
            .collect();
        // In time order (stable: a run of one millisecond keeps its order): rows come in as
        // their requests end, a few ms out of the order of their timestamps, and each of the
        // time-ordered indexes took an insert into the middle of a full page for it.
        rows.sort_by_key(|r| r.timestamp);
        {
            let inserts = &mut self.inserts;
            for chunk in rows.chunks(ROWS_PER_INSERT) {
                ip_text.clear();
                let mut last = None;
                for (r, span) in chunk.iter().zip(&mut ip_spans) {
                    *span = r.ip_address.map(|ip| match last {
                        Some((same, span)) if same == ip => span,
                        _ => {
                            let start = ip_text.len();
                            let _ = write!(ip_text, "{ip}");
                            last = Some((ip, (start, ip_text.len())));
                            (start, ip_text.len())
                        }
                    });
                }
                let rows = chunk
                    .iter()
                    .zip(&ip_spans)
                    .map(|(r, span)| (*r, span.map(|(start, end)| &ip_text[start..end])));
                if chunk.len() == ROWS_PER_INSERT {
                    inserts
                        .many
                        .execute(|b| rows.for_each(|(r, ip)| bind_row(b, r, ip)))?;
                } else {
                    for (r, ip) in rows {
                        inserts.one.execute(|b| bind_row(b, r, ip))?;
                    }
                }
                for r in chunk {
                    let usage = r.usage.unwrap_or_default();
                    let day = r.timestamp.div_euclid(MS_PER_DAY);
                    let model = r.model.as_deref().unwrap_or("");
                    let count = counts
                        .entry((r.api_key_id.unwrap_or(0), day, model))
                        .or_default();
                    count.0 += 1;
                    count.1 += i64::from(r.status() == "error");
                    if let Some(id) = r.api_key_id {
                        keys.entry(id).or_default().add(r, &usage);
                        rollup.entry((id, day, model)).or_default().add(r, &usage);
                    }
                }
                written += chunk.len();
                pause();
            }
        }
        {
            let mut add_counts = tx.prepare_cached(ADD_DAY_COUNTS)?;
            for ((id, day, model), (rows, errors)) in &counts {
                add_counts.execute(params![id, day, model, rows, errors])?;
            }
            let mut add_rollup = tx.prepare_cached(ADD_ROLLUP)?;
            for ((id, day, model), sums) in &rollup {
                add_rollup.execute(params![
                    id,
                    day_text(*day),
                    model,
                    sums.calls,
                    sums.success_calls,
                    sums.calls - sums.success_calls,
                    sums.prompt_tokens,
                    sums.completion_tokens,
                    sums.cached_tokens,
                    sums.total_tokens,
                    sums.cost,
                    sums.response_time,
                ])?;
            }
            let mut add_usage = tx.prepare_cached(ADD_USAGE)?;
            // A key's refused calls (401s of a revoked key, say) change nothing on its row.
            let changes =
                |sums: &&KeySums| sums.used > 0 || sums.total_tokens != 0 || sums.cost != 0.0;
            for (id, sums) in keys.iter().filter(|(_, sums)| changes(sums)) {
                add_usage.execute(params![
                    sums.used,
                    sums.last_used,
                    sums.total_tokens,
                    sums.cost,
                    id
                ])?;
            }
            // Metered keys' windows, as their meters have them now (a little ahead of these
            // rows, never behind them): a restart resumes from here.
            let mut save_window = tx.prepare_cached(SAVE_WINDOW)?;
            let mut drop_window = tx.prepare_cached(DROP_WINDOW)?;
            for (id, meter) in keys.iter().filter_map(|(id, sums)| Some((id, sums.meter?))) {
                match meter.window() {
                    Some(w) => {
                        save_window.execute(params![id, w.start, w.requests, w.tokens, w.cost])?
                    }
                    None => drop_window.execute(params![id])?,
                };
            }
        }
        tx.commit()?;
        Ok(written)
    }
}

/// What a batch adds to one key's row: `usage_count`/`last_used_at` count the calls the key
/// authenticated; the token and cost totals every row of the key.
#[derive(Default)]
struct KeySums<'a> {
    used: i64,
    last_used: Option<i64>,
    total_tokens: i64,
    cost: f64,
    /// The key's meter, if one of the rows was metered.
    meter: Option<&'a Meter>,
}

impl<'a> KeySums<'a> {
    fn add(&mut self, record: &'a CallRecord, usage: &Usage) {
        if let Some(meter) = &record.meter {
            self.meter = Some(meter);
        }
        if record.authenticated {
            self.used += 1;
            self.last_used = self.last_used.max(Some(record.timestamp));
        }
        self.total_tokens += usage.total_tokens.unwrap_or(0);
        self.cost += record.cost;
    }
}

/// What a batch adds to one `usage_daily` row (a key, a UTC day, a model).
#[derive(Default)]
struct Sums {
    calls: i64,
    success_calls: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    cached_tokens: i64,
    total_tokens: i64,
    cost: f64,
    response_time: i64,
}

impl Sums {
    fn add(&mut self, record: &CallRecord, usage: &Usage) {
        self.calls += 1;
        self.success_calls += i64::from(record.success);
        self.prompt_tokens += usage.prompt_tokens.unwrap_or(0);
        self.completion_tokens += usage.completion_tokens.unwrap_or(0);
        self.cached_tokens += usage.cache_read_tokens.unwrap_or(0);
        self.total_tokens += usage.total_tokens.unwrap_or(0);
        self.cost += record.cost;
        self.response_time += record.response_time;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A successful call's row at `timestamp`.
    fn answered(timestamp: i64) -> CallRecord {
        CallRecord {
            timestamp,
            success: true,
            http_status: 200,
            endpoint: "/v1/models".into(),
            ..CallRecord::default()
        }
    }

    /// A writer's store on a new, migrated database (kept while the directory is).
    async fn migrated_store() -> (tempfile::TempDir, LogStore) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.db");
        let url = format!("sqlite://{}", path.display());
        crate::store::connect(&url).await.unwrap().close().await;
        let store = LogStore::open(&path, Duration::from_secs(5)).unwrap();
        (dir, store)
    }

    /// A batch of 16-row INSERTs finds every small allocation it makes in the connection's
    /// lookaside: none goes to malloc because the slots ran out (with SQLite's default
    /// lookaside 103 of this batch's did).
    #[tokio::test]
    async fn the_writer_s_batches_fit_its_lookaside() {
        let (_dir, mut store) = migrated_store().await;
        let records: Vec<CallRecord> = (0..64)
            .map(|n| CallRecord {
                model: Some(format!("gpt-test-{n}")),
                ip_address: Some([127, 0, 0, 1].into()),
                endpoint: "/v1/chat/completions".into(),
                ..answered(1_700_000_000_000 + n)
            })
            .collect();
        assert_eq!(store.write(&records, || {}).unwrap(), 64);
        let (mut now, mut most) = (0, 0);
        // SAFETY: the open connection's handle, and two ints for SQLite to write.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_db_status(
                store.conn.handle(),
                rusqlite::ffi::SQLITE_DBSTATUS_LOOKASIDE_MISS_FULL,
                &mut now,
                &mut most,
                0,
            )
        };
        assert_eq!(rc, rusqlite::ffi::SQLITE_OK);
        assert_eq!(most, 0, "allocations that found the lookaside full");
    }

    /// Each row keeps its own address (bound without a copy, from text shared by a run of
    /// rows of one address) in 16-row groups and in the rows after the last whole group.
    #[tokio::test]
    async fn each_row_is_written_with_its_own_address() {
        let (_dir, mut store) = migrated_store().await;
        let v4: std::net::IpAddr = [10, 0, 0, 1].into();
        let v6: std::net::IpAddr = "2001:db8::7".parse().unwrap();
        let other: std::net::IpAddr = [192, 168, 1, 200].into();
        // Runs across the group boundary (row 16), a run broken by a row without one, and a
        // last partial group.
        let ips: Vec<Option<std::net::IpAddr>> = (0..37)
            .map(|n| match n {
                0..=5 | 14..=17 => Some(v4),
                6 | 30 => None,
                7..=9 | 31..=36 => Some(v6),
                _ if n % 2 == 0 => Some(other),
                _ => Some(v4),
            })
            .collect();
        let records: Vec<CallRecord> = ips
            .iter()
            .enumerate()
            .map(|(n, &ip)| CallRecord {
                ip_address: ip,
                ..answered(n as i64)
            })
            .collect();
        assert_eq!(store.write(&records, || {}).unwrap(), ips.len());
        let written: Vec<Option<String>> = store
            .conn
            .prepare("SELECT ip_address FROM api_call_logs ORDER BY id")
            .unwrap()
            .query_map([], |row| row.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let expected: Vec<Option<String>> =
            ips.iter().map(|ip| ip.map(|ip| ip.to_string())).collect();
        assert_eq!(written, expected);
    }

    /// A batch is written in the order of its rows' timestamps (rows come in as their requests
    /// end), rows of one millisecond in the order they came.
    #[tokio::test]
    async fn a_batch_is_written_in_time_order() {
        let (_dir, mut store) = migrated_store().await;
        let times = [5, 3, 9, 3, 1, 7, 3, 2];
        let records: Vec<CallRecord> = times
            .iter()
            .enumerate()
            .map(|(n, &t)| CallRecord {
                request_size: n as i64,
                ..answered(t)
            })
            .collect();
        assert_eq!(store.write(&records, || {}).unwrap(), times.len());
        let written: Vec<(i64, i64)> = store
            .conn
            .prepare("SELECT timestamp, request_size FROM api_call_logs ORDER BY id")
            .unwrap()
            .query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            written,
            [
                (1, 4),
                (2, 7),
                (3, 1),
                (3, 3),
                (3, 6),
                (5, 0),
                (7, 5),
                (9, 2)
            ]
        );
    }

    /// A WAL-mode database with `pages` pages' worth of rows written past its last checkpoint.
    fn database_with_wal(dir: &Path, pages: usize) -> (std::path::PathBuf, Connection) {
        let path = dir.join("wal.db");
        let writer = Connection::open(&path).unwrap();
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA wal_autocheckpoint = 0;
                 CREATE TABLE t (b BLOB);",
            )
            .unwrap();
        writer.execute_batch("BEGIN").unwrap();
        for _ in 0..pages {
            writer
                .execute("INSERT INTO t (b) VALUES (zeroblob(3500))", [])
                .unwrap();
        }
        writer.execute_batch("COMMIT").unwrap();
        (path, writer)
    }

    fn wal_bytes(path: &Path) -> u64 {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
    }

    #[test]
    fn a_small_wal_is_checkpointed_in_place_and_a_large_one_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let (path, writer) = database_with_wal(dir.path(), 200);
        let checkpointer = Checkpointer::open(&path).unwrap();
        let pass = checkpointer.passive().unwrap();
        assert!(pass.complete, "{pass:?}");
        assert!(
            pass.frames > 0 && pass.frames <= TRUNCATE_FRAMES,
            "{pass:?}"
        );
        assert_eq!(checkpointer.truncate_if_large(pass).unwrap(), pass.frames);
        let reused = wal_bytes(&path);
        assert!(reused > 0, "a passive pass leaves the WAL file for reuse");
        // After a complete pass the next transaction writes from the WAL's beginning again.
        writer
            .execute("INSERT INTO t (b) VALUES (zeroblob(3500))", [])
            .unwrap();
        let next = checkpointer.passive().unwrap();
        assert!(
            next.frames > 0 && next.frames < 10,
            "{next:?} after {pass:?}"
        );
        assert_eq!(wal_bytes(&path), reused, "the same file, not a longer one");

        writer.execute_batch("BEGIN").unwrap();
        for _ in 0..TRUNCATE_FRAMES as usize + 100 {
            writer
                .execute("INSERT INTO t (b) VALUES (zeroblob(3500))", [])
                .unwrap();
        }
        writer.execute_batch("COMMIT").unwrap();
        // A pass that cannot copy every frame (a reader holds the WAL's end back) leaves a WAL
        // past the limit to be emptied once it can be.
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN").unwrap();
        let _: i64 = reader
            .query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))
            .unwrap();
        writer
            .execute("INSERT INTO t (b) VALUES (zeroblob(3500))", [])
            .unwrap();
        let pass = checkpointer.passive().unwrap();
        assert!(!pass.complete && pass.frames > TRUNCATE_FRAMES, "{pass:?}");
        reader.execute_batch("COMMIT").unwrap();
        assert_eq!(checkpointer.truncate_if_large(pass).unwrap(), 0);
        assert_eq!(wal_bytes(&path), 0, "past the limit the WAL is emptied");
        let rows: i64 = writer
            .query_row("SELECT COUNT(*) FROM t", [], |row| row.get(0))
            .unwrap();
        assert_eq!(
            rows,
            200 + 1 + TRUNCATE_FRAMES + 100 + 1,
            "nothing lost on the way"
        );
    }
}
