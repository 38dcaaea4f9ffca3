//! What lets warden adapt: `[pressure]` (the monitor's thresholds, by hardware tier), model
//! ladders (`[models.X] smaller`, `fallback`, `on_pressure`) and `[tasks.X]` parameter presets.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::raw::HumanDuration;
use super::validate::err;
use super::ConfigError;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPressure {
    pub enabled: Option<bool>,
    pub sample_interval: Option<HumanDuration>,
    pub window: Option<HumanDuration>,
    pub degrade_at: Option<f64>,
    pub upgrade_below: Option<f64>,
    pub stabilization: Option<HumanDuration>,
    pub horizon: Option<HumanDuration>,
    pub cpu_defer_at: Option<f64>,
    pub stop_idle_at: Option<f64>,
    pub tier: Option<String>,
    #[serde(default)]
    pub tiers: BTreeMap<String, RawTierLimits>,
}

#[derive(Debug, Default, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTierLimits {
    pub degrade_at: Option<f64>,
    pub upgrade_below: Option<f64>,
    pub stop_idle_at: Option<f64>,
    pub cpu_defer_at: Option<f64>,
}

/// A machine's class, from its bottleneck capacity (VRAM for GPU services, else RAM): a small
/// machine has less headroom in absolute terms, so it degrades earlier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HardwareTier {
    /// Under 16 GiB.
    Small,
    /// 16 to 64 GiB.
    Medium,
    /// Over 64 GiB.
    Large,
}

impl HardwareTier {
    pub const ALL: [HardwareTier; 3] = [HardwareTier::Small, HardwareTier::Medium, HardwareTier::Large];

    pub fn name(self) -> &'static str {
        match self {
            HardwareTier::Small => "small",
            HardwareTier::Medium => "medium",
            HardwareTier::Large => "large",
        }
    }

    /// The tier of a machine whose bottleneck capacity is `bytes`.
    pub fn of_capacity(bytes: u64) -> HardwareTier {
        const GIB: u64 = 1 << 30;
        match bytes {
            b if b < 16 * GIB => HardwareTier::Small,
            b if b <= 64 * GIB => HardwareTier::Medium,
            _ => HardwareTier::Large,
        }
    }

    /// The built-in thresholds: (degrade_at, upgrade_below, stop_idle_at, cpu_defer_at).
    fn defaults(self) -> TierLimits {
        let (degrade_at, upgrade_below, stop_idle_at) = match self {
            HardwareTier::Small => (0.70, 0.60, 0.80),
            HardwareTier::Medium => (0.80, 0.70, 0.85),
            HardwareTier::Large => (0.85, 0.75, 0.90),
        };
        TierLimits { degrade_at, upgrade_below, stop_idle_at, cpu_defer_at: 0.80 }
    }
}

/// Shares of capacity (0–1) at which pressure acts.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct TierLimits {
    pub degrade_at: f64,
    pub upgrade_below: f64,
    pub stop_idle_at: f64,
    pub cpu_defer_at: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PressureConfig {
    pub enabled: bool,
    pub sample_interval: Duration,
    /// The trend is fitted over this much history.
    pub window: Duration,
    /// Back up only after use stayed below `upgrade_below` this long.
    pub stabilization: Duration,
    /// Degrade also when the trend reaches capacity within this (plus the smaller rung's
    /// measured cold start).
    pub horizon: Duration,
    /// None: from the bottleneck capacity at run time.
    pub tier: Option<HardwareTier>,
    /// Thresholds per tier, in `HardwareTier::ALL` order, with every override applied.
    pub limits: [TierLimits; 3],
}

impl PressureConfig {
    pub fn limits(&self, tier: HardwareTier) -> TierLimits {
        self.limits[HardwareTier::ALL.iter().position(|t| *t == tier).expect("every tier listed")]
    }
}

fn share(key: &str, v: Option<f64>) -> Result<Option<f64>, ConfigError> {
    match v {
        Some(x) if !(0.0..=1.0).contains(&x) || x.is_nan() => {
            Err(err(key, format!("must be a share of capacity between 0 and 1 (got {x})")))
        }
        v => Ok(v),
    }
}

pub fn pressure(raw: RawPressure) -> Result<PressureConfig, ConfigError> {
    let d = |v: Option<HumanDuration>, default: Duration| v.map_or(default, |d| d.0);
    let tier = match raw.tier.as_deref() {
        None | Some("auto") => None,
        Some(name) => Some(HardwareTier::ALL.into_iter().find(|t| t.name() == name).ok_or_else(|| {
            err("pressure.tier", format!("must be \"auto\", \"small\", \"medium\" or \"large\" (got {name:?})"))
        })?),
    };
    let top = RawTierLimits {
        degrade_at: share("pressure.degrade_at", raw.degrade_at)?,
        upgrade_below: share("pressure.upgrade_below", raw.upgrade_below)?,
        stop_idle_at: share("pressure.stop_idle_at", raw.stop_idle_at)?,
        cpu_defer_at: share("pressure.cpu_defer_at", raw.cpu_defer_at)?,
    };
    for name in raw.tiers.keys() {
        if !HardwareTier::ALL.iter().any(|t| t.name() == name) {
            return Err(err(format!("pressure.tiers.{name}"), "unknown tier (small, medium or large)"));
        }
    }
    let mut limits = HardwareTier::ALL.map(HardwareTier::defaults);
    for (i, t) in HardwareTier::ALL.iter().enumerate() {
        let own = raw.tiers.get(t.name()).copied().unwrap_or_default();
        let key = |k: &str| format!("pressure.tiers.{}.{k}", t.name());
        let l = &mut limits[i];
        // A tier's own key wins, then the top-level one, then the tier's default.
        l.degrade_at = share(&key("degrade_at"), own.degrade_at)?.or(top.degrade_at).unwrap_or(l.degrade_at);
        l.upgrade_below =
            share(&key("upgrade_below"), own.upgrade_below)?.or(top.upgrade_below).unwrap_or(l.upgrade_below);
        l.stop_idle_at = share(&key("stop_idle_at"), own.stop_idle_at)?.or(top.stop_idle_at).unwrap_or(l.stop_idle_at);
        l.cpu_defer_at = share(&key("cpu_defer_at"), own.cpu_defer_at)?.or(top.cpu_defer_at).unwrap_or(l.cpu_defer_at);
        if l.upgrade_below >= l.degrade_at {
            return Err(err(
                format!("pressure.tiers.{}.upgrade_below", t.name()),
                format!(
                    "must be below degrade_at ({} is not below {}): that gap is what stops flapping",
                    l.upgrade_below, l.degrade_at
                ),
            ));
        }
    }
    let cfg = PressureConfig {
        enabled: raw.enabled.unwrap_or(false),
        sample_interval: d(raw.sample_interval, Duration::from_secs(2)),
        window: d(raw.window, Duration::from_secs(60)),
        stabilization: d(raw.stabilization, Duration::from_secs(300)),
        horizon: d(raw.horizon, Duration::from_secs(30)),
        tier,
        limits,
    };
    if cfg.sample_interval.is_zero() {
        return Err(err("pressure.sample_interval", "must be greater than zero"));
    }
    if cfg.window < cfg.sample_interval * 2 {
        return Err(err("pressure.window", "must hold at least two samples (twice sample_interval)"));
    }
    Ok(cfg)
}

/// What a service does when starting a model needs memory it does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnPressure {
    /// Offload idle services to make room (the memory orchestration's own way).
    #[default]
    Offload,
    /// Serve the smaller rung instead.
    Degrade,
}

/// A model's place on its ladder.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ladder {
    /// One rung down: served instead while under pressure.
    pub smaller: Option<String>,
    /// Tried in order when this model fails before any byte reached the client.
    pub fallback: Vec<String>,
    pub on_pressure: OnPressure,
    /// Past these (over the last minutes of requests) the model counts as pressured: served by
    /// its smaller rung.
    pub max_p95: Option<Duration>,
    pub max_failure_rate: Option<f64>,
}

/// Checks the ladders against the models: every rung and fallback names a known model, and no
/// `smaller` chain loops.
pub fn check_ladders(ladders: &BTreeMap<String, Ladder>, known: &dyn Fn(&str) -> bool) -> Result<(), ConfigError> {
    for (model, l) in ladders {
        if let Some(s) = &l.smaller {
            if !known(s) {
                return Err(err(format!("models.{model}.smaller"), format!("unknown model {s:?}")));
            }
        }
        for (i, f) in l.fallback.iter().enumerate() {
            if !known(f) {
                return Err(err(format!("models.{model}.fallback[{i}]"), format!("unknown model {f:?}")));
            }
            if f == model {
                return Err(err(format!("models.{model}.fallback[{i}]"), "a model cannot fall back to itself"));
            }
        }
        let mut seen = vec![model.as_str()];
        let mut at = l.smaller.as_deref();
        while let Some(next) = at {
            if seen.contains(&next) {
                return Err(err(
                    format!("models.{model}.smaller"),
                    format!("the ladder loops: {} → {next}", seen.join(" → ")),
                ));
            }
            seen.push(next);
            at = ladders.get(next).and_then(|l| l.smaller.as_deref());
        }
    }
    Ok(())
}

pub fn on_pressure(key: &str, v: Option<&str>) -> Result<OnPressure, ConfigError> {
    match v {
        None | Some("offload") => Ok(OnPressure::Offload),
        Some("degrade") => Ok(OnPressure::Degrade),
        Some(other) => Err(err(key, format!("must be \"offload\" or \"degrade\" (got {other:?})"))),
    }
}

/// `[tasks.NAME]`: request parameters applied where a request with `x-warden-task: NAME` sets
/// none (e.g. `temperature`, `max_tokens`).
pub fn tasks(
    raw: BTreeMap<String, toml::Table>,
) -> Result<BTreeMap<String, serde_json::Map<String, serde_json::Value>>, ConfigError> {
    raw.into_iter()
        .map(|(name, table)| {
            let value = serde_json::to_value(&table).map_err(|e| err(format!("tasks.{name}"), e.to_string()))?;
            match value {
                serde_json::Value::Object(map) => Ok((name, map)),
                _ => Err(err(format!("tasks.{name}"), "must be a table of request parameters")),
            }
        })
        .collect()
}
