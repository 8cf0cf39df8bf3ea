//! Calendar arithmetic for HTTP dates and certificate validity, so no date
//! crate is needed.

use std::time::{SystemTime, UNIX_EPOCH};

const SECS_PER_DAY: u64 = 86_400;

const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

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
    let (y, m, d) = civil_from_unix(unix);
    let secs = unix % SECS_PER_DAY;
    let weekday = WEEKDAYS[usize::try_from((unix / SECS_PER_DAY) % 7).unwrap_or(0)];
    let month = MONTHS[usize::from(m.saturating_sub(1)).min(11)];
    format!(
        "{weekday}, {d:02} {month} {y:04} {:02}:{:02}:{:02} GMT",
        secs / 3600,
        (secs / 60) % 60,
        secs % 60
    )
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
    }
}
