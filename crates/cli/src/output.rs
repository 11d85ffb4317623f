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

/// Prints a line to standard error, as `eprintln!` does, but never
/// panics: a message nobody can read any more (standard error closed, or
/// a pipe whose reader has gone) is dropped, so that the command still
/// ends with its own status, not a panic's.
macro_rules! errln {
    ($($arg:tt)*) => { $crate::output::write_err(format_args!($($arg)*)) };
}

/// Writes `args` and a newline to standard error, ignoring failure (see
/// [`errln!`]).
pub(crate) fn write_err(args: std::fmt::Arguments<'_>) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr
        .write_fmt(args)
        .and_then(|()| stderr.write_all(b"\n"));
}

/// Writes `args` (and a newline when `line`) to standard output; exits on
/// a closed pipe (status 0) or another write error (status 1).
/// Whether anything was written to standard output through [`write()`]: a
/// command that printed its JSON document prints no error document after
/// it.
pub(crate) static WROTE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

pub(crate) fn write(args: std::fmt::Arguments<'_>, line: bool) {
    WROTE.store(true, std::sync::atomic::Ordering::Relaxed);
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
        errln!("gate402: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

/// The most of one message written to the terminal, in characters.
const MAX_MESSAGE_CHARS: usize = 4096;

/// `text` as a message to the terminal may show it: control characters
/// (but newline and tab), the bidirectional marks and controls (U+061C,
/// U+200E, U+200F, U+202A–U+202E, U+2066–U+2069, which reorder what
/// follows: `received` shown for `deviecer`) and the line and paragraph
/// separators (U+2028, U+2029) become U+FFFD, so that a server's words cannot move the
/// cursor, clear the screen, retitle the window or read backwards; each
/// line after the first is set apart (`  | `), so that a server's words
/// quoted in a message cannot pass for lines of this program's own
/// (`gate402: paid 0 sat`); and what passes [`MAX_MESSAGE_CHARS`] is cut,
/// with how much was left out.
pub(crate) fn terminal_safe(text: &str) -> String {
    let bidi = |c: char| {
        matches!(
            c,
            '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{2028}' | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
    };
    let mut safe = String::with_capacity(text.len().min(MAX_MESSAGE_CHARS * 2));
    for c in text.chars().take(MAX_MESSAGE_CHARS) {
        match c {
            '\n' => safe.push_str("\n  | "),
            '\t' => safe.push(c),
            c if c.is_control() || bidi(c) => safe.push(char::REPLACEMENT_CHARACTER),
            c => safe.push(c),
        }
    }
    if let Some((cut_at, _)) = text.char_indices().nth(MAX_MESSAGE_CHARS) {
        safe += &format!("… ({} more bytes)", text.len() - cut_at);
    }
    safe
}

/// What to do about an error whose message is `message`, when the
/// message alone does not say: a certificate the platform does not trust,
/// or a URL whose scheme the port does not speak (hyper and rustls name
/// only the bytes they could not parse).
pub(crate) fn hint_for(message: &str) -> Option<&'static str> {
    if message.contains("invalid peer certificate") {
        Some("a server whose certificate a CA of its own signed: SSL_CERT_FILE=<that CA, PEM> trusts it; -k accepts any certificate")
    } else if message.contains("invalid HTTP version parsed") {
        Some("the server answered with something other than HTTP: if it speaks HTTPS on this port, use an https:// URL")
    } else if message.contains("InvalidContentType") {
        Some("the server did not answer the TLS handshake: if it speaks plain HTTP on this port, use an http:// URL")
    } else {
        None
    }
}

/// An amount in millisatoshis as sat for people to read: `10` when whole,
/// `10.999` when not (cut down to `10`, a payment of 10 999 msat read as
/// less than it was).
pub(crate) fn sats(msat: u64) -> String {
    match msat % 1000 {
        0 => (msat / 1000).to_string(),
        part => format!(
            "{}.{}",
            msat / 1000,
            format!("{part:03}").trim_end_matches('0')
        ),
    }
}

/// A time in unix seconds for people to read: RFC 3339 in UTC
/// (`2026-12-02T10:48:16Z`), or the number itself past what a date holds.
pub(crate) fn when(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .map(gate402_mpp::format_time)
        .unwrap_or_else(|| unix.to_string())
}

/// [`terminal_safe`] on one line: a newline becomes U+FFFD too, for a
/// value shown beside its name.
pub(crate) fn terminal_safe_line(text: &str) -> String {
    terminal_safe(&text.replace('\n', "\u{fffd}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_amount_in_sat_keeps_its_millisatoshis() {
        assert_eq!(sats(10_000), "10");
        assert_eq!(sats(10_999), "10.999");
        assert_eq!(sats(999), "0.999");
        assert_eq!(sats(1_500), "1.5");
        assert_eq!(sats(1_050), "1.05");
        assert_eq!(sats(0), "0");
    }

    #[test]
    fn a_message_cannot_drive_the_terminal_or_flood_it() {
        let hostile =
            "still 402: \u{1b}]0;PWNED\u{7}\u{1b}[2J\u{1b}[32mrefund received\r\nok\tdone";
        let safe = terminal_safe(hostile);
        assert!(
            !safe
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{safe:?}"
        );
        assert!(safe.contains("refund received"));
        assert!(safe.ends_with("\n  | ok\tdone"));
        // A line of the server's own is set apart from the program's.
        let forged = terminal_safe("500: oops\ngate402: paid 0 sat\ngate402: refund received");
        assert!(
            forged.lines().skip(1).all(|line| line.starts_with("  | ")),
            "{forged}"
        );
        let reordered = terminal_safe("paid \u{202e}tas 0001\u{202c} \u{2066}x\u{2069}");
        assert_eq!(reordered, "paid \u{fffd}tas 0001\u{fffd} \u{fffd}x\u{fffd}");
        let marks = terminal_safe("a\u{061c}b\u{200e}c\u{200f}d\u{2028}e\u{2029}f");
        assert_eq!(marks, "a\u{fffd}b\u{fffd}c\u{fffd}d\u{fffd}e\u{fffd}f");
        let flood = "A".repeat(1_000_000);
        let cut = terminal_safe(&flood);
        assert!(cut.len() < 5_000, "{}", cut.len());
        assert!(cut.ends_with("(995904 more bytes)"), "{}", &cut[4090..]);
    }

    #[test]
    fn times_read_as_dates() {
        assert_eq!(when(0), "1970-01-01T00:00:00Z");
        assert_eq!(when(1_796_208_496), "2026-12-02T10:48:16Z");
        assert_eq!(when(u64::MAX), u64::MAX.to_string());
    }
}
