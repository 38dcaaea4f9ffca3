//! Validation of the resource-manager keys: tiers, clients, pools, model prices and the
//! scheduler.

use std::collections::BTreeMap;
use std::time::Duration;

use super::raw::{RawClient, RawPool, RawPrice, RawScheduler, RawTier};
use super::validate::err;
use super::{ClientConfig, ConfigError, ModelTerms, PoolConfig, PoolUnit, SchedulerConfig, Tier};
use policy::bucket::Sharing;
use policy::budget::{usd_to_micros, Micros, Price};
use policy::class::Window;

fn money(key: String, usd: Option<f64>) -> Result<Option<Micros>, ConfigError> {
    usd.map(|u| usd_to_micros(u).ok_or_else(|| err(key, format!("{u} must be a number of US dollars, 0 or more"))))
        .transpose()
}

/// The four built-in tiers (priority, max concurrent, monthly budget), overridable and extendable.
pub fn tiers(raw: BTreeMap<String, RawTier>) -> Result<BTreeMap<String, Tier>, ConfigError> {
    let builtin = [
        ("enterprise", 40, 100, None),
        ("premium", 30, 50, Some(1000)),
        ("standard", 20, 20, Some(500)),
        ("basic", 10, 5, Some(100)),
    ];
    let mut tiers: BTreeMap<String, Tier> = builtin
        .into_iter()
        .map(|(n, p, c, b)| {
            let tier = Tier { priority: p, max_concurrent: Some(c), monthly_budget: b.map(|usd: i64| usd * 1_000_000) };
            (n.to_string(), tier)
        })
        .collect();
    for (name, t) in raw {
        let base =
            tiers.get(&name).cloned().unwrap_or(Tier { priority: 20, max_concurrent: None, monthly_budget: None });
        let priority = t.priority.unwrap_or(base.priority);
        if priority > 40 {
            return Err(err(format!("tiers.{name}.priority"), format!("{priority} must be between 0 and 40")));
        }
        if t.max_concurrent == Some(0) {
            return Err(err(format!("tiers.{name}.max_concurrent"), "must be at least 1"));
        }
        let monthly_budget =
            money(format!("tiers.{name}.monthly_budget_usd"), t.monthly_budget_usd)?.or(base.monthly_budget);
        tiers.insert(name, Tier { priority, max_concurrent: t.max_concurrent.or(base.max_concurrent), monthly_budget });
    }
    Ok(tiers)
}

pub fn clients(
    raw: BTreeMap<String, RawClient>,
    tiers: &BTreeMap<String, Tier>,
) -> Result<Vec<ClientConfig>, ConfigError> {
    let mut out: Vec<ClientConfig> = Vec::new();
    for (name, c) in raw {
        let at = |key: &str| format!("clients.{name}.{key}");
        let key_sha256 = match (&c.key_sha256, &c.key_env) {
            (Some(hex), None) => parse_sha256(hex).ok_or_else(|| err(at("key_sha256"), "must be 64 hex digits"))?,
            (None, Some(var)) => {
                let key = std::env::var(var)
                    .map_err(|_| err(at("key_env"), format!("environment variable {var} is not set")))?;
                if key.is_empty() {
                    return Err(err(at("key_env"), format!("environment variable {var} is empty")));
                }
                sha256(key.as_bytes())
            }
            _ => return Err(err(format!("clients.{name}"), "needs exactly one of key_sha256 and key_env")),
        };
        if let Some(other) = out.iter().find(|o| o.key_sha256 == key_sha256) {
            return Err(err(format!("clients.{name}"), format!("has the same key as client {:?}", other.name)));
        }
        let tier_name = c.tier.unwrap_or_else(|| "standard".into());
        let tier = tiers.get(&tier_name).ok_or_else(|| {
            err(
                at("tier"),
                format!("unknown tier {tier_name:?}; known: {}", tiers.keys().cloned().collect::<Vec<_>>().join(", ")),
            )
        })?;
        let monthly_budget = money(at("monthly_budget_usd"), c.monthly_budget_usd)?.or(tier.monthly_budget);
        out.push(ClientConfig {
            name,
            retired: false,
            key_sha256,
            priority: tier.priority,
            max_concurrent: tier.max_concurrent,
            monthly_budget,
            tier: tier_name,
            models: c.models.unwrap_or_else(|| vec!["*".into()]),
        });
    }
    Ok(out)
}

pub fn pools(raw: BTreeMap<String, RawPool>, clients: &[ClientConfig]) -> Result<Vec<PoolConfig>, ConfigError> {
    let mut out = Vec::new();
    for (name, p) in raw {
        let at = |key: &str| format!("pools.{name}.{key}");
        let unit = match p.unit.as_deref() {
            None | Some("tokens") => PoolUnit::Tokens,
            Some("requests") => PoolUnit::Requests,
            Some(u) => return Err(err(at("unit"), format!("{u:?} must be \"tokens\" or \"requests\""))),
        };
        let capacity = p.capacity.ok_or_else(|| err(at("capacity"), "required"))?;
        if capacity == 0 {
            return Err(err(at("capacity"), "must be at least 1"));
        }
        let refill = p.refill_per_sec.ok_or_else(|| err(at("refill_per_sec"), "required"))?;
        if !(refill.is_finite() && refill > 0.0) {
            return Err(err(at("refill_per_sec"), format!("{refill} must be above 0")));
        }
        let reserved = p.reserved.unwrap_or_default();
        let sharing = match p.sharing.as_deref() {
            None | Some("shared") | Some("dedicated") if !reserved.is_empty() => {
                return Err(err(at("reserved"), "only applies to sharing = \"reserved\""))
            }
            None | Some("shared") => Sharing::Shared,
            Some("dedicated") => Sharing::Dedicated,
            Some("reserved") => {
                let mut shares = Vec::new();
                for (client, share) in reserved {
                    let i = clients.iter().position(|c| c.name == client).ok_or_else(|| {
                        err(format!("pools.{name}.reserved.{client}"), format!("unknown client {client:?}"))
                    })?;
                    if !(share > 0.0 && share < 1.0) {
                        return Err(err(
                            format!("pools.{name}.reserved.{client}"),
                            format!("{share} must be between 0 and 1"),
                        ));
                    }
                    shares.push((i, share));
                }
                if shares.iter().map(|(_, s)| s).sum::<f64>() >= 1.0 {
                    return Err(err(at("reserved"), "the shares must add up to less than 1 (the rest is shared)"));
                }
                Sharing::Reserved(shares)
            }
            Some(s) => {
                return Err(err(at("sharing"), format!("{s:?} must be \"shared\", \"reserved\" or \"dedicated\"")))
            }
        };
        out.push(PoolConfig { name, retired: false, unit, capacity, refill_per_sec: refill, sharing });
    }
    Ok(out)
}

pub fn model_terms(
    raw: Vec<(String, Option<Vec<String>>, Option<RawPrice>)>,
    pools: &[PoolConfig],
) -> Result<BTreeMap<String, ModelTerms>, ConfigError> {
    let mut out = BTreeMap::new();
    for (model, raw_pools, price) in raw {
        let mut terms = ModelTerms::default();
        for (i, p) in raw_pools.unwrap_or_default().iter().enumerate() {
            let index = pools
                .iter()
                .position(|c| &c.name == p)
                .ok_or_else(|| err(format!("models.{model}.pools[{i}]"), format!("unknown pool {p:?}")))?;
            terms.pools.push(index);
        }
        if let Some(price) = price {
            let at = |k: &str| format!("models.{model}.price.{k}");
            terms.price = Some(Price {
                input_per_1k: money(at("input_per_1k"), Some(price.input_per_1k.unwrap_or(0.0)))?.unwrap_or(0),
                output_per_1k: money(at("output_per_1k"), Some(price.output_per_1k.unwrap_or(0.0)))?.unwrap_or(0),
            });
        }
        out.insert(model, terms);
    }
    Ok(out)
}

pub fn scheduler(raw: RawScheduler) -> Result<SchedulerConfig, ConfigError> {
    let off_peak = raw.off_peak.map(|t| Window::parse(&t).map_err(|e| err("scheduler.off_peak", e))).transpose()?;
    let d = |v: Option<super::raw::HumanDuration>, default: u64| v.map_or(Duration::from_secs(default), |d| d.0);
    let cfg = SchedulerConfig {
        off_peak,
        max_queue: raw.max_queue.unwrap_or(10_000),
        queue_timeout: d(raw.queue_timeout, 300),
        aging: d(raw.aging, 120),
        starvation: d(raw.starvation, 600),
        fairness_half_life: d(raw.fairness_half_life, 60),
        default_max_tokens: raw.default_max_tokens.unwrap_or(4096),
    };
    for (key, v) in [("aging", cfg.aging), ("starvation", cfg.starvation), ("queue_timeout", cfg.queue_timeout)] {
        if v.is_zero() {
            return Err(err(format!("scheduler.{key}"), "must be greater than zero"));
        }
    }
    if cfg.max_queue == 0 {
        return Err(err("scheduler.max_queue", "must be at least 1"));
    }
    Ok(cfg)
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// `[state]`.
pub fn state(raw: super::raw::RawState) -> Result<super::StateConfig, ConfigError> {
    use super::OnUnavailable;
    if let Some(url) = raw.shared.as_deref() {
        if !(url.starts_with("redis://") || url.starts_with("unix://")) {
            return Err(err(
                "state.shared",
                format!("{url:?} must be a Redis URL: redis://host:port/db or unix:///path"),
            ));
        }
    }
    let on_unavailable = match raw.on_unavailable.as_deref() {
        None | Some("refuse") => OnUnavailable::Refuse,
        Some("local") => OnUnavailable::Local,
        Some(s) => return Err(err("state.on_unavailable", format!("{s:?} must be \"refuse\" or \"local\""))),
    };
    let hold_ttl = raw.hold_ttl.map_or(Duration::from_secs(30), |d| d.0);
    if hold_ttl < Duration::from_secs(1) || hold_ttl > Duration::from_secs(3600) {
        return Err(err("state.hold_ttl", "must be from 1s to 1h"));
    }
    let key_prefix = raw.key_prefix.unwrap_or_else(|| "warden:".into());
    if key_prefix.is_empty() || key_prefix.chars().any(char::is_whitespace) {
        return Err(err("state.key_prefix", "must be a non-empty string without spaces"));
    }
    Ok(super::StateConfig { shared: raw.shared, key_prefix, on_unavailable, hold_ttl })
}
