//! The pressure monitor: every `sample_interval` it measures memory per device (RAM, and VRAM
//! for GPU services) and the CPU, asks the pure `policy::pressure` for a level, and publishes
//! what the request path reads at no cost (one atomic per device): serve degraded or not. At
//! `stop_idle_at` it stops sleepable services with nothing in flight; while the CPU is above
//! `cpu_defer_at`, batch and deferred requests wait. `/admin/pressure` shows why.
//!
//! Which memory counts: where the capacity comes from. Detected RAM (`ram = "auto"`) is
//! measured where it is detected (warden's cgroup, or the host); a configured capacity is
//! the managed services' measured footprints against it.

mod sessions;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use policy::pressure::{decide, Hold, Level, Sample, Thresholds, Trend};
use serde::Serialize;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::account::alerts::Alerts;
use crate::admission::gate::Gate;
use crate::config::adapt::{HardwareTier, TierLimits};
use crate::config::{CapacitySetting, Config, Desired, Device};
use crate::resources::capacity;
use crate::resources::coordinator::Coordinator;
use crate::service::{Roster, ServiceHandle};
pub use sessions::Sessions;

/// Decisions kept for `/admin/pressure`.
const KEEP_DECISIONS: usize = 50;

/// One device's state, as the monitor last saw it.
#[derive(Debug, Clone, Serialize)]
pub struct DeviceView {
    pub device: Device,
    pub level: Level,
    pub degraded: bool,
    pub used_bytes: u64,
    pub capacity_bytes: u64,
    pub share: f64,
    pub trend: Option<Trend>,
    pub reasons: Vec<String>,
}

/// A switch the monitor made, with its reasons.
#[derive(Debug, Clone, Serialize)]
pub struct Switch {
    pub at_unix_ms: u64,
    pub device: Device,
    /// "degrade" or "upgrade".
    pub action: &'static str,
    pub level: Level,
    pub reasons: Vec<String>,
}

/// What the monitor owns between samples.
struct State {
    /// Per device (RAM, VRAM): the samples within the window, oldest first.
    samples: [VecDeque<Sample>; 2],
    /// Per device: the hysteresis.
    holds: [Hold; 2],
    /// The latest view of each device (None: not managed).
    views: [Option<DeviceView>; 2],
    /// CPU times at the previous sample, and the share in use between the two.
    cpu_times: Option<(u64, u64)>,
    cpu_share: Option<f64>,
    /// The latest switches, newest last.
    switches: VecDeque<Switch>,
    /// Per device: the last hour, one point per `HISTORY_EVERY` (Unix ms, used, capacity),
    /// for the dashboard's chart; decisions use only the window above.
    history: [VecDeque<(u64, u64, u64)>; 2],
}

/// The dashboard's memory chart covers this much, one point per `HISTORY_EVERY`.
const HISTORY_FOR_MS: u64 = 3_600_000;
const HISTORY_EVERY_MS: u64 = 10_000;

pub struct Monitor {
    /// Thresholds and pace: the config in force (a reload replaces it).
    config: arc_swap::ArcSwap<Config>,
    /// Per device (RAM = 0, VRAM = 1): serve degraded now. Read on every model request.
    degraded: [AtomicBool; 2],
    /// Per device: at `stop_idle_at` or past it (a ladder chains all the way down).
    critical: [AtomicBool; 2],
    /// The CPU is above `cpu_defer_at`: background classes wait.
    cpu_busy: AtomicBool,
    /// Requests sent to a smaller rung, degrade/upgrade switches, requests held back, for
    /// /metrics.
    pub degraded_requests: AtomicU64,
    pub switches: AtomicU64,
    /// Requests answered by a fallback model, and background requests that arrived while the
    /// CPU was busy (and so waited).
    pub fallbacks: AtomicU64,
    pub deferred: AtomicU64,
    /// Conversations pinned to the rung they got.
    pub sessions: Sessions,
    state: Mutex<State>,
    /// When the monitor started: sample times are milliseconds since.
    epoch: Instant,
}

fn slot(device: Device) -> usize {
    match device {
        Device::Cpu => 0,
        Device::Gpu => 1,
    }
}

impl Monitor {
    fn config(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// A reload's thresholds, from the next sample on.
    pub fn set_config(&self, config: Arc<Config>) {
        self.config.store(config);
    }

    pub fn new(config: Arc<Config>) -> Monitor {
        Monitor {
            config: arc_swap::ArcSwap::new(config),
            degraded: [AtomicBool::new(false), AtomicBool::new(false)],
            critical: [AtomicBool::new(false), AtomicBool::new(false)],
            cpu_busy: AtomicBool::new(false),
            degraded_requests: AtomicU64::new(0),
            switches: AtomicU64::new(0),
            fallbacks: AtomicU64::new(0),
            deferred: AtomicU64::new(0),
            sessions: Sessions::default(),
            state: Mutex::new(State {
                samples: [VecDeque::new(), VecDeque::new()],
                holds: [Hold::default(), Hold::default()],
                views: [None, None],
                cpu_times: None,
                cpu_share: None,
                switches: VecDeque::new(),
                history: [VecDeque::new(), VecDeque::new()],
            }),
            epoch: Instant::now(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn enabled(&self) -> bool {
        self.config().pressure.enabled
    }

    /// Serve smaller rungs on this device now.
    pub fn degraded(&self, device: Device) -> bool {
        self.degraded[slot(device)].load(Ordering::Relaxed)
    }

    pub fn critical(&self, device: Device) -> bool {
        self.critical[slot(device)].load(Ordering::Relaxed)
    }

    /// Each managed device's level and whether it serves degraded, as last seen.
    pub fn levels(&self) -> Vec<(Device, Level, bool)> {
        self.lock().views.iter().flatten().map(|v| (v.device, v.level, v.degraded)).collect()
    }

    /// The CPU is above `cpu_defer_at`: batch and deferred requests wait.
    pub fn cpu_busy(&self) -> bool {
        self.cpu_busy.load(Ordering::Relaxed)
    }

    /// Why the device is degraded now, for the client's `x-warden-degraded` header.
    pub fn reason(&self, device: Device) -> String {
        let st = self.lock();
        st.views[slot(device)]
            .as_ref()
            .and_then(|v| v.reasons.first().cloned())
            .unwrap_or_else(|| "memory pressure".into())
    }

    /// The hardware tier: configured, or from the bottleneck capacity (VRAM when any service
    /// runs on the GPU and VRAM is known, else RAM).
    pub fn tier(&self, coordinator: &Coordinator) -> HardwareTier {
        if let Some(t) = self.config().pressure.tier {
            return t;
        }
        let gpu = self.config().services.iter().any(|s| s.device == Device::Gpu);
        let bottleneck = if gpu { coordinator.capacity(Device::Gpu) } else { None }
            .or_else(|| coordinator.capacity(Device::Cpu))
            .map_or(0, |c| c.total);
        HardwareTier::of_capacity(bottleneck)
    }

    fn thresholds(&self, limits: TierLimits) -> Thresholds {
        let p = &self.config().pressure;
        Thresholds {
            degrade_at: limits.degrade_at,
            upgrade_below: limits.upgrade_below,
            stop_idle_at: limits.stop_idle_at,
            stabilization_ms: p.stabilization.as_millis() as u64,
            horizon_ms: p.horizon.as_millis() as u64,
            window_ms: p.window.as_millis() as u64,
        }
    }

    /// The monitor task: samples, decides and acts every `sample_interval` until shutdown.
    pub async fn run(
        self: Arc<Self>,
        coordinator: Arc<Coordinator>,
        roster: Roster,
        gate: Arc<Gate>,
        shutdown: CancellationToken,
    ) {
        let mut every = self.config().pressure.sample_interval;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if self.config().pressure.sample_interval != every {
                // A reload changed the pace.
                every = self.config().pressure.sample_interval;
                tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            }
            let services = roster.get();
            let tier = self.tier(&coordinator);
            let limits = self.config().pressure.limits(tier);
            for device in [Device::Cpu, Device::Gpu] {
                if let Some(sample) = self.sample(device, &coordinator, &services).await {
                    let lead = cold_start_lead(&self.config(), &services, device);
                    let trend = self.step(device, sample, limits, lead, &gate.alerts);
                    coordinator.set_trend(device, trend.map_or(0.0, |t| t.bytes_per_sec));
                }
            }
            if self.critical(Device::Cpu) || self.critical(Device::Gpu) {
                self.stop_idle(&services);
            }
            let busy = self.sample_cpu().is_some_and(|share| share > limits.cpu_defer_at);
            if self.cpu_busy.swap(busy, Ordering::Relaxed) != busy {
                info!(
                    "CPU {}: batch and deferred requests {}",
                    if busy { "busy" } else { "calm" },
                    if busy { "wait" } else { "run again" }
                );
                let share = self.lock().cpu_share;
                let data = json!({"cpu_busy": busy, "cpu_share": share, "defer_at": limits.cpu_defer_at});
                gate.alerts.events.emit("defer", data);
            }
            gate.set_background_held(busy);
        }
    }

    /// Memory of `device` now; None when it is not managed.
    async fn sample(&self, device: Device, coordinator: &Coordinator, services: &[ServiceHandle]) -> Option<Sample> {
        let cap = coordinator.capacity(device)?;
        let setting = match device {
            Device::Cpu => self.config().resources.ram,
            Device::Gpu => self.config().resources.vram,
        };
        let used = match (device, setting) {
            // Detected RAM is measured where it was detected.
            (Device::Cpu, CapacitySetting::Auto) => capacity::ram_used()?,
            // Otherwise the managed services' footprints, measured now, count against it.
            _ => {
                let mut sum = 0;
                for svc in services.iter().filter(|s| s.shared.config().device == device) {
                    let meter = svc.shared.live().meter.clone();
                    if let Some(m) = meter {
                        sum += m.memory_bytes().await.unwrap_or(0);
                    }
                }
                sum
            }
        };
        Some(Sample { at_ms: self.epoch.elapsed().as_millis() as u64, used, capacity: cap.total })
    }

    fn sample_cpu(&self) -> Option<f64> {
        let now = capacity::cpu_times()?;
        let mut st = self.lock();
        let share = st.cpu_times.and_then(|(busy0, total0)| {
            let (busy, total) = (now.0.saturating_sub(busy0), now.1.saturating_sub(total0));
            (total > 0).then(|| busy as f64 / total as f64)
        });
        st.cpu_times = Some(now);
        st.cpu_share = share;
        share
    }

    /// Adds a sample, decides, publishes; logs, alerts and records a switch.
    fn step(&self, device: Device, sample: Sample, limits: TierLimits, lead_ms: u64, alerts: &Alerts) -> Option<Trend> {
        let t = self.thresholds(limits);
        let i = slot(device);
        let mut st = self.lock();
        let samples = &mut st.samples[i];
        samples.push_back(sample);
        while samples.front().is_some_and(|s| sample.at_ms.saturating_sub(s.at_ms) > t.window_ms) {
            samples.pop_front();
        }
        let samples: Vec<Sample> = samples.iter().copied().collect();
        let now_unix = crate::base::clock::unix_ms();
        let history = &mut st.history[i];
        if history.back().is_none_or(|&(at, _, _)| now_unix.saturating_sub(at) >= HISTORY_EVERY_MS) {
            history.push_back((now_unix, sample.used, sample.capacity));
        }
        while history.front().is_some_and(|&(at, _, _)| now_unix.saturating_sub(at) > HISTORY_FOR_MS) {
            history.pop_front();
        }
        let mut hold = st.holds[i];
        let d = decide(&samples, &t, lead_ms, &mut hold, sample.at_ms);
        let trend = d.trend;
        st.holds[i] = hold;
        self.degraded[i].store(d.degraded, Ordering::Relaxed);
        self.critical[i].store(d.level == Level::Critical, Ordering::Relaxed);
        st.views[i] = Some(DeviceView {
            device,
            level: d.level,
            degraded: d.degraded,
            used_bytes: sample.used,
            capacity_bytes: sample.capacity,
            share: sample.share(),
            trend: d.trend,
            reasons: d.reasons.clone(),
        });
        if let Some(degrade) = d.switched {
            let action = if degrade { "degrade" } else { "upgrade" };
            let why = d.reasons.join("; ");
            let what = if degrade { "serving smaller models" } else { "back to the full models" };
            let name = match device {
                Device::Cpu => "RAM",
                Device::Gpu => "VRAM",
            };
            if degrade {
                warn!("Memory pressure on {name}: {what} ({why})");
            } else {
                info!("Memory pressure on {name} over: {what} ({why})");
            }
            alerts.raise(if degrade { "degraded" } else { "upgraded" }, name, format!("{name}: {what} ({why})"));
            alerts.events.emit(action, json!({"device": device, "level": d.level, "reasons": d.reasons}));
            self.switches.fetch_add(1, Ordering::Relaxed);
            st.switches.push_back(Switch {
                at_unix_ms: crate::base::clock::unix_ms(),
                device,
                action,
                level: d.level,
                reasons: d.reasons,
            });
            while st.switches.len() > KEEP_DECISIONS {
                st.switches.pop_front();
            }
        }
        trend
    }

    /// At `stop_idle_at`: stops every sleepable service with nothing in flight now (its owner
    /// re-checks under the lease lock, so a request that slips in wins).
    fn stop_idle(&self, services: &[ServiceHandle]) {
        for svc in services {
            let cfg = &svc.shared.config();
            let idle = {
                let live = svc.shared.live();
                live.state == policy::lifecycle::State::Running && live.in_flight == 0 && live.queued == 0
            };
            // Stopping what holds no memory here relieves nothing.
            if idle && svc.shared.idle_sleep() && cfg.desired == Desired::Off && cfg.on_this_machine() {
                info!("Memory critical: stopping idle service {}", cfg.name);
                svc.request_idle_stop(Duration::ZERO);
            }
        }
    }

    /// `/admin/pressure`: level, tier, thresholds, samples, slope, projected exhaustion, the
    /// latest switches with their reasons, and the last hour (`history`: `[unix_ms, used,
    /// capacity]` every 10 s).
    pub fn view(&self, coordinator: &Coordinator) -> Value {
        let tier = self.tier(coordinator);
        let limits = self.config().pressure.limits(tier);
        let st = self.lock();
        let devices: Vec<&DeviceView> = st.views.iter().flatten().collect();
        let level = devices.iter().map(|d| d.level).max().unwrap_or(Level::Normal);
        let samples: Vec<Value> = [Device::Cpu, Device::Gpu]
            .iter()
            .filter(|d| st.views[slot(**d)].is_some())
            .map(|d| json!({"device": d, "samples": st.samples[slot(*d)]}))
            .collect();
        let history: Vec<Value> = [Device::Cpu, Device::Gpu]
            .iter()
            .filter(|d| st.views[slot(**d)].is_some())
            .map(|d| json!({"device": d, "points": st.history[slot(*d)]}))
            .collect();
        json!({
            "enabled": self.enabled(),
            "level": level,
            "tier": tier,
            "tier_detected": self.config().pressure.tier.is_none(),
            "thresholds": limits,
            "sample_interval_ms": self.config().pressure.sample_interval.as_millis() as u64,
            "window_ms": self.config().pressure.window.as_millis() as u64,
            "stabilization_ms": self.config().pressure.stabilization.as_millis() as u64,
            "horizon_ms": self.config().pressure.horizon.as_millis() as u64,
            "devices": devices,
            "cpu": {"share": st.cpu_share, "busy": self.cpu_busy.load(Ordering::Relaxed), "defer_at": limits.cpu_defer_at},
            "samples": samples,
            "history": history,
            "decisions": st.switches,
            "degraded_requests": self.degraded_requests.load(Ordering::Relaxed),
        })
    }
}

/// How long relief takes to arrive on `device`: the slowest measured cold start of a smaller
/// rung served there (0 until one has started).
fn cold_start_lead(config: &Config, services: &[ServiceHandle], device: Device) -> u64 {
    config
        .ladders
        .values()
        .filter_map(|l| l.smaller.as_deref())
        .filter_map(|rung| config.models.get(rung))
        .filter_map(|r| services.get(r.service))
        .filter(|s| s.shared.config().device == device)
        .map(|s| s.shared.live().last_start_ms.unwrap_or(0))
        .max()
        .unwrap_or(0)
}
