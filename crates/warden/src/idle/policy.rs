//! When does a service go to sleep? Pure: inputs and `now` in, a decision out.

use std::time::{Duration, Instant};

use crate::service::lifecycle::State;

#[derive(Debug, Clone, Copy)]
pub struct IdleInputs {
    pub state: State,
    /// Leases held (requests in flight, streams included).
    pub in_flight: u32,
    /// Requests held while the service starts.
    pub queued: usize,
    /// When the last lease dropped (or the service became ready, if none was ever held).
    pub idle_since: Option<Instant>,
    /// `[idle].enabled`, as now set.
    pub global_enabled: bool,
    /// The service's `idle_sleep`, as now set.
    pub service_enabled: bool,
    /// `desired = "on"` pins it.
    pub pinned: bool,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleDecision {
    /// Not a candidate at all (disabled, pinned, not running).
    Never,
    /// Busy now; the idle clock has not started.
    Busy,
    /// Idle, sleeping after this much more time.
    SleepsIn(Duration),
    /// Idle past its timeout: stop it.
    Sleep { idle_for: Duration },
}

/// Whether a service may sleep at all, apart from its current state and load.
pub fn sleep_allowed(i: &IdleInputs) -> bool {
    i.global_enabled && i.service_enabled && !i.pinned
}

pub fn decide(i: &IdleInputs, now: Instant) -> IdleDecision {
    if !sleep_allowed(i) || i.state != State::Running {
        return IdleDecision::Never;
    }
    let idle_since = match i.idle_since {
        Some(t) if i.in_flight == 0 && i.queued == 0 => t,
        _ => return IdleDecision::Busy,
    };
    let idle_for = now.saturating_duration_since(idle_since);
    if idle_for >= i.timeout {
        IdleDecision::Sleep { idle_for }
    } else {
        IdleDecision::SleepsIn(i.timeout - idle_for)
    }
}

/// "5 minutes", "1 minute", "42 seconds": for the log line operators grep for.
pub fn human_idle(d: Duration) -> String {
    let secs = d.as_secs();
    let (n, unit) = if secs < 60 { (secs, "second") } else { ((secs + 30) / 60, "minute") };
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idle(t0: Instant) -> IdleInputs {
        IdleInputs {
            state: State::Running,
            in_flight: 0,
            queued: 0,
            idle_since: Some(t0),
            global_enabled: true,
            service_enabled: true,
            pinned: false,
            timeout: Duration::from_secs(300),
        }
    }

    #[test]
    fn sleeps_exactly_at_the_timeout() {
        let t0 = Instant::now();
        let i = idle(t0);
        assert_eq!(decide(&i, t0), IdleDecision::SleepsIn(Duration::from_secs(300)));
        assert_eq!(decide(&i, t0 + Duration::from_secs(299)), IdleDecision::SleepsIn(Duration::from_secs(1)));
        assert_eq!(
            decide(&i, t0 + Duration::from_secs(300)),
            IdleDecision::Sleep { idle_for: Duration::from_secs(300) }
        );
    }

    #[test]
    fn a_held_lease_or_queued_request_keeps_it_awake() {
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(10_000);
        assert_eq!(decide(&IdleInputs { in_flight: 1, ..idle(t0) }, late), IdleDecision::Busy);
        assert_eq!(decide(&IdleInputs { queued: 3, ..idle(t0) }, late), IdleDecision::Busy);
        assert_eq!(decide(&IdleInputs { idle_since: None, ..idle(t0) }, late), IdleDecision::Busy);
    }

    #[test]
    fn disabled_pinned_or_not_running_never_sleeps() {
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(10_000);
        for i in [
            IdleInputs { global_enabled: false, ..idle(t0) },
            IdleInputs { service_enabled: false, ..idle(t0) },
            IdleInputs { pinned: true, ..idle(t0) },
        ] {
            assert!(!sleep_allowed(&i));
            assert_eq!(decide(&i, late), IdleDecision::Never);
        }
        for state in [State::Stopped, State::Starting, State::Stopping, State::Failed] {
            assert_eq!(decide(&IdleInputs { state, ..idle(t0) }, late), IdleDecision::Never);
        }
    }

    #[test]
    fn human_durations() {
        assert_eq!(human_idle(Duration::from_secs(300)), "5 minutes");
        assert_eq!(human_idle(Duration::from_secs(61)), "1 minute");
        assert_eq!(human_idle(Duration::from_millis(1500)), "1 second");
        assert_eq!(human_idle(Duration::from_secs(0)), "0 seconds");
    }
}
