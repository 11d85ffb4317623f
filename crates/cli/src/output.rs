//! Standard output for the subcommands' answers.
//!
//! `println!` panics when its reader has gone (`gate402 decode … | head
//! -1`). A closed pipe ends the command quietly instead, with status 0 as
//! ripgrep does: nothing is left to do for a reader that stopped reading,
//! and every write that matters (a ledger row, a token) was made before
//! the command prints. Any other failure to print is an error message and
//! status 1.

use std::io::Write;

/// Prints, as `print!` does, unless the reader has gone (see the module).
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*), false) };
}

/// Prints a line, as `println!` does, unless the reader has gone (see the
/// module).
macro_rules! outln {
    ($($arg:tt)*) => { $crate::output::write(format_args!($($arg)*), true) };
}

/// Writes `args` (and a newline when `line`) to standard output; exits on
/// a closed pipe (status 0) or another write error (status 1).
pub(crate) fn write(args: std::fmt::Arguments<'_>, line: bool) {
    let mut stdout = std::io::stdout().lock();
    let written = stdout
        .write_fmt(args)
        .and_then(|()| {
            if line {
                stdout.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| stdout.flush());
    if let Err(e) = written {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("gate402: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}
