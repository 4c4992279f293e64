//! [`BenchError`]: why a benchmark run could not finish. A failed invariant is not an error — the run
//! finishes, reports it, and exits non-zero (see `main`).

use braid_runtime::RuntimeError;

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A runtime call failed (before or after arm).
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A worker thread failed or panicked; the message says which and why.
    #[error("worker failed: {0}")]
    Worker(String),
    /// The JSON report could not be written.
    #[error("cannot write the report to {path}: {source}")]
    Report {
        /// The file given to `--json`.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The command line asked for something that does not exist.
    #[error("{0}")]
    Usage(String),
}
