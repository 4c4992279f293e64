//! The measurement harness: what a case is, how its arms are interleaved, and what one repetition
//! hands back.
//!
//! A **case** ([`CaseSpec`]) is one workload measured at several thread counts under two or more
//! **arms** ([`Arm`]): the seed's design ("before") and braid's ("after"; S6 has two after-arms). For
//! each thread count the harness runs repetition 1 of every arm, then repetition 2 of every arm, and
//! so on (A B A B …), so slow drift of the machine (thermal, other tenants) hits both arms alike and
//! the after/before ratio can be taken per repetition, pairwise.
//!
//! A **repetition** is a scenario function that builds a fresh fixture (device, pool, allocator),
//! usually runs [`workers::run_workers`] (thread start gate, warm-up, timed phase, per-batch latency),
//! tears the fixture down, and returns a [`RepResult`]: total throughput, a latency histogram, extra
//! figures and invariant [`Check`]s. Aggregation into medians and min–max lives in [`crate::report`].

pub mod latency;
pub mod workers;

use std::io::IsTerminal;
use std::time::Duration;

use serde::Serialize;

use self::latency::LatencyHistogram;
use crate::error::BenchError;
use crate::report::CaseReport;

/// How long each repetition warms up and measures.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Time the workers run before measuring (caches filled, streams created, pools warm).
    pub warmup: Duration,
    /// Time the workers are measured.
    pub measure: Duration,
}

/// Which design an arm runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The seed's design (the baseline of every ratio).
    Before,
    /// braid's design.
    After,
}

/// One implementation under test within a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arm {
    /// Shown in tables and JSON ("before", "after", "auto", …).
    pub name: &'static str,
    /// Whether it is the baseline.
    pub role: Role,
}

/// The seed's design.
pub const BEFORE: Arm = Arm {
    name: "before",
    role: Role::Before,
};
/// braid's design.
pub const AFTER: Arm = Arm {
    name: "after",
    role: Role::After,
};

/// A case: one workload at several thread counts under several arms (module doc).
#[derive(Clone, Debug)]
pub struct CaseSpec {
    /// Short id ("S1a"), unique in a run.
    pub id: &'static str,
    /// What is measured, for the table heading.
    pub title: String,
    /// What one op is ("alloc+free", "lookup", …).
    pub op: &'static str,
    /// What the latency columns time ("per op" unless a scenario records something else).
    pub latency_of: &'static str,
    /// The arms, the before-arm first.
    pub arms: Vec<Arm>,
    /// Thread counts to run.
    pub threads: Vec<usize>,
}

/// How an extra figure is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// A plain count.
    Count,
    /// Bytes.
    Bytes,
    /// A fraction in 0..=1, shown as a percentage.
    Percent,
    /// Nanoseconds.
    Nanos,
}

/// How an extra figure is summarised over repetitions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregate {
    /// The median (figures).
    Median,
    /// The largest (counts that should be zero, worst waits).
    Max,
}

/// A figure a scenario reports besides throughput and latency.
#[derive(Clone, Debug)]
pub struct Extra {
    /// Column name.
    pub name: &'static str,
    /// The value in `unit`.
    pub value: f64,
    /// How to show it.
    pub unit: Unit,
    /// How to summarise it over repetitions.
    pub aggregate: Aggregate,
}

impl Extra {
    /// A figure summarised by its median.
    pub fn median(name: &'static str, value: f64, unit: Unit) -> Self {
        Self {
            name,
            value,
            unit,
            aggregate: Aggregate::Median,
        }
    }

    /// A figure summarised by its maximum.
    pub fn max(name: &'static str, value: f64, unit: Unit) -> Self {
        Self {
            name,
            value,
            unit,
            aggregate: Aggregate::Max,
        }
    }
}

/// An invariant checked in one repetition. A failed check makes the process exit non-zero.
#[derive(Clone, Debug)]
pub struct Check {
    /// What must hold, as a sentence fragment ("events created in steady state = 0").
    pub name: &'static str,
    /// Whether it held.
    pub passed: bool,
    /// What was seen ("3 events").
    pub detail: String,
}

impl Check {
    /// A check that `value` equals `expected`.
    pub fn equal<T: PartialEq + std::fmt::Display>(
        name: &'static str,
        value: T,
        expected: T,
    ) -> Self {
        Self {
            name,
            passed: value == expected,
            detail: format!("{value} (must be {expected})"),
        }
    }
}

/// What one repetition of one arm measured.
#[derive(Clone, Default)]
pub struct RepResult {
    /// Ops per second over all threads.
    pub ops_per_sec: f64,
    /// Latencies (per op, or what the case's `latency_of` says).
    pub latency: LatencyHistogram,
    /// Scenario-specific figures.
    pub extras: Vec<Extra>,
    /// Invariants checked.
    pub checks: Vec<Check>,
}

/// Runs every arm of `spec` at every thread count, `reps` times, interleaved (module doc), and
/// aggregates the results. `run_rep(arm, threads)` runs one repetition.
pub fn run_case(
    spec: &CaseSpec,
    reps: usize,
    mut run_rep: impl FnMut(Arm, usize) -> Result<RepResult, BenchError>,
) -> Result<CaseReport, BenchError> {
    let progress = std::io::stderr().is_terminal();
    let mut by_threads = Vec::with_capacity(spec.threads.len());
    for &threads in &spec.threads {
        let mut by_arm: Vec<Vec<RepResult>> = vec![Vec::with_capacity(reps); spec.arms.len()];
        for rep in 0..reps {
            if progress {
                eprint!(
                    "\r\x1b[K{} at {threads} thread(s): repetition {}/{reps}",
                    spec.id,
                    rep + 1
                );
            }
            for (arm, results) in spec.arms.iter().zip(&mut by_arm) {
                results.push(run_rep(*arm, threads)?);
            }
        }
        by_threads.push((threads, by_arm));
    }
    if progress {
        eprint!("\r\x1b[K");
    }
    Ok(CaseReport::build(spec, by_threads))
}
