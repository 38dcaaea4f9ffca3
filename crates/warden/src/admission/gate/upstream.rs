//! What hosted APIs announce about their rate limits, adopted by the pools in front of them:
//! remaining units are corrected down to what the upstream says, and a refusal (429) pauses
//! the pools until the upstream's reset, so queued requests wait instead of failing.

use super::Gate;
use crate::config::PoolUnit;
use policy::bucket::Announced;

/// Rate-limit facts read from one upstream answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpstreamLimits {
    /// `x-ratelimit-{limit,remaining,reset}-requests`
    pub requests: Announced,
    /// `x-ratelimit-{limit,remaining,reset}-tokens`
    pub tokens: Announced,
    /// The upstream refused for rate (429): the pools pause this long.
    pub refused_for_ms: Option<u64>,
}

impl UpstreamLimits {
    pub fn is_empty(&self) -> bool {
        *self == UpstreamLimits::default()
    }
}

impl Gate {
    /// Applies what an answer from `model`'s upstream said to each of the model's pools.
    pub fn upstream_said(&self, model: Option<&str>, said: &UpstreamLimits) {
        let config = self.config();
        let Some(terms) = model.and_then(|m| config.model_terms.get(m)) else { return };
        if terms.pools.is_empty() || said.is_empty() {
            return;
        }
        let (now, _) = self.now();
        let mut st = self.lock();
        for &p in &terms.pools {
            let announced = match self.config().pools[p].unit {
                PoolUnit::Requests => said.requests,
                PoolUnit::Tokens => said.tokens,
            };
            let pool = &mut st.d.pools[p];
            if announced != Announced::default() {
                pool.learn(announced, now.ms);
            }
            if let Some(ms) = said.refused_for_ms {
                pool.pause(ms, now.ms);
                tracing::warn!(
                    "Pool {} is paused for {ms} ms: the upstream of {} refused for rate (429)",
                    self.config().pools[p].name,
                    model.unwrap_or_default()
                );
            }
        }
        // Waiting requests are looked at again when the pause ends (the timer knows the wait).
        self.dispatch(&mut st, now);
    }
}
