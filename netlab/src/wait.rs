//! [`poll`]: waiting for a condition, with what was last seen.

use std::time::{Duration, Instant};

use crate::{Error, Result};

/// Calls `check` every `interval` until it gives `Some` or an error, or
/// fails after `limit` with `what` and the last note `check` wrote.
pub fn poll<T>(
    limit: Duration,
    interval: Duration,
    what: &str,
    mut check: impl FnMut(&mut String) -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        if let Some(v) = check(&mut last)? {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout {
                what: what.to_string(),
                limit,
                detail: if last.is_empty() {
                    String::new()
                } else {
                    format!(" (last: {last})")
                },
            });
        }
        std::thread::sleep(interval);
    }
}
