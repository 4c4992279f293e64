//! `braid-bench`: does braid fix the seed's five scalability problems, and by how much?
//!
//! The seed (PyTorch's MPS backend as forked by dropbox/dML, see DESIGN.md) ran one stream per
//! inference thread but kept five global serialisation points: a recursive mutex around the whole
//! allocator, commit-and-continue disabled everywhere, a current-stream switch that scanned the
//! stream array under a lock, a creation mutex on every `getStream(i)`, and a mutex-guarded slot free
//! list. This benchmark runs, in one process, each workload against a faithful rebuild of the seed's
//! design ([`before`], on the same [`Device`](braid_runtime::Device) trait and the same CPU backend, so
//! both pay the same device costs) and against braid's runtime, interleaved repetition by repetition
//! (before, after, before, after …), and prints one table per case: total and per-thread throughput
//! (median and min–max over repetitions), p50/p99 latency, and the after/before ratio (paired per
//! repetition). Invariants (no event created and no host sync in steady state, no slot held twice or
//! lost, every byte returned) are checked in every run; a failure makes the process exit with
//! status 1. The design's target figures are evaluated at the end.
//!
//! # Running it
//!
//! ```text
//! cargo run --release -p braid-bench                         # full run (~3-8 min on 16 cores)
//! cargo run --release -p braid-bench -- --quick              # CI: every scenario briefly, invariants only
//! cargo run --release -p braid-bench -- --scenarios S1,S4 --threads 1,2,4 --reps 7 --json out.json
//! ```
//!
//! Options: `--quick`, `--json FILE` (every figure, every repetition), `--scenarios S1,S4,…`,
//! `--threads 1,2,4,…` (replaces every thread sweep), `--reps N` (default 5; 2 with `--quick`),
//! `--measure-ms`, `--warmup-ms` (default 200 and 50; 20 and 5 with `--quick`). Exit status: 0 all
//! invariants held, 1 an invariant failed, 2 the run could not finish.
//!
//! # Scenarios
//!
//! - **S1 allocator** ([`scenarios::s1_allocator`]): alloc+free with 4 live buffers per thread, each
//!   thread on its own stream; S1a mixed sizes (log-uniform 256 B – 64 MiB), S1b all threads in one
//!   size class (must be no slower than before).
//! - **S2 small-block cache** ([`scenarios::s2_small_cache`]): LIFO bursts of 4–256 KiB with 0, 10 or
//!   50 % freed by another thread; hit rate, bytes in thread caches, peak reserved (within +10 %).
//! - **S3 stream-ordered reuse** ([`scenarios::s3_stream_ordered`]): alloc → kernel → free → alloc on
//!   one stream with no host sync; events created and host syncs in steady state must be 0.
//! - **S4 stream lookup** ([`scenarios::s4_stream_lookup`]): `current_stream`, `set_current_stream`,
//!   `get_stream(i)` loops.
//! - **S5 slot leasing** ([`scenarios::s5_slot_leasing`]): lease/release loop; 20,000 short-lived
//!   threads with at most 64 alive; 32 and 48 threads wanting 31 slots under `wait:<ms>`.
//! - **S6 commit policy** ([`scenarios::s6_commit_policy`]): an encode-heavy stream under `off`
//!   (before), `auto` and `on`, at 1 and 8 threads.
//!
//! Thread counts are 1, 2, 4, 8 and 16 unless a scenario says otherwise. On a 2-core machine the
//! figures show contention, not scaling; the scaling claims come from the 16-core machine.
//!
//! # Layout
//!
//! [`before`] holds the seed's designs; [`subjects`] puts each component's two implementations behind
//! one interface so a workload is written once; [`harness`] runs arms, threads and phases and times
//! batches; [`scenarios`] holds the workloads; [`report`] summarises, prints and serialises;
//! [`targets`] evaluates the design's figures; [`device`] counts the device calls that must not
//! happen in steady state.

mod before;
mod device;
mod error;
mod harness;
mod report;
mod scenarios;
mod subjects;
mod targets;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use braid_runtime::{Device, MAX_WORKER_SLOTS};
use clap::Parser;

use crate::error::BenchError;
use crate::harness::Timing;
use crate::report::{table, Report, RunInfo};
use crate::scenarios::{Ctx, ALL};

/// Before/after benchmarks of braid's five fixes to the seed's scalability problems.
#[derive(Debug, Parser)]
#[command(name = "braid-bench", version)]
struct Cli {
    /// Run every scenario briefly (for CI: checks that it runs and that the invariants hold; the
    /// timings mean nothing).
    #[arg(long)]
    quick: bool,
    /// Write every figure (every repetition, every arm) to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Scenarios to run, comma-separated (S1..S6); all by default.
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    scenarios: Vec<String>,
    /// Thread counts for every thread sweep, comma-separated [default: 1,2,4,8,16; 1,2 with --quick].
    #[arg(long, value_delimiter = ',', value_name = "N,N,...")]
    threads: Vec<usize>,
    /// Repetitions per arm [default: 5; 2 with --quick].
    #[arg(long, value_name = "N")]
    reps: Option<usize>,
    /// Measured time per repetition in ms [default: 200; 20 with --quick].
    #[arg(long, value_name = "MS")]
    measure_ms: Option<u64>,
    /// Warm-up time per repetition in ms [default: 50; 5 with --quick].
    #[arg(long, value_name = "MS")]
    warmup_ms: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("braid-bench: an invariant failed (see the FAILED checks above)");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("braid-bench: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs the selected scenarios; `Ok(false)` when an invariant failed.
fn run(cli: &Cli) -> Result<bool, BenchError> {
    let selected = select_scenarios(&cli.scenarios)?;
    if let Some(bad) = cli
        .threads
        .iter()
        .find(|&&t| !(1..=MAX_WORKER_SLOTS).contains(&t))
    {
        return Err(BenchError::Usage(format!(
            "--threads {bad}: thread counts must be 1 to {MAX_WORKER_SLOTS} (the most stream slots a pool has)"
        )));
    }
    let reps = cli.reps.unwrap_or(if cli.quick { 2 } else { 5 });
    if reps == 0 {
        return Err(BenchError::Usage("--reps must be at least 1".into()));
    }
    let ms = |given: Option<u64>, full: u64, quick: u64| {
        Duration::from_millis(given.unwrap_or(if cli.quick { quick } else { full }))
    };
    let mut ctx = Ctx {
        reps,
        timing: Timing {
            warmup: ms(cli.warmup_ms, 50, 5),
            measure: ms(cli.measure_ms, 200, 20),
        },
        quick: cli.quick,
        threads_override: (!cli.threads.is_empty()).then(|| cli.threads.clone()),
        cases: Vec::new(),
    };
    let info = RunInfo {
        device: device::bench_device().describe(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        reps,
        warmup_ms: ctx.timing.warmup.as_millis() as u64,
        measure_ms: ctx.timing.measure.as_millis() as u64,
        quick: cli.quick,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    println!(
        "braid-bench: {} ({} cores); {} repetitions per arm, interleaved; {} ms warm-up + {} ms measured each",
        info.device, info.cores, info.reps, info.warmup_ms, info.measure_ms
    );
    for scenario in selected {
        eprintln!("{}: {}", scenario.id, scenario.title);
        (scenario.run)(&mut ctx)?;
    }
    let targets = targets::evaluate(&ctx.cases);
    print!("{}", table::targets(&targets));
    let checks_passed = ctx.cases.iter().all(|c| c.checks_passed());
    if let Some(path) = &cli.json {
        let report = Report {
            run: info,
            cases: ctx.cases,
            targets,
            checks_passed,
        };
        let json = serde_json::to_string_pretty(&report)
            .expect("invariant violated: the report always serialises (this is a bug)");
        std::fs::write(path, json).map_err(|source| BenchError::Report {
            path: path.display().to_string(),
            source,
        })?;
        println!("\nwrote {}", path.display());
    }
    Ok(checks_passed)
}

/// The scenarios named in `--scenarios` (all when none), in run order.
fn select_scenarios(names: &[String]) -> Result<Vec<&'static scenarios::Scenario>, BenchError> {
    if names.is_empty() {
        return Ok(ALL.iter().collect());
    }
    for name in names {
        if !ALL.iter().any(|s| s.id.eq_ignore_ascii_case(name.trim())) {
            let known: Vec<_> = ALL.iter().map(|s| s.id).collect();
            return Err(BenchError::Usage(format!(
                "--scenarios: unknown scenario {name:?}; known: {}",
                known.join(", ")
            )));
        }
    }
    Ok(ALL
        .iter()
        .filter(|s| names.iter().any(|n| s.id.eq_ignore_ascii_case(n.trim())))
        .collect())
}
