//! The models this agent serves, by V2 model name. Models come and go at run time (profiles
//! are added and deleted), so the set sits behind a lock that readers take only to clone an
//! `Arc`.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use crate::engine::Engine;

/// A model being served.
#[derive(Debug)]
pub struct ServedModel {
    /// V2 model name (`<namespace>.<name>` in a cluster).
    pub name: String,
    /// The one version served; V2 requests may name it or leave it empty.
    pub version: String,
    /// The loaded engine.
    pub engine: Engine,
}

/// Where the gRPC service finds models: the one trait between serving and the rest of the
/// agent.
pub trait Models: Send + Sync + 'static {
    /// The model called `name`, when served.
    fn model(&self, name: &str) -> Option<Arc<ServedModel>>;
    /// Names of every served model.
    fn names(&self) -> Vec<String>;
}

/// The agent's models.
#[derive(Debug, Default)]
pub struct ModelRegistry {
    models: RwLock<BTreeMap<String, Arc<ServedModel>>>,
}

impl ModelRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `model`, replacing one of the same name; returns the replaced model, whose
    /// engine finishes the requests it accepted once the last `Arc` is dropped.
    pub fn insert(&self, model: ServedModel) -> Option<Arc<ServedModel>> {
        self.write().insert(model.name.clone(), Arc::new(model))
    }

    /// Stops serving `name`.
    pub fn remove(&self, name: &str) -> Option<Arc<ServedModel>> {
        self.write().remove(name)
    }

    /// Removes every model (shutdown).
    pub fn clear(&self) -> Vec<Arc<ServedModel>> {
        std::mem::take(&mut *self.write()).into_values().collect()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<ServedModel>>> {
        // A panic while holding the lock cannot leave the map half-updated: keep serving.
        self.models
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<ServedModel>>> {
        self.models
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Models for ModelRegistry {
    fn model(&self, name: &str) -> Option<Arc<ServedModel>> {
        self.read().get(name).cloned()
    }

    fn names(&self) -> Vec<String> {
        self.read().keys().cloned().collect()
    }
}
