//! Shared test helpers.
#![allow(dead_code, unreachable_pub)]

/// Reads an environment variable, printing the skip message when unset.
///
/// # Panics
///
/// When it is unset and `CI` is set: in CI a missing server fails the test
/// instead of skipping it.
pub fn env_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var_os("CI").is_some() => {
            panic!("{var} is not set, and CI is: tests that need this server must run in CI")
        }
        _ => {
            println!("skipped: {var} not set");
            None
        }
    }
}
