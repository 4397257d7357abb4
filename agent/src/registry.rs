//! The models this agent serves, by V2 model name, and the engines its capacity probes
//! measure. Models come and go at run time (profiles are added and deleted), so the sets sit
//! behind locks that readers take only to clone an `Arc`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::engine::Engine;
use crate::traffic::Window;

/// A model being served (or probed).
#[derive(Debug)]
pub struct ServedModel {
    /// V2 model name (`<namespace>.<name>` in a cluster).
    pub name: String,
    /// The one version served; V2 requests may name it or leave it empty.
    pub version: String,
    /// The loaded engine.
    pub engine: Engine,
    /// What it served: kept across engine replacements of the same name.
    pub traffic: Arc<Window>,
}

impl ServedModel {
    /// Version "1" of `name` on `engine`, with a fresh traffic window of `window_seconds`.
    pub fn new(name: impl Into<String>, engine: Engine, window_seconds: u32) -> Self {
        Self {
            name: name.into(),
            version: "1".into(),
            engine,
            traffic: Arc::new(Window::new(window_seconds)),
        }
    }
}

/// Where the gRPC service finds models: the one trait between serving and the rest of the
/// agent.
pub trait Models: Send + Sync + 'static {
    /// The model called `name`, when served.
    fn model(&self, name: &str) -> Option<Arc<ServedModel>>;
    /// The engine a capacity probe called `name` measures; only probe requests reach it.
    fn probe(&self, name: &str) -> Option<Arc<ServedModel>>;
    /// Names of every served model.
    fn names(&self) -> Vec<String>;
}

type Map = BTreeMap<String, Arc<ServedModel>>;

/// The agent's models.
#[derive(Debug, Default)]
pub struct ModelRegistry {
    models: RwLock<Map>,
    probes: RwLock<Map>,
}

impl ModelRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `model`, replacing one of the same name and taking over its traffic window;
    /// returns the replaced model, whose engine finishes the requests it accepted once the last
    /// `Arc` is dropped.
    pub fn insert(&self, mut model: ServedModel) -> Option<Arc<ServedModel>> {
        let mut models = write(&self.models);
        if let Some(previous) = models.get(&model.name) {
            model.traffic = Arc::clone(&previous.traffic);
        }
        models.insert(model.name.clone(), Arc::new(model))
    }

    /// Stops serving `name` if `model` is still what serves it (not a replacement).
    pub fn remove_if_same(&self, name: &str, model: &Arc<ServedModel>) -> Option<Arc<ServedModel>> {
        let mut models = write(&self.models);
        if models.get(name).is_some_and(|m| Arc::ptr_eq(m, model)) {
            models.remove(name)
        } else {
            None
        }
    }

    /// Removes every model and probe (shutdown).
    pub fn clear(&self) -> Vec<Arc<ServedModel>> {
        let mut all: Vec<_> = std::mem::take(&mut *write(&self.models))
            .into_values()
            .collect();
        all.extend(std::mem::take(&mut *write(&self.probes)).into_values());
        all
    }

    /// Makes `model` reachable by probe requests under its name, until [`Self::remove_probe`].
    pub fn insert_probe(&self, model: ServedModel) -> Arc<ServedModel> {
        let model = Arc::new(model);
        write(&self.probes).insert(model.name.clone(), Arc::clone(&model));
        model
    }

    /// Ends a probe; returns its model.
    pub fn remove_probe(&self, name: &str) -> Option<Arc<ServedModel>> {
        write(&self.probes).remove(name)
    }
}

// A panic while holding a lock cannot leave a map half-updated: keep serving.
fn write(lock: &RwLock<Map>) -> std::sync::RwLockWriteGuard<'_, Map> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn read(lock: &RwLock<Map>) -> std::sync::RwLockReadGuard<'_, Map> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Models for ModelRegistry {
    fn model(&self, name: &str) -> Option<Arc<ServedModel>> {
        read(&self.models).get(name).cloned()
    }

    fn probe(&self, name: &str) -> Option<Arc<ServedModel>> {
        read(&self.probes).get(name).cloned()
    }

    fn names(&self) -> Vec<String> {
        read(&self.models).keys().cloned().collect()
    }
}
