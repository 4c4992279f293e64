//! [`StreamPoolConfig`] and [`ExhaustionPolicy`]: how a stream pool is set up, from the API or the
//! environment (`BRAID_STREAM_POOL_EXHAUSTED`, `BRAID_COMMIT_AND_CONTINUE`).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::commit::CommitPolicy;
use crate::env;
use crate::error::{Result, RuntimeError};

/// The environment variable that sets the exhaustion policy.
pub const EXHAUSTION_POLICY_ENV: &str = "BRAID_STREAM_POOL_EXHAUSTED";

/// What [`StreamPool`] does when a thread needs a worker slot and all are leased.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ExhaustionPolicy {
    /// Fail with [`RuntimeError::StreamSlotsExhausted`] naming the limit and the variable.
    #[default]
    Error,
    /// Wait up to this long for a slot to be released, then fail as `Error` does.
    Wait(Duration),
    /// Share a worker stream round-robin (its commit policy under `auto` becomes "off").
    Share,
}

impl ExhaustionPolicy {
    /// The policy from `BRAID_STREAM_POOL_EXHAUSTED`, or `Error` when unset.
    pub fn from_env() -> Result<Self> {
        match env::var(EXHAUSTION_POLICY_ENV)? {
            Some(v) => v.parse(),
            None => Ok(Self::Error),
        }
    }
}

impl FromStr for ExhaustionPolicy {
    type Err = RuntimeError;

    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim().to_ascii_lowercase();
        let invalid = || RuntimeError::InvalidConfig {
            name: EXHAUSTION_POLICY_ENV,
            value: s.clone(),
            allowed: "error, wait:<milliseconds> or share",
        };
        match s.as_str() {
            "error" => Ok(Self::Error),
            "share" => Ok(Self::Share),
            _ => {
                let ms = s.strip_prefix("wait:").ok_or_else(invalid)?;
                Ok(Self::Wait(Duration::from_millis(
                    ms.parse().map_err(|_| invalid())?,
                )))
            }
        }
    }
}

impl fmt::Display for ExhaustionPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Error => f.write_str("error"),
            Self::Wait(d) => write!(f, "wait:{}", d.as_millis()),
            Self::Share => f.write_str("share"),
        }
    }
}

/// How a [`StreamPool`] is set up.
#[derive(Clone, Debug)]
pub struct StreamPoolConfig {
    /// Worker slots besides the default stream (1..=64; default 31, as the seed's pool of 32).
    pub worker_slots: usize,
    /// What to do when all worker slots are leased.
    pub exhaustion: ExhaustionPolicy,
    /// When encoded work is submitted.
    pub commit: CommitPolicy,
    /// Whether the thread named "main" uses the default stream instead of leasing a slot.
    pub main_thread_uses_default: bool,
}

impl Default for StreamPoolConfig {
    fn default() -> Self {
        Self {
            worker_slots: 31,
            exhaustion: ExhaustionPolicy::Error,
            commit: CommitPolicy::Auto,
            main_thread_uses_default: true,
        }
    }
}

impl StreamPoolConfig {
    /// The defaults, with the policies taken from `BRAID_STREAM_POOL_EXHAUSTED` and
    /// `BRAID_COMMIT_AND_CONTINUE` where set.
    pub fn from_env() -> Result<Self> {
        Ok(Self {
            exhaustion: ExhaustionPolicy::from_env()?,
            commit: CommitPolicy::from_env()?,
            ..Self::default()
        })
    }
}
