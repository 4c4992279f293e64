//! The figures the design asks braid to reach (issue 3), evaluated against a run's reports.
//!
//! They are printed at the end of every run and written to the JSON file, but never fail the run:
//! timings mean something only on the 16-core machine, and CI checks invariants, not timings. A
//! figure the run did not measure (a thread count or scenario left out) is reported as such.

use crate::report::table::{bytes, nanos, rate, ratio};
use crate::report::{ArmReport, CaseReport, Summary, TargetReport};

/// The thread count the scaling figures are stated at.
const SCALING_THREADS: usize = 16;

/// Evaluates every figure against `cases`.
pub fn evaluate(cases: &[CaseReport]) -> Vec<TargetReport> {
    let mut targets = Vec::new();
    for id in ["S1a", "S1b", "S2a", "S2b", "S2c"] {
        targets.push(speedup_at_16(cases, id));
    }
    targets.push(one_class_no_slower(cases));
    targets.push(thread_cache_hit_cost(cases));
    targets.push(per_thread_scaling(cases));
    targets.push(no_hoarding(cases));
    for id in ["S4a", "S4b", "S4c"] {
        targets.push(lookup_cost(cases, id));
    }
    targets.extend(lease_figures(cases));
    targets.extend(commit_policy(cases));
    targets
}

fn find_case<'a>(cases: &'a [CaseReport], id: &str) -> Option<&'a CaseReport> {
    cases.iter().find(|c| c.id == id)
}

fn find_arm<'a>(case: &'a CaseReport, threads: usize, arm: &str) -> Option<&'a ArmReport> {
    case.rows
        .iter()
        .find(|r| r.threads == threads)?
        .arms
        .iter()
        .find(|a| a.arm == arm)
}

fn not_measured(target: String) -> TargetReport {
    TargetReport {
        target,
        measured: "not measured in this run".into(),
        met: None,
    }
}

/// Mean time per op on one thread, from per-thread throughput.
fn ns_per_op(arm: &ArmReport) -> f64 {
    1e9 / arm.per_thread_ops_per_sec.median
}

fn speedup_at_16(cases: &[CaseReport], id: &str) -> TargetReport {
    let target =
        format!("{id} at {SCALING_THREADS} threads: after >= 10x before (total throughput)");
    let Some(ratio_summary) = find_case(cases, id)
        .and_then(|c| find_arm(c, SCALING_THREADS, "after"))
        .and_then(|a| a.vs_before)
    else {
        return not_measured(target);
    };
    TargetReport {
        target,
        measured: ratio_range(&ratio_summary),
        met: Some(ratio_summary.median >= 10.0),
    }
}

fn ratio_range(s: &Summary) -> String {
    format!("{} [{} - {}]", ratio(s.median), ratio(s.min), ratio(s.max))
}

fn one_class_no_slower(cases: &[CaseReport]) -> TargetReport {
    let target =
        "S1b (one size class): after no slower than before at every thread count".to_string();
    let Some(case) = find_case(cases, "S1b") else {
        return not_measured(target);
    };
    let worst = case
        .rows
        .iter()
        .filter_map(|r| {
            let after = r.arms.iter().find(|a| a.arm == "after")?;
            Some((r.threads, after.vs_before?.median))
        })
        .min_by(|a, b| a.1.total_cmp(&b.1));
    match worst {
        None => not_measured(target),
        Some((threads, worst)) => TargetReport {
            target,
            measured: format!(
                "lowest after/before {} (at {threads} threads)",
                ratio(worst)
            ),
            met: Some(worst >= 1.0),
        },
    }
}

fn thread_cache_hit_cost(cases: &[CaseReport]) -> TargetReport {
    let target = "thread-cache hit (S1b after, 1 thread): <= 30 ns per alloc+free".to_string();
    match find_case(cases, "S1b").and_then(|c| find_arm(c, 1, "after")) {
        None => not_measured(target),
        Some(arm) => TargetReport {
            target,
            measured: format!(
                "{} per op (p50 {})",
                nanos(ns_per_op(arm)),
                arm.p50_ns.map_or("-".into(), nanos)
            ),
            met: Some(ns_per_op(arm) <= 30.0),
        },
    }
}

fn per_thread_scaling(cases: &[CaseReport]) -> TargetReport {
    let target =
        format!("S1b after: per-thread cost at {SCALING_THREADS} threads within 1.25x of 1 thread");
    let case = find_case(cases, "S1b");
    let (Some(one), Some(many)) = (
        case.and_then(|c| find_arm(c, 1, "after")),
        case.and_then(|c| find_arm(c, SCALING_THREADS, "after")),
    ) else {
        return not_measured(target);
    };
    let growth = ns_per_op(many) / ns_per_op(one);
    TargetReport {
        target,
        measured: format!(
            "{} per op at 1 thread, {} at {SCALING_THREADS}: {}",
            nanos(ns_per_op(one)),
            nanos(ns_per_op(many)),
            ratio(growth)
        ),
        met: Some(growth <= 1.25),
    }
}

fn no_hoarding(cases: &[CaseReport]) -> TargetReport {
    let target = "S2 peak reserved: after within +10 % of before (no hoarding)".to_string();
    let peak = |arm: &ArmReport| {
        arm.extras
            .iter()
            .find(|e| e.name == "peak reserved")
            .map(|e| e.value)
    };
    let mut worst: Option<(f64, String)> = None;
    for case in ["S2a", "S2b", "S2c"]
        .iter()
        .filter_map(|id| find_case(cases, id))
    {
        for row in &case.rows {
            let before = row.arms.iter().find(|a| a.arm == "before").and_then(peak);
            let after = row.arms.iter().find(|a| a.arm == "after").and_then(peak);
            if let (Some(before), Some(after)) = (before, after) {
                let r = after / before;
                if worst.as_ref().is_none_or(|(w, _)| r > *w) {
                    worst = Some((
                        r,
                        format!(
                            "{} vs {} ({}, {} threads)",
                            bytes(after),
                            bytes(before),
                            case.id,
                            row.threads
                        ),
                    ));
                }
            }
        }
    }
    match worst {
        None => not_measured(target),
        Some((r, at)) => TargetReport {
            target,
            measured: format!("highest after/before {}: {at}", ratio(r)),
            met: Some(r <= 1.10),
        },
    }
}

fn lookup_cost(cases: &[CaseReport], id: &str) -> TargetReport {
    let target = format!("{id} after: <= 5 ns per lookup at every thread count");
    let Some(case) = find_case(cases, id) else {
        return not_measured(target);
    };
    let worst = case
        .rows
        .iter()
        .filter_map(|r| {
            Some((
                r.threads,
                ns_per_op(r.arms.iter().find(|a| a.arm == "after")?),
            ))
        })
        .max_by(|a, b| a.1.total_cmp(&b.1));
    match worst {
        None => not_measured(target),
        Some((threads, ns)) => TargetReport {
            target,
            measured: format!("worst {} per lookup (at {threads} threads)", nanos(ns)),
            met: Some(ns <= 5.0),
        },
    }
}

fn lease_figures(cases: &[CaseReport]) -> [TargetReport; 2] {
    let throughput =
        format!("S5a after at {SCALING_THREADS} threads: >= 10 M lease+release/s in total");
    let tail = format!("S5a after at {SCALING_THREADS} threads: p99 < 5 µs");
    match find_case(cases, "S5a").and_then(|c| find_arm(c, SCALING_THREADS, "after")) {
        None => [not_measured(throughput), not_measured(tail)],
        Some(arm) => [
            TargetReport {
                target: throughput,
                measured: format!("{}/s", rate(arm.total_ops_per_sec.median)),
                met: Some(arm.total_ops_per_sec.median >= 10e6),
            },
            TargetReport {
                target: tail,
                measured: arm.p99_ns.map_or("-".into(), nanos),
                met: arm.p99_ns.map(|p99| p99 < 5_000.0),
            },
        ],
    }
}

fn commit_policy(cases: &[CaseReport]) -> [TargetReport; 2] {
    let within = "S6 at 1 thread: auto within 2 % of on".to_string();
    let cost = "S6: what off costs (off / on throughput)".to_string();
    let Some(case) = find_case(cases, "S6") else {
        return [not_measured(within), not_measured(cost)];
    };
    // Paired per repetition: auto's (and off's) repetition i next to on's repetition i.
    let paired = |threads: usize, arm: &str| -> Option<Summary> {
        let (x, on) = (
            find_arm(case, threads, arm)?,
            find_arm(case, threads, "on")?,
        );
        let ratios: Vec<f64> = x
            .reps
            .iter()
            .zip(&on.reps)
            .map(|(a, b)| a.ops_per_sec / b.ops_per_sec)
            .collect();
        Summary::of(&ratios)
    };
    let within_report = match paired(1, "auto") {
        None => not_measured(within),
        Some(s) => TargetReport {
            target: within,
            measured: format!("auto / on = {}", ratio_range(&s)),
            met: Some(s.median >= 0.98),
        },
    };
    let costs: Vec<String> = case
        .rows
        .iter()
        .filter_map(|r| {
            Some(format!(
                "{} at {} threads",
                ratio(paired(r.threads, "off")?.median),
                r.threads
            ))
        })
        .collect();
    let cost_report = TargetReport {
        target: cost,
        measured: if costs.is_empty() {
            "not measured in this run".into()
        } else {
            costs.join(", ")
        },
        met: None,
    };
    [within_report, cost_report]
}
