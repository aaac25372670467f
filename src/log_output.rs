//! keygate's own log lines on stderr, never fatal: a line that cannot be written (full disk,
//! `/dev/full`, a pipe whose reader left) is dropped and counted, and serving goes on.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

static DROPPED_LINES: AtomicU64 = AtomicU64::new(0);

/// Log lines that could not be written since start.
pub fn dropped_lines() -> u64 {
    DROPPED_LINES.load(Ordering::Relaxed)
}

/// stderr for tracing: every write "succeeds"; a failed one is counted instead.
pub struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if io::stderr().write_all(buf).is_err() {
            DROPPED_LINES.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        let _ = io::stderr().flush();
        Ok(())
    }
}

/// Writes a message for the operator to stderr; false when it could not be written.
pub fn tell(message: &str) -> bool {
    let mut stderr = io::stderr().lock();
    stderr
        .write_all(message.as_bytes())
        .and_then(|()| stderr.flush())
        .is_ok()
}
