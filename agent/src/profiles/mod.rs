//! Serving the OptimizationProfiles planned for this node: watch them (only those labelled
//! `policyserve.io/node=<node>`), and for each fetch the model, tune it inside the profile's
//! search space, serve it, and write what happened to the profile's status.
//!
//! The loop is level-triggered: after every watch event the set of workers is brought in line
//! with the set of profiles. A spec change starts a new worker while the old engine keeps
//! serving until the new one is ready; a deleted profile's model is unloaded once the unload
//! grace has passed.

pub mod neighbours;
pub mod status;
pub mod turns;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use policyserve_crds::{
    AgentEndpoint, Capacity, OptimizationProfile, OptimizationProfileStatus, SearchSpace, Served,
    Targets,
};
use tokio::task::JoinHandle;

use self::status::{StatusWriter, Tuned};
use crate::engine::{Engine, EngineOptions, ModelFiles};
use crate::fetch::{Fetcher, Retrying};
use crate::registry::{ModelRegistry, Models, ServedModel};
use crate::tuner::{self, sweep::SweepSettings};
use crate::{Error, FIELD_MANAGER, Result};

/// What the profile server needs to know about its node.
#[derive(Clone, Debug)]
pub struct ProfileServerConfig {
    /// This node's name.
    pub node: String,
    /// The address clients reach this agent's gRPC port on.
    pub address: IpAddr,
    /// The gRPC port.
    pub port: u16,
    /// Where this agent's own gRPC server is reached from the node itself (capacity sweeps).
    pub loopback: SocketAddr,
    /// The TLS the server at `loopback` speaks, which sweeps speak too.
    pub loopback_tls: Option<Arc<crate::tls::ServerTls>>,
    /// How often an idle model's capacity is probed again.
    pub revalidate: Duration,
    /// The served window's length.
    pub served_window: Duration,
    /// How often the served figures may be written (when they moved).
    pub served_write: Duration,
    /// Re-tune when served latency misses a target this many windows in a row while demand
    /// stays below capacity.
    pub drift_windows: u32,
    /// Re-tune when two probes in a row find capacity lower than recorded by more than this
    /// fraction.
    pub drift_fraction: f64,
    /// How long a model whose profile was deleted goes on serving before it is unloaded.
    pub unload_grace: Duration,
    /// A lock file shared with the other agents on this machine, whose tunings and probes then
    /// take turns with this agent's.
    pub tuning_lock_file: Option<std::path::PathBuf>,
    /// The one namespace whose profiles this agent serves; every namespace's when `None`.
    pub watch_namespace: Option<String>,
    /// Engine settings that are not tuned.
    pub engine: EngineOptions,
}

/// Served figures are rewritten only when one moved by more than this fraction (or a
/// condition changed): a thousand PolicyServices must not become a write storm.
const MOVED: f64 = 0.10;

/// Serves this node's OptimizationProfiles.
pub struct ProfileServer {
    client: Client,
    config: ProfileServerConfig,
    registry: Arc<ModelRegistry>,
    fetcher: Fetcher,
    /// One tuning or probe at a time: measured side by side they would disturb each other.
    turns: turns::Turns,
}

/// A running worker and what it was started for.
struct Worker {
    model: String,
    tuning_key: String,
    generation: Option<i64>,
    /// The targets the worker judges against; a throughput-only edit replaces them in place.
    targets: Arc<Mutex<Targets>>,
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
            turns: turns::Turns::new(config.tuning_lock_file.clone()),
            config,
            registry,
            fetcher,
        }
    }

    /// Watches and serves until the watch ends (it retries with backoff, so in practice until
    /// the task is dropped).
    pub async fn run(self: Arc<Self>) {
        let api = match &self.config.watch_namespace {
            Some(namespace) => {
                Api::<OptimizationProfile>::namespaced(self.client.clone(), namespace)
            }
            None => Api::<OptimizationProfile>::all(self.client.clone()),
        };
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
                        // Only the throughput share changed: the worker judges against it from
                        // its next write on.
                        worker.generation = generation;
                        *lock(&worker.targets) = profile.spec.targets.clone();
                    }
                }
                _ => {
                    let targets = Arc::new(Mutex::new(profile.spec.targets.clone()));
                    let this = Arc::clone(self);
                    let task = tokio::spawn({
                        let targets = Arc::clone(&targets);
                        let profile = Arc::clone(&profile);
                        async move { this.serve(&profile, targets).await }
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
                            targets,
                            task,
                        },
                    );
                }
            }
        }
    }

    /// Unloads `model` once the unload grace has passed: the operator takes the node out of
    /// the endpoints as it deletes the profile, and clients that have not followed yet are
    /// still answered meanwhile.
    fn unload(&self, model: &str) {
        let Some(served) = self.registry.model(model) else {
            return;
        };
        let grace = self.config.unload_grace;
        tracing::info!(
            model,
            grace_seconds = grace.as_secs(),
            "profile deleted: serving out the grace before unloading"
        );
        let (registry, model) = (Arc::clone(&self.registry), model.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            // A profile of the same model may have come back meanwhile (a scale-out) and
            // replaced this engine with its own: that one stays.
            let removed = registry.remove_if_same(&model, &served);
            if removed.is_some() {
                tracing::info!(model, "model unloaded");
            }
            // Dropping an engine joins its workers: keep that off the async threads.
            tokio::task::spawn_blocking(move || drop((served, removed)));
        });
    }

    /// Fetch, check, tune, serve; then keep the served figures current, probe the capacity
    /// again while the model is idle, and re-tune when the figures drift.
    async fn serve(&self, profile: &OptimizationProfile, targets: Arc<Mutex<Targets>>) {
        let namespace = profile.namespace().unwrap_or_default();
        let model = policyserve_crds::model_name(&namespace, &profile.spec.policy_service);
        tracing::info!(model, generation = ?profile.metadata.generation, "loading");
        // What an earlier tuning chose (another generation, or before the agent restarted).
        let earlier = Tuned::recorded(profile.status.as_ref());
        let mut writer = StatusWriter::new(profile.status.clone(), profile.metadata.generation);
        writer.loading();
        self.write(profile, &writer).await;
        let files = match self.load(profile, &model, &mut writer).await {
            Ok(files) => files,
            Err(e) => return self.fail(profile, &model, &mut writer, &e).await,
        };
        let why = earlier.as_ref().map(|_| {
            if profile.status.as_ref().and_then(|s| s.observed_generation)
                == profile.metadata.generation
            {
                "the agent started again".to_owned()
            } else {
                "the profile changed".to_owned()
            }
        });
        let retune = earlier.zip(why);
        if let Err(e) = self
            .tune_and_serve(profile, &model, &files, &mut writer, retune)
            .await
        {
            return self.fail(profile, &model, &mut writer, &e).await;
        }
        let mut next_probe = tokio::time::Instant::now() + self.config.revalidate;
        let mut judged_targets = lock(&targets).clone();
        let mut drift = Drift::default();
        let mut fall = Fall::default();
        loop {
            tokio::time::sleep(self.config.served_write).await;
            let Some(current) = self.registry.model(&model) else {
                return;
            };
            let served = current.traffic.summary(std::time::Instant::now());
            let idle = served.requests == 0 && served.rejected == 0;
            let capacity = writer.status.capacity.clone();
            let lasting = self.config.served_window * self.config.drift_windows.max(1);
            let mut why = drift.observe(&served, capacity.as_ref(), &judged_targets, lasting);
            let mut changed = writer.served(served, MOVED);
            if why.is_none() && idle && tokio::time::Instant::now() >= next_probe {
                next_probe = tokio::time::Instant::now() + self.config.revalidate;
                if let Some(probed) = self.probe(profile, &current, &judged_targets).await {
                    why = fall.observe(capacity.as_ref(), &probed, self.config.drift_fraction);
                    writer.capacity(probed);
                    changed = true;
                }
                if fall.pending() {
                    // A fall awaits its second look: at the next idle moment, not in `revalidate`.
                    next_probe = tokio::time::Instant::now();
                }
            }
            if let Some(why) = why {
                let earlier = Tuned::recorded(Some(&writer.status));
                tracing::info!(model, %why, "re-tuning");
                if let Err(e) = self
                    .tune_and_serve(profile, &model, &files, &mut writer, earlier.zip(Some(why)))
                    .await
                {
                    tracing::warn!(model, "re-tuning failed, the old engine keeps serving: {e}");
                }
                drift = Drift::default();
                fall = Fall::default();
                changed = true;
            }
            let now_targets = lock(&targets).clone();
            changed |= now_targets != judged_targets;
            judged_targets = now_targets;
            changed |= writer.judge(&judged_targets);
            if changed {
                self.write(profile, &writer).await;
            }
        }
    }

    async fn fail(
        &self,
        profile: &OptimizationProfile,
        model: &str,
        writer: &mut StatusWriter,
        error: &Error,
    ) {
        tracing::warn!(model, "cannot serve: {error}");
        writer.failed(error, self.registry.model(model).is_some());
        self.write(profile, writer).await;
    }

    /// Fetches and checks the model files.
    async fn load(
        &self,
        profile: &OptimizationProfile,
        model: &str,
        writer: &mut StatusWriter,
    ) -> Result<ModelFiles> {
        let spec = &profile.spec;
        let namespace = profile.namespace().unwrap_or_default();
        // Transient failures (a ConfigMap created later, an HTTP 503) are retried with backoff
        // until the profile changes; each failed attempt is reported as it happens.
        let files = self
            .fetcher
            .model_with_retries(&namespace, model, &spec.model, |retry: &Retrying<'_>| {
                writer.fetch_retrying(retry);
                self.write_status(profile, writer.status.clone())
            })
            .await?;
        check_memory(&files, &spec.targets)?;
        let check = files.clone();
        let options = self.config.engine.clone();
        blocking(move || {
            Engine::load(&check, &policyserve_crds::EngineConfig::default(), &options)?;
            Ok(())
        })
        .await?;
        writer.loaded();
        Ok(files)
    }

    /// Tunes `files` inside the profile's search space and serves the result, replacing the
    /// engine that serves now only once the new one is ready; `retune` says what was chosen
    /// before and why it is tuned again.
    async fn tune_and_serve(
        &self,
        profile: &OptimizationProfile,
        model: &str,
        files: &ModelFiles,
        writer: &mut StatusWriter,
        retune: Option<(Tuned, String)>,
    ) -> Result<()> {
        let spec = &profile.spec;
        let space = fit_to_host(&spec.search_space, files);
        writer.tuning(spec.tuning_budget_seconds, space.size());
        self.write(profile, writer).await;
        tracing::info!(
            model,
            candidates = space.size(),
            budget_seconds = spec.tuning_budget_seconds,
            "tuning"
        );

        let budget = Duration::from_secs(u64::from(spec.tuning_budget_seconds.max(1)));
        let (tuning, engine, beside) = {
            let _turn = self.turns.take().await?;
            let before = neighbours::Before::take(&self.registry, budget);
            let (files, targets, options) = (
                files.clone(),
                spec.targets.clone(),
                self.config.engine.clone(),
            );
            let (registry, address) = (Arc::clone(&self.registry), self.config.loopback);
            let tls = self.config.loopback_tls.clone();
            let (tuning, engine) = blocking(move || {
                let loopback = tuner::Loopback {
                    registry: &registry,
                    address,
                    tls: tls.as_deref(),
                };
                tuner::tune(
                    &files,
                    &targets,
                    &space,
                    &options,
                    budget,
                    loopback,
                    &mut |_| {},
                )
            })
            .await?;
            (tuning, engine, before.effects(&self.registry))
        };
        for effect in &beside {
            tracing::info!(model, "while tuning, {effect}");
        }
        writer.tuned(&tuning, retune.as_ref(), &beside);
        writer.judge(&spec.targets);
        let window = u32::try_from(self.config.served_window.as_secs()).unwrap_or(u32::MAX);
        if let Some(previous) = self
            .registry
            .insert(ServedModel::new(model, engine, window.max(1)))
        {
            tokio::task::spawn_blocking(move || drop(previous));
        }
        let endpoint = AgentEndpoint {
            address: self.config.address.to_string(),
            port: i32::from(self.config.port),
            model_name: model.to_owned(),
        };
        writer.serving(true, Some(endpoint), "the tuned model");
        self.write(profile, writer).await;
        tracing::info!(
            model,
            config = ?tuning.chosen.config,
            capacity_rps = tuning.chosen.capacity.throughput_rps,
            failing = ?tuning.failing,
            "serving"
        );
        Ok(())
    }

    /// Sweeps the served model's capacity again with probe requests, holding the tuning lock;
    /// `None` when a real request arrived (the probe stops at once) or the sweep failed.
    async fn probe(
        &self,
        profile: &OptimizationProfile,
        served: &Arc<ServedModel>,
        targets: &Targets,
    ) -> Option<Capacity> {
        let _turn = match self.turns.take().await {
            Ok(turn) => turn,
            Err(e) => {
                tracing::warn!(model = %served.name, "no turn to probe: {e}");
                return None;
            }
        };
        let (served, targets) = (Arc::clone(served), targets.clone());
        let (address, tls) = (self.config.loopback, self.config.loopback_tls.clone());
        let budget = Duration::from_secs(u64::from(profile.spec.tuning_budget_seconds.max(1)));
        let arrivals = served.traffic.arrivals();
        let result = blocking(move || {
            let input = &served.engine.signature().input;
            let ceiling = served
                .traffic
                .summary(std::time::Instant::now())
                .throughput_rps;
            let settings = SweepSettings::for_budget(budget / 2, ceiling.max(1000.0) * 64.0);
            let stop = || served.traffic.arrivals() != arrivals;
            let result = tuner::capacity_sweep(
                address,
                tls.as_deref(),
                &served.name,
                &input.name,
                input.row_len(),
                &targets,
                &settings,
                &stop,
            )?;
            // A real request that arrived after the last probe request was sent still shares
            // the probe's time: its figure is then not an idle node's, and is dropped.
            let undisturbed = !result.stopped && !stop();
            Ok(result.capacity.filter(|_| undisturbed).map(|mut c| {
                c.measured_at = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    jiff::Timestamp::now(),
                ));
                c.method = tuner::method(&settings);
                c
            }))
        })
        .await;
        match result {
            Ok(capacity) => capacity,
            Err(e) => {
                tracing::warn!(model = %profile.spec.policy_service, "capacity probe failed: {e}");
                None
            }
        }
    }

    /// Writes the whole status by server-side apply, so that a figure that went away (a
    /// latency of an idle window) goes from the stored status too; a failure is logged, not
    /// fatal (the next write carries it all).
    async fn write(&self, profile: &OptimizationProfile, writer: &StatusWriter) {
        self.write_status(profile, writer.status.clone()).await;
    }

    /// The write of `status` as a future that owns what it needs.
    fn write_status(
        &self,
        profile: &OptimizationProfile,
        status: OptimizationProfileStatus,
    ) -> impl Future<Output = ()> + Send + 'static {
        let api = Api::<OptimizationProfile>::namespaced(
            self.client.clone(),
            &profile.namespace().unwrap_or_default(),
        );
        let name = profile.name_any();
        async move {
            let patch = serde_json::json!({
                "apiVersion": OptimizationProfile::api_version(&()),
                "kind": OptimizationProfile::kind(&()),
                "status": status,
            });
            let params = PatchParams::apply(FIELD_MANAGER).force();
            if let Err(e) = api
                .patch_status(&name, &params, &Patch::Apply(&patch))
                .await
            {
                tracing::warn!(profile = %name, "cannot write status: {e}");
            }
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

/// Watches the served figures for a latency target missed while demand stays below capacity:
/// the configuration, not the load, is then at fault (noisy neighbours, a changed input
/// distribution), and a new tuning may find a better one.
#[derive(Debug, Default)]
struct Drift {
    since: Option<std::time::Instant>,
}

impl Drift {
    /// Records one look at the figures; `Some(why)` once the miss has lasted `lasting` (the
    /// configured number of windows).
    fn observe(
        &mut self,
        served: &Served,
        capacity: Option<&Capacity>,
        targets: &Targets,
        lasting: Duration,
    ) -> Option<String> {
        let misses = targets.latency_misses(served);
        let below_capacity = capacity.is_some_and(|c| served.demand_rps < c.throughput_rps);
        if !(served.judgeable() && below_capacity) || misses.is_empty() {
            self.since = None;
            return None;
        }
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        (since.elapsed() >= lasting).then(|| {
            let misses: Vec<String> = misses.iter().map(ToString::to_string).collect();
            format!(
                "served {} for {} s at demand {:.0} rps, below capacity {:.0} rps",
                misses.join(", "),
                since.elapsed().as_secs(),
                served.demand_rps,
                capacity.map_or(0.0, |c| c.throughput_rps)
            )
        })
    }
}

/// Falls of capacity that probes found. One probe on a noisy node can find far less than the
/// tuning did, even no rate at all (a pause of the node's other work fell inside its steps), and
/// a re-tuning is a whole tuning budget of load on the node: the agent re-tunes only when the
/// next probe finds the fall too, as the sweep reports only a rate that held twice.
#[derive(Debug, Default)]
struct Fall {
    /// The capacity recorded before a first probe fell below it, while the next is awaited.
    from: Option<Capacity>,
}

impl Fall {
    /// Why `probed` calls for a re-tuning, given the capacity `recorded` before it.
    fn observe(
        &mut self,
        recorded: Option<&Capacity>,
        probed: &Capacity,
        fraction: f64,
    ) -> Option<String> {
        let first = self.from.take();
        let old = first.as_ref().or(recorded)?;
        let why = fell(old, probed, fraction)?;
        if first.is_some() {
            return Some(format!("{why}, as did the probe before it"));
        }
        self.from = Some(old.clone());
        None
    }

    /// Whether a fall awaits the next probe.
    fn pending(&self) -> bool {
        self.from.is_some()
    }
}

/// Why a probe's capacity is a fall: it is lower by more than `fraction`.
fn fell(old: &Capacity, new: &Capacity, fraction: f64) -> Option<String> {
    (new.throughput_rps < old.throughput_rps * (1.0 - fraction)).then(|| {
        format!(
            "a probe measured {:.0} rps, more than {:.0}% below the {:.0} rps recorded",
            new.throughput_rps,
            fraction * 100.0,
            old.throughput_rps
        )
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data: a panic elsewhere leaves it usable.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Runs ONNX Runtime work on the blocking pool, never on async worker threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(Error::Task)?
}

#[cfg(test)]
mod tests {
    use policyserve_crds::MIN_SERVED_REQUESTS;

    use super::*;

    fn served(p99_ms: f64, demand_rps: f64, requests: u64) -> Served {
        Served {
            window_seconds: 60,
            requests,
            latency_p99_ms: Some(p99_ms),
            demand_rps,
            ..Served::default()
        }
    }

    fn capacity(rps: f64) -> Capacity {
        Capacity {
            throughput_rps: rps,
            ..Capacity::default()
        }
    }

    #[test]
    fn a_fall_of_capacity_is_re_tuned_on_only_when_the_next_probe_finds_it_too() {
        let recorded = capacity(1000.0);
        // One probe's fall waits for the next; a recovery forgets it.
        let mut fall = Fall::default();
        assert_eq!(fall.observe(Some(&recorded), &capacity(0.0), 0.25), None);
        assert!(fall.pending());
        // The next probe is compared with the figure before the fall, not with the fall
        // itself (which the status now shows).
        assert_eq!(
            fall.observe(Some(&capacity(0.0)), &capacity(900.0), 0.25),
            None
        );
        assert!(!fall.pending());
        // Two falls in a row: a re-tuning, which says both.
        assert_eq!(fall.observe(Some(&recorded), &capacity(500.0), 0.25), None);
        let why = fall
            .observe(Some(&capacity(500.0)), &capacity(600.0), 0.25)
            .unwrap();
        assert!(
            why.contains("a probe measured 600 rps, more than 25% below the 1000 rps recorded")
                && why.contains("as did the probe before it"),
            "{why}"
        );
        assert!(!fall.pending());
        // A rise, or a fall within the fraction, is no fall; nothing recorded, nothing to fall
        // from.
        assert_eq!(fall.observe(Some(&recorded), &capacity(800.0), 0.25), None);
        assert_eq!(fall.observe(None, &capacity(0.0), 0.25), None);
        assert!(!fall.pending());
    }

    #[test]
    fn drift_is_a_judged_miss_below_capacity_that_lasts() {
        let targets = Targets {
            latency_p99_ms: Some(3.0),
            ..Targets::default()
        };
        let busy = MIN_SERVED_REQUESTS;
        let now = Duration::ZERO;
        let mut drift = Drift::default();
        let why = drift
            .observe(
                &served(5.0, 600.0, busy),
                Some(&capacity(1000.0)),
                &targets,
                now,
            )
            .unwrap();
        assert!(
            why.contains("served latencyP99Ms 5.000 > 3")
                && why.contains("at demand 600 rps, below capacity 1000 rps"),
            "{why}"
        );
        // Not yet lasting: nothing, and the miss is remembered from its first look.
        let mut young = Drift::default();
        let a_while = Duration::from_secs(3600);
        let miss = served(5.0, 600.0, busy);
        assert_eq!(
            young.observe(&miss, Some(&capacity(1000.0)), &targets, a_while),
            None
        );
        assert!(young.since.is_some());
        // Demand at capacity (the load is at fault), too few requests to judge, no capacity,
        // or no miss: no drift, and the count starts again.
        for (figures, cap) in [
            (served(5.0, 1000.0, busy), Some(capacity(1000.0))),
            (served(5.0, 600.0, busy - 1), Some(capacity(1000.0))),
            (served(5.0, 600.0, busy), None),
            (served(2.0, 600.0, busy), Some(capacity(1000.0))),
        ] {
            let mut drift = Drift::default();
            assert_eq!(drift.observe(&figures, cap.as_ref(), &targets, now), None);
            assert_eq!(drift.since, None);
        }
    }
}
