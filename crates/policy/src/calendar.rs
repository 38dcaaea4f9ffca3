//! UTC calendar parts from Unix time: months for budgets, minutes of the day for the off-peak
//! window. Pure: the caller reads the clock (warden's `base::clock`).

use time::OffsetDateTime;

/// (year, month 1–12, minute of the day) in UTC.
pub fn utc_parts(unix_secs: u64) -> (i32, u32, u32) {
    // Past year 9999 `time` refuses; budgets have no meaning there, so clamp.
    let t = OffsetDateTime::from_unix_timestamp(unix_secs.min(253_402_300_799) as i64)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    (t.year(), u8::from(t.month()) as u32, t.hour() as u32 * 60 + t.minute() as u32)
}

/// Months since year 0, so consecutive months are consecutive integers.
pub fn month_index(year: i32, month: u32) -> u32 {
    (year.max(0) as u32) * 12 + (month - 1)
}

/// "YYYY-MM".
pub fn month_label(index: u32) -> String {
    format!("{:04}-{:02}", index / 12, index % 12 + 1)
}

/// This month's index and the UTC minute of the day, at `unix_secs`.
pub fn month_and_minute(unix_secs: u64) -> (u32, u32) {
    let (y, m, minute) = utc_parts(unix_secs);
    (month_index(y, m), minute)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(utc_parts(0), (1970, 1, 0));
        // 2026-11-22 15:13 UTC
        assert_eq!(utc_parts(1_795_360_380), (2026, 11, 15 * 60 + 13));
        // 2024-02-29 23:59 UTC, then midnight of 2024-03-01
        assert_eq!(utc_parts(1_709_251_140), (2024, 2, 23 * 60 + 59));
        assert_eq!(utc_parts(1_709_251_200), (2024, 3, 0));
        // 2026-12-31 23:59:59 → 2027-01-01
        assert_eq!(utc_parts(1_798_761_599).1, 12);
        assert_eq!(utc_parts(1_798_761_600), (2027, 1, 0));
        assert_eq!(utc_parts(u64::MAX).0, 9999);
    }

    #[test]
    fn months_count_up_across_years() {
        assert_eq!(month_index(2026, 12) + 1, month_index(2027, 1));
        assert_eq!(month_label(month_index(2026, 11)), "2026-11");
        assert_eq!(month_and_minute(1_795_360_380), (month_index(2026, 11), 15 * 60 + 13));
    }
}
