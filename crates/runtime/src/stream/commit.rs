//! [`CommitPolicy`]: when encoded work is handed to the device (fix 2, "commit-and-continue policy").
//!
//! The seed turned commit-and-continue off for every stream to make multi-stream use safe, and single
//! threads lost their pipelining. braid decides per stream:
//!
//! - `on`: after each encoded op the stream submits what it has and keeps encoding into a fresh command
//!   buffer, so the device starts while the host is still encoding.
//! - `off`: work stays in the open command buffer until a sync point (explicit commit, synchronize,
//!   event record, copy to host).
//! - `auto` (default): `on` for the default stream and for a stream used by one thread only; `off` for a
//!   stream shared by several threads under the `share` exhaustion policy, whose command buffer is then
//!   filled by many threads and is submitted at sync points only.
//!
//! Set from the API ([`super::StreamPool::set_commit_policy`]) or `BRAID_COMMIT_AND_CONTINUE`.
//! On CUDA, launches go straight to the stream and the policy changes nothing; on the CPU backend (and
//! Metal-like backends) it decides when the device starts.

use std::fmt;
use std::str::FromStr;

use crate::error::{Result, RuntimeError};

/// The environment variable that sets the commit policy.
pub const COMMIT_POLICY_ENV: &str = "BRAID_COMMIT_AND_CONTINUE";

/// See the module doc.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(u8)]
pub enum CommitPolicy {
    /// On for the default stream and single-user streams, off for shared streams.
    #[default]
    Auto = 0,
    /// Always commit-and-continue.
    On = 1,
    /// Never: submit at sync points only.
    Off = 2,
}

impl CommitPolicy {
    /// The policy from `BRAID_COMMIT_AND_CONTINUE`, or `Auto` when unset; a value that is not
    /// UTF-8 is an error, like any other invalid value.
    pub fn from_env() -> Result<Self> {
        crate::env::var(COMMIT_POLICY_ENV)?.map_or(Ok(Self::Auto), |v| v.parse())
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::On,
            2 => Self::Off,
            _ => Self::Auto,
        }
    }

    /// Whether a stream commits after each op under this policy.
    #[inline]
    pub fn continues(self, is_default_stream: bool, users: u32) -> bool {
        match self {
            Self::On => true,
            Self::Off => false,
            Self::Auto => is_default_stream || users <= 1,
        }
    }
}

impl FromStr for CommitPolicy {
    type Err = RuntimeError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "on" | "1" | "true" => Ok(Self::On),
            "off" | "0" | "false" => Ok(Self::Off),
            _ => Err(RuntimeError::InvalidConfig {
                name: COMMIT_POLICY_ENV,
                value: s.to_string(),
                allowed: "one of auto, on, off",
            }),
        }
    }
}

impl fmt::Display for CommitPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::On => "on",
            Self::Off => "off",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!("AUTO".parse::<CommitPolicy>().unwrap(), CommitPolicy::Auto);
        assert_eq!(" on".parse::<CommitPolicy>().unwrap(), CommitPolicy::On);
        assert_eq!("off".parse::<CommitPolicy>().unwrap(), CommitPolicy::Off);
        let err = "sometimes".parse::<CommitPolicy>().unwrap_err().to_string();
        assert!(
            err.contains("BRAID_COMMIT_AND_CONTINUE") && err.contains("auto, on, off"),
            "{err}"
        );
    }

    #[test]
    fn auto_continues_for_default_and_single_user_streams() {
        assert!(CommitPolicy::Auto.continues(true, 5));
        assert!(CommitPolicy::Auto.continues(false, 1));
        assert!(!CommitPolicy::Auto.continues(false, 2));
        assert!(CommitPolicy::On.continues(false, 9));
        assert!(!CommitPolicy::Off.continues(true, 1));
        assert_eq!(
            CommitPolicy::from_u8(CommitPolicy::Off as u8),
            CommitPolicy::Off
        );
    }
}
