//! When does a service go to sleep? Pure: inputs and `now` in, a decision out.

use std::time::{Duration, Instant};

use crate::lifecycle::State;

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
    /// A multi-model server sleeps only once no model is loaded; until then the models'
    /// keep-alive decides.
    pub models_loaded: usize,
    pub multi_model: bool,
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
        Some(t) if i.in_flight == 0 && i.queued == 0 && !(i.multi_model && i.models_loaded > 0) => t,
        _ => return IdleDecision::Busy,
    };
    let idle_for = now.saturating_duration_since(idle_since);
    if idle_for >= i.timeout {
        IdleDecision::Sleep { idle_for }
    } else {
        IdleDecision::SleepsIn(i.timeout - idle_for)
    }
}

/// One model's keep-alive, as the idle monitor sees it.
#[derive(Debug, Clone, Copy)]
pub struct ModelInputs {
    pub loaded: bool,
    /// Being loaded or unloaded now.
    pub changing: bool,
    pub in_flight: u32,
    /// When its last lease dropped, or it was loaded.
    pub idle_since: Option<Instant>,
    pub keep_alive: Duration,
    /// Whether it may be unloaded at all (idle sleep on; for a single-model service also not
    /// pinned, since unloading it stops the service).
    pub allowed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelDecision {
    NotLoaded,
    /// Loaded, and stays so (unloading disabled, or in use, or changing).
    Stays,
    UnloadsIn(Duration),
    Unload {
        idle_for: Duration,
    },
}

pub fn decide_model(m: &ModelInputs, now: Instant) -> ModelDecision {
    if !m.loaded {
        return ModelDecision::NotLoaded;
    }
    let idle_since = match m.idle_since {
        Some(t) if m.allowed && m.in_flight == 0 && !m.changing => t,
        _ => return ModelDecision::Stays,
    };
    let idle_for = now.saturating_duration_since(idle_since);
    if idle_for >= m.keep_alive {
        ModelDecision::Unload { idle_for }
    } else {
        ModelDecision::UnloadsIn(m.keep_alive - idle_for)
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
            models_loaded: 0,
            multi_model: false,
        }
    }

    fn model(t0: Instant) -> ModelInputs {
        ModelInputs {
            loaded: true,
            changing: false,
            in_flight: 0,
            idle_since: Some(t0),
            keep_alive: Duration::from_secs(60),
            allowed: true,
        }
    }

    #[test]
    fn a_multi_model_server_sleeps_only_with_no_model_loaded() {
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(10_000);
        let i = IdleInputs { multi_model: true, models_loaded: 1, ..idle(t0) };
        assert_eq!(decide(&i, late), IdleDecision::Busy);
        let i = IdleInputs { models_loaded: 0, ..i };
        assert!(matches!(decide(&i, late), IdleDecision::Sleep { .. }));
        // A single-model service's loaded model does not hold it awake: its idle timeout rules.
        let i = IdleInputs { multi_model: false, models_loaded: 1, ..idle(t0) };
        assert!(matches!(decide(&i, late), IdleDecision::Sleep { .. }));
    }

    #[test]
    fn a_model_unloads_after_its_keep_alive_unless_used_or_pinned() {
        let t0 = Instant::now();
        let m = model(t0);
        assert_eq!(decide_model(&m, t0 + Duration::from_secs(59)), ModelDecision::UnloadsIn(Duration::from_secs(1)));
        assert_eq!(
            decide_model(&m, t0 + Duration::from_secs(60)),
            ModelDecision::Unload { idle_for: Duration::from_secs(60) }
        );
        let late = t0 + Duration::from_secs(10_000);
        assert_eq!(decide_model(&ModelInputs { loaded: false, ..m }, late), ModelDecision::NotLoaded);
        for stays in [
            ModelInputs { in_flight: 2, ..m },
            ModelInputs { changing: true, ..m },
            ModelInputs { allowed: false, ..m },
            ModelInputs { idle_since: None, ..m },
        ] {
            assert_eq!(decide_model(&stays, late), ModelDecision::Stays, "{stays:?}");
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
