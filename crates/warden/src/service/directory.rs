//! Which service serves which model: the config's models, plus those a multi-model server
//! reports once it has run. Read on every request by model; written rarely (discovery).

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::config::ModelRef;

pub struct Directory {
    /// Model name → service and model index; read on every model request, written only when
    /// an owner discovers a model (hence a read-write lock). The names are shared with the
    /// requests routed by them: a request, its ticket and the performance samples it leaves
    /// (a day's worth are kept) hold the model's one name, not a copy each.
    map: RwLock<BTreeMap<Arc<str>, ModelRef>>,
}

impl Directory {
    pub fn new(configured: BTreeMap<String, ModelRef>) -> Self {
        Directory { map: RwLock::new(shared_names(configured)) }
    }

    pub fn get(&self, model: &str) -> Option<ModelRef> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).get(model).copied()
    }

    /// Where `model` is served, and its name as the directory holds it (shared).
    pub fn route(&self, model: &str) -> Option<(Arc<str>, ModelRef)> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get_key_value(model).map(|(name, at)| (name.clone(), *at))
    }

    /// Adds a discovered model; a name already routed elsewhere keeps its first service.
    pub fn add(&self, model: &str, at: ModelRef) -> bool {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(model) {
            return false;
        }
        map.insert(model.into(), at);
        true
    }

    /// A reload's models: the new config's, and those discovered on services the reload left
    /// as they were (`kept(service)`); a changed service's owner discovers its own again.
    pub fn reconfigure(
        &self,
        old: &BTreeMap<String, ModelRef>,
        new: BTreeMap<String, ModelRef>,
        kept: impl Fn(usize) -> bool,
    ) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let discovered = map.iter().filter(|(m, r)| !old.contains_key(&***m) && kept(r.service));
        let discovered: Vec<(Arc<str>, ModelRef)> = discovered.map(|(m, r)| (m.clone(), *r)).collect();
        *map = shared_names(new);
        for (m, r) in discovered {
            map.entry(m).or_insert(r);
        }
    }

    /// Every routed model, in name order.
    pub fn all(&self) -> Vec<(String, ModelRef)> {
        self.map.read().unwrap_or_else(|p| p.into_inner()).iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }
}

fn shared_names(models: BTreeMap<String, ModelRef>) -> BTreeMap<Arc<str>, ModelRef> {
    models.into_iter().map(|(name, at)| (name.into(), at)).collect()
}
