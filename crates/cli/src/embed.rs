//! `braid embed`: texts from the arguments or from stdin (one per line) to embeddings on stdout, one
//! JSON object per line (`{"index": i, "text": …, "embedding": […]}`) or a human-readable table.
//!
//! Inputs are embedded in batches of `--batch` lines as they arrive, so a long stdin stream is never
//! held in memory whole; output keeps input order.

use std::io::{BufRead, Write};

use anyhow::{Context, Result};
use braid_model::BertModel;
use braid_runtime::ops::Ops;
use serde::Serialize;

/// How embeddings are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// A table: index, token count, norm, the first values, the text.
    Table,
}

#[derive(Serialize)]
struct Line<'a> {
    index: usize,
    text: &'a str,
    embedding: &'a [f32],
}

/// Embeds `texts`, or stdin's lines when `texts` is empty, writing to `out`.
pub fn run<D: Ops>(
    model: &BertModel<D>,
    texts: Vec<String>,
    format: Format,
    batch: usize,
    out: &mut impl Write,
) -> Result<()> {
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
    let stdin = std::io::stdin().lock();
    let mut pending = Vec::with_capacity(batch);
    for line in stdin.lines() {
        pending.push(line.context("reading stdin (input must be UTF-8 text, one input per line)")?);
        if pending.len() == batch {
            printer.embed_and_print(model, &pending, out)?;
            pending.clear();
        }
    }
    printer.embed_and_print(model, &pending, out)
}

struct Printer {
    format: Format,
    next_index: usize,
}

impl Printer {
    fn header(&self, out: &mut impl Write) -> Result<()> {
        if self.format == Format::Table {
            writeln!(
                out,
                "{:>5}  {:>6}  {:>6}  {:<34}  text",
                "index", "tokens", "norm", "embedding[..4]"
            )?;
        }
        Ok(())
    }

    fn embed_and_print<D: Ops>(
        &mut self,
        model: &BertModel<D>,
        texts: &[String],
        out: &mut impl Write,
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
                    serde_json::to_writer(
                        &mut *out,
                        &Line {
                            index,
                            text,
                            embedding,
                        },
                    )?;
                    writeln!(out)?;
                }
                Format::Table => {
                    let tokens = model.spec().tokenizer.encode(text)?.len();
                    let norm = embedding.iter().map(|v| v * v).sum::<f32>().sqrt();
                    let head: Vec<String> = embedding
                        .iter()
                        .take(4)
                        .map(|v| format!("{v:+.4}"))
                        .collect();
                    let shown: String = text.chars().take(60).collect();
                    let ellipsis = if text.chars().count() > 60 { "…" } else { "" };
                    writeln!(
                        out,
                        "{index:>5}  {tokens:>6}  {norm:>6.3}  {:<34}  {shown}{ellipsis}",
                        head.join(" ")
                    )?;
                }
            }
        }
        out.flush()?;
        Ok(())
    }
}
