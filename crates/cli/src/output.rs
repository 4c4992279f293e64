//! How `braid` writes to the terminal without panicking: status notes on stderr (a failed write to
//! stderr is ignored — there is nowhere left to report it), stdout writes whose errors become a clean
//! error naming stdout, and text from the user escaped before it reaches a terminal.
//!
//! `println!` and `eprintln!` panic when their stream cannot be written (`> /dev/full`, a closed
//! pipe), so the commands use these instead.

use std::fmt;
use std::io::Write;

use anyhow::{Context, Result};

/// Writes one status line to stderr; a failure to write it is ignored.
pub fn write_note(args: fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{args}");
}

/// `note!("…", args)`: [`write_note`] with `format!` syntax.
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::output::write_note(format_args!($($arg)*))
    };
}
pub(crate) use note;

/// Attaches "cannot write to stdout" to a failed write of a command's output.
pub fn to_stdout<T, E>(result: Result<T, E>) -> Result<T>
where
    Result<T, E>: Context<T, E>,
{
    result.context("cannot write to stdout")
}

/// Writes `text` for a terminal, at most `max_chars` characters of it: line breaks, tabs, control
/// characters and bidirectional overrides as escapes (`\n`, `\t`, `\u{1b}`, `\u{202e}`), a backslash as
/// `\\`, so that one input stays on one line and cannot move the cursor, recolour or reorder the
/// screen. Appends "…" when `text` was cut.
pub fn escape_for_terminal(text: &str, max_chars: usize) -> String {
    let mut shown = String::new();
    for (i, c) in text.chars().enumerate() {
        if i == max_chars {
            shown.push('…');
            break;
        }
        match c {
            '\n' => shown.push_str(r"\n"),
            '\r' => shown.push_str(r"\r"),
            '\t' => shown.push_str(r"\t"),
            '\\' => shown.push_str(r"\\"),
            c if c.is_control() || is_bidi_control(c) => {
                shown.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => shown.push(c),
        }
    }
    shown
}

/// Unicode's explicit bidirectional formatting characters (they reorder the text around them).
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_a_terminal_would_act_on() {
        assert_eq!(
            escape_for_terminal("a\nb\r\tc\u{1b}[31m\u{7f}\u{202e}d\\e 中文", 100),
            r"a\nb\r\tc\u{1b}[31m\u{7f}\u{202e}d\\e 中文"
        );
        assert_eq!(escape_for_terminal("abcdef", 3), "abc…");
        assert_eq!(escape_for_terminal("abc", 3), "abc");
        assert_eq!(escape_for_terminal("", 3), "");
    }
}
