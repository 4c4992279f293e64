//! An environment variable whose value is not UTF-8 is an error naming it, not "unset".
//!
//! Its own test binary (so its own process): environment variables are process-global, and one
//! test sets them, so no other test may read them concurrently.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use braid_runtime::alloc::MEMORY_LIMIT_ENV;
use braid_runtime::stream::{COMMIT_POLICY_ENV, EXHAUSTION_POLICY_ENV};
use braid_runtime::{AllocatorConfig, CommitPolicy, ExhaustionPolicy, MemoryLimit, RuntimeError};

fn assert_names(result: Result<impl std::fmt::Debug, RuntimeError>, name: &str) {
    match result {
        Err(RuntimeError::InvalidConfig {
            name: got, allowed, ..
        }) => {
            assert_eq!(got, name);
            assert!(allowed.contains("UTF-8"), "{allowed}");
        }
        other => panic!("{name} set to b\"\\xff\": expected InvalidConfig, got {other:?}"),
    }
}

// One test only: it mutates the process environment.
#[test]
fn non_utf8_values_are_errors_naming_the_variable() {
    let not_utf8 = OsStr::from_bytes(b"\xff");

    std::env::set_var(MEMORY_LIMIT_ENV, not_utf8);
    assert_names(MemoryLimit::from_env(), MEMORY_LIMIT_ENV);
    assert_names(AllocatorConfig::from_env(), MEMORY_LIMIT_ENV);
    let message = MemoryLimit::from_env().unwrap_err().to_string();
    assert!(message.contains("BRAID_MEMORY_LIMIT"), "{message}");

    std::env::set_var(COMMIT_POLICY_ENV, not_utf8);
    assert_names(CommitPolicy::from_env(), COMMIT_POLICY_ENV);

    std::env::set_var(EXHAUSTION_POLICY_ENV, not_utf8);
    assert_names(ExhaustionPolicy::from_env(), EXHAUSTION_POLICY_ENV);
    std::env::remove_var(EXHAUSTION_POLICY_ENV);

    // Valid and unset values still work.
    std::env::set_var(MEMORY_LIMIT_ENV, "80%");
    assert_eq!(MemoryLimit::from_env().unwrap(), MemoryLimit::Fraction(0.8));
    std::env::remove_var(MEMORY_LIMIT_ENV);
    assert_eq!(MemoryLimit::from_env().unwrap(), MemoryLimit::None);
    std::env::set_var(COMMIT_POLICY_ENV, "off");
    assert_eq!(CommitPolicy::from_env().unwrap(), CommitPolicy::Off);
    std::env::remove_var(COMMIT_POLICY_ENV);
    assert_eq!(CommitPolicy::from_env().unwrap(), CommitPolicy::Auto);
}
