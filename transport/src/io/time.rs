//! Times as the listener and the cover site write them: Unix seconds, HTTP
//! dates (the `httpdate` crate), and the calendar date of a certificate's
//! validity.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

const SECS_PER_DAY: u64 = 86_400;

/// The last second `httpdate` can write (9999-12-31 23:59:59 UTC); later
/// times are written as it.
const LAST_HTTP_DATE: u64 = 253_402_300_799;

/// Seconds since the Unix epoch (0 for a clock before 1970).
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The UTC calendar date (year, month 1–12, day 1–31) of `unix` seconds
/// (Howard Hinnant's `civil_from_days`).
pub(crate) fn civil_from_unix(unix: u64) -> (i32, u8, u8) {
    let days = i64::try_from(unix / SECS_PER_DAY).unwrap_or(0);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        i32::try_from(year).unwrap_or(i32::MAX),
        u8::try_from(month).unwrap_or(1),
        u8::try_from(day).unwrap_or(1),
    )
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
        assert_eq!(civil_from_unix(1_709_164_800), (2024, 2, 29));
        assert_eq!(http_date(u64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
    }
}
