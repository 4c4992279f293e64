//! Plain-text tables: one per case (a row per thread count and arm), its checks under it, and the
//! design's figures at the end. Numbers are scaled to readable units (k/M/G ops, ns/µs/ms, KiB/MiB/GiB).

use std::fmt::Write as _;

use super::{CaseReport, Summary, TargetReport};
use crate::harness::Unit;

/// Ops per second with a k/M/G suffix.
pub fn rate(value: f64) -> String {
    let (scaled, suffix) = match value {
        v if v >= 1e9 => (v / 1e9, " G"),
        v if v >= 1e6 => (v / 1e6, " M"),
        v if v >= 1e3 => (v / 1e3, " k"),
        v => (v, ""),
    };
    format!("{}{suffix}", three_digits(scaled))
}

/// A duration given in nanoseconds, in ns, µs, ms or s.
pub fn nanos(value: f64) -> String {
    let (scaled, unit) = match value {
        v if v >= 1e9 => (v / 1e9, "s"),
        v if v >= 1e6 => (v / 1e6, "ms"),
        v if v >= 1e3 => (v / 1e3, "µs"),
        v => (v, "ns"),
    };
    format!("{} {unit}", three_digits(scaled))
}

/// A byte count in B, KiB, MiB or GiB.
pub fn bytes(value: f64) -> String {
    let (scaled, unit) = match value.abs() {
        v if v >= (1u64 << 30) as f64 => (value / (1u64 << 30) as f64, "GiB"),
        v if v >= (1u64 << 20) as f64 => (value / (1u64 << 20) as f64, "MiB"),
        v if v >= 1024.0 => (value / 1024.0, "KiB"),
        _ => (value, "B"),
    };
    format!("{} {unit}", three_digits(scaled))
}

/// A ratio, "12.3x".
pub fn ratio(value: f64) -> String {
    format!("{}x", three_digits(value))
}

/// Three significant digits without an exponent (1.23, 12.3, 123).
fn three_digits(value: f64) -> String {
    match value.abs() {
        v if v == 0.0 || v >= 100.0 => format!("{value:.0}"),
        v if v >= 10.0 => format!("{value:.1}"),
        _ => format!("{value:.2}"),
    }
}

fn extra(value: f64, unit: Unit) -> String {
    match unit {
        Unit::Count => format!("{value:.0}"),
        Unit::Bytes => bytes(value),
        Unit::Percent => format!("{:.1} %", value * 100.0),
        Unit::Nanos => nanos(value),
    }
}

fn with_range(summary: &Summary, show: fn(f64) -> String) -> String {
    format!(
        "{} [{} – {}]",
        show(summary.median),
        show(summary.min),
        show(summary.max)
    )
}

/// Lays out rows of cells in columns: the first two left-aligned, the rest right-aligned.
fn layout(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::from(" ");
        for (c, cell) in row.iter().enumerate() {
            let pad = widths[c] - cell.chars().count();
            if c == 1 {
                let _ = write!(line, "  {cell}{}", " ".repeat(pad));
            } else {
                let _ = write!(line, "  {}{cell}", " ".repeat(pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The table of one case, with its checks.
pub fn case(report: &CaseReport) -> String {
    let extra_names: Vec<(&str, Unit)> = {
        let mut names: Vec<(&str, Unit)> = Vec::new();
        for e in report
            .rows
            .iter()
            .flat_map(|r| &r.arms)
            .flat_map(|a| &a.extras)
        {
            if !names.iter().any(|(n, _)| *n == e.name) {
                names.push((e.name, e.unit));
            }
        }
        names
    };
    let mut rows = vec![[
        "threads",
        "arm",
        "total ops/s [min – max]",
        "per thread",
        "p50",
        "p99",
        "vs before [min – max]",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(extra_names.iter().map(|(n, _)| n.to_string()))
    .collect::<Vec<_>>()];
    for row in &report.rows {
        for arm in &row.arms {
            let mut cells = vec![
                row.threads.to_string(),
                arm.arm.to_string(),
                with_range(&arm.total_ops_per_sec, rate),
                rate(arm.per_thread_ops_per_sec.median),
                arm.p50_ns.map_or("-".into(), nanos),
                arm.p99_ns.map_or("-".into(), nanos),
                arm.vs_before
                    .as_ref()
                    .map_or(String::new(), |s| with_range(s, ratio)),
            ];
            for (name, unit) in &extra_names {
                cells.push(
                    arm.extras
                        .iter()
                        .find(|e| e.name == *name)
                        .map_or("-".into(), |e| extra(e.value, *unit)),
                );
            }
            rows.push(cells);
        }
    }
    let mut out = format!(
        "\n{}  {}\n    op: {}; latency: {}\n",
        report.id, report.title, report.op, report.latency_of
    );
    out.push_str(&layout(&rows));
    for check in &report.checks {
        if check.failures.is_empty() {
            let _ = writeln!(
                out,
                "  check ok      {}: {} ({} runs)",
                check.name, check.seen, check.runs
            );
        } else {
            let _ = writeln!(
                out,
                "  check FAILED  {}: {} of {} runs",
                check.name,
                check.failures.len(),
                check.runs
            );
            for failure in &check.failures {
                let _ = writeln!(out, "                {failure}");
            }
        }
    }
    out
}

/// The design's figures, as measured.
pub fn targets(targets: &[TargetReport]) -> String {
    let mut rows = vec![vec![
        "result".to_string(),
        "figure to reach".to_string(),
        "measured".to_string(),
    ]];
    for t in targets {
        let result = match t.met {
            Some(true) => "met",
            Some(false) => "NOT MET",
            None => "n/a",
        };
        rows.push(vec![result.into(), t.target.clone(), t.measured.clone()]);
    }
    // Left-align everything: these are sentences.
    let widths: Vec<usize> = (0..3)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::from(
        "\nFigures to reach (DESIGN targets; timings mean something only on the 16-core machine)\n",
    );
    for row in rows {
        let mut line = String::from(" ");
        for (c, cell) in row.iter().enumerate() {
            let _ = write!(
                line,
                "  {cell}{}",
                " ".repeat(widths[c] - cell.chars().count())
            );
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_scale() {
        assert_eq!(rate(1_234_567.0), "1.23 M");
        assert_eq!(rate(950.0), "950");
        assert_eq!(nanos(12.34), "12.3 ns");
        assert_eq!(nanos(4_560.0), "4.56 µs");
        assert_eq!(bytes(3.0 * 1048576.0), "3.00 MiB");
        assert_eq!(ratio(10.04), "10.0x");
    }
}
