//! `braid embed`: texts from the arguments or from stdin (one per line) to embeddings on stdout, one
//! JSON object per line (`{"index": i, "text": …, "embedding": […]}`) or a human-readable table.
//!
//! Inputs are embedded in batches of `--batch` lines as they arrive, so a long stdin stream is never
//! held in memory whole; output keeps input order. One stdin line may hold at most
//! [`MAX_LINE_BYTES`] (1 MiB): a longer one is an error naming its line number, found after reading
//! at most that many bytes of it. In the table, control characters of the input are escaped
//! ([`escape_for_terminal`]). A failed write to stdout is an error naming stdout.

use std::io::{BufRead, Read, Write};

use anyhow::{anyhow, bail, ensure, Context, Result};
use braid_engine::Engine;
use serde::Serialize;

use crate::output::{escape_for_terminal, to_stdout};

/// The most bytes of one stdin line (its line ending excluded): the model's input limit, said in
/// `braid embed --help`.
pub const MAX_LINE_BYTES: usize = braid_model::MAX_INPUT_BYTES;

/// Characters of an input shown in a table row.
const TABLE_TEXT_CHARS: usize = 60;

/// How embeddings are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// A table: index, token count, norm, the first values, the text (control characters escaped).
    Table,
}

#[derive(Serialize)]
struct Line<'a> {
    index: usize,
    text: &'a str,
    embedding: &'a [f32],
}

/// Embeds `texts`, or `input`'s lines when `texts` is empty, writing to `out` (stdout).
pub fn run(
    model: &Engine,
    texts: Vec<String>,
    format: Format,
    batch: usize,
    input: impl BufRead,
    out: &mut dyn Write,
) -> Result<()> {
    ensure!(batch > 0, "--batch must be at least 1");
    let mut printer = Printer {
        format,
        next_index: 0,
    };
    printer.header(out)?;
    if !texts.is_empty() {
        for chunk in texts.chunks(batch) {
            printer.embed_and_print(model, chunk, out)?;
        }
        return Ok(());
    }
    let mut lines = Lines::new(input);
    let mut pending = Vec::with_capacity(batch);
    while let Some(line) = lines.next_line()? {
        pending.push(line);
        if pending.len() == batch {
            printer.embed_and_print(model, &pending, out)?;
            pending.clear();
        }
    }
    printer.embed_and_print(model, &pending, out)
}

/// A reader's lines, each at most [`MAX_LINE_BYTES`] bytes, numbered from 1 for error messages.
struct Lines<R> {
    input: R,
    number: usize,
}

impl<R: BufRead> Lines<R> {
    fn new(input: R) -> Self {
        Self { input, number: 0 }
    }

    /// The next line without its `\n` or `\r\n`; `None` at the end of input. Reads at most the limit
    /// plus the line ending before deciding that a line is too long.
    fn next_line(&mut self) -> Result<Option<String>> {
        let number = self.number + 1;
        let mut bytes = Vec::new();
        let read = (&mut self.input)
            .take(MAX_LINE_BYTES as u64 + 2)
            .read_until(b'\n', &mut bytes)
            .with_context(|| format!("cannot read line {number} of stdin"))?;
        if read == 0 {
            return Ok(None);
        }
        self.number = number;
        if bytes.last() == Some(&b'\n') {
            bytes.pop();
            if bytes.last() == Some(&b'\r') {
                bytes.pop();
            }
        }
        if bytes.len() > MAX_LINE_BYTES {
            bail!(
                "line {number} of stdin is longer than the limit of 1 MiB ({MAX_LINE_BYTES} bytes) \
                 per input; split it, or pass shorter texts (the model reads at most its first few \
                 hundred tokens anyway)"
            );
        }
        String::from_utf8(bytes).map(Some).map_err(|e| {
            anyhow!(
                "line {number} of stdin is not UTF-8 text (invalid byte at offset {}); input must \
                 be UTF-8 text, one input per line",
                e.utf8_error().valid_up_to()
            )
        })
    }
}

struct Printer {
    format: Format,
    next_index: usize,
}

impl Printer {
    fn header(&self, out: &mut dyn Write) -> Result<()> {
        if self.format == Format::Table {
            to_stdout(writeln!(
                out,
                "{:>5}  {:>6}  {:>6}  {:<34}  text",
                "index", "tokens", "norm", "embedding[..4]"
            ))?;
        }
        Ok(())
    }

    fn embed_and_print(
        &mut self,
        model: &Engine,
        texts: &[String],
        out: &mut dyn Write,
    ) -> Result<()> {
        if texts.is_empty() {
            return Ok(());
        }
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let embeddings = model.embed(&refs)?;
        for (text, embedding) in texts.iter().zip(&embeddings) {
            let index = self.next_index;
            self.next_index += 1;
            match self.format {
                Format::Json => {
                    let line = Line {
                        index,
                        text,
                        embedding,
                    };
                    to_stdout(serde_json::to_writer(&mut *out, &line))?;
                    to_stdout(writeln!(out))?;
                }
                Format::Table => {
                    let tokens = model.model().spec().tokenizer.encode(text)?.len();
                    let norm = embedding.iter().map(|v| v * v).sum::<f32>().sqrt();
                    let head: Vec<String> = embedding
                        .iter()
                        .take(4)
                        .map(|v| format!("{v:+.4}"))
                        .collect();
                    to_stdout(writeln!(
                        out,
                        "{index:>5}  {tokens:>6}  {norm:>6.3}  {:<34}  {}",
                        head.join(" "),
                        escape_for_terminal(text, TABLE_TEXT_CHARS)
                    ))?;
                }
            }
        }
        to_stdout(out.flush())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_of(input: &[u8]) -> Vec<Result<String>> {
        let mut lines = Lines::new(input);
        let mut all = Vec::new();
        loop {
            match lines.next_line() {
                Ok(Some(line)) => all.push(Ok(line)),
                Ok(None) => return all,
                Err(e) => {
                    all.push(Err(e));
                    return all;
                }
            }
        }
    }

    #[test]
    fn lines_end_at_lf_or_crlf_and_the_last_needs_no_ending() {
        let lines: Vec<String> = lines_of(b"a\r\n\nb\nc")
            .into_iter()
            .map(Result::unwrap)
            .collect();
        assert_eq!(lines, ["a", "", "b", "c"]);
        assert!(lines_of(b"").is_empty());
    }

    #[test]
    fn a_line_past_the_limit_or_not_utf8_is_an_error_naming_it() {
        let mut input = b"ok\n".to_vec();
        input.extend(vec![b'x'; MAX_LINE_BYTES + 1]);
        let lines = lines_of(&input);
        let message = lines[1].as_ref().unwrap_err().to_string();
        assert!(
            message.contains("line 2") && message.contains("1 MiB"),
            "{message}"
        );

        let mut input = vec![b'x'; MAX_LINE_BYTES];
        input.extend(b"\r\n");
        assert_eq!(lines_of(&input)[0].as_ref().unwrap().len(), MAX_LINE_BYTES);

        let message = lines_of(b"fine\nbad \xff\n")[1]
            .as_ref()
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("line 2") && message.contains("UTF-8"),
            "{message}"
        );
    }
}
