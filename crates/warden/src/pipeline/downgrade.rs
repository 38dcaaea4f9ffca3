//! Stage 3c, the optimizer's downgrade: `[optimizer] downgrade_classes` and
//! `downgrade_over_budget` send a request one rung down its model's `smaller` ladder, where the
//! same work costs less. Never a request that names `x-warden-priority: immediate`, and never
//! one the pressure ladder already moved. The answer says so (`x-warden-optimized`), and the
//! usage records what it saved.

use axum::http::HeaderMap;
use policy::class::Class;

use super::route::{self, Route};
use crate::app::App;
use crate::base::caller::Caller;

/// A `HeaderName` made once: inserting by a `&str` name copies a custom name into a new
/// allocation every time.
pub static OPTIMIZED_HEADER: axum::http::HeaderName = axum::http::HeaderName::from_static("x-warden-optimized");

/// A request the optimizer sent one rung down.
#[derive(Debug, Clone)]
pub struct Downgrade {
    pub from: String,
    pub to: String,
    pub why: String,
}

impl Downgrade {
    /// `x-warden-optimized`: "downgrade gpt-4→gpt-3.5 (batch class)".
    pub fn header(&self) -> String {
        format!("downgrade {}→{} ({})", self.from, self.to, self.why)
    }
}

/// Where the optimizer sends `route`'s model, if anywhere.
pub fn choose(app: &App, caller: &Caller, headers: &HeaderMap, route: &Route) -> Option<(Route, Downgrade)> {
    let config = app.config();
    let opt = &config.optimizer;
    if opt.downgrade_classes.is_empty() && opt.downgrade_over_budget.is_none() {
        return None;
    }
    let from = route.model.as_ref()?.name.to_string();
    let to = config.ladders.get(&from)?.smaller.clone()?;
    let class = super::admit::class_of(app, headers).ok()?;
    let why = if class == Class::Immediate {
        return None;
    } else if opt.downgrade_classes.contains(&class) {
        format!("{} class", class.as_str())
    } else {
        let share = opt.downgrade_over_budget?;
        let ledger = app.gate.ledger(caller.client);
        let used = (ledger.spent + ledger.reserved) as f64 / ledger.limit.filter(|&l| l > 0)? as f64;
        if used < share {
            return None;
        }
        format!("client past {:.0} % of its budget", share * 100.0)
    };
    let served = route::model(app, &to).ok()?;
    Some((served, Downgrade { from, to, why }))
}
