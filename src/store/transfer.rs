//! SQL for `keygate data export|import`: rows streamed from one snapshot; imported rows staged
//! in a file of their own and moved into the database in one short transaction.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::LazyLock;

use anyhow::Context;
use futures_util::Stream;
use sqlx::{
    ConnectOptions, Connection, QueryBuilder, Sqlite, SqliteConnection, SqlitePool, Transaction,
};

use super::keys::{bind_key, key_sql, KeyRow};
use super::log_batch::{rollup_add, rollup_columns};
use super::logs::{bind_log, day_counts_add, log_sql, LogRow};
use super::upstreams::{self, UpstreamRow};
use crate::clock::{day_text, MS_PER_DAY};

/// A read transaction: counts and rows read in it all come from one snapshot, so an export
/// taken while the server writes is consistent.
pub async fn begin_read(pool: &SqlitePool) -> sqlx::Result<Transaction<'static, Sqlite>> {
    pool.begin().await
}

pub async fn count_keys(conn: &mut SqliteConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM api_keys")
        .fetch_one(conn)
        .await
}

pub async fn count_upstreams(conn: &mut SqliteConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM upstreams")
        .fetch_one(conn)
        .await
}

pub async fn count_logs(conn: &mut SqliteConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM api_call_logs")
        .fetch_one(conn)
        .await
}

/// Keys with ids above `after`, by id, at most `limit` of them, one row at a time. Exports
/// read in such slices so that no statement runs for the whole export.
pub fn keys_after(
    conn: &mut SqliteConnection,
    after: i64,
    limit: i64,
) -> impl Stream<Item = sqlx::Result<KeyRow>> + '_ {
    // The stream borrows its SQL text: built once, kept for good.
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {} FROM api_keys WHERE id > ? ORDER BY id LIMIT ?",
            key_sql().select
        )
    });
    sqlx::query_as(SQL.as_str())
        .bind(after)
        .bind(limit)
        .fetch(conn)
}

/// Call logs with ids above `after`, by id, at most `limit` of them, one row at a time.
pub fn logs_after(
    conn: &mut SqliteConnection,
    after: i64,
    limit: i64,
) -> impl Stream<Item = sqlx::Result<LogRow>> + '_ {
    static SQL: LazyLock<String> = LazyLock::new(|| {
        format!(
            "SELECT {} FROM api_call_logs WHERE id > ? ORDER BY id LIMIT ?",
            log_sql().select
        )
    });
    sqlx::query_as(SQL.as_str())
        .bind(after)
        .bind(limit)
        .fetch(conn)
}

/// The page cache of this connection's view of the database (KiB): the move-in transaction
/// keeps this much of what it changes in memory before it spills pages to the WAL (SQLite's
/// default, 2 MiB, spilled all the time). A bound: memory stays flat whatever the import's size.
/// The pool's memory map is off on this connection (for the staging file too): the move-in
/// reads every staged row once, and the mapped pages of a 20M-row staging file (2 GiB) counted
/// in the import's resident memory.
const MOVE_IN_CACHE_KIB: u32 = 64 * 1024;

/// Staged rows are committed in slices of this many: no statement or transaction on the
/// staging file runs for the whole import, and a read of the database is never held long.
const STAGE_COMMIT_EVERY: u64 = 10_000;

/// An import's staging area: a throwaway SQLite file next to the database, ATTACHed as
/// `stage` to a connection of its own. Rows are checked against the database and written
/// there without taking the database's write lock (the server keeps writing call logs and
/// admin changes meanwhile); `move_in` then copies them over in one short transaction.
/// The file is removed when the stage is dropped.
pub struct Stage {
    conn: SqliteConnection,
    path: PathBuf,
    /// The largest call-log id when staging began: ids above it that appear meanwhile were
    /// given by the server to its own rows.
    log_floor: i64,
    /// Rows staged in the open transaction on the staging file (none open: `None`). It is
    /// opened at the first row, so merely checking a file (at a terminal, while a person
    /// answers) holds no read of the database open.
    uncommitted: Option<u64>,
    /// What the staged call logs add to the usage rollup, summed as they are staged.
    usage: StagedUsage,
    /// The rows the move-in inserts (staged without `overwrite`), counted as they are staged.
    counts: StagedCounts,
    /// Rows staged by `put_log` (the only ones that may overwrite a row of the database).
    overwrites: u64,
    /// Upstreams staged.
    upstreams: u64,
}

impl Stage {
    pub async fn open(pool: &SqlitePool) -> anyhow::Result<Stage> {
        // A connection of its own (the pool's settings): its statements run long by design, so
        // sqlx's "slow statement" warnings are off.
        let mut conn = pool
            .connect_options()
            .as_ref()
            .clone()
            .disable_statement_logging()
            .connect()
            .await?;
        let main: String =
            sqlx::query_scalar("SELECT file FROM pragma_database_list WHERE name = 'main'")
                .fetch_one(&mut conn)
                .await?;
        let path = PathBuf::from(format!("{main}.import-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        // The staged rows include key hashes and encrypted keys: the file is made readable by
        // its owner only before SQLite opens it (SQLite would create it with the umask's mode).
        let mut private = std::fs::OpenOptions::new();
        private.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut private, 0o600);
        private
            .open(&path)
            .with_context(|| format!("cannot create the staging file {}", path.display()))?;
        sqlx::query("ATTACH DATABASE ? AS stage")
            .bind(path.to_string_lossy().as_ref())
            .execute(&mut conn)
            .await
            .with_context(|| format!("cannot create the staging file {}", path.display()))?;
        let mut stage = Stage {
            conn,
            path,
            log_floor: 0,
            uncommitted: None,
            usage: StagedUsage::default(),
            counts: StagedCounts::default(),
            overwrites: 0,
            upstreams: 0,
        };
        // Throwaway: no journal, no fsync. `overwrite`: the row existed in the database when
        // it was staged (a conflict resolved by overwriting it).
        let key_columns = key_sql()
            .data
            .replacen("key_hash", "key_hash TEXT NOT NULL UNIQUE", 1);
        sqlx::raw_sql(&format!(
            "PRAGMA stage.journal_mode = OFF; PRAGMA stage.synchronous = OFF; \
             PRAGMA main.cache_size = -{MOVE_IN_CACHE_KIB}; PRAGMA mmap_size = 0; \
             CREATE TABLE stage.api_keys (id INTEGER PRIMARY KEY, {key_columns}, \
             overwrite INTEGER NOT NULL); \
             CREATE TABLE stage.api_call_logs (id INTEGER PRIMARY KEY, {}, \
             overwrite INTEGER NOT NULL); \
             CREATE TABLE stage.upstreams (id INTEGER PRIMARY KEY, {}, \
             overwrite INTEGER NOT NULL);",
            log_sql().data,
            upstreams::DATA
        ))
        .execute(&mut stage.conn)
        .await?;
        stage.log_floor = sqlx::query_scalar("SELECT COALESCE(MAX(id), 0) FROM main.api_call_logs")
            .fetch_one(&mut stage.conn)
            .await?;
        Ok(stage)
    }

    /// The connection that reads the database and writes the stage.
    pub fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.conn
    }

    /// Opens a transaction on the staging file if none is: rows are written in slices.
    async fn begin(&mut self) -> sqlx::Result<()> {
        if self.uncommitted.is_none() {
            sqlx::query("BEGIN").execute(&mut self.conn).await?;
            self.uncommitted = Some(0);
        }
        Ok(())
    }

    /// Counts a staged row; commits the slice every few thousand rows.
    async fn staged(&mut self) -> sqlx::Result<()> {
        self.staged_rows(1).await
    }

    /// Counts `n` staged rows; commits the slice every few thousand rows.
    async fn staged_rows(&mut self, n: u64) -> sqlx::Result<()> {
        let rows = self.uncommitted.get_or_insert(0);
        *rows += n;
        if *rows >= STAGE_COMMIT_EVERY {
            self.commit().await?;
        }
        Ok(())
    }

    async fn commit(&mut self) -> sqlx::Result<()> {
        if self.uncommitted.take().is_some() {
            sqlx::query("COMMIT").execute(&mut self.conn).await?;
        }
        Ok(())
    }

    /// Copies the staged rows into the database in one transaction (all or nothing), then
    /// removes the staging file. New rows keep their ids, except those whose id the server
    /// gave to a row of its own meanwhile (an admin's new key, a call log): they get fresh
    /// ids, and the call logs of a moved key follow it. A key created meanwhile with the
    /// secret of a staged key fails the whole move.
    pub async fn move_in(mut self) -> anyhow::Result<Moved> {
        self.commit().await?;
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        sqlx::raw_sql(
            "CREATE TEMP TABLE IF NOT EXISTS taken_log_ids (id INTEGER PRIMARY KEY); \
             DELETE FROM temp.taken_log_ids; \
             CREATE TEMP TABLE IF NOT EXISTS key_moves (old INTEGER PRIMARY KEY, new INTEGER NOT NULL); \
             DELETE FROM temp.key_moves;",
        )
        .execute(&mut *tx)
        .await?;
        // Staged call-log ids the server gave its own rows meanwhile (above the floor, within
        // the staged range: usually none, and then nothing below scans for them).
        let taken_logs = sqlx::query(
            "INSERT INTO temp.taken_log_ids SELECT m.id FROM main.api_call_logs m \
             JOIN stage.api_call_logs s ON s.id = m.id WHERE m.id > ?1 \
             AND m.id BETWEEN (SELECT MIN(id) FROM stage.api_call_logs) \
             AND (SELECT MAX(id) FROM stage.api_call_logs)",
        )
        .bind(self.log_floor)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let taken_keys: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM stage.api_keys WHERE NOT overwrite \
             AND id IN (SELECT id FROM main.api_keys) ORDER BY id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let write = |what: &'static str| {
            move |err: sqlx::Error| {
                anyhow::Error::new(err).context(format!(
                    "cannot write the {what} (changed in the database while the file was read?)"
                ))
            }
        };
        // Upstreams first: the keys bound to them name their ids.
        let columns = upstreams::DATA;
        let overwrite_upstream = columns
            .split(", ")
            .map(|c| format!("{c} = excluded.{c}"))
            .collect::<Vec<_>>()
            .join(", ");
        sqlx::query(&format!(
            "INSERT INTO main.upstreams (id, {columns}) SELECT id, {columns} FROM stage.upstreams \
             WHERE NOT overwrite ORDER BY id"
        ))
        .execute(&mut *tx)
        .await
        .map_err(write("new upstreams"))?;
        sqlx::query(&format!(
            "INSERT INTO main.upstreams (id, {columns}) SELECT id, {columns} FROM stage.upstreams \
             WHERE overwrite ORDER BY id ON CONFLICT (id) DO UPDATE SET {overwrite_upstream}"
        ))
        .execute(&mut *tx)
        .await
        .map_err(write("overwritten upstreams"))?;
        if self.upstreams > 0 {
            upstreams::bump_generation(&mut *tx).await?;
        }
        let keys = key_sql();
        let (all, data) = (&keys.select, &keys.data);
        sqlx::query(&format!(
            "INSERT INTO main.api_keys ({all}) SELECT {all} FROM stage.api_keys \
             WHERE NOT overwrite AND id NOT IN (SELECT id FROM main.api_keys) ORDER BY id"
        ))
        .execute(&mut *tx)
        .await
        .map_err(write("new keys"))?;
        sqlx::query(&format!(
            "INSERT INTO main.api_keys ({all}) SELECT {all} FROM stage.api_keys \
             WHERE overwrite ORDER BY id ON CONFLICT (id) DO UPDATE SET {}",
            keys.overwrite
        ))
        .execute(&mut *tx)
        .await
        .map_err(write("overwritten keys"))?;
        // After every kept id: fresh ids follow the largest one.
        let move_key = format!(
            "INSERT INTO main.api_keys ({data}) SELECT {data} FROM stage.api_keys WHERE id = ?"
        );
        for old in &taken_keys {
            let moved = sqlx::query(&move_key)
                .bind(old)
                .execute(&mut *tx)
                .await
                .map_err(write("new keys"))?;
            sqlx::query("INSERT INTO temp.key_moves (old, new) VALUES (?, ?)")
                .bind(old)
                .bind(moved.last_insert_rowid())
                .execute(&mut *tx)
                .await?;
        }
        // Before any row is written: the rollup and the key totals follow the rows.
        add_to_rollup(&mut tx, &self.usage, self.overwrites > 0)
            .await
            .map_err(write("usage rollup"))?;
        add_day_counts(&mut tx, &self.counts)
            .await
            .map_err(write("call-log counts"))?;
        let logs = log_sql();
        sqlx::query(&format!(
            "INSERT INTO main.api_call_logs ({}, id) SELECT {}, id FROM stage.api_call_logs \
             WHERE NOT overwrite AND id NOT IN (SELECT id FROM temp.taken_log_ids) ORDER BY id",
            logs.data, logs.data_moved
        ))
        .execute(&mut *tx)
        .await
        .map_err(write("new call logs"))?;
        sqlx::query(&format!(
            "INSERT INTO main.api_call_logs ({}, id) SELECT {}, id FROM stage.api_call_logs \
             WHERE overwrite ORDER BY id{}",
            logs.data, logs.data_moved, logs.overwrite
        ))
        .execute(&mut *tx)
        .await
        .map_err(write("overwritten call logs"))?;
        let mut moved_logs = 0;
        if taken_logs > 0 {
            moved_logs = sqlx::query(&format!(
                "INSERT INTO main.api_call_logs ({}) SELECT {} FROM stage.api_call_logs \
                 WHERE NOT overwrite AND id IN (SELECT id FROM temp.taken_log_ids) ORDER BY id",
                logs.data, logs.data_moved
            ))
            .execute(&mut *tx)
            .await
            .map_err(write("new call logs"))?
            .rows_affected();
        }
        tx.commit().await?;
        sqlx::query("DETACH DATABASE stage")
            .execute(&mut self.conn)
            .await?;
        Ok(Moved {
            keys: taken_keys.len() as u64,
            logs: moved_logs,
        })
    }
}

/// What the staged call logs change in `usage_daily`: every staged row is added (under its
/// key's new id if the key moved), and the row it overwrites (if any) taken away, so a row is
/// never counted twice. Incremental, never recomputed from the call log: the rollup keeps
/// the usage of rows that were pruned. Then the totals of every key whose rollup changed, or
/// that the import wrote, are set from its rollup. Runs before the call logs are written (the
/// overwritten rows are read as they were). The staged rows' sums were kept while staging
/// (`StagedUsage`): grouping the staged rows here sorted every one of them (a third of a
/// 2M-row move-in).
async fn add_to_rollup(
    tx: &mut Transaction<'_, Sqlite>,
    usage: &StagedUsage,
    overwrites: bool,
) -> sqlx::Result<()> {
    sqlx::raw_sql(concat!(
        "CREATE TEMP TABLE IF NOT EXISTS usage_delta (",
        rollup_columns!(),
        ", PRIMARY KEY (api_key_id, day, model)); DELETE FROM temp.usage_delta;"
    ))
    .execute(&mut **tx)
    .await?;
    let groups: Vec<_> = usage.0.iter().collect();
    // 12 parameters a group: well within SQLite's limit of 32,766 per statement.
    for chunk in groups.chunks(1_000) {
        let mut insert = QueryBuilder::<Sqlite>::new(concat!(
            "INSERT INTO temp.usage_delta (",
            rollup_columns!(),
            ") SELECT COALESCE((SELECT new FROM temp.key_moves WHERE old = column1), column1), ",
            "column2, column3, column4, column5, column6, column7, column8, column9, column10, ",
            "column11, column12 FROM ("
        ));
        insert.push_values(chunk, |mut row, ((key, day, model), sums)| {
            row.push_bind(*key)
                .push_bind(day_text(*day))
                .push_bind(*model)
                .push_bind(sums.calls)
                .push_bind(sums.success_calls)
                .push_bind(sums.error_calls)
                .push_bind(sums.prompt_tokens)
                .push_bind(sums.completion_tokens)
                .push_bind(sums.cached_tokens)
                .push_bind(sums.total_tokens)
                .push_bind(sums.cost)
                .push_bind(sums.response_time);
        });
        // (Unique groups: a moved key's fresh id is above every other key id. `WHERE true`
        // lets SQLite read `ON CONFLICT` as the upsert, not a join.)
        insert.push(") WHERE true").push(rollup_add!());
        insert.build().execute(&mut **tx).await?;
    }
    if overwrites {
        // The database's rows that staged rows overwrite, taken away.
        sqlx::query(concat!(
            "INSERT INTO temp.usage_delta (",
            rollup_columns!(),
            ") SELECT api_key_id, date(timestamp / 1000, 'unixepoch') AS d, ",
            "COALESCE(model, '') AS m, -COUNT(*), -SUM(status = 'success'), ",
            "-SUM(status = 'error'), -COALESCE(SUM(prompt_tokens), 0), ",
            "-COALESCE(SUM(completion_tokens), 0), -COALESCE(SUM(cache_read_tokens), 0), ",
            "-COALESCE(SUM(total_tokens), 0), -COALESCE(SUM(cost), 0), -SUM(response_time) ",
            "FROM main.api_call_logs WHERE id IN ",
            "(SELECT id FROM stage.api_call_logs WHERE overwrite) AND api_key_id IS NOT NULL ",
            "GROUP BY api_key_id, d, m",
            rollup_add!()
        ))
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query(concat!(
        "INSERT INTO main.usage_daily (",
        rollup_columns!(),
        ") SELECT ",
        rollup_columns!(),
        " FROM temp.usage_delta WHERE true",
        rollup_add!()
    ))
    .execute(&mut **tx)
    .await?;
    // A day and model whose rows were all overwritten by rows of another.
    sqlx::query(
        "DELETE FROM main.usage_daily WHERE calls = 0 AND (api_key_id, day, model) IN \
         (SELECT api_key_id, day, model FROM temp.usage_delta)",
    )
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "UPDATE main.api_keys SET \
         total_tokens_used = (SELECT COALESCE(SUM(total_tokens), 0) FROM main.usage_daily u \
         WHERE u.api_key_id = api_keys.id), \
         total_cost = (SELECT COALESCE(SUM(cost), 0) FROM main.usage_daily u \
         WHERE u.api_key_id = api_keys.id) \
         WHERE id IN (SELECT api_key_id FROM temp.usage_delta UNION \
         SELECT COALESCE((SELECT new FROM temp.key_moves WHERE old = s.id), s.id) \
         FROM stage.api_keys s)",
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// New rows of an import that got fresh ids: the server gave theirs to its own rows while
/// the file was read.
#[derive(Debug, Default)]
pub struct Moved {
    pub keys: u64,
    pub logs: u64,
}

/// What staged call logs add to the usage rollup, per (staged key id, UTC day since the epoch,
/// model or ''): as many groups as keys × days × models, whatever the number of rows.
#[derive(Default)]
struct StagedUsage(Groups<UsageSums>);

/// Sums per (key id, UTC day since the epoch, model), looked up without allocating: a staged
/// row's model is copied only the first time it is seen.
struct Groups<V>(HashMap<String, HashMap<(i64, i64), V>>);

impl<V> Default for Groups<V> {
    fn default() -> Self {
        Groups(HashMap::new())
    }
}

impl<V: Default> Groups<V> {
    fn entry(&mut self, key: i64, day: i64, model: &str) -> &mut V {
        if !self.0.contains_key(model) {
            self.0.insert(model.to_string(), HashMap::new());
        }
        let of_model = self.0.get_mut(model).expect("inserted above");
        of_model.entry((key, day)).or_default()
    }

    fn iter(&self) -> impl Iterator<Item = ((i64, i64, &str), &V)> {
        self.0.iter().flat_map(|(model, groups)| {
            groups
                .iter()
                .map(move |(&(key, day), sums)| ((key, day, model.as_str()), sums))
        })
    }
}

/// One `usage_daily` row's worth of calls.
#[derive(Default)]
struct UsageSums {
    calls: i64,
    success_calls: i64,
    error_calls: i64,
    prompt_tokens: i64,
    completion_tokens: i64,
    cached_tokens: i64,
    total_tokens: i64,
    cost: f64,
    response_time: i64,
}

impl StagedUsage {
    /// Adds a staged row (`sign` 1), or takes back one a later row replaced in the stage (-1).
    fn add(&mut self, log: &UsageOf<'_>, sign: i64) {
        let Some(key) = log.api_key_id else {
            return;
        };
        let day = log.timestamp.div_euclid(MS_PER_DAY);
        let sums = self.0.entry(key, day, log.model.unwrap_or(""));
        let success = log.status == "success";
        sums.calls += sign;
        sums.success_calls += sign * i64::from(success);
        sums.error_calls += sign * i64::from(log.status == "error");
        sums.prompt_tokens += sign * log.prompt_tokens.unwrap_or(0);
        sums.completion_tokens += sign * log.completion_tokens.unwrap_or(0);
        sums.cached_tokens += sign * log.cache_read_tokens.unwrap_or(0);
        sums.total_tokens += sign * log.total_tokens.unwrap_or(0);
        sums.cost += sign as f64 * log.cost;
        sums.response_time += sign * log.response_time;
    }
}

/// The call logs a move-in inserts (the staged rows that overwrite none), per (staged key id
/// or 0, UTC day since the epoch, model or ''): rows and errors, for `log_day_counts`. Rows it
/// overwrites are moved between groups by the table's update trigger.
#[derive(Default)]
struct StagedCounts(Groups<(i64, i64)>);

impl StagedCounts {
    fn add(&mut self, log: &UsageOf<'_>, sign: i64) {
        let count = self.0.entry(
            log.api_key_id.unwrap_or(0),
            log.timestamp.div_euclid(MS_PER_DAY),
            log.model.unwrap_or(""),
        );
        count.0 += sign;
        count.1 += sign * i64::from(log.status == "error");
    }
}

/// Adds the move-in's new rows to `log_day_counts`, under their keys' new ids where keys moved.
async fn add_day_counts(
    tx: &mut Transaction<'_, Sqlite>,
    counts: &StagedCounts,
) -> sqlx::Result<()> {
    let groups: Vec<_> = counts
        .0
        .iter()
        .filter(|(_, (rows, _))| *rows != 0)
        .collect();
    for chunk in groups.chunks(1_000) {
        let mut insert = QueryBuilder::<Sqlite>::new(
            "INSERT INTO main.log_day_counts (api_key_id, day, model, rows, errors) \
             SELECT COALESCE((SELECT new FROM temp.key_moves WHERE old = column1), column1), \
             column2, column3, column4, column5 FROM (",
        );
        insert.push_values(chunk, |mut row, ((key, day, model), (rows, errors))| {
            row.push_bind(*key)
                .push_bind(*day)
                .push_bind(*model)
                .push_bind(*rows)
                .push_bind(*errors);
        });
        insert.push(") WHERE true").push(day_counts_add!());
        insert.build().execute(&mut **tx).await?;
    }
    Ok(())
}

/// The fields of a call log the rollup sums.
struct UsageOf<'a> {
    api_key_id: Option<i64>,
    timestamp: i64,
    model: Option<&'a str>,
    status: &'a str,
    prompt_tokens: Option<i64>,
    completion_tokens: Option<i64>,
    cache_read_tokens: Option<i64>,
    total_tokens: Option<i64>,
    cost: f64,
    response_time: i64,
}

impl<'a> From<&'a LogRow> for UsageOf<'a> {
    fn from(log: &'a LogRow) -> Self {
        UsageOf {
            api_key_id: log.api_key_id,
            timestamp: log.timestamp,
            model: log.model.as_deref(),
            status: &log.status,
            prompt_tokens: log.prompt_tokens,
            completion_tokens: log.completion_tokens,
            cache_read_tokens: log.cache_read_tokens,
            total_tokens: log.total_tokens,
            cost: log.cost,
            response_time: log.response_time,
        }
    }
}

/// A staged call log's summed fields, as `UsageOf` reads them.
type StagedRow = (
    Option<i64>,
    i64,
    Option<String>,
    String,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    f64,
    i64,
    bool,
);

impl Drop for Stage {
    fn drop(&mut self) {
        // Unlinking an open file is fine: its space is freed when the connection closes.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The keys an imported key collides with: the one with its id, and another one (a
/// different id) holding the same secret. Staged keys stand for the database's keys of the
/// same id.
#[derive(Debug, Default)]
pub struct KeyClash {
    pub same_id: Option<KeyRow>,
    pub same_secret: Option<KeyRow>,
}

impl KeyClash {
    pub fn is_none(&self) -> bool {
        self.same_id.is_none() && self.same_secret.is_none()
    }
}

pub async fn key_clash(stage: &mut Stage, id: i64, key_hash: &str) -> sqlx::Result<KeyClash> {
    let all = &key_sql().select;
    let rows: Vec<KeyRow> = sqlx::query_as(&format!(
        "SELECT {all} FROM stage.api_keys WHERE id = ?1 OR key_hash = ?2 \
         UNION ALL SELECT {all} FROM main.api_keys WHERE (id = ?1 OR key_hash = ?2) \
         AND id NOT IN (SELECT id FROM stage.api_keys) ORDER BY id"
    ))
    .bind(id)
    .bind(key_hash)
    .fetch_all(stage.conn())
    .await?;
    let mut clash = KeyClash::default();
    for row in rows {
        if row.id == id {
            clash.same_id = Some(row);
        } else {
            clash.same_secret = Some(row);
        }
    }
    Ok(clash)
}

/// The database's (staged or existing) key `id`.
pub async fn key_exists(stage: &mut Stage, id: i64) -> sqlx::Result<bool> {
    staged_or_held(stage, "api_keys", id).await
}

/// Whether `table` has row `id`, staged or in the database.
async fn staged_or_held(stage: &mut Stage, table: &str, id: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM stage.{table} WHERE id = ?1) \
         OR EXISTS (SELECT 1 FROM main.{table} WHERE id = ?1)"
    ))
    .bind(id)
    .fetch_one(stage.conn())
    .await
}

/// Which of `logs`' ids a staged call log has, or one the database had when staging began:
/// one statement, the ids passed as one JSON array. A row the server wrote since (an id
/// above the floor) is no conflict: `move_in` gives the staged row a fresh id.
pub async fn existing_logs(stage: &mut Stage, logs: &[&LogRow]) -> sqlx::Result<HashSet<i64>> {
    let ids = id_array(logs);
    let floor = stage.log_floor;
    let found: Vec<i64> = sqlx::query_scalar(
        "SELECT id FROM main.api_call_logs WHERE id IN (SELECT value FROM json_each(?1)) \
         AND id <= ?2 \
         UNION SELECT id FROM stage.api_call_logs WHERE id IN (SELECT value FROM json_each(?1))",
    )
    .bind(ids)
    .bind(floor)
    .fetch_all(stage.conn())
    .await?;
    Ok(found.into_iter().collect())
}

/// `[id,id,…]`.
fn id_array(logs: &[&LogRow]) -> String {
    let mut text = String::with_capacity(logs.len() * 12 + 2);
    text.push('[');
    for (i, log) in logs.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(itoa::Buffer::new().format(log.id));
    }
    text.push(']');
    text
}

/// Stages `key` under `id`: inserted (AUTOINCREMENT's sequence follows a larger explicit id),
/// or every column written over the existing key `id`. An upsert, never a delete and insert,
/// so an overwritten key's call logs stay (deleting would cascade to them).
pub async fn put_key(stage: &mut Stage, id: i64, key: &KeyRow) -> sqlx::Result<()> {
    stage.begin().await?;
    let sql = key_sql();
    let id_param = sql.id_param;
    bind_key!(
        sqlx::query(&format!(
            "INSERT INTO stage.api_keys ({}, id, overwrite) VALUES ({}, ?{id_param}, \
             EXISTS (SELECT 1 FROM main.api_keys WHERE id = ?{id_param})) \
             ON CONFLICT (id) DO UPDATE SET {}, overwrite = excluded.overwrite",
            sql.data, sql.params, sql.overwrite
        )),
        key
    )
    .bind(id)
    .execute(stage.conn())
    .await?;
    stage.staged().await
}

/// The upstream named `name`: staged by this import, else in the database.
pub async fn upstream_named(stage: &mut Stage, name: &str) -> sqlx::Result<Option<UpstreamRow>> {
    let columns = upstreams::DATA;
    sqlx::query_as(&format!(
        "SELECT id, {columns} FROM stage.upstreams WHERE name = ?1 \
         UNION ALL SELECT id, {columns} FROM main.upstreams WHERE name = ?1 \
         AND id NOT IN (SELECT id FROM stage.upstreams) LIMIT 1"
    ))
    .bind(name)
    .fetch_optional(stage.conn())
    .await
}

/// The id a new upstream of the file (`file_id` there) gets: its own when this database never
/// gave it (ids are not reused: call-log rows keep naming the upstream that answered), else the
/// next one.
pub async fn new_upstream_id(stage: &mut Stage, file_id: i64) -> sqlx::Result<i64> {
    // The largest id the database ever gave, the largest staged, and whether `file_id` is staged.
    let (given, staged, file_id_staged): (i64, i64, bool) = sqlx::query_as(
        "SELECT MAX((SELECT COALESCE(MAX(id), 0) FROM main.upstreams), \
         (SELECT COALESCE(MAX(seq), 0) FROM main.sqlite_sequence WHERE name = 'upstreams')), \
         (SELECT COALESCE(MAX(id), 0) FROM stage.upstreams), \
         EXISTS (SELECT 1 FROM stage.upstreams WHERE id = ?)",
    )
    .bind(file_id)
    .fetch_one(stage.conn())
    .await?;
    Ok(if file_id > given && !file_id_staged {
        file_id
    } else {
        given.max(staged) + 1
    })
}

/// The database (staged or existing) has upstream `id`.
pub async fn upstream_exists(stage: &mut Stage, id: i64) -> sqlx::Result<bool> {
    staged_or_held(stage, "upstreams", id).await
}

/// Stages `upstream` under `id`: a new row, or written over the database's upstream `id`.
pub async fn put_upstream(stage: &mut Stage, id: i64, upstream: &UpstreamRow) -> sqlx::Result<()> {
    stage.begin().await?;
    let columns = upstreams::DATA;
    let params = (1..=15)
        .map(|n| format!("?{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let _: UpstreamRow = upstreams::bind_upstream(
        sqlx::query_as(&format!(
            "INSERT OR REPLACE INTO stage.upstreams ({columns}, id, overwrite) VALUES ({params}, ?16, \
             EXISTS (SELECT 1 FROM main.upstreams WHERE id = ?16)) RETURNING id, {columns}"
        )),
        upstream,
    )
    .bind(id)
    .fetch_one(stage.conn())
    .await?;
    stage.upstreams += 1;
    stage.staged().await
}

/// Stages `log` with its own id: inserted, or every column written over the existing row.
pub async fn put_log(stage: &mut Stage, log: &LogRow) -> sqlx::Result<()> {
    stage.begin().await?;
    // A row staged earlier under this id (the file repeats it) is replaced: its sums go.
    let replaced: Option<StagedRow> = sqlx::query_as(
        "SELECT api_key_id, timestamp, model, status, prompt_tokens, completion_tokens, \
         cache_read_tokens, total_tokens, cost, response_time, overwrite FROM stage.api_call_logs \
         WHERE id = ?",
    )
    .bind(log.id)
    .fetch_optional(stage.conn())
    .await?;
    if let Some(row) = &replaced {
        let old = UsageOf {
            api_key_id: row.0,
            timestamp: row.1,
            model: row.2.as_deref(),
            status: &row.3,
            prompt_tokens: row.4,
            completion_tokens: row.5,
            cache_read_tokens: row.6,
            total_tokens: row.7,
            cost: row.8,
            response_time: row.9,
        };
        stage.usage.add(&old, -1);
        if !row.10 {
            stage.counts.add(&old, -1);
        }
    }
    stage.usage.add(&log.into(), 1);
    stage.overwrites += 1;
    // Built once: this runs for every overwritten row.
    static SQL: LazyLock<String> = LazyLock::new(|| {
        let sql = log_sql();
        let id = sql.id_param;
        format!(
            "INSERT INTO stage.api_call_logs ({}, id, overwrite) VALUES ({}, ?{id}, \
             EXISTS (SELECT 1 FROM main.api_call_logs WHERE id = ?{id})){}, \
             overwrite = excluded.overwrite RETURNING overwrite",
            sql.data, sql.params, sql.overwrite
        )
    });
    let overwrite: bool = bind_log!(sqlx::query_scalar(SQL.as_str()), log, bind)
        .bind(log.id)
        .fetch_one(stage.conn())
        .await?;
    if !overwrite {
        stage.counts.add(&log.into(), 1);
    }
    stage.staged().await
}

/// Stages each of `logs` whose id no row has yet (in the database, staged, or earlier in
/// `logs`); says which were staged, in order. Two statements for them all: which ids exist,
/// then one multi-row insert of the new rows.
pub async fn put_new_logs(stage: &mut Stage, logs: &[&LogRow]) -> sqlx::Result<Vec<bool>> {
    stage.begin().await?;
    let mut taken = existing_logs(stage, logs).await?;
    // A repeated id: the first one is new, the others conflict with it.
    let new: Vec<bool> = logs.iter().map(|log| taken.insert(log.id)).collect();
    let staged: Vec<&LogRow> = logs
        .iter()
        .zip(&new)
        .filter(|(_, new)| **new)
        .map(|(log, _)| *log)
        .collect();
    if staged.is_empty() {
        return Ok(new);
    }
    let mut insert = QueryBuilder::<Sqlite>::new(format!(
        "INSERT INTO stage.api_call_logs ({}, id, overwrite) ",
        log_sql().data
    ));
    insert.push_values(&staged, |mut row, log| {
        bind_log!(row, log, push_bind).push_bind(log.id).push("0");
    });
    insert.build().execute(stage.conn()).await?;
    for log in &staged {
        stage.usage.add(&(*log).into(), 1);
        stage.counts.add(&(*log).into(), 1);
    }
    stage.staged_rows(staged.len() as u64).await?;
    Ok(new)
}
