//! The PolicyService controller: observe → validate → desired (pure) → apply → status.

mod apply;
mod desired;
mod events;
#[cfg(test)]
mod fixtures;
mod liveness;
mod node;
mod observe;
mod placement;
mod scaling;
mod selector;
mod service;
mod status;
mod validate;

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{self, finalizer};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use policyserve_crds::{
    HARDWARE_CLASS_LABEL, NODE_LABEL, OptimizationProfile, POLICY_SERVICE_LABEL, PolicyService,
    PolicyServiceStatus,
};

pub use apply::FIELD_MANAGER;
pub use service::{EndpointsApi, service_name};
pub use status::reasons;
pub use validate::{Invalid, Validated, validate, validate_spec};

use crate::metrics::Metrics;
use crate::{Error, Result};

/// Finalizer on every PolicyService: its OptimizationProfiles are deleted before it goes.
pub const FINALIZER: &str = "policyserve.io/cleanup";

/// How the controller runs; [`crate::Args::controller_config`] builds it from the flags.
#[derive(Clone, Debug, PartialEq)]
pub struct ControllerConfig {
    /// Reconcile PolicyServices (and their profiles) in this namespace only.
    pub namespace: Option<String>,
    /// Label selector narrowing the Nodes considered, on top of the hardware-class label.
    pub node_selector: Option<String>,
    /// `tuningBudgetSeconds` written into every OptimizationProfile.
    pub tuning_budget_seconds: u32,
    /// How long a lower replica count must be recommended before scaling down.
    pub scale_down_stabilization: Duration,
    /// Reconcile every PolicyService at least this often.
    pub resync_interval: Duration,
    /// PolicyServices reconciled at once.
    pub concurrency: u16,
    /// This replica's name in Events (`reportingInstance`).
    pub instance: Option<String>,
    /// Namespace of the agents' Leases (the agent DaemonSet's namespace).
    pub agent_namespace: String,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            namespace: None,
            node_selector: None,
            tuning_budget_seconds: 30,
            scale_down_stabilization: Duration::from_secs(60),
            resync_interval: Duration::from_secs(300),
            concurrency: 16,
            instance: None,
            agent_namespace: "default".into(),
        }
    }
}

impl ControllerConfig {
    /// The Node label selector: the agent's hardware-class label plus `node_selector`.
    pub fn node_label_selector(&self) -> String {
        match self.node_selector.as_deref().map(str::trim) {
            Some(extra) if !extra.is_empty() => format!("{HARDWARE_CLASS_LABEL},{extra}"),
            _ => HARDWARE_CLASS_LABEL.to_owned(),
        }
    }
}

/// Shared state of all reconciles.
struct Context {
    client: Client,
    config: ControllerConfig,
    nodes: Store<PartialNode>,
    profiles: Store<OptimizationProfile>,
    leases: Store<Lease>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    /// Scaling recommendations per PolicyService, for the stabilization window. In memory,
    /// like the HorizontalPodAutoscaler's; a new leader starts from the last decision.
    history: Mutex<HashMap<ObjectRef<PolicyService>, scaling::History>>,
    /// Consecutive transient failures per PolicyService, for the retry backoff.
    failures: Mutex<HashMap<ObjectRef<PolicyService>, u32>>,
    /// Which API carries the Services' endpoints on this cluster (asked once at start).
    endpoints_api: EndpointsApi,
    /// The Service and endpoints last applied per PolicyService, and when: unchanged ones are
    /// applied again only once a resync interval has passed (repairing edits and deletions by
    /// others) rather than on every reconcile.
    published: Mutex<HashMap<ObjectRef<PolicyService>, (service::Published, Instant)>>,
    /// Set once the Node, profile and Lease caches hold their first full list. Reconciles wait
    /// on this, not on each cache: a cache's readiness wakes only the last of several tasks
    /// waiting on it (kube-runtime's `DelayedInit` keeps one waker), so sixteen reconciles
    /// waiting at start-up left fifteen parked for good.
    caches_ready: tokio::sync::OnceCell<()>,
}

impl Context {
    /// Waits until every cache a reconcile reads is filled; one task waits on the caches,
    /// every other on it.
    async fn caches_ready(&self) -> Result<()> {
        self.caches_ready
            .get_or_try_init(|| async {
                self.nodes
                    .wait_until_ready()
                    .await
                    .map_err(|_| Error::CacheStopped("Node"))?;
                self.profiles
                    .wait_until_ready()
                    .await
                    .map_err(|_| Error::CacheStopped("OptimizationProfile"))?;
                self.leases
                    .wait_until_ready()
                    .await
                    .map_err(|_| Error::CacheStopped("Lease"))
            })
            .await
            .map(|_| ())
    }
}

/// The metadata-only view of a Node the controller caches (labels, no status).
type PartialNode = kube::core::PartialObjectMeta<Node>;

fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(namespace) => Api::namespaced(client.clone(), namespace),
        None => Api::all(client.clone()),
    }
}

/// Triggers only on what the operator plans from: the spec (generation), the finalizers and
/// deletion. Its own status writes do not come back as reconciles.
fn planning_inputs(ps: &PolicyService) -> Option<u64> {
    let mut hasher = DefaultHasher::new();
    ps.metadata.generation.hash(&mut hasher);
    ps.finalizers().hash(&mut hasher);
    ps.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    Some(hasher.finish())
}

/// Runs the controller until `shutdown` resolves, then finishes the reconciles in flight.
/// Tests run it in-process against a test apiserver; [`crate::run`] adds the metrics server,
/// leader election and signal handling.
///
/// # Errors
/// When the Nodes or PolicyServices cannot be listed at start (no CRDs, no permission, or a
/// malformed `node_selector`).
pub async fn run_controller(
    client: Client,
    config: ControllerConfig,
    metrics: Arc<Metrics>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) -> Result<()> {
    let namespace = config.namespace.clone();
    let namespace = namespace.as_deref();
    let policy_services: Api<PolicyService> = scoped(&client, namespace);
    let profiles: Api<OptimizationProfile> = scoped(&client, namespace);
    // Metadata only: labels are all the planner reads, and Node status (images, conditions)
    // is most of a Node's size.
    let nodes: Api<PartialNode> = Api::all(client.clone());
    let node_selector = config.node_label_selector();

    // Fail at start, with a clear message, rather than retrying a broken watch forever.
    nodes
        .list_metadata(&ListParams::default().labels(&node_selector).limit(1))
        .await
        .map_err(Error::kube(format!(
            "list Nodes matching {node_selector:?}"
        )))?;
    policy_services
        .list_metadata(&ListParams::default().limit(1))
        .await
        .map_err(Error::kube("list PolicyServices (are the CRDs installed?)"))?;
    let endpoints_api = apply::detect_endpoints_api(&client).await?;
    match endpoints_api {
        EndpointsApi::EndpointSlice => tracing::info!(
            api = endpoints_api.as_str(),
            "publishing each PolicyService's agents as EndpointSlices of its Service"
        ),
        EndpointsApi::Endpoints => tracing::warn!(
            api = endpoints_api.as_str(),
            "this cluster serves no discovery.k8s.io/v1; publishing each PolicyService's \
             agents in a core/v1 Endpoints object named like its Service"
        ),
    }

    let (node_store, node_writer) = reflector::store();
    let mut tracker = observe::NodeLabelTracker::default();
    let node_changes = watcher(nodes, watcher::Config::default().labels(&node_selector))
        .default_backoff()
        .reflect(node_writer)
        .filter_map(move |event| {
            let changed = match event {
                Ok(event) => tracker.changed(&event),
                Err(error) => {
                    tracing::warn!(%error, "Node watch failed; retrying");
                    false
                }
            };
            std::future::ready(changed.then_some(()))
        });

    let (profile_store, profile_writer) = reflector::store();
    let profile_events = watcher(
        profiles,
        watcher::Config::default().labels(POLICY_SERVICE_LABEL),
    )
    .default_backoff()
    .reflect(profile_writer)
    .touched_objects();

    // Cached, not watched for reconciles: agents renew every 10 s, and a reconcile looks again
    // when the first serving agent's Lease would run out.
    let (lease_store, lease_writer) = reflector::store();
    let leases: Api<Lease> = Api::namespaced(client.clone(), &config.agent_namespace);
    let lease_events = watcher(leases, watcher::Config::default().labels(NODE_LABEL))
        .default_backoff()
        .reflect(lease_writer)
        .for_each(|event| {
            if let Err(error) = event {
                tracing::warn!(%error, "agent Lease watch failed; retrying");
            }
            std::future::ready(())
        });

    let (ps_store, ps_writer) = reflector::store();
    let ps_events = watcher(policy_services, watcher::Config::default())
        .default_backoff()
        .reflect(ps_writer)
        .touched_objects()
        .predicate_filter(planning_inputs, Default::default());

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "policyserve-operator".into(),
            instance: config.instance.clone(),
        },
    );
    let concurrency = config.concurrency;
    let context = Arc::new(Context {
        client,
        config,
        nodes: node_store,
        profiles: profile_store,
        leases: lease_store,
        recorder,
        metrics,
        history: Mutex::default(),
        failures: Mutex::default(),
        endpoints_api,
        published: Mutex::default(),
        caches_ready: tokio::sync::OnceCell::new(),
    });

    tracing::info!(namespace = ?namespace, %node_selector, "controller started");
    let lease_task = tokio::spawn(lease_events);
    Controller::for_stream(ps_events, ps_store)
        .owns_stream(profile_events)
        .reconcile_all_on(node_changes)
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, context)
        .for_each(|result| {
            if let Err(error) = result {
                tracing::debug!(%error, "reconcile did not complete");
            }
            std::future::ready(())
        })
        .await;
    lease_task.abort();
    tracing::info!("controller stopped");
    Ok(())
}

#[tracing::instrument(skip_all, fields(policy_service = %ObjectRef::from_obj(ps.as_ref())))]
async fn reconcile(ps: Arc<PolicyService>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let key = ObjectRef::from_obj(ps.as_ref());
    let result = reconcile_with_finalizer(ps, &ctx).await;
    ctx.metrics
        .reconciled(started.elapsed(), result.as_ref().err());
    if result.is_ok() {
        lock(&ctx.failures).remove(&key);
    }
    result
}

async fn reconcile_with_finalizer(ps: Arc<PolicyService>, ctx: &Context) -> Result<Action> {
    let namespace = ps
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api = Api::<PolicyService>::namespaced(ctx.client.clone(), &namespace);
    finalizer(&api, FINALIZER, ps, |event| async move {
        match event {
            finalizer::Event::Apply(ps) => apply(&ps, ctx).await,
            finalizer::Event::Cleanup(ps) => cleanup(&ps, ctx).await,
        }
    })
    .await
    .map_err(|error| match error {
        finalizer::Error::ApplyFailed(error) | finalizer::Error::CleanupFailed(error) => error,
        other => Error::Finalizer(Box::new(other)),
    })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps hold plain data; a panic elsewhere leaves them usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The reconcile proper, for a PolicyService that is not being deleted.
async fn apply(ps: &PolicyService, ctx: &Context) -> Result<Action> {
    ctx.caches_ready().await?;
    let now = Timestamp::now();
    let time = Time(now);
    let previous = ps.status.clone();

    let validated = match validate::validate(ps) {
        Ok(validated) => validated,
        Err(invalid) => {
            let status = status::invalid(ps, &invalid, &time);
            publish(ps, previous.as_ref(), &status, ctx).await?;
            return Err(Error::InvalidSpec {
                field: invalid.field,
                message: invalid.message,
            });
        }
    };

    let observed = observe::observe(ps, &ctx.nodes, &ctx.profiles, &ctx.leases, now);
    let key = ObjectRef::from_obj(ps);
    let mut history = lock(&ctx.history).remove(&key).unwrap_or_else(|| {
        // After a restart or a leader change: hold the last decision for a full window.
        previous
            .as_ref()
            .and_then(|s| s.scaling.as_ref())
            .and_then(|s| u32::try_from(s.desired_replicas).ok())
            .filter(|desired| *desired > 0)
            .map(|desired| scaling::History::seeded(desired, now))
            .unwrap_or_default()
    });
    let settings = desired::Settings {
        tuning_budget_seconds: ctx.config.tuning_budget_seconds,
        stabilization_window: ctx.config.scale_down_stabilization,
    };
    let plan = desired::plan(&validated, &observed, &mut history, &settings, now);
    lock(&ctx.history).insert(key.clone(), history);

    let applied = apply::apply_profiles(&ctx.client, &validated, &plan, &observed.owned).await?;
    let deleted = apply::delete_surplus(&ctx.client, &validated, &plan, &observed.owned).await?;
    if applied + deleted > 0 {
        tracing::info!(
            policy_service = %key,
            applied,
            deleted,
            desired = plan.scaling.desired,
            "OptimizationProfiles updated"
        );
    }
    let status = status::planned(ps, &plan, &observed.owned, &observed.liveness, &time);
    publish(ps, previous.as_ref(), &status, ctx).await?;
    // After the status, so that a refused Service or endpoints write (retried with backoff)
    // does not hold back what the agents reported.
    publish_endpoints(&validated, &plan, &observed.owned, &observed.liveness, ctx).await?;

    // No event says that an agent stopped, or that a scale-down window ended: look again
    // then (a second late, so the Lease is past its timeout).
    let planned = plan.assignments.iter().map(|a| a.node.as_str());
    let wake = [
        plan.scaling.recheck_after,
        observed.liveness.next_expiry(planned),
    ]
    .into_iter()
    .flatten()
    .min()
    .map_or(ctx.config.resync_interval, |wait| {
        (wait + Duration::from_secs(1)).min(ctx.config.resync_interval)
    });
    Ok(Action::requeue(wake))
}

/// Applies the Service and the endpoints of the planned nodes whose agents serve, unless the
/// same objects were applied within the resync interval.
async fn publish_endpoints(
    validated: &Validated<'_>,
    plan: &desired::Plan,
    owned: &[Arc<OptimizationProfile>],
    liveness: &liveness::Liveness,
    ctx: &Context,
) -> Result<()> {
    let planned: Vec<&str> = plan.assignments.iter().map(|a| a.node.as_str()).collect();
    let backends = service::backends(owned.iter().map(AsRef::as_ref), &planned, liveness);
    let published = service::published(validated, &backends, ctx.endpoints_api);
    let key = ObjectRef::from_obj(validated.ps);
    let fresh = lock(&ctx.published)
        .get(&key)
        .is_some_and(|(last, at)| *last == published && at.elapsed() < ctx.config.resync_interval);
    if fresh {
        return Ok(());
    }
    // Forget first: after a failed apply the next reconcile must apply again.
    lock(&ctx.published).remove(&key);
    apply::apply_published(&ctx.client, validated, &published).await?;
    tracing::debug!(
        policy_service = %key,
        backends = backends.len(),
        api = ctx.endpoints_api.as_str(),
        "Service and endpoints applied"
    );
    lock(&ctx.published).insert(key, (published, Instant::now()));
    Ok(())
}

/// Writes the status when it changed and publishes an Event per decision.
async fn publish(
    ps: &PolicyService,
    previous: Option<&PolicyServiceStatus>,
    status: &PolicyServiceStatus,
    ctx: &Context,
) -> Result<()> {
    if !apply::write_status(&ctx.client, ps, previous, status).await? {
        return Ok(());
    }
    let empty = PolicyServiceStatus::default();
    let reference = ps.object_ref(&());
    for decision in events::decisions(previous.unwrap_or(&empty), status) {
        let event = Event {
            type_: if decision.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            action: "Reconcile".into(),
            // The Events API caps notes at 1 kB.
            note: Some(decision.note.chars().take(1000).collect()),
            reason: decision.reason,
            secondary: None,
        };
        // An Event is a courtesy; failing to record one must not fail the reconcile.
        if let Err(error) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(%error, reason = %event.reason, "failed to publish an Event");
        }
    }
    Ok(())
}

/// The finalizer's cleanup: every OptimizationProfile of the PolicyService goes, and so do its
/// Service and endpoints.
async fn cleanup(ps: &PolicyService, ctx: &Context) -> Result<Action> {
    let namespace = ps
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = ps.name_any();
    let key = ObjectRef::from_obj(ps);
    lock(&ctx.published).remove(&key);
    apply::delete_published(
        &ctx.client,
        &namespace,
        &name,
        &service_name(&name),
        ctx.endpoints_api,
    )
    .await?;
    apply::delete_all(&ctx.client, &namespace, &name).await?;
    lock(&ctx.history).remove(&key);
    tracing::info!(policy_service = %key, "deleted its OptimizationProfiles, Service and endpoints");
    Ok(Action::await_change())
}

/// An invalid spec waits for the user's next edit; anything else is retried with exponential
/// backoff (1 s, 2 s, 4 s, … up to 5 minutes).
fn error_policy(ps: Arc<PolicyService>, error: &Error, ctx: Arc<Context>) -> Action {
    let key = ObjectRef::from_obj(ps.as_ref());
    if error.is_invalid_spec() {
        tracing::info!(policy_service = %key, %error, "waiting for the spec to change");
        return Action::await_change();
    }
    let failures = {
        let mut failures = lock(&ctx.failures);
        let count = failures.entry(key.clone()).or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    let delay = Duration::from_secs(1u64 << failures.min(9).saturating_sub(1))
        .min(Duration::from_secs(300));
    tracing::warn!(policy_service = %key, %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_node_selector_always_requires_the_hardware_class_label() {
        let mut config = ControllerConfig::default();
        assert_eq!(
            config.node_label_selector(),
            "policyserve.io/hardware-class"
        );
        config.node_selector = Some("policyserve.io/test-run=abc".into());
        assert_eq!(
            config.node_label_selector(),
            "policyserve.io/hardware-class,policyserve.io/test-run=abc"
        );
    }
}
