//! UTC calendar parts from Unix time (months for budgets, minutes for the off-peak window).

/// (year, month 1–12, minute of the day) in UTC.
pub fn utc_parts(unix_secs: u64) -> (i32, u32, u32) {
    let days = (unix_secs / 86_400) as i64;
    let minute = ((unix_secs % 86_400) / 60) as u32;
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = (yoe + era * 400) as i32 + i32::from(month <= 2);
    (year, month, minute)
}

pub fn unix_now() -> std::time::Duration {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default()
}

/// This month's index (`budget::month_index`) and the UTC minute of the day.
pub fn month_and_minute() -> (u32, u32) {
    let (y, m, minute) = utc_parts(unix_now().as_secs());
    (super::budget::month_index(y, m), minute)
}

#[cfg(test)]
mod tests {
    #[test]
    fn known_dates() {
        assert_eq!(super::utc_parts(0), (1970, 1, 0));
        // 2026-11-22 15:13 UTC
        assert_eq!(super::utc_parts(1_795_360_380), (2026, 11, 15 * 60 + 13));
        // 2024-02-29 23:59 UTC, then midnight of 2024-03-01
        assert_eq!(super::utc_parts(1_709_251_140), (2024, 2, 23 * 60 + 59));
        assert_eq!(super::utc_parts(1_709_251_200), (2024, 3, 0));
        // 2026-12-31 23:59:59 → 2027-01-01
        assert_eq!(super::utc_parts(1_798_761_599).1, 12);
        assert_eq!(super::utc_parts(1_798_761_600), (2027, 1, 0));
    }
}
