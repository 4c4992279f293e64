//! [`EngineConfig`] and [`Mode`]: how an [`crate::Engine`] schedules its callers' work.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::error::EngineError;

/// How callers' requests reach the device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Each caller runs its own forward on its own leased stream (the seed's model).
    Direct,
    /// Callers enqueue; executor threads run batches formed across callers (continuous batching).
    Batched,
    /// Batched on a GPU, direct on the CPU: what won in the measurements (docs/bench/engine.md). On
    /// an H200 the engine is level with direct mode at one caller and 1.9–6.8x it at 16–64 callers;
    /// on a 16-core CPU one batch on every core runs at a quarter of 16 callers each on their own core
    /// (the CPU GEMM scales poorly across cores within one product), so batching loses there.
    #[default]
    Auto,
}

impl Mode {
    /// What `Auto` stands for on `backend` ("cpu", "cuda", ...); the others stand for themselves.
    pub fn resolved(self, backend: &str) -> Self {
        match self {
            Self::Auto if backend == "cpu" => Self::Direct,
            Self::Auto => Self::Batched,
            other => other,
        }
    }
}

impl FromStr for Mode {
    type Err = EngineError;

    fn from_str(text: &str) -> Result<Self, EngineError> {
        match text.trim().to_ascii_lowercase().as_str() {
            "direct" => Ok(Self::Direct),
            "batched" | "engine" => Ok(Self::Batched),
            "auto" => Ok(Self::Auto),
            _ => Err(EngineError::InvalidConfig {
                name: "mode",
                value: text.to_string(),
                allowed: "direct, batched (or engine) or auto",
            }),
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Direct => "direct",
            Self::Batched => "batched",
            Self::Auto => "auto",
        })
    }
}

/// The engine's knobs. [`EngineConfig::for_backend`] gives the measured defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct EngineConfig {
    /// Direct, batched or auto.
    pub mode: Mode,
    /// Executor threads, each with its own leased stream, so batches overlap (1 to 16).
    pub executors: usize,
    /// The most padded tokens (sequences × the longest one) in one batch.
    pub max_batch_tokens: usize,
    /// The most sequences in one batch.
    pub max_batch_size: usize,
    /// The most tokens waiting in the queue; past it a request fails with
    /// [`EngineError::Overloaded`] instead of waiting without bound.
    pub max_queued_tokens: usize,
    /// How long an idle executor may wait for more requests to fill a batch. Zero (the default): a
    /// batch leaves as soon as an executor can take it; batches grow while all executors are busy.
    pub max_wait: Duration,
}

impl EngineConfig {
    /// The defaults for a backend (`"cuda"`, `"cpu"`, ...): on a GPU four executors (batches overlap;
    /// on the H200 four beat one and two at 16 callers and at 64 callers × batch 64, see
    /// docs/bench/engine.md) and up to 32,768 padded tokens per batch (256 sequences of 128 tokens,
    /// where MiniLM's throughput levels off on an H200); on the CPU one executor, whose batch already
    /// uses every core, and 8,192 tokens.
    pub fn for_backend(backend: &str) -> Self {
        let gpu = backend != "cpu";
        Self {
            mode: Mode::Auto,
            executors: if gpu { 4 } else { 1 },
            max_batch_tokens: if gpu { 32_768 } else { 8_192 },
            max_batch_size: 256,
            max_queued_tokens: 4 << 20,
            max_wait: Duration::ZERO,
        }
    }

    /// Checks every knob, naming the one that is out of range.
    pub fn validate(&self) -> Result<(), EngineError> {
        let check = |ok: bool, name: &'static str, value: String, allowed: &'static str| {
            if ok {
                Ok(())
            } else {
                Err(EngineError::InvalidConfig {
                    name,
                    value,
                    allowed,
                })
            }
        };
        check(
            (1..=16).contains(&self.executors),
            "executors",
            self.executors.to_string(),
            "1 to 16 executor threads",
        )?;
        check(
            self.max_batch_tokens > 0,
            "max_batch_tokens",
            self.max_batch_tokens.to_string(),
            "at least 1 token",
        )?;
        check(
            (1..=65_536).contains(&self.max_batch_size),
            "max_batch_size",
            self.max_batch_size.to_string(),
            "1 to 65,536 sequences",
        )?;
        check(
            self.max_queued_tokens >= self.max_batch_tokens,
            "max_queued_tokens",
            self.max_queued_tokens.to_string(),
            "at least max_batch_tokens",
        )?;
        check(
            self.max_wait <= Duration::from_secs(10),
            "max_wait",
            format!("{:?}", self.max_wait),
            "at most 10 s",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_batched_on_a_gpu_and_direct_on_the_cpu() {
        assert_eq!(Mode::Auto.resolved("cuda"), Mode::Batched);
        assert_eq!(Mode::Auto.resolved("cpu"), Mode::Direct);
        assert_eq!(Mode::Direct.resolved("cuda"), Mode::Direct);
        assert_eq!(Mode::Batched.resolved("cpu"), Mode::Batched);
        assert_eq!("engine".parse::<Mode>().unwrap(), Mode::Batched);
    }
}
