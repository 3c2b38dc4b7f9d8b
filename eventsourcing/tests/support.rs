//! Shared test helpers.
#![allow(dead_code, unreachable_pub)]

/// Reads an environment variable, printing the skip message when unset.
pub fn env_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ => {
            println!("skipped: {var} not set");
            None
        }
    }
}
