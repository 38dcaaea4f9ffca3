//! The coordinator: the one place that decides, from measured memory, whether a service may
//! start and what must be offloaded first; it keeps the saved state of what it offloaded and
//! reloads it once it fits again.
//!
//! Room-making decisions are taken one at a time (two starts never count the same free bytes).
//! Victims are stopped through their owners with a guarded stop that never cuts a request: a
//! busy victim is drained first (bounded by the newcomer's start deadline).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use super::capacity;
use super::estimate::estimate;
use crate::base::events::Events;
use crate::config::{Config, Desired, Device, ResourcesConfig};
use crate::driver::StartFailure;
use crate::service::room::{RoomRequest, RoomRx};
use crate::service::{Roster, ServiceHandle, StopReason};
use policy::lifecycle::State;
use policy::planner::{plan, Capacity, Newcomer, Plan, Resident};

/// An offloaded service waiting to be reloaded.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Saved {
    pub service: String,
    pub was_running: bool,
    /// Unix seconds.
    pub saved_at: u64,
    pub displaced_by: String,
}

pub struct Coordinator {
    /// `[resources]`: threshold, reserve, minimum residency.
    cfg: ResourcesConfig,
    /// RAM and VRAM capacity for managed services, resolved at start (None: not managed).
    ram: Option<u64>,
    vram: Option<u64>,
    /// Every service, in config order: read to plan, stopped through to offload.
    services: Roster,
    /// Offloads and reloads go to `/admin/events`.
    events: Events,
    /// Per device (RAM, VRAM): how fast use is growing, bytes a second, as the pressure monitor
    /// last saw it (0 when it is off or use is not growing).
    growth: Mutex<[f64; 2]>,
    /// Last measured footprint per service; remembered across restarts.
    measured: Mutex<Vec<Option<u64>>>,
    /// Per service: what room-making knows of its current run.
    runs: Mutex<Vec<Run>>,
    /// Offloaded services to bring back when they fit (also in `state_dir/saved-state.json`,
    /// so a restart still reloads them).
    saved: Mutex<Vec<Saved>>,
    /// Number of saved entries, for `reload/wait`.
    pending: watch::Sender<usize>,
    /// Held while a room-making (or reload) decision is taken and carried out: two decisions
    /// never count the same free bytes.
    deciding: tokio::sync::Mutex<()>,
    /// Where footprints and the saved state are persisted.
    state_dir: PathBuf,
    /// Services offloaded since warden started, for /metrics.
    offloads: std::sync::atomic::AtomicU64,
}

/// Room-making's view of one service's current run.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    /// Its start was granted room. A starting service holds memory only once granted; one
    /// still waiting for room holds none (else two waiting starts would each count the other
    /// and wait forever).
    granted: bool,
    /// The run is a swap: it displaced others to start, or the reloader brought it back. Only
    /// such a run is protected by the minimum residency (what stops back-and-forth thrash),
    /// so a first swap never waits for it.
    swapped: bool,
    /// The reloader is starting it: the start that follows is a swap.
    reloading: bool,
}

/// How often the reloader looks for room, and how often running services are measured.
const RELOAD_EVERY: Duration = Duration::from_millis(250);
const MEASURE_EVERY: Duration = Duration::from_secs(5);

fn mib(b: u64) -> String {
    format!("{:.0} MiB", b as f64 / (1u64 << 20) as f64)
}

impl Coordinator {
    pub fn new(config: &Config, services: Roster, events: Events) -> Self {
        let state_dir = config.server.state_dir.clone();
        let names: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        // Footprints measured by an earlier run, by service name.
        let remembered: std::collections::HashMap<String, u64> =
            std::fs::read_to_string(state_dir.join("footprints.json"))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok())
                .unwrap_or_default();
        let measured = names.iter().map(|n| remembered.get(*n).copied()).collect();
        let runs = Mutex::new(vec![Run::default(); names.len()]);
        let saved: Vec<Saved> = std::fs::read_to_string(state_dir.join("saved-state.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Vec<Saved>>(&t).ok())
            .unwrap_or_default()
            .into_iter()
            .filter(|s| names.contains(&s.service.as_str()))
            .collect();
        let (pending, _) = watch::channel(saved.len());
        Coordinator {
            cfg: config.resources,
            ram: capacity::resolve(config.resources.ram, capacity::detect_ram),
            vram: capacity::resolve(config.resources.vram, capacity::detect_vram),
            services,
            events,
            growth: Mutex::new([0.0; 2]),
            measured: Mutex::new(measured),
            runs,
            saved: Mutex::new(saved),
            pending,
            deciding: tokio::sync::Mutex::new(()),
            state_dir,
            offloads: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn services(&self) -> Arc<Vec<ServiceHandle>> {
        self.services.get()
    }

    /// Before a reload puts `places` services in force: room for the new places, and what was
    /// known of each service in `fresh` (changed: a new command may need other memory) is
    /// forgotten.
    pub fn reconfigure(&self, places: usize, fresh: &[usize]) {
        let mut measured = self.measured.lock().unwrap_or_else(|p| p.into_inner());
        let mut runs = self.runs.lock().unwrap_or_else(|p| p.into_inner());
        let (m, r) = (places.max(measured.len()), places.max(runs.len()));
        measured.resize(m, None);
        runs.resize(r, Run::default());
        for &i in fresh {
            measured[i] = None;
            runs[i] = Run::default();
        }
    }

    pub fn capacity(&self, device: Device) -> Option<Capacity> {
        let total = match device {
            Device::Cpu => self.ram,
            Device::Gpu => self.vram,
        }?;
        Some(Capacity::new(total, self.cfg.threshold, self.cfg.reserve))
    }

    fn measured(&self, i: usize) -> Option<u64> {
        self.measured.lock().unwrap_or_else(|p| p.into_inner())[i]
    }

    /// What service `i` needs: its last measured footprint, else its estimate, else 0.
    pub fn need(&self, i: usize) -> u64 {
        let cfg = &self.services()[i].shared.config();
        self.measured(i).or_else(|| estimate(cfg)).unwrap_or(0)
    }

    /// Measures service `i` now, if it runs, and remembers the figure.
    pub async fn measure(&self, i: usize) -> Option<u64> {
        let meter = self.services()[i].shared.live().meter.clone()?;
        let bytes = meter.memory_bytes().await?;
        let changed = {
            let mut m = self.measured.lock().unwrap_or_else(|p| p.into_inner());
            let old = m[i].replace(bytes);
            old.is_none_or(|o| o.abs_diff(bytes) > o / 10)
        };
        if changed {
            self.persist_footprints();
        }
        Some(bytes)
    }

    /// The services holding memory on `device` (running, starting or stopping), measured now.
    async fn residents(&self, device: Device, except: usize) -> Vec<Resident> {
        let now = Instant::now();
        let mut out = Vec::new();
        for (i, svc) in self.services().iter().enumerate() {
            let cfg = &svc.shared.config();
            if i == except || cfg.device != device || !cfg.on_this_machine() {
                continue;
            }
            let (state, in_flight, since, idle_since) = {
                let live = svc.shared.live();
                (live.state, live.in_flight, live.running_since, live.idle_since)
            };
            let Run { granted, swapped, .. } = self.runs.lock().unwrap_or_else(|p| p.into_inner())[i];
            match state {
                State::Running | State::Stopping => {}
                State::Starting if granted => {}
                _ => continue,
            }
            let bytes = match state {
                State::Running => self.measure(i).await,
                _ => None,
            }
            .unwrap_or_else(|| self.need(i));
            out.push(Resident {
                id: i,
                bytes,
                priority: cfg.priority,
                last_used: if in_flight > 0 { Some(now) } else { idle_since },
                may_sleep: state != State::Stopping && svc.shared.idle_sleep() && cfg.desired == Desired::Off,
                in_flight,
                running_since: since.unwrap_or(now),
                swapped,
                group: cfg.group.clone(),
                starting: state == State::Starting,
            });
        }
        out
    }

    /// The plan for starting service `i` now; None when its device is not managed.
    pub async fn plan_for(&self, i: usize) -> Option<(Plan, Capacity, Vec<Resident>)> {
        let cfg = &self.services()[i].shared.config();
        if !cfg.on_this_machine() {
            return None;
        }
        let cap = self.capacity(cfg.device)?;
        let residents = self.residents(cfg.device, i).await;
        let newcomer =
            Newcomer { id: i, need: self.need(i), growth: self.growth_while_starting(i), group: cfg.group.clone() };
        let p = plan(cap, &residents, &newcomer, self.cfg.min_residency, Instant::now());
        Some((p, cap, residents))
    }

    fn run_of(&self, i: usize, change: impl FnOnce(&mut Run)) {
        change(&mut self.runs.lock().unwrap_or_else(|p| p.into_inner())[i]);
    }

    /// The pressure monitor's trend for `device`, bytes a second.
    pub fn set_trend(&self, device: Device, bytes_per_sec: f64) {
        let slot = usize::from(device == Device::Gpu);
        self.growth.lock().unwrap_or_else(|p| p.into_inner())[slot] = bytes_per_sec.max(0.0);
    }

    /// What the others are projected to add while service `i` starts: the trend of its device
    /// times its last measured cold start (5 s until it has one).
    fn growth_while_starting(&self, i: usize) -> u64 {
        let svc = &self.services()[i];
        let slot = usize::from(svc.shared.config().device == Device::Gpu);
        let per_sec = self.growth.lock().unwrap_or_else(|p| p.into_inner())[slot];
        let start_ms = svc.shared.live().last_start_ms.unwrap_or(5000);
        (per_sec * start_ms as f64 / 1000.0) as u64
    }

    fn set_granted(&self, i: usize, granted: bool) {
        self.run_of(i, |r| r.granted = granted);
    }

    fn name(&self, i: usize) -> String {
        self.services()[i].name().to_string()
    }

    /// Makes room for service `i` before it starts: offloads what the plan says (draining busy
    /// victims first), waits out minimum residencies, or fails with the reason. Bounded by
    /// `deadline`.
    async fn make_room(&self, i: usize, deadline: Instant) -> Result<(), StartFailure> {
        self.set_granted(i, false);
        loop {
            let guard = self.deciding.lock().await;
            let Some((plan, cap, _)) = self.plan_for(i).await else {
                self.set_granted(i, true);
                return Ok(());
            };
            match plan {
                Plan::Go { victims, .. } => {
                    let displaces = !victims.is_empty();
                    for v in victims {
                        self.offload(v, i, deadline).await.map_err(StartFailure::transient)?;
                    }
                    // Granted under the decision lock: the next decision counts this start.
                    self.run_of(i, |r| {
                        r.granted = true;
                        r.swapped = displaces || std::mem::take(&mut r.reloading);
                    });
                    return Ok(());
                }
                Plan::Impossible { need, limit } => {
                    return Err(StartFailure::permanent(format!(
                        "needs {} but at most {} of {} may be used (threshold {}, reserve {}): it cannot fit even alone",
                        mib(need),
                        mib(limit),
                        mib(cap.total),
                        self.cfg.threshold,
                        mib(cap.reserve)
                    )));
                }
                Plan::Wait { retry_in: None, need, free, .. } => {
                    return Err(StartFailure::transient(format!(
                        "needs {} with {} free, and the rest is held by services that may not be offloaded (pinned or idle_sleep = false)",
                        mib(need),
                        mib(free)
                    )));
                }
                Plan::Wait { retry_in: Some(wait), need, .. } => {
                    if Instant::now() + wait > deadline {
                        return Err(StartFailure::transient(format!(
                            "needs {}; the services that could make room started too recently to be offloaded again before the start timeout",
                            mib(need)
                        )));
                    }
                    info!(
                        "Service {} waits {} ms for room (minimum residency of others)",
                        self.name(i),
                        wait.as_millis()
                    );
                    drop(guard);
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Stops victim `v` to make room for `i`, never cutting a request: waits (bounded) until it
    /// holds no lease, then a guarded stop that gives way if a request slips in.
    async fn offload(&self, v: usize, i: usize, deadline: Instant) -> Result<(), String> {
        let victim = &self.services()[v];
        let before = self.measure(v).await.unwrap_or_else(|| self.need(v));
        if victim.shared.config().reload {
            self.save(Saved {
                service: victim.name().to_string(),
                was_running: true,
                saved_at: crate::base::clock::unix_secs(),
                displaced_by: self.name(i).to_string(),
            });
        }
        info!("Offloading service {} ({} measured) to make room for {}", victim.name(), mib(before), self.name(i));
        loop {
            let (state, in_flight) = {
                let live = victim.shared.live();
                (live.state, live.in_flight)
            };
            if !matches!(state, State::Running | State::Stopping) {
                break;
            }
            if in_flight == 0 {
                victim.stop(StopReason::Offload).await;
                continue;
            }
            if Instant::now() >= deadline {
                return Err(format!("service {} still had requests in flight at the start timeout", victim.name()));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        info!("Offloaded service {}: {} freed", victim.name(), mib(before));
        let data = serde_json::json!({"service": victim.name(), "for": self.name(i), "freed_bytes": before});
        self.events.emit("offload", data);
        self.offloads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    fn save(&self, entry: Saved) {
        let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        saved.retain(|s| s.service != entry.service);
        saved.push(entry);
        self.saved_changed(&saved);
    }

    fn saved_changed(&self, saved: &[Saved]) {
        self.pending.send_replace(saved.len());
        if let Ok(text) = serde_json::to_string_pretty(saved) {
            let _ = std::fs::write(self.state_dir.join("saved-state.json"), text);
        }
    }

    fn persist_footprints(&self) {
        let measured = self.measured.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let services = self.services();
        let by_name: std::collections::BTreeMap<&str, u64> =
            services.iter().zip(measured).filter_map(|(s, m)| Some((s.name(), m?))).collect();
        if let Ok(text) = serde_json::to_string_pretty(&by_name) {
            let _ = std::fs::write(self.state_dir.join("footprints.json"), text);
        }
    }

    pub fn offloads_total(&self) -> u64 {
        self.offloads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The last measured footprint of service `i`, without measuring now.
    pub fn remembered(&self, i: usize) -> Option<u64> {
        self.measured(i)
    }

    pub fn saved(&self) -> Vec<Saved> {
        self.saved.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Forgets every offloaded service (they will not be reloaded); returns how many.
    pub fn clear_saved(&self) -> usize {
        let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
        let n = saved.len();
        saved.clear();
        self.saved_changed(&saved);
        n
    }

    /// Waits until no reload is pending, at most `within`; returns how many still are.
    pub async fn wait_reloads(&self, within: Duration) -> usize {
        let mut rx = self.pending.subscribe();
        let _ = tokio::time::timeout(within, rx.wait_for(|n| *n == 0)).await;
        let n = *rx.borrow();
        n
    }

    /// The coordinator task: answers owners' room requests (each on a task of its own, so a
    /// start draining a busy victim does not hold up the reloader), brings offloaded services
    /// back once they fit without displacing anything, and keeps measured footprints fresh.
    /// Runs until shutdown.
    pub async fn run(self: Arc<Self>, mut requests: RoomRx, tasks: TaskTracker, shutdown: CancellationToken) {
        let mut last_measure = Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(request) = requests.recv() => {
                    self.answer(request, &tasks);
                    continue;
                }
                _ = tokio::time::sleep(RELOAD_EVERY) => {}
            }
            self.reload_what_fits(&tasks).await;
            if last_measure.elapsed() >= MEASURE_EVERY {
                last_measure = Instant::now();
                for i in 0..self.services().len() {
                    if self.services()[i].shared.live().state == State::Running {
                        self.measure(i).await;
                    }
                }
            }
        }
    }

    /// Makes room for a start, on a task of its own; an abandoned start (its reply dropped)
    /// stops the room-making too.
    fn answer(self: &Arc<Self>, request: RoomRequest, tasks: &TaskTracker) {
        let me = self.clone();
        let RoomRequest { service, deadline, mut reply } = request;
        let span = tracing::info_span!("room", service = %self.name(service));
        tasks.spawn(
            async move {
                tokio::select! {
                    result = me.make_room(service, deadline) => { let _ = reply.send(result); }
                    () = reply.closed() => {}
                }
            }
            .instrument(span),
        );
    }

    async fn reload_what_fits(&self, tasks: &TaskTracker) {
        for entry in self.saved() {
            let Some(i) = self.services().iter().position(|s| s.name() == entry.service) else { continue };
            // Decided under the room-making lock: while a start is making room (offloading
            // this very service, say), the start is not yet counted as holding memory, and
            // this service would seem to fit again.
            let guard = self.deciding.lock().await;
            let state = self.services()[i].shared.live().state;
            let ready = match state {
                // Woken by a request meanwhile: nothing to reload.
                State::Running | State::Starting => true,
                // Still being offloaded.
                State::Stopping => false,
                _ => matches!(self.plan_for(i).await, Some((Plan::Go { victims, .. }, _, _)) if victims.is_empty()),
            };
            drop(guard);
            if !ready {
                continue;
            }
            {
                let mut saved = self.saved.lock().unwrap_or_else(|p| p.into_inner());
                saved.retain(|s| s.service != entry.service);
                self.saved_changed(&saved);
            }
            if matches!(state, State::Running | State::Starting) {
                continue;
            }
            info!("Reloading service {} (offloaded to make room for {})", entry.service, entry.displaced_by);
            self.events
                .emit("reload", serde_json::json!({"service": entry.service, "was_displaced_by": entry.displaced_by}));
            self.run_of(i, |r| r.reloading = true);
            let svc = self.services()[i].clone();
            tasks.spawn(async move {
                if let Err(e) = svc.acquire(None).await {
                    warn!("Reloading service {} failed: {e:?}", svc.name());
                }
            });
        }
    }
}
