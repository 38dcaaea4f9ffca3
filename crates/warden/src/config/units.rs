//! Human units in config: durations ("250ms", "5m", "1h30m") and sizes ("32MiB", "8.3GiB").
//!
//! Hand-written rather than humantime/bytesize because the accepted grammar is part of the
//! config contract: "5 minutes" must be rejected with a clear message, not silently accepted.

use std::time::Duration;

/// Parses "250ms", "10s", "5m", "2h", "1d", or compounds such as "1h30m". A bare "0" is zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(bad_duration(text));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(|| bad_duration(text))?;
        let value: f64 = rest[..num_len].parse().map_err(|_| bad_duration(text))?;
        rest = &rest[num_len..];
        let unit_len = rest.find(|c: char| !c.is_ascii_alphabetic()).unwrap_or(rest.len());
        let seconds_per_unit = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            _ => return Err(bad_duration(text)),
        };
        rest = &rest[unit_len..];
        total += value * seconds_per_unit;
    }
    if !total.is_finite() || total > 1e12 {
        return Err(bad_duration(text));
    }
    Ok(Duration::from_secs_f64(total))
}

fn bad_duration(text: &str) -> String {
    format!("invalid duration {text:?} (expected e.g. \"250ms\", \"30s\", \"5m\", \"2h\")")
}

/// Parses "512", "64KiB", "32MiB", "8.3GiB", "1TiB", and the decimal "KB"/"MB"/"GB"/"TB".
pub fn parse_size(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let num_len = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let value: f64 = s[..num_len].parse().map_err(|_| bad_size(text))?;
    let multiplier: f64 = match s[num_len..].trim() {
        "" | "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024f64.powi(2),
        "GiB" => 1024f64.powi(3),
        "TiB" => 1024f64.powi(4),
        "KB" | "kB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => return Err(bad_size(text)),
    };
    let bytes = value * multiplier;
    if !bytes.is_finite() || bytes > u64::MAX as f64 {
        return Err(bad_size(text));
    }
    Ok(bytes.round() as u64)
}

fn bad_size(text: &str) -> String {
    format!("invalid size {text:?} (expected e.g. \"512MiB\", \"8GiB\")")
}

/// A duration as fractional minutes, the unit the admin API reports in.
pub fn minutes(d: Duration) -> f64 {
    d.as_secs_f64() / 60.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        for bad in ["5 minutes", "", "m", "5", "5x", "-1s", "1e3s"] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("invalid duration"), "{bad}: {err}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("32MiB").unwrap(), 32 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert_eq!(parse_size("2GB").unwrap(), 2_000_000_000);
        assert_eq!(parse_size("8.5GiB").unwrap(), (8.5 * (1u64 << 30) as f64) as u64);
        for bad in ["", "MiB", "12 parsecs", "1.2.3GiB"] {
            assert!(parse_size(bad).unwrap_err().contains("invalid size"), "{bad}");
        }
    }
}
