//! The lifecycle of one service as a pure state machine: `(state, event, now) → effects`.
//!
//! The owner task (`owner.rs`) feeds it events and carries out the effects; keeping the rules
//! here, free of IO and clocks, lets every transition be tested exhaustively with fake time.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Stopped,
    Starting,
    Running,
    Stopping,
    Failed,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Stopped => "stopped",
            State::Starting => "starting",
            State::Running => "running",
            State::Stopping => "stopping",
            State::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Someone needs the service up (a request, an admin start, `desired = "on"`).
    Demand,
    StartSucceeded,
    StartFailed,
    /// The running service ended on its own: a crash.
    Exited,
    /// The running service was stopped cleanly by someone else (e.g. `docker stop`).
    StoppedOutside,
    /// An operator, the idle monitor or shutdown asks it to stop.
    StopRequested,
    StopFinished,
}

/// What the owner must do after a transition. Several may hold at once.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Effects {
    /// Begin starting the service.
    pub start: bool,
    /// Begin stopping it (abandoning a start in progress).
    pub stop: bool,
    /// Hand leases to every held request.
    pub release_waiters: bool,
    /// Answer every held request with the start error.
    pub fail_waiters: bool,
    /// Refuse this demand now: a failed start is backing off for this long.
    pub reject_for: Option<Duration>,
}

/// Backoff after consecutive failed starts: 250ms, 500ms, 1s … capped at 30s.
pub fn start_backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(7);
    Duration::from_millis(250u64 << exp).min(Duration::from_secs(30))
}

#[derive(Debug, Clone)]
pub struct Machine {
    state: State,
    /// Failed starts in a row; reset by a successful start.
    failures: u32,
    /// No new start before this instant (after a failed start).
    retry_at: Option<Instant>,
    /// A demand arrived while stopping: start again once stopped.
    restart_after_stop: bool,
}

impl Default for Machine {
    fn default() -> Self {
        Machine { state: State::Stopped, failures: 0, retry_at: None, restart_after_stop: false }
    }
}

impl Machine {
    /// A service that is up from the first instant and never started (a hosted API).
    pub fn always_running() -> Self {
        Machine { state: State::Running, ..Machine::default() }
    }

    pub fn state(&self) -> State {
        self.state
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn on(&mut self, event: Event, now: Instant) -> Effects {
        use State::*;
        let mut fx = Effects::default();
        match (self.state, event) {
            (Stopped, Event::Demand) => self.begin_start(&mut fx),
            (Failed, Event::Demand) => match self.retry_at {
                Some(at) if now < at => fx.reject_for = Some(at - now),
                _ => self.begin_start(&mut fx),
            },
            (Starting, Event::Demand) => {}
            (Running, Event::Demand) => fx.release_waiters = true,
            (Stopping, Event::Demand) => self.restart_after_stop = true,

            (Starting, Event::StartSucceeded) => {
                self.state = Running;
                self.failures = 0;
                self.retry_at = None;
                fx.release_waiters = true;
            }
            (Starting, Event::StartFailed) => {
                self.state = Failed;
                self.failures += 1;
                self.retry_at = Some(now + start_backoff(self.failures));
                fx.fail_waiters = true;
            }
            // A crash after a good start may be retried at once: the next request restarts it.
            (Running, Event::Exited) => {
                self.state = Failed;
                self.retry_at = None;
            }
            (Running, Event::StoppedOutside) => self.state = Stopped,

            (Running, Event::StopRequested) => {
                self.state = Stopping;
                fx.stop = true;
            }
            (Starting, Event::StopRequested) => {
                self.state = Stopping;
                fx.stop = true;
                fx.fail_waiters = true;
            }
            (Failed, Event::StopRequested) => self.state = Stopped,
            (Stopped | Stopping, Event::StopRequested) => self.restart_after_stop = false,

            (Stopping, Event::StopFinished) => {
                self.state = Stopped;
                if std::mem::take(&mut self.restart_after_stop) {
                    self.begin_start(&mut fx);
                }
            }
            // Results that arrive after the machine has moved on are stale; ignore them.
            (
                _,
                Event::StartSucceeded
                | Event::StartFailed
                | Event::Exited
                | Event::StoppedOutside
                | Event::StopFinished,
            ) => {}
        }
        fx
    }

    fn begin_start(&mut self, fx: &mut Effects) {
        self.state = State::Starting;
        self.restart_after_stop = false;
        fx.start = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Event::*;

    fn machine_in(state: State) -> Machine {
        let now = Instant::now();
        let mut m = Machine::default();
        match state {
            State::Stopped => {}
            State::Starting => {
                m.on(Demand, now);
            }
            State::Running => {
                m.on(Demand, now);
                m.on(StartSucceeded, now);
            }
            State::Stopping => {
                m.on(Demand, now);
                m.on(StartSucceeded, now);
                m.on(StopRequested, now);
            }
            State::Failed => {
                m.on(Demand, now);
                m.on(StartFailed, now);
            }
        }
        assert_eq!(m.state(), state);
        m
    }

    const ALL_STATES: [State; 5] = [State::Stopped, State::Starting, State::Running, State::Stopping, State::Failed];
    const ALL_EVENTS: [Event; 7] =
        [Demand, StartSucceeded, StartFailed, Exited, StoppedOutside, StopRequested, StopFinished];

    #[test]
    fn every_transition() {
        // (from, event) → (to, start, stop, release, fail). Failed+Demand is covered below (time).
        for from in ALL_STATES {
            for ev in ALL_EVENTS {
                let mut m = machine_in(from);
                let later = Instant::now() + Duration::from_secs(60);
                let fx = m.on(ev, later);
                let to = m.state();
                let expected = match (from, ev) {
                    (State::Stopped, Demand) | (State::Failed, Demand) => (State::Starting, true, false, false, false),
                    (State::Running, Demand) => (State::Running, false, false, true, false),
                    (State::Starting, StartSucceeded) => (State::Running, false, false, true, false),
                    (State::Starting, StartFailed) => (State::Failed, false, false, false, true),
                    (State::Running, Exited) => (State::Failed, false, false, false, false),
                    (State::Running, StoppedOutside) => (State::Stopped, false, false, false, false),
                    (State::Running, StopRequested) => (State::Stopping, false, true, false, false),
                    (State::Starting, StopRequested) => (State::Stopping, false, true, false, true),
                    (State::Failed, StopRequested) => (State::Stopped, false, false, false, false),
                    (State::Stopping, StopFinished) => (State::Stopped, false, false, false, false),
                    (s, _) => (s, false, false, false, false),
                };
                assert_eq!((to, fx.start, fx.stop, fx.release_waiters, fx.fail_waiters), expected, "{from:?} + {ev:?}");
                assert_eq!(fx.reject_for, None, "{from:?} + {ev:?}");
            }
        }
    }

    #[test]
    fn failed_start_backs_off_then_allows_a_retry() {
        let t0 = Instant::now();
        let mut m = Machine::default();
        m.on(Demand, t0);
        m.on(StartFailed, t0);
        let fx = m.on(Demand, t0 + Duration::from_millis(100));
        assert_eq!(fx.reject_for, Some(Duration::from_millis(150)));
        assert_eq!(m.state(), State::Failed);
        let fx = m.on(Demand, t0 + Duration::from_millis(250));
        assert!(fx.start);
        // A second failure doubles the wait.
        m.on(StartFailed, t0 + Duration::from_millis(300));
        let fx = m.on(Demand, t0 + Duration::from_millis(700));
        assert_eq!(fx.reject_for, Some(Duration::from_millis(100)));
        assert_eq!(m.failures(), 2);
    }

    #[test]
    fn success_resets_backoff_and_crash_restarts_at_once() {
        let t0 = Instant::now();
        let mut m = Machine::default();
        m.on(Demand, t0);
        m.on(StartFailed, t0);
        m.on(Demand, t0 + Duration::from_secs(1));
        m.on(StartSucceeded, t0 + Duration::from_secs(1));
        assert_eq!(m.failures(), 0);
        m.on(Exited, t0 + Duration::from_secs(2));
        assert_eq!(m.state(), State::Failed);
        assert!(m.on(Demand, t0 + Duration::from_secs(2)).start);
    }

    #[test]
    fn demand_while_stopping_restarts_after_the_stop() {
        let now = Instant::now();
        let mut m = machine_in(State::Stopping);
        assert_eq!(m.on(Demand, now), Effects::default());
        let fx = m.on(StopFinished, now);
        assert!(fx.start);
        assert_eq!(m.state(), State::Starting);
        // But a later stop request cancels that restart.
        let mut m = machine_in(State::Stopping);
        m.on(Demand, now);
        m.on(StopRequested, now);
        assert!(!m.on(StopFinished, now).start);
        assert_eq!(m.state(), State::Stopped);
    }

    #[test]
    fn backoff_is_capped() {
        assert_eq!(start_backoff(1), Duration::from_millis(250));
        assert_eq!(start_backoff(3), Duration::from_secs(1));
        assert_eq!(start_backoff(50), Duration::from_secs(30));
    }
}
