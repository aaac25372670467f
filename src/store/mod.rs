//! All SQL: connecting (WAL, foreign keys, busy timeout), migrating, and the small settings table.

pub mod audit;
pub mod keys;
pub mod log_batch;
pub mod logs;
mod raw_statement;
pub mod retention;
pub mod transfer;
pub mod upstreams;
pub mod usage;
pub mod webhooks;

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, SqliteExecutor, SqlitePool};

/// How long a statement waits for a lock another connection or process holds, by default.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The part of the database file read through a memory map.
pub const MMAP_BYTES: u64 = 2 << 30;

/// Turns SQLite's memory statistics off for the process. With them on (SQLite's default),
/// every allocation and free SQLite makes takes a process-wide mutex to keep the counts:
/// about 2k of the call-log writer's ~23k instructions per row (callgrind). keygate reads none
/// of those statistics. Call it before any thread uses SQLite (`sqlite3_config` is not
/// thread-safe); once SQLite is initialized it refuses the change and this does nothing.
pub fn tune_sqlite() {
    // SAFETY: `sqlite3_config` takes one `int` for this option; called before SQLite is
    // initialized and while no other thread uses it (see above).
    let rc = unsafe {
        rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_MEMSTATUS, 0 as std::ffi::c_int)
    };
    if rc != rusqlite::ffi::SQLITE_OK {
        tracing::debug!(
            rc,
            "SQLite's memory statistics stay on: it was already initialized"
        );
    }
}

/// Opens (creating if needed) the SQLite file and brings its schema up to date.
pub async fn connect(database_url: &str) -> anyhow::Result<SqlitePool> {
    open(database_url, DEFAULT_BUSY_TIMEOUT).await
}

/// `connect`, waiting at most `busy_timeout` for a lock held elsewhere (then the statement
/// fails with SQLITE_BUSY, which the admin API answers with 503).
pub async fn open(database_url: &str, busy_timeout: Duration) -> anyhow::Result<SqlitePool> {
    let options = SqliteConnectOptions::from_str(database_url)
        .with_context(|| format!("DATABASE_URL: cannot parse `{database_url}`"))?;
    let created = owner_only(options.get_filename())?;
    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(busy_timeout)
        // Reads go through a shared memory map of the file instead of each connection's own
        // page cache: the pool's connections no longer re-read (and copy) the same pages from
        // the OS cache, which made a stats read over a large log cost several times its SQL.
        // SQLite caps it at its compile-time maximum (2 GiB); the WAL is not mapped.
        .pragma("mmap_size", MMAP_BYTES.to_string());
    // A new database is made in incremental auto-vacuum mode (pages freed by pruning are given
    // back to the file system by `incremental_vacuum`), which SQLite only sets before the first
    // table exists: the connection that creates the schema sets it. Never on every connection:
    // setting the mode is a write, so opening a connection would need the write lock (and disk
    // space). An existing database keeps its mode until `keygate logs vacuum` rewrites it.
    let migrating = if created {
        options.clone().auto_vacuum(SqliteAutoVacuum::Incremental)
    } else {
        options.clone()
    };
    // Migrations run on a connection of their own whose statements are not logged: a backfill
    // over millions of call-log rows takes seconds, and sqlx would print its whole SQL as a
    // slow-statement warning.
    let mut first = migrating
        .disable_statement_logging()
        .connect()
        .await
        .with_context(|| format!("cannot open the database {database_url}"))?;
    sqlx::migrate!("./migrations")
        .run(&mut first)
        .await
        .context("cannot migrate the database")?;
    first.close().await?;
    let pool = SqlitePoolOptions::new()
        .max_connections(8)
        // A transaction whose COMMIT failed (on a full disk SQLite rolls it back by itself)
        // leaves sqlx counting it as open, so every later BEGIN on that connection would fail:
        // such a connection is closed instead of going back to the pool. The ping first runs
        // the rollback a dropped transaction queued.
        .after_release(|conn, _| {
            Box::pin(async move {
                conn.ping().await?;
                Ok(!conn.is_in_transaction())
            })
        })
        .connect_with(options)
        .await
        .with_context(|| format!("cannot open the database {database_url}"))?;
    Ok(pool)
}

/// Makes the database readable by its owner only: a new file is created 0600 before SQLite
/// opens it (SQLite gives its -wal and -shm the database's mode), and an existing database,
/// -wal or -shm with a looser mode is tightened to 0600. True when it created the file (or
/// found it empty: a database without a page yet).
fn owner_only(path: &Path) -> anyhow::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" {
            return Ok(false);
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => return Ok(true),
            Err(err) if err.kind() == std::io::ErrorKind::AlreadyExists => {}
            // Let SQLite report a missing folder or a read-only location in its own words.
            Err(_) => return Ok(false),
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            let file = PathBuf::from(file);
            let Ok(meta) = std::fs::metadata(&file) else {
                continue;
            };
            if meta.permissions().mode() & 0o077 != 0 {
                std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                    .with_context(|| {
                        format!("cannot make {} readable by its owner only", file.display())
                    })?;
                tracing::info!(file = %file.display(), "database file mode tightened to 0600");
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(std::fs::metadata(path).is_ok_and(|meta| meta.len() == 0))
}

/// The SQLite file DATABASE_URL names, for connections opened outside the pool.
pub fn database_path(database_url: &str) -> anyhow::Result<PathBuf> {
    let options = SqliteConnectOptions::from_str(database_url)
        .with_context(|| format!("DATABASE_URL: cannot parse `{database_url}`"))?;
    Ok(options.get_filename().to_path_buf())
}

/// A transaction that takes the write lock at once (`BEGIN IMMEDIATE`). Use it for every
/// read-then-write: a deferred transaction that reads first cannot wait for the lock when it
/// upgrades, and fails with "database is locked" if another writer committed meanwhile.
pub async fn begin_write(
    pool: &SqlitePool,
) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

pub async fn setting<'e>(db: impl SqliteExecutor<'e>, name: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT value FROM settings WHERE name = ?")
        .bind(name)
        .fetch_optional(db)
        .await
}

pub async fn set_setting<'e>(
    db: impl SqliteExecutor<'e>,
    name: &str,
    value: &str,
) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO settings (name, value) VALUES (?, ?) ON CONFLICT (name) DO UPDATE SET value = excluded.value")
        .bind(name)
        .bind(value)
        .execute(db)
        .await?;
    Ok(())
}

/// Why the database cannot take a write now, when that is the cause of `err` (as opposed to a
/// bug or bad data): another process holds its lock past the busy timeout, or the disk is full.
pub fn unavailable_cause(err: &sqlx::Error) -> Option<&'static str> {
    match err {
        sqlx::Error::PoolTimedOut => Some("The database is busy; try again in a few seconds"),
        sqlx::Error::Database(db) => {
            let code: i64 = db.code()?.parse().ok()?;
            match code & 0xff {
                // SQLITE_BUSY, SQLITE_LOCKED (and their extended codes)
                5 | 6 => Some(
                    "The database is locked by another process (a backup, or an open sqlite3 shell?); try again in a few seconds",
                ),
                // SQLITE_FULL
                13 => Some("The disk holding the database is full; free space, then try again"),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A page request: 1-based page, page_size 1..=200.
#[derive(Clone, Copy, Debug)]
pub struct Page {
    pub page: i64,
    pub page_size: i64,
}

impl Page {
    /// Rows to skip; None when it does not fit an i64 (a page far past any table).
    pub fn checked_offset(self) -> Option<i64> {
        self.page.checked_sub(1)?.checked_mul(self.page_size)
    }

    /// Rows to skip, saturating: a page past the end is empty, never page 1 again.
    pub fn offset(self) -> i64 {
        self.checked_offset().unwrap_or(i64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::Page;

    #[test]
    fn offsets_do_not_wrap() {
        let page = |page, page_size| Page { page, page_size };
        assert_eq!(page(1, 50).offset(), 0);
        assert_eq!(page(3, 50).offset(), 100);
        assert_eq!(page(i64::MAX, 50).checked_offset(), None);
        assert_eq!(page(i64::MAX, 50).offset(), i64::MAX);
        assert_eq!(page(i64::MIN, 50).offset(), i64::MAX);
        assert_eq!(
            page(i64::MAX / 50, 50).checked_offset(),
            Some((i64::MAX / 50 - 1) * 50)
        );
    }
}
