//! A command's output on stdout: when the reader leaves (`keygate keys list | head -1`) the
//! command ends quietly, as other tools do; any other failure to write (a full disk) is an
//! error naming stdout. Never a panic, which `println!` is on both.

use std::fmt;
use std::io::{self, Write};

/// stdout's reader left (a closed pipe): main ends the command quietly, status 141 as a
/// command ended by SIGPIPE has.
#[derive(Debug)]
pub struct ReaderLeft;

impl fmt::Display for ReaderLeft {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output was closed by its reader")
    }
}

impl std::error::Error for ReaderLeft {}

/// Writes one line of output (use `say!`).
pub fn line(args: fmt::Arguments<'_>) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    let written = out
        .write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .and_then(|()| out.flush());
    match written {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => Err(ReaderLeft.into()),
        Err(err) => Err(anyhow::Error::new(err).context("cannot write to standard output")),
    }
}

/// `println!` for commands: returns the write's error from the enclosing function (`?`).
macro_rules! say {
    () => {
        $crate::cli::output::line(format_args!(""))?
    };
    ($($arg:tt)*) => {
        $crate::cli::output::line(format_args!($($arg)*))?
    };
}
pub(crate) use say;
