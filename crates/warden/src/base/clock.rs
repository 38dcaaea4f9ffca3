//! Reads of the wall clock, in one place. Decisions never call these: they take the time as
//! an argument (see the `warden-policy` crate).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Time since the Unix epoch (zero if the clock is set before it).
pub fn unix_now() -> Duration {
    since_epoch(SystemTime::now())
}

pub fn unix_ms() -> u64 {
    unix_now().as_millis() as u64
}

pub fn unix_secs() -> u64 {
    unix_now().as_secs()
}

/// `t` as time since the Unix epoch.
pub fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

/// This month's index (`policy::calendar::month_index`) and the UTC minute of the day, now.
pub fn month_and_minute() -> (u32, u32) {
    policy::calendar::month_and_minute(unix_secs())
}
