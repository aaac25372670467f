//! A prepared statement run through SQLite's C API: the call-log writer's inserts bind their
//! texts without a copy and skip rusqlite's conversion of each value.

use std::ffi::{c_char, c_int, CStr};
use std::marker::PhantomData;
use std::ptr::{self, NonNull};

use rusqlite::{ffi, Connection};

/// One parameter's value. A text is bound as it is (`SQLITE_STATIC`), without a copy.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Param<'a> {
    Null,
    Int(i64),
    Real(f64),
    Text(&'a str),
}

impl From<i64> for Param<'_> {
    fn from(value: i64) -> Self {
        Param::Int(value)
    }
}

impl From<f64> for Param<'_> {
    fn from(value: f64) -> Self {
        Param::Real(value)
    }
}

impl<'a> From<&'a str> for Param<'a> {
    fn from(value: &'a str) -> Self {
        Param::Text(value)
    }
}

impl<'a, T: Into<Param<'a>>> From<Option<T>> for Param<'a> {
    fn from(value: Option<T>) -> Self {
        value.map_or(Param::Null, Into::into)
    }
}

/// A statement prepared once on a connection and kept (`SQLITE_PREPARE_PERSISTENT`); finalized
/// when dropped. It must be dropped before its connection: the owner declares it before the
/// connection, whose fields drop in order.
pub struct RawStatement {
    stmt: NonNull<ffi::sqlite3_stmt>,
    db: *mut ffi::sqlite3,
    params: usize,
}

// SAFETY: the statement is used only through `&mut self`, so from one thread at a time, and
// moves between threads only with the owner of its connection (which is opened without
// SQLite's mutex, i.e. for use by one thread at a time, as rusqlite's `Connection` is `Send`).
unsafe impl Send for RawStatement {}

impl RawStatement {
    /// Prepares `sql` (one statement) on `conn`.
    ///
    /// # Safety
    /// The statement must be dropped before `conn` is closed.
    pub unsafe fn prepare(conn: &Connection, sql: &str) -> rusqlite::Result<RawStatement> {
        let db = conn.handle();
        let len = c_int::try_from(sql.len()).map_err(|_| failure(ffi::SQLITE_TOOBIG, None))?;
        let mut stmt = ptr::null_mut();
        // SAFETY: `db` is the open connection's handle; `sql` is valid for `len` bytes; SQLite
        // writes the new statement (or null) into `stmt`, and no tail pointer is asked for.
        let rc = unsafe {
            ffi::sqlite3_prepare_v3(
                db,
                sql.as_ptr().cast::<c_char>(),
                len,
                ffi::SQLITE_PREPARE_PERSISTENT,
                &mut stmt,
                ptr::null_mut(),
            )
        };
        if rc != ffi::SQLITE_OK {
            return Err(last_error(db, rc));
        }
        let stmt = NonNull::new(stmt).ok_or_else(|| failure(ffi::SQLITE_MISUSE, None))?;
        // SAFETY: a statement just prepared.
        let params = unsafe { ffi::sqlite3_bind_parameter_count(stmt.as_ptr()) } as usize;
        Ok(RawStatement { stmt, db, params })
    }

    /// Binds the parameters in order through `bind` (it must give exactly as many values as
    /// there are), then steps the statement to its end and resets it.
    ///
    /// Every step follows a binding of every parameter in this call, so a text's pointer,
    /// which SQLite keeps after the call, is never read once the text is gone.
    pub fn execute<'a>(&mut self, bind: impl FnOnce(&mut Binder<'a>)) -> rusqlite::Result<()> {
        let mut binder = Binder {
            stmt: self.stmt,
            db: self.db,
            next: 1,
            failed: None,
            texts: PhantomData,
        };
        bind(&mut binder);
        let given = binder.next as usize - 1;
        let bound = match binder.failed {
            Some(err) => Err(err),
            None if given != self.params => Err(failure(
                ffi::SQLITE_MISUSE,
                Some(format!("{given} values for {} parameters", self.params)),
            )),
            None => Ok(()),
        };
        let stepped = bound.and_then(|()| {
            // SAFETY: a live statement whose parameters were all bound in this call.
            match unsafe { ffi::sqlite3_step(self.stmt.as_ptr()) } {
                ffi::SQLITE_DONE => Ok(()),
                rc => Err(last_error(self.db, rc)),
            }
        });
        // SAFETY: a live statement. (The reset repeats a failed step's code, which `stepped`
        // already holds.)
        unsafe {
            ffi::sqlite3_reset(self.stmt.as_ptr());
        }
        stepped
    }
}

/// Binds one statement's parameters in order; the first failure is kept and ends the binding.
pub struct Binder<'a> {
    stmt: NonNull<ffi::sqlite3_stmt>,
    db: *mut ffi::sqlite3,
    /// The next parameter's (1-based) index.
    next: c_int,
    failed: Option<rusqlite::Error>,
    /// Texts bound as they are: they must outlive the step (`RawStatement::execute`).
    texts: PhantomData<&'a str>,
}

impl<'a> Binder<'a> {
    #[inline]
    pub fn bind(&mut self, value: impl Into<Param<'a>>) {
        if self.failed.is_some() {
            return;
        }
        let (stmt, index) = (self.stmt.as_ptr(), self.next);
        // SAFETY: a live statement; a text is valid for its length until after the step
        // (`'a` outlives `execute`), and SQLite reads it only while stepping.
        let rc = unsafe {
            match value.into() {
                Param::Null => ffi::sqlite3_bind_null(stmt, index),
                Param::Int(v) => ffi::sqlite3_bind_int64(stmt, index, v),
                Param::Real(v) => ffi::sqlite3_bind_double(stmt, index, v),
                Param::Text(text) => match c_int::try_from(text.len()) {
                    Ok(len) => ffi::sqlite3_bind_text(
                        stmt,
                        index,
                        text.as_ptr().cast::<c_char>(),
                        len,
                        ffi::SQLITE_STATIC(),
                    ),
                    Err(_) => ffi::SQLITE_TOOBIG,
                },
            }
        };
        if rc == ffi::SQLITE_OK {
            self.next += 1;
        } else {
            self.failed = Some(last_error(self.db, rc));
        }
    }
}

impl Drop for RawStatement {
    fn drop(&mut self) {
        // SAFETY: the statement is live and is not used again.
        unsafe {
            ffi::sqlite3_finalize(self.stmt.as_ptr());
        }
    }
}

fn failure(code: c_int, message: Option<String>) -> rusqlite::Error {
    rusqlite::Error::SqliteFailure(ffi::Error::new(code), message)
}

/// The error `code`, with the connection's message for it.
fn last_error(db: *mut ffi::sqlite3, code: c_int) -> rusqlite::Error {
    // SAFETY: `db` is an open connection; SQLite's message stays valid until its next call on
    // it, and is copied before then.
    let message = unsafe {
        let text = ffi::sqlite3_errmsg(db);
        (!text.is_null()).then(|| CStr::from_ptr(text).to_string_lossy().into_owned())
    };
    failure(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A row of `t`.
    type Row = (Option<i64>, Option<f64>, Option<String>, String);

    fn table() -> Connection {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t (a INTEGER, b REAL, c TEXT, d TEXT NOT NULL)")
            .unwrap();
        conn
    }

    /// Every kind of value lands as bound; a text bound without a copy is read back whole after
    /// its buffer was reused; a constraint failure, a failed bind and a wrong count are errors
    /// that name the cause, and the statement works again after them.
    #[test]
    fn values_are_inserted_as_bound_and_errors_leave_the_statement_usable() {
        let conn = table();
        // SAFETY: dropped below, before `conn`.
        let mut insert =
            unsafe { RawStatement::prepare(&conn, "INSERT INTO t VALUES (?, ?, ?, ?)") }.unwrap();
        let mut buffer = String::from("first");
        insert
            .execute(|b| {
                b.bind(-7_i64);
                b.bind(0.25);
                b.bind(Param::Null);
                b.bind(buffer.as_str());
            })
            .unwrap();
        buffer.clear();
        buffer.push_str("second, ünïcode");
        insert
            .execute(|b| {
                b.bind(Some(i64::MAX));
                b.bind(None::<f64>);
                b.bind("");
                b.bind(buffer.as_str());
            })
            .unwrap();
        buffer.clear();
        buffer.push_str("overwritten after the insert");

        let failed = insert
            .execute(|b| {
                [Param::Int(1), Param::Null, Param::Null, Param::Null]
                    .into_iter()
                    .for_each(|v| b.bind(v));
            })
            .unwrap_err();
        assert!(failed.to_string().contains("NOT NULL"), "{failed}");
        let short = insert.execute(|b| b.bind(1_i64)).unwrap_err();
        assert!(
            short.to_string().contains("1 values for 4 parameters"),
            "{short}"
        );
        let long = insert.execute(|b| (0..5).for_each(|_| b.bind(Param::Null)));
        assert!(
            matches!(long, Err(rusqlite::Error::SqliteFailure(e, _)) if e.extended_code == ffi::SQLITE_RANGE),
            "{long:?}"
        );
        insert
            .execute(|b| {
                b.bind(3_i64);
                b.bind(Param::Null);
                b.bind(Param::Null);
                b.bind("third");
            })
            .unwrap();
        drop(insert);

        let rows: Vec<Row> = conn
            .prepare("SELECT a, b, c, d FROM t ORDER BY rowid")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows,
            [
                (Some(-7), Some(0.25), None, "first".to_string()),
                (
                    Some(i64::MAX),
                    None,
                    Some(String::new()),
                    "second, ünïcode".to_string()
                ),
                (Some(3), None, None, "third".to_string()),
            ]
        );
    }

    #[test]
    fn a_statement_that_does_not_prepare_names_the_cause() {
        let conn = table();
        // SAFETY: nothing is prepared.
        let err = unsafe { RawStatement::prepare(&conn, "INSERT INTO nowhere VALUES (?)") }
            .err()
            .unwrap();
        assert!(err.to_string().contains("no such table: nowhere"), "{err}");
    }
}
