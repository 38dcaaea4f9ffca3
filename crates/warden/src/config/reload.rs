//! A reloaded config against the one running: what changed, and the config to run on next.
//!
//! Admission, the service owners and the model directory index services, clients and pools
//! by their place in the config, and requests in flight hold those places. So the next config
//! keeps every place: what is still configured keeps its place (with its new settings), what
//! was removed stays there marked `retired`, and what is new comes after. Names are the
//! identity: a service, client or pool of the same name is the same one.

use std::collections::BTreeMap;

use super::{ClientConfig, Config, ModelRef, PoolConfig, ServiceConfig};
use policy::bucket::Sharing;

/// What a reload changed, for the answer and the log.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Changes {
    pub services: Diff,
    pub clients: Diff,
    pub pools: Diff,
    /// Other sections whose values changed: "tiers", "models", "scheduler", "pressure", …
    pub sections: Vec<&'static str>,
    /// Keys whose new values take effect only after a restart (the running ones stay).
    pub need_restart: Vec<&'static str>,
}

#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Diff {
    pub added: Vec<String>,
    pub changed: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: Vec<String>,
    /// Services whose new settings apply to the run as it is (idle settings, keep-alives,
    /// bounds): not restarted.
    pub retuned: Vec<String>,
}

impl Changes {
    pub fn nothing(&self) -> bool {
        let quiet =
            |d: &Diff| d.added.is_empty() && d.changed.is_empty() && d.removed.is_empty() && d.retuned.is_empty();
        quiet(&self.services) && quiet(&self.clients) && quiet(&self.pools) && self.sections.is_empty()
    }
}

/// An entry with a name that may be retired in place.
trait Slot: Clone + PartialEq {
    fn name(&self) -> &str;
    fn retired(&self) -> bool;
    fn retire(&mut self);
}

macro_rules! slot {
    ($t:ty) => {
        impl Slot for $t {
            fn name(&self) -> &str {
                &self.name
            }
            fn retired(&self) -> bool {
                self.retired
            }
            fn retire(&mut self) {
                self.retired = true;
            }
        }
    };
}
slot!(ServiceConfig);
slot!(ClientConfig);
slot!(PoolConfig);

/// Whether `a` and `b` differ only in what applies to a running service without a restart:
/// idle settings, keep-alives, queue and time bounds, offload priority.
pub fn tuned_only(a: &ServiceConfig, b: &ServiceConfig) -> bool {
    fn untuned(s: &ServiceConfig) -> ServiceConfig {
        let mut s = s.clone();
        s.models.iter_mut().for_each(|m| m.keep_alive = None);
        (s.idle_timeout, s.idle_sleep, s.priority, s.reload, s.max_queue) = (None, true, 0, true, 0);
        (s.response_timeout, s.start_timeout, s.stop_timeout) = Default::default();
        s
    }
    untuned(a) == untuned(b)
}

/// `old`'s places first (each with its new version, or retired), then what is new. Returns the
/// list and, for each entry of `new`, its place in the list.
fn keep_places<T: Slot>(old: &[T], new: Vec<T>, diff: &mut Diff) -> (Vec<T>, Vec<usize>) {
    let mut new: Vec<Option<T>> = new.into_iter().map(Some).collect();
    let mut place = vec![usize::MAX; new.len()];
    let mut out = Vec::with_capacity(old.len() + new.len());
    for o in old {
        match new.iter().position(|n| n.as_ref().is_some_and(|n| n.name() == o.name())) {
            Some(i) => {
                let n = new[i].take().expect("found");
                let list = if o.retired() {
                    &mut diff.added
                } else if *o == n {
                    &mut diff.unchanged
                } else {
                    &mut diff.changed
                };
                list.push(n.name().to_string());
                place[i] = out.len();
                out.push(n);
            }
            None => {
                let mut gone = o.clone();
                if !o.retired() {
                    diff.removed.push(o.name().to_string());
                    gone.retire();
                }
                out.push(gone);
            }
        }
    }
    for (i, n) in new.into_iter().enumerate() {
        if let Some(n) = n {
            diff.added.push(n.name().to_string());
            place[i] = out.len();
            out.push(n);
        }
    }
    (out, place)
}

/// The config to run on after a reload of `new` over `old`, and what changed. Keys that only
/// a restart can apply keep their running values (and are named in `need_restart`).
pub fn merge(old: &Config, mut new: Config) -> (Config, Changes) {
    let mut ch = Changes::default();
    let (services, service_at) = keep_places(&old.services, std::mem::take(&mut new.services), &mut ch.services);
    let (retuned, changed) = std::mem::take(&mut ch.services.changed).into_iter().partition(|name: &String| {
        let at = |list: &[ServiceConfig]| list.iter().position(|s| &s.name == name);
        matches!((at(&old.services), at(&services)), (Some(o), Some(n)) if tuned_only(&old.services[o], &services[n]))
    });
    (ch.services.retuned, ch.services.changed) = (retuned, changed);
    let (clients, client_at) = keep_places(&old.clients, std::mem::take(&mut new.clients), &mut ch.clients);
    let (mut pools, pool_at) = keep_places(&old.pools, std::mem::take(&mut new.pools), &mut ch.pools);
    for pool in &mut pools {
        if let Sharing::Reserved(shares) = &mut pool.sharing {
            // Shares name clients by their place in the new file; a retired pool's already
            // name places in the running config.
            if !pool.retired {
                shares.iter_mut().for_each(|(c, _)| *c = client_at[*c]);
            }
        }
    }
    let models: BTreeMap<String, ModelRef> = std::mem::take(&mut new.models)
        .into_iter()
        .map(|(name, r)| (name, ModelRef { service: service_at[r.service], ..r }))
        .collect();
    for terms in new.model_terms.values_mut() {
        terms.pools.iter_mut().for_each(|p| *p = pool_at[*p]);
    }

    let mut server = new.server.clone();
    if server.listen != old.server.listen {
        ch.need_restart.push("server.listen");
        server.listen = old.server.listen;
    }
    if server.state_dir != old.server.state_dir {
        ch.need_restart.push("server.state_dir");
        server.state_dir = old.server.state_dir.clone();
    }
    // The front door's accept loop took these at start.
    if server.header_timeout != old.server.header_timeout {
        ch.need_restart.push("server.header_timeout");
    }
    if server.max_connections != old.server.max_connections {
        ch.need_restart.push("server.max_connections");
    }
    if server.workers != old.server.workers {
        ch.need_restart.push("server.workers");
    }
    if server != old.server {
        ch.sections.push("server");
    }
    let mut resources = new.resources;
    if resources != old.resources {
        // Capacity is resolved (and detected) once, at start.
        ch.need_restart.push("resources");
        resources = old.resources;
    }
    if new.cache != old.cache {
        // The cache's store and bounds are set up once, at start.
        ch.need_restart.push("cache");
        new.cache = old.cache.clone();
    }
    if new.state != old.state {
        // The Redis connection and its tasks are set up once, at start.
        ch.need_restart.push("state");
        new.state = old.state.clone();
    }
    if new.pressure.enabled != old.pressure.enabled {
        ch.need_restart.push("pressure.enabled");
        new.pressure.enabled = old.pressure.enabled;
    }
    let sections: [(&'static str, bool); 11] = [
        ("models.coalesce", new.coalesce != old.coalesce),
        ("optimizer", new.optimizer != old.optimizer),
        ("models.cache", new.cache_by_model != old.cache_by_model),
        ("idle", new.idle != old.idle),
        ("models", models != old.models),
        ("tiers", new.tiers != old.tiers),
        ("prices", new.model_terms != old.model_terms),
        ("scheduler", new.scheduler != old.scheduler),
        ("pressure", new.pressure != old.pressure),
        ("ladders", new.ladders != old.ladders),
        ("tasks", new.tasks != old.tasks),
    ];
    ch.sections.extend(sections.into_iter().filter(|(_, changed)| *changed).map(|(s, _)| s));
    let config = Config { server, services, models, resources, clients, pools, ..new };
    (config, ch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(text: &str) -> Config {
        crate::config::parse(text, Path::new("/tmp")).unwrap_or_else(|e| panic!("{e}"))
    }

    const KEY_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const KEY_B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn before() -> Config {
        config(&format!(
            r#"
[services.b]
kind = "process"
command = ["b"]
models = ["mb"]
[services.c]
kind = "process"
command = ["c"]
models = ["mc"]
[services.d]
kind = "process"
command = ["d"]
models = ["md"]
[clients.x]
key_sha256 = "{KEY_A}"
[pools.p]
unit = "requests"
capacity = 10
refill_per_sec = 1
[models.mb]
pools = ["p"]
"#
        ))
    }

    #[test]
    fn places_are_kept_removed_ones_retire_in_place_and_new_ones_come_after() {
        let old = before();
        // a is new and sorts first; b unchanged; c changed; d removed; a new client and pool.
        let new = config(&format!(
            r#"
[services.a]
kind = "process"
command = ["a"]
models = ["ma"]
[services.b]
kind = "process"
command = ["b"]
models = ["mb"]
[services.c]
kind = "process"
command = ["c", "--new"]
models = ["mc"]
[clients.w]
key_sha256 = "{KEY_B}"
[clients.x]
key_sha256 = "{KEY_A}"
[pools.o]
unit = "requests"
capacity = 5
refill_per_sec = 1
[pools.p]
unit = "requests"
capacity = 10
refill_per_sec = 1
[models.mb]
pools = ["p", "o"]
[models.ma]
pools = ["o"]
"#
        ));
        let (cfg, ch) = merge(&old, new);
        let names: Vec<(&str, bool)> = cfg.services.iter().map(|s| (s.name.as_str(), s.retired)).collect();
        assert_eq!(names, [("b", false), ("c", false), ("d", true), ("a", false)]);
        assert_eq!(ch.services.added, ["a"]);
        assert_eq!(ch.services.changed, ["c"]);
        assert_eq!(ch.services.removed, ["d"]);
        assert_eq!(ch.services.unchanged, ["b"]);
        assert!(ch.services.retuned.is_empty());
        assert_eq!(cfg.models["ma"].service, 3, "a model routes to its service's kept place");
        assert_eq!(cfg.models["mc"].service, 1);
        assert!(!cfg.models.contains_key("md"), "a removed service's models route nowhere");
        assert_eq!(cfg.service_index("a"), Some(3));
        assert_eq!(cfg.service_index("d"), None, "a retired service is not found by name");
        let clients: Vec<&str> = cfg.clients.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(clients, ["x", "w"]);
        let pools: Vec<&str> = cfg.pools.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(pools, ["p", "o"]);
        assert_eq!(cfg.model_terms["mb"].pools, [0, 1], "pool indexes follow the pools' places");
        assert_eq!(cfg.model_terms["ma"].pools, [1]);
        assert!(ch.sections.contains(&"prices") && ch.sections.contains(&"models"));

        // Removing again keeps the retired place; bringing a service back revives it.
        let (again, ch2) = merge(&cfg, before());
        let names: Vec<(&str, bool)> = again.services.iter().map(|s| (s.name.as_str(), s.retired)).collect();
        assert_eq!(names, [("b", false), ("c", false), ("d", false), ("a", true)]);
        assert_eq!((ch2.services.added.clone(), ch2.services.removed.clone()), (vec!["d".into()], vec!["a".into()]));
        assert_eq!(again.clients[1].name, "w");
        assert!(again.clients[1].retired, "a removed client keeps its place, retired");
    }

    #[test]
    fn the_same_file_changes_nothing_and_restart_only_keys_keep_their_values() {
        let (cfg, ch) = merge(&before(), before());
        assert!(ch.nothing(), "{ch:?}");
        assert_eq!(ch.services.unchanged, ["b", "c", "d"]);
        let mut moved = before();
        moved.server.listen = "127.0.0.1:1".parse().unwrap();
        let (cfg2, ch) = merge(&cfg, moved);
        assert_eq!(ch.need_restart, ["server.listen"]);
        assert_eq!(cfg2.server.listen, cfg.server.listen);
    }

    #[test]
    fn idle_settings_keep_alives_and_bounds_retune_a_service_anything_else_changes_it() {
        let old = before();
        let text = |c_extra: &str| {
            format!(
                "[services.b]\nkind = \"process\"\ncommand = [\"b\"]\nmodels = [\"mb\"]\n\
                 [services.c]\nkind = \"process\"\ncommand = [\"c\"]\nmodels = [\"mc\"]\n{c_extra}\n\
                 [services.d]\nkind = \"process\"\ncommand = [\"d\"]\nmodels = [\"md\"]\n\
                 [clients.x]\nkey_sha256 = \"{KEY_A}\"\n[pools.p]\nunit = \"requests\"\ncapacity = 10\nrefill_per_sec = 1\n\
                 [models.mb]\npools = [\"p\"]\n"
            )
        };
        let (_, ch) = merge(&old, config(&text("idle_timeout = \"5m\"\nmax_queue = 7\nstart_timeout = \"9s\"")));
        assert_eq!((ch.services.retuned.clone(), ch.services.changed.clone()), (vec!["c".to_string()], vec![]));
        assert!(!ch.nothing());
        let (_, ch) = merge(&old, config(&format!("{}\n[models.mc]\nkeep_alive = \"1m\"", text(""))));
        assert_eq!(ch.services.retuned, ["c"], "a keep-alive is retuned");
        let (_, ch) = merge(&old, config(&text("port = 9999")));
        assert_eq!((ch.services.retuned.len(), ch.services.changed.clone()), (0, vec!["c".to_string()]));
    }

    #[test]
    fn reserved_shares_follow_their_clients_places() {
        let old = before();
        let new = config(&format!(
            r#"
[clients.w]
key_sha256 = "{KEY_B}"
[clients.x]
key_sha256 = "{KEY_A}"
[pools.p]
unit = "requests"
capacity = 10
refill_per_sec = 1
sharing = "reserved"
reserved = {{ x = 0.5 }}
"#
        ));
        let (cfg, _) = merge(&old, new);
        assert_eq!(cfg.pools[0].sharing, Sharing::Reserved(vec![(0, 0.5)]), "x keeps place 0 though w sorts first");
    }
}
