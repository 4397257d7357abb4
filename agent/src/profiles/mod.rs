//! Serving the OptimizationProfiles planned for this node: watch them (only those labelled
//! `policyserve.io/node=<node>`), and for each fetch the model, tune it inside the profile's
//! search space, serve it, and write what happened to the profile's status.
//!
//! The loop is level-triggered: after every watch event the set of workers is brought in line
//! with the set of profiles. A spec change starts a new worker while the old engine keeps
//! serving until the new one is ready; a deleted profile's model is unloaded.

pub mod status;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, ResourceExt};
use policyserve_crds::{AgentEndpoint, OptimizationProfile, SearchSpace, Targets};
use tokio::task::JoinHandle;

use self::status::StatusWriter;
use crate::engine::{Engine, EngineOptions, ModelFiles};
use crate::fetch::Fetcher;
use crate::registry::{ModelRegistry, Models, ServedModel};
use crate::tuner::{self, Candidate, MeasureSettings};
use crate::{Error, Result};

/// What the profile server needs to know about its node.
#[derive(Clone, Debug)]
pub struct ProfileServerConfig {
    /// This node's name.
    pub node: String,
    /// The address clients reach this agent's gRPC port on.
    pub address: IpAddr,
    /// The gRPC port.
    pub port: u16,
    /// How often a served model is re-measured.
    pub revalidate: Duration,
    /// Engine settings that are not tuned.
    pub engine: EngineOptions,
}

/// Serves this node's OptimizationProfiles.
pub struct ProfileServer {
    client: Client,
    config: ProfileServerConfig,
    registry: Arc<ModelRegistry>,
    fetcher: Fetcher,
    /// One tuning at a time: candidates measured side by side would disturb each other.
    tuning: tokio::sync::Mutex<()>,
}

/// A running worker and what it was started for.
struct Worker {
    model: String,
    tuning_key: String,
    generation: Option<i64>,
    outcome: Arc<Mutex<Option<Candidate>>>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for ProfileServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileServer")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// A worker ends with its entry: when the profile goes, its spec changes, or the agent stops.
impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ProfileServer {
    /// A server publishing models into `registry`.
    pub fn new(
        client: Client,
        config: ProfileServerConfig,
        registry: Arc<ModelRegistry>,
        fetcher: Fetcher,
    ) -> Self {
        Self {
            client,
            config,
            registry,
            fetcher,
            tuning: tokio::sync::Mutex::new(()),
        }
    }

    /// Watches and serves until the watch ends (it retries with backoff, so in practice until
    /// the task is dropped).
    pub async fn run(self: Arc<Self>) {
        let api = Api::<OptimizationProfile>::all(self.client.clone());
        let selector = format!("{}={}", policyserve_crds::NODE_LABEL, self.config.node);
        let (store, writer) = reflector::store();
        // Every event, not only touched objects: after a restart the profiles arrive in the
        // initial list, and the store holds them only once InitDone has been seen.
        let events = reflector::reflector(
            writer,
            watcher(api, watcher::Config::default().labels(&selector)),
        )
        .default_backoff();
        tokio::pin!(events);
        let mut workers: HashMap<ObjectRef<OptimizationProfile>, Worker> = HashMap::new();
        while let Some(event) = events.next().await {
            if let Err(e) = event {
                tracing::warn!("profile watch: {e}");
                continue;
            }
            self.sync(&store, &mut workers);
        }
    }

    /// Brings the workers in line with the profiles in `store`.
    fn sync(
        self: &Arc<Self>,
        store: &Store<OptimizationProfile>,
        workers: &mut HashMap<ObjectRef<OptimizationProfile>, Worker>,
    ) {
        let profiles = store.state();
        workers.retain(|key, worker| {
            let present = profiles
                .iter()
                .any(|p| ObjectRef::from_obj(p.as_ref()) == *key);
            if !present {
                self.unload(&worker.model);
            }
            present
        });
        for profile in profiles {
            let key = ObjectRef::from_obj(profile.as_ref());
            let tuning_key = tuning_key(&profile);
            let generation = profile.metadata.generation;
            match workers.get_mut(&key) {
                Some(worker) if worker.tuning_key == tuning_key => {
                    if worker.generation != generation {
                        // Only the targets changed: judge the served configuration again.
                        worker.generation = generation;
                        let outcome = worker.outcome.lock().ok().and_then(|o| o.clone());
                        if let Some(outcome) = outcome {
                            let this = Arc::clone(self);
                            tokio::spawn(async move { this.rejudge(&profile, outcome).await });
                        }
                    }
                }
                _ => {
                    let outcome = Arc::new(Mutex::new(None));
                    let this = Arc::clone(self);
                    let task = tokio::spawn({
                        let outcome = Arc::clone(&outcome);
                        let profile = Arc::clone(&profile);
                        async move { this.serve(&profile, outcome).await }
                    });
                    let model = policyserve_crds::model_name(
                        &profile.namespace().unwrap_or_default(),
                        &profile.spec.policy_service,
                    );
                    workers.insert(
                        key,
                        Worker {
                            model,
                            tuning_key,
                            generation,
                            outcome,
                            task,
                        },
                    );
                }
            }
        }
    }

    fn unload(&self, model: &str) {
        if let Some(served) = self.registry.remove(model) {
            tracing::info!(model, "profile deleted: model unloaded");
            // Dropping an engine joins its workers: keep that off the async threads.
            tokio::task::spawn_blocking(move || drop(served));
        }
    }

    /// Fetch, check, tune, serve, then re-measure periodically.
    async fn serve(&self, profile: &OptimizationProfile, outcome: Arc<Mutex<Option<Candidate>>>) {
        let namespace = profile.namespace().unwrap_or_default();
        let model = policyserve_crds::model_name(&namespace, &profile.spec.policy_service);
        tracing::info!(model, generation = ?profile.metadata.generation, "loading");
        let mut writer = StatusWriter::new(profile.status.clone(), profile.metadata.generation);
        writer.loading();
        self.write(profile, &writer).await;
        let served = match self.load_and_tune(profile, &model, &mut writer).await {
            Ok(served) => served,
            Err(e) => {
                tracing::warn!(model, "cannot serve: {e}");
                writer.failed(&e, self.registry.model(&model).is_some());
                self.write(profile, &writer).await;
                return;
            }
        };
        if let Ok(mut slot) = outcome.lock() {
            *slot = Some(served.clone());
        }
        loop {
            tokio::time::sleep(self.config.revalidate).await;
            let Some(current) = self.registry.model(&model) else {
                return;
            };
            let targets = profile.spec.targets.clone();
            let measured =
                tokio::task::spawn_blocking(move || revalidate(&current.engine, &targets)).await;
            match measured {
                Ok(Ok(candidate)) => {
                    writer.measured(&candidate);
                    self.write(profile, &writer).await;
                    if let Ok(mut slot) = outcome.lock() {
                        *slot = Some(candidate);
                    }
                }
                Ok(Err(e)) => tracing::warn!(model, "re-measuring failed: {e}"),
                Err(e) => tracing::warn!(model, "re-measuring panicked: {e}"),
            }
        }
    }

    async fn load_and_tune(
        &self,
        profile: &OptimizationProfile,
        model: &str,
        writer: &mut StatusWriter,
    ) -> Result<Candidate> {
        let spec = &profile.spec;
        let namespace = profile.namespace().unwrap_or_default();
        let files = self.fetcher.model(&namespace, model, &spec.model).await?;
        check_memory(&files, &spec.targets)?;
        let check = files.clone();
        let options = self.config.engine.clone();
        blocking(move || {
            Engine::load(&check, &policyserve_crds::EngineConfig::default(), &options).map(drop)
        })
        .await?;
        let space = fit_to_host(&spec.search_space, &files);
        writer.tuning(spec.tuning_budget_seconds, space.size());
        self.write(profile, writer).await;
        tracing::info!(
            model,
            candidates = space.size(),
            budget_seconds = spec.tuning_budget_seconds,
            "tuning"
        );

        let report = {
            let _turn = self.tuning.lock().await;
            let (files, targets, options) = (
                files.clone(),
                spec.targets.clone(),
                self.config.engine.clone(),
            );
            let budget = Duration::from_secs(u64::from(spec.tuning_budget_seconds.max(1)));
            blocking(move || {
                tuner::quick_search(&files, &targets, &space, &options, budget, &mut |_| {})
            })
            .await?
        };
        writer.tuned(&report.chosen, report.candidates.len());

        let (config, options, name) = (
            report.chosen.config.clone(),
            self.config.engine.clone(),
            model.to_owned(),
        );
        let engine = blocking(move || {
            let engine = Engine::load(&files, &config, &options)?;
            engine.warm_up()?;
            Ok(engine)
        })
        .await?;
        if let Some(previous) = self.registry.insert(ServedModel {
            name,
            version: "1".into(),
            engine,
        }) {
            tokio::task::spawn_blocking(move || drop(previous));
        }
        let endpoint = AgentEndpoint {
            address: self.config.address.to_string(),
            port: i32::from(self.config.port),
            model_name: model.to_owned(),
        };
        writer.serving(true, Some(endpoint), "the tuned model");
        self.write(profile, writer).await;
        tracing::info!(model, config = ?report.chosen.config, failing = ?report.failing, "serving");
        Ok(report.chosen)
    }

    /// The targets changed but not what was tuned: judge the served figures against them.
    async fn rejudge(&self, profile: &OptimizationProfile, mut outcome: Candidate) {
        outcome.failing = tuner::failing(&profile.spec.targets, &outcome.measured);
        let api = Api::<OptimizationProfile>::namespaced(
            self.client.clone(),
            &profile.namespace().unwrap_or_default(),
        );
        let stored = api
            .get_status(&profile.name_any())
            .await
            .ok()
            .and_then(|p| p.status);
        let mut writer = StatusWriter::new(stored, profile.metadata.generation);
        writer.measured(&outcome);
        self.write(profile, &writer).await;
    }

    /// Writes the status; a failure is logged, not fatal (the next write carries it all).
    async fn write(&self, profile: &OptimizationProfile, writer: &StatusWriter) {
        let api = Api::<OptimizationProfile>::namespaced(
            self.client.clone(),
            &profile.namespace().unwrap_or_default(),
        );
        let patch = serde_json::json!({ "status": writer.status });
        if let Err(e) = api
            .patch_status(
                &profile.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
        {
            tracing::warn!(profile = %profile.name_any(), "cannot write status: {e}");
        }
    }
}

/// What a new tuning depends on: everything in the spec except the throughput target, which
/// the operator recomputes per node whenever the replica count changes.
fn tuning_key(profile: &OptimizationProfile) -> String {
    let mut spec = profile.spec.clone();
    spec.targets.throughput_rps = None;
    serde_json::to_string(&spec).unwrap_or_default()
}

/// Refuses a model whose file alone is larger than the memory limit: it could never fit.
fn check_memory(files: &ModelFiles, targets: &Targets) -> Result<()> {
    let Ok(Some(limit_mib)) = targets.memory_limit_mib() else {
        return Ok(());
    };
    let smallest_mib = files.smallest_file_bytes() as f64 / (1024.0 * 1024.0);
    if smallest_mib > limit_mib {
        return Err(Error::MemoryLimitExceeded(format!(
            "the smallest model file is {smallest_mib:.1} MiB, more than memoryLimit {limit_mib:.1} MiB"
        )));
    }
    Ok(())
}

/// The search space limited to what runs here: threads and instances beyond this machine's
/// CPUs only oversubscribe it (a simulated node may describe more CPUs than exist), and
/// precisions without a file are dropped (fp16 stays, for TensorRT).
fn fit_to_host(space: &SearchSpace, files: &ModelFiles) -> SearchSpace {
    let host = crate::async_runtime::usable_cpus() as u32;
    let fit = |values: &[u32]| -> Vec<u32> {
        let kept: Vec<u32> = values.iter().copied().filter(|v| *v <= host).collect();
        if kept.is_empty() { vec![1] } else { kept }
    };
    let available = files.precisions();
    let mut precisions: Vec<_> = space
        .precisions
        .iter()
        .copied()
        .filter(|p| available.contains(p) || *p == policyserve_crds::Precision::Fp16)
        .collect();
    if precisions.is_empty() {
        precisions.push(policyserve_crds::Precision::Fp32);
    }
    SearchSpace {
        intra_op_threads: fit(&space.intra_op_threads),
        instances: fit(&space.instances),
        precisions,
        ..space.clone()
    }
}

/// Re-measures the served engine briefly.
fn revalidate(engine: &Engine, targets: &Targets) -> Result<Candidate> {
    let measured = tuner::measure(
        engine,
        MeasureSettings {
            window: Duration::from_secs(1),
        },
    )?;
    Ok(Candidate {
        config: engine.config().clone(),
        failing: tuner::failing(targets, &measured),
        measured,
        fallbacks: engine.fallbacks().to_vec(),
    })
}

/// Runs ONNX Runtime work on the blocking pool, never on async worker threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Error::Inference(format!("worker task failed: {e}")))?
}
