//! The five priority classes a request can ask for with `x-warden-priority`.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Immediate,
    Fast,
    Normal,
    Batch,
    /// Runs only inside the off-peak window.
    Deferred,
}

pub const HEADER: &str = "x-warden-priority";

impl Class {
    pub const ALL: [Class; 5] = [Class::Immediate, Class::Fast, Class::Normal, Class::Batch, Class::Deferred];

    pub fn parse(text: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.as_str().eq_ignore_ascii_case(text.trim()))
    }

    /// "immediate, fast, normal, batch, deferred": for messages that list the choices.
    pub fn names() -> String {
        Class::ALL.map(Class::as_str).join(", ")
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Class::Immediate => "immediate",
            Class::Fast => "fast",
            Class::Normal => "normal",
            Class::Batch => "batch",
            Class::Deferred => "deferred",
        }
    }

    /// The class's share of the score (0–30).
    pub fn urgency(self) -> u32 {
        match self {
            Class::Immediate => 30,
            Class::Fast => 22,
            Class::Normal => 15,
            Class::Batch => 7,
            Class::Deferred => 0,
        }
    }
}

/// A daily window in UTC, e.g. "22:00-06:00" (it may wrap midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Minutes after midnight.
    pub start: u32,
    pub end: u32,
}

impl Window {
    pub fn parse(text: &str) -> Result<Window, String> {
        let bad = || format!("invalid window {text:?} (expected \"HH:MM-HH:MM\", UTC)");
        let (a, b) = text.split_once('-').ok_or_else(bad)?;
        let minute = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let (start, end) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
        if start == end {
            return Err(format!("window {text:?} is empty"));
        }
        Ok(Window { start, end })
    }

    pub fn contains(self, minute_of_day: u32) -> bool {
        if self.start < self.end {
            (self.start..self.end).contains(&minute_of_day)
        } else {
            minute_of_day >= self.start || minute_of_day < self.end
        }
    }

    /// Minutes from `minute_of_day` until the window opens (0 inside it).
    pub fn minutes_until_open(self, minute_of_day: u32) -> u32 {
        if self.contains(minute_of_day) {
            0
        } else {
            (self.start + 1440 - minute_of_day) % 1440
        }
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (a, b) = (self.start, self.end);
        write!(f, "{:02}:{:02}-{:02}:{:02}", a / 60, a % 60, b / 60, b % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_parse_and_rank() {
        assert_eq!(Class::parse("Batch"), Some(Class::Batch));
        assert_eq!(Class::parse("urgent"), None);
        let urgencies: Vec<u32> = Class::ALL.iter().map(|c| c.urgency()).collect();
        assert!(urgencies.windows(2).all(|w| w[0] > w[1]), "{urgencies:?}");
        assert_eq!(urgencies[0], 30);
    }

    #[test]
    fn windows_print_as_parsed() {
        assert_eq!(Window::parse("22:00-6:05").unwrap().to_string(), "22:00-06:05");
    }

    #[test]
    fn windows_wrap_midnight() {
        let w = Window::parse("22:00-06:00").unwrap();
        assert!(w.contains(23 * 60) && w.contains(0) && w.contains(5 * 60 + 59));
        assert!(!w.contains(6 * 60) && !w.contains(12 * 60) && !w.contains(21 * 60 + 59));
        assert_eq!(w.minutes_until_open(21 * 60), 60);
        assert_eq!(w.minutes_until_open(6 * 60), 16 * 60);
        assert_eq!(w.minutes_until_open(23 * 60), 0);
        let day = Window::parse("09:30-17:00").unwrap();
        assert!(day.contains(9 * 60 + 30) && !day.contains(17 * 60));
        assert_eq!(day.minutes_until_open(20 * 60), 13 * 60 + 30);
        assert!(Window::parse("25:00-01:00").is_err());
        assert!(Window::parse("10:00").is_err());
        assert!(Window::parse("10:00-10:00").is_err());
    }
}
