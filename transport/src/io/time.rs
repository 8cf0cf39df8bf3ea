//! Times as the listener and the cover site write them: Unix seconds and HTTP
//! dates (the `httpdate` crate).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The last second `httpdate` can write (9999-12-31 23:59:59 UTC); later
/// times are written as it.
const LAST_HTTP_DATE: u64 = 253_402_300_799;

/// Seconds since the Unix epoch (0 for a clock before 1970).
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An HTTP date (RFC 9110 §5.6.7 IMF-fixdate), as in `Date` and
/// `Last-Modified`: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub(crate) fn http_date(unix: u64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(unix.min(LAST_HTTP_DATE));
    httpdate::fmt_http_date(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_match_known_values() {
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        // A leap day.
        assert_eq!(http_date(1_709_164_800), "Thu, 29 Feb 2024 00:00:00 GMT");
        assert_eq!(http_date(u64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
    }
}
