//! On/off switches read from the environment once, at model load (`BRAID_CUDA_GRAPHS`,
//! `BRAID_PACKED_BATCHES`): on unless set to `0`, `off` or `false`; anything else is a clear error.

use braid_runtime::RuntimeError;

use crate::error::Result;

/// Whether the switch `name` is on: unset, `1`, `on` or `true` is on; `0`, `off` or `false` is off;
/// any other value is an `InvalidConfig` error naming `allowed`.
pub(crate) fn on_unless_off(name: &'static str, allowed: &'static str) -> Result<bool> {
    let invalid = |value: String| RuntimeError::InvalidConfig {
        name,
        value,
        allowed,
    };
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(true),
        Ok(v) if matches!(v.trim(), "1" | "on" | "true") => Ok(true),
        Ok(v) if matches!(v.trim(), "0" | "off" | "false") => Ok(false),
        Ok(v) => Err(invalid(v).into()),
        Err(std::env::VarError::NotUnicode(v)) => Err(invalid(v.to_string_lossy().into()).into()),
    }
}
