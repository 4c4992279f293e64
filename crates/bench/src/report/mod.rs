//! What a run reports: per case, per thread count, per arm — throughput (median and min–max over
//! repetitions), per-thread throughput, p50/p99 latency, the after/before ratio, scenario figures and
//! invariant checks. The same structures are printed as tables ([`table`]) and written as JSON
//! (`--json FILE`, through serde).
//!
//! # How figures are summarised
//!
//! - Throughput: median over repetitions, with the minimum and maximum.
//! - Latency: the histograms of all repetitions merged, then p50 and p99.
//! - after/before: the ratio is taken per repetition (repetition *i* of an arm over repetition *i* of
//!   the before-arm, which ran next to it) and then summarised as median, min and max.
//! - Extra figures: median or maximum, as each scenario declares.
//! - Checks: each named invariant with the number of runs it was checked in and every failure.

pub mod table;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::harness::latency::LatencyHistogram;
use crate::harness::{Aggregate, Arm, CaseSpec, RepResult, Role, Unit};

/// Median, minimum and maximum of a set of values.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Summary {
    /// The median (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

impl Summary {
    /// The summary of `values`, or `None` when there are none.
    pub fn of(values: &[f64]) -> Option<Self> {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = match n {
            0 => return None,
            _ if n % 2 == 1 => sorted[n / 2],
            _ => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
        };
        Some(Self {
            median,
            min: sorted[0],
            max: sorted[n - 1],
        })
    }
}

/// One extra figure of one arm, summarised.
#[derive(Clone, Debug, Serialize)]
pub struct ExtraReport {
    /// Column name.
    pub name: &'static str,
    /// How it is shown.
    pub unit: Unit,
    /// How it was summarised.
    pub aggregate: Aggregate,
    /// The summarised value.
    pub value: f64,
}

/// One repetition of one arm, as measured.
#[derive(Clone, Debug, Serialize)]
pub struct RepReport {
    /// Total ops per second.
    pub ops_per_sec: f64,
    /// Median latency in ns.
    pub p50_ns: Option<f64>,
    /// 99th-percentile latency in ns.
    pub p99_ns: Option<f64>,
    /// Extra figures by name.
    pub extras: BTreeMap<&'static str, f64>,
}

/// One arm at one thread count.
#[derive(Clone, Debug, Serialize)]
pub struct ArmReport {
    /// The arm's name.
    pub arm: &'static str,
    /// Before or after.
    pub role: Role,
    /// Total ops per second.
    pub total_ops_per_sec: Summary,
    /// Total divided by the thread count.
    pub per_thread_ops_per_sec: Summary,
    /// Median latency (merged over repetitions), ns.
    pub p50_ns: Option<f64>,
    /// 99th-percentile latency (merged over repetitions), ns.
    pub p99_ns: Option<f64>,
    /// Largest latency seen, ns.
    pub max_ns: Option<f64>,
    /// Paired ratio of this arm's total throughput to the before-arm's; `None` for the before-arm.
    pub vs_before: Option<Summary>,
    /// Scenario figures.
    pub extras: Vec<ExtraReport>,
    /// Every repetition.
    pub reps: Vec<RepReport>,
}

/// All arms at one thread count.
#[derive(Clone, Debug, Serialize)]
pub struct ThreadsReport {
    /// Worker threads.
    pub threads: usize,
    /// One entry per arm, before first.
    pub arms: Vec<ArmReport>,
}

/// One invariant over all runs of a case.
#[derive(Clone, Debug, Serialize)]
pub struct CheckReport {
    /// What must hold.
    pub name: &'static str,
    /// Runs (repetition × arm × thread count) it was checked in.
    pub runs: usize,
    /// What a run saw (the last passing one, or the first failure).
    pub seen: String,
    /// Each failure: where, and what was seen.
    pub failures: Vec<String>,
}

/// One case: its description, figures and checks.
#[derive(Clone, Debug, Serialize)]
pub struct CaseReport {
    /// Short id ("S1a").
    pub id: &'static str,
    /// What is measured.
    pub title: String,
    /// What one op is.
    pub op: &'static str,
    /// What the latency columns time.
    pub latency_of: &'static str,
    /// One entry per thread count.
    pub rows: Vec<ThreadsReport>,
    /// Invariants.
    pub checks: Vec<CheckReport>,
}

impl CaseReport {
    /// Summarises the repetitions of every arm (`by_threads[i] = (threads, results per arm)`).
    pub fn build(spec: &CaseSpec, by_threads: Vec<(usize, Vec<Vec<RepResult>>)>) -> Self {
        let mut checks: Vec<CheckReport> = Vec::new();
        let rows = by_threads
            .into_iter()
            .map(|(threads, by_arm)| {
                let before = spec
                    .arms
                    .iter()
                    .position(|a| a.role == Role::Before)
                    .map(|i| by_arm[i].iter().map(|r| r.ops_per_sec).collect::<Vec<_>>());
                for (arm, results) in spec.arms.iter().zip(&by_arm) {
                    collect_checks(&mut checks, *arm, threads, results);
                }
                let arms = spec
                    .arms
                    .iter()
                    .zip(&by_arm)
                    .map(|(arm, results)| summarise_arm(*arm, threads, results, before.as_deref()))
                    .collect();
                ThreadsReport { threads, arms }
            })
            .collect();
        Self {
            id: spec.id,
            title: spec.title.clone(),
            op: spec.op,
            latency_of: spec.latency_of,
            rows,
            checks,
        }
    }

    /// Whether every check passed.
    pub fn checks_passed(&self) -> bool {
        self.checks.iter().all(|c| c.failures.is_empty())
    }
}

fn summarise_arm(
    arm: Arm,
    threads: usize,
    results: &[RepResult],
    before: Option<&[f64]>,
) -> ArmReport {
    let totals: Vec<f64> = results.iter().map(|r| r.ops_per_sec).collect();
    let per_thread: Vec<f64> = totals.iter().map(|t| t / threads as f64).collect();
    let mut latency = LatencyHistogram::default();
    for r in results {
        latency.merge(&r.latency);
    }
    let vs_before = match (arm.role, before) {
        (Role::After, Some(before)) => {
            let ratios: Vec<f64> = totals
                .iter()
                .zip(before)
                .filter(|(_, &b)| b > 0.0)
                .map(|(a, b)| a / b)
                .collect();
            Summary::of(&ratios)
        }
        _ => None,
    };
    let zero = Summary {
        median: 0.0,
        min: 0.0,
        max: 0.0,
    };
    ArmReport {
        arm: arm.name,
        role: arm.role,
        total_ops_per_sec: Summary::of(&totals).unwrap_or(zero),
        per_thread_ops_per_sec: Summary::of(&per_thread).unwrap_or(zero),
        p50_ns: latency.quantile_ns(0.5),
        p99_ns: latency.quantile_ns(0.99),
        max_ns: latency.max_ns(),
        vs_before,
        extras: summarise_extras(results),
        reps: results
            .iter()
            .map(|r| RepReport {
                ops_per_sec: r.ops_per_sec,
                p50_ns: r.latency.quantile_ns(0.5),
                p99_ns: r.latency.quantile_ns(0.99),
                extras: r.extras.iter().map(|e| (e.name, e.value)).collect(),
            })
            .collect(),
    }
}

/// Extra figures by name, in the order they first appear, each summarised as it asks.
fn summarise_extras(results: &[RepResult]) -> Vec<ExtraReport> {
    let mut reports: Vec<(ExtraReport, Vec<f64>)> = Vec::new();
    for extra in results.iter().flat_map(|r| &r.extras) {
        match reports.iter_mut().find(|(r, _)| r.name == extra.name) {
            Some((_, values)) => values.push(extra.value),
            None => reports.push((
                ExtraReport {
                    name: extra.name,
                    unit: extra.unit,
                    aggregate: extra.aggregate,
                    value: 0.0,
                },
                vec![extra.value],
            )),
        }
    }
    reports
        .into_iter()
        .map(|(mut report, values)| {
            report.value = match report.aggregate {
                Aggregate::Median => Summary::of(&values).map_or(0.0, |s| s.median),
                Aggregate::Max => values.iter().copied().fold(f64::MIN, f64::max),
            };
            report
        })
        .collect()
}

fn collect_checks(checks: &mut Vec<CheckReport>, arm: Arm, threads: usize, results: &[RepResult]) {
    for (rep, result) in results.iter().enumerate() {
        for check in &result.checks {
            let report = match checks.iter_mut().position(|c| c.name == check.name) {
                Some(i) => &mut checks[i],
                None => {
                    checks.push(CheckReport {
                        name: check.name,
                        runs: 0,
                        seen: String::new(),
                        failures: Vec::new(),
                    });
                    checks.last_mut().expect("just pushed")
                }
            };
            report.runs += 1;
            if check.passed {
                if report.failures.is_empty() {
                    report.seen = check.detail.clone();
                }
            } else {
                if report.failures.is_empty() {
                    report.seen = check.detail.clone();
                }
                report.failures.push(format!(
                    "{} thread(s), {}, repetition {}: {}",
                    threads,
                    arm.name,
                    rep + 1,
                    check.detail
                ));
            }
        }
    }
}

/// How a run was set up, for the JSON file.
#[derive(Clone, Debug, Serialize)]
pub struct RunInfo {
    /// The device, as its backend describes it.
    pub device: String,
    /// CPU cores available to the process.
    pub cores: usize,
    /// Repetitions per arm.
    pub reps: usize,
    /// Warm-up per repetition, ms.
    pub warmup_ms: u64,
    /// Measured time per repetition, ms.
    pub measure_ms: u64,
    /// Whether `--quick` was given.
    pub quick: bool,
    /// The command line.
    pub command: String,
}

/// A figure the design asks for, as measured (see [`crate::targets`]).
#[derive(Clone, Debug, Serialize)]
pub struct TargetReport {
    /// The figure to reach.
    pub target: String,
    /// What was measured.
    pub measured: String,
    /// Whether it was reached; `None` when the run did not measure it.
    pub met: Option<bool>,
}

/// Everything `--json FILE` writes.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// How the run was set up.
    pub run: RunInfo,
    /// Every case, in run order.
    pub cases: Vec<CaseReport>,
    /// The design's figures, evaluated.
    pub targets: Vec<TargetReport>,
    /// Whether every invariant held.
    pub checks_passed: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::harness::{Check, Extra, AFTER, BEFORE};

    fn rep(ops_per_sec: f64, events: f64, passed: bool) -> RepResult {
        let mut latency = LatencyHistogram::default();
        latency.record(10_000, 1);
        RepResult {
            ops_per_sec,
            latency,
            extras: vec![Extra::max("events", events, Unit::Count)],
            checks: vec![Check {
                name: "events = 0",
                passed,
                detail: format!("{events}"),
            }],
        }
    }

    #[test]
    fn ratios_are_paired_and_checks_collected() {
        let spec = CaseSpec {
            id: "T",
            title: "test".into(),
            op: "op",
            latency_of: "per op",
            arms: vec![BEFORE, AFTER],
            threads: vec![2],
        };
        let before = vec![
            rep(100.0, 0.0, true),
            rep(200.0, 0.0, true),
            rep(50.0, 0.0, true),
        ];
        let after = vec![
            rep(1000.0, 0.0, true),
            rep(1000.0, 3.0, false),
            rep(1000.0, 0.0, true),
        ];
        let case = CaseReport::build(&spec, vec![(2, vec![before, after])]);
        let after = &case.rows[0].arms[1];
        let ratio = after.vs_before.unwrap();
        assert_eq!((ratio.median, ratio.min, ratio.max), (10.0, 5.0, 20.0));
        assert_eq!(after.per_thread_ops_per_sec.median, 500.0);
        assert_eq!(after.extras[0].value, 3.0, "max over repetitions");
        assert!(case.rows[0].arms[0].vs_before.is_none());
        assert!(!case.checks_passed());
        assert_eq!(case.checks[0].runs, 6);
        assert_eq!(case.checks[0].failures.len(), 1);
        assert!(case.checks[0].failures[0].contains("after, repetition 2"));
    }

    #[test]
    fn summary_median_of_even_and_odd_counts() {
        assert_eq!(Summary::of(&[3.0, 1.0, 2.0]).unwrap().median, 2.0);
        assert_eq!(Summary::of(&[4.0, 1.0, 2.0, 3.0]).unwrap().median, 2.5);
        assert!(Summary::of(&[]).is_none());
    }
}
