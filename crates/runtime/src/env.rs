//! Reading braid's `BRAID_*` environment variables.
//!
//! Promise: a variable is either unset (`Ok(None)`), a UTF-8 string (`Ok(Some(value))`), or an
//! error naming it. A value that is not valid UTF-8 is never silently treated as unset, which
//! would make braid run with a default the user did not ask for.

use std::env::VarError;

use crate::error::{Result, RuntimeError};

/// The value of the environment variable `name`: `None` when it is unset, an
/// [`RuntimeError::InvalidConfig`] naming it when its value is not valid UTF-8.
pub(crate) fn var(name: &'static str) -> Result<Option<String>> {
    match std::env::var(name) {
        Ok(value) => Ok(Some(value)),
        Err(VarError::NotPresent) => Ok(None),
        Err(VarError::NotUnicode(raw)) => Err(RuntimeError::InvalidConfig {
            name,
            value: raw.to_string_lossy().into_owned(),
            allowed: "the value is not valid UTF-8; set it to one of the documented values \
                      (README, Configuration) or unset it",
        }),
    }
}
