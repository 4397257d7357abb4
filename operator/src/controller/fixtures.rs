//! Builders for the pure tests: a PolicyService, a node's facts and an agent-written profile,
//! each valid by default and changed one property at a time.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
use policyserve_crds::conditions::{self, LOADED, SERVING};
use policyserve_crds::{
    AgentEndpoint, Capacity, ConfigMapModel, ExecutionProvider, HardwareClass, ModelSource,
    ModelVariant, OptimizationProfile, OptimizationProfileSpec, OptimizationProfileStatus,
    PolicyService, PolicyServiceSpec, PolicyServiceStatus, Precision, Profile, ProfileSelection,
    SearchSpace, Served, Targets, TuningPins, UrlModel, optimization_profile_name,
};

use super::node::NodeFacts;

/// A valid PolicyService `robots/<name>`: a ConfigMap model and a P99 target of 5 ms.
pub struct PolicyServiceBuilder(PolicyService);

impl PolicyServiceBuilder {
    pub fn new(name: &str) -> Self {
        let mut ps = PolicyService::new(
            name,
            PolicyServiceSpec {
                model: policyserve_crds::ModelSpec {
                    source: config_map("model.onnx"),
                    variants: vec![],
                },
                targets: Targets {
                    latency_p99_ms: Some(5.0),
                    ..Targets::default()
                },
                ..PolicyServiceSpec::default()
            },
        );
        ps.metadata.namespace = Some("robots".into());
        ps.metadata.uid = Some(format!("uid-{name}"));
        ps.metadata.generation = Some(1);
        Self(ps)
    }
    pub fn build(self) -> PolicyService {
        self.0
    }
    fn spec(mut self, change: impl FnOnce(&mut PolicyServiceSpec)) -> Self {
        change(&mut self.0.spec);
        self
    }
    pub fn no_model_source(self) -> Self {
        self.spec(|s| s.model.source = ModelSource::default())
    }
    pub fn model_path_and_config_map(self) -> Self {
        self.spec(|s| s.model.source.path = Some("/models/m.onnx".into()))
    }
    pub fn model_url(self, uri: &str, sha256: &str) -> Self {
        self.spec(|s| {
            s.model.source = ModelSource {
                url: Some(UrlModel {
                    uri: uri.into(),
                    sha256: sha256.into(),
                }),
                ..ModelSource::default()
            }
        })
    }
    pub fn variant(self, precision: Precision) -> Self {
        self.spec(|s| {
            s.model.variants.push(ModelVariant {
                precision,
                source: config_map("model.variant.onnx"),
            })
        })
    }
    pub fn no_targets(self) -> Self {
        self.spec(|s| s.targets = Targets::default())
    }
    pub fn latency_p50(self, ms: f64) -> Self {
        self.spec(|s| s.targets.latency_p50_ms = Some(ms))
    }
    pub fn latency_p99(self, ms: f64) -> Self {
        self.spec(|s| s.targets.latency_p99_ms = Some(ms))
    }
    pub fn throughput(self, rps: f64) -> Self {
        self.spec(|s| s.targets.throughput_rps = Some(rps))
    }
    pub fn memory_limit(self, quantity: &str) -> Self {
        self.spec(|s| s.targets.memory_limit = Some(Quantity(quantity.into())))
    }
    pub fn replicas(self, min: i32, max: i32) -> Self {
        self.spec(|s| {
            s.placement.min_replicas = min;
            s.placement.max_replicas = max;
        })
    }
    pub fn headroom(self, percent: i32) -> Self {
        self.spec(|s| s.placement.headroom_percent = percent)
    }
    pub fn node_selector(self, key: &str, value: &str) -> Self {
        self.spec(|s| {
            s.placement.node_selector = Some(LabelSelector {
                match_labels: Some(BTreeMap::from([(key.into(), value.into())])),
                ..LabelSelector::default()
            })
        })
    }
    pub fn profile(self, selection: ProfileSelection) -> Self {
        self.spec(|s| s.profile = selection)
    }
    fn pins(self, change: impl FnOnce(&mut TuningPins)) -> Self {
        self.spec(|s| change(s.tuning.get_or_insert_with(TuningPins::default)))
    }
    pub fn pin_precision(self, precision: Precision) -> Self {
        self.pins(|p| p.precision = Some(precision))
    }
    pub fn pin_providers(self, providers: Vec<ExecutionProvider>) -> Self {
        self.pins(|p| p.execution_providers = Some(providers))
    }
    pub fn pin_batch(self, batch: u32) -> Self {
        self.pins(|p| p.max_batch_size = Some(batch))
    }
    pub fn pin_threads(self, threads: u32) -> Self {
        self.pins(|p| p.intra_op_threads = Some(threads))
    }
    pub fn generation(mut self, generation: i64) -> Self {
        self.0.metadata.generation = Some(generation);
        self
    }
    pub fn status(mut self, status: PolicyServiceStatus) -> Self {
        self.0.status = Some(status);
        self
    }
}

fn config_map(key: &str) -> ModelSource {
    ModelSource {
        config_map: Some(ConfigMapModel {
            name: "model".into(),
            key: key.into(),
        }),
        ..ModelSource::default()
    }
}

/// A node as its agent labels it.
pub struct NodeBuilder {
    name: String,
    labels: BTreeMap<String, String>,
}

impl NodeBuilder {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            labels: BTreeMap::new(),
        }
    }
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }
    fn hw(self, key: &str, value: impl ToString) -> Self {
        self.label(&format!("hw.policyserve.io/{key}"), &value.to_string())
    }
    pub fn class(self, class: &str) -> Self {
        self.label("policyserve.io/hardware-class", class)
    }
    pub fn cpus(self, cpus: u32) -> Self {
        self.hw("cpu-usable", cpus).hw("cpu-cores", cpus)
    }
    pub fn memory_mib(self, mib: u64) -> Self {
        self.hw("memory-usable-mib", mib)
    }
    pub fn gpu(self, count: u32, (major, minor): (u32, u32)) -> Self {
        self.hw("gpu.count", count)
            .hw("gpu.compute.major", major)
            .hw("gpu.compute.minor", minor)
    }
    pub fn vnni(self) -> Self {
        self.hw("cpu-cpuid.AVX512VNNI", true)
    }
    pub fn build(self) -> NodeFacts {
        NodeFacts::from_labels(&self.name, &self.labels)
    }
}

/// An OptimizationProfile as the operator wrote it, with a status as an agent would write it.
pub struct ProfileBuilder(OptimizationProfile);

impl ProfileBuilder {
    pub fn for_node(ps: &PolicyService, node: &str) -> Self {
        let name = ps.metadata.name.clone().unwrap_or_default();
        let mut profile = OptimizationProfile::new(
            &optimization_profile_name(&name, node),
            OptimizationProfileSpec {
                policy_service: name,
                node_name: node.into(),
                hardware_class: HardwareClass::Balanced,
                profile: Profile::Balanced,
                model: ps.spec.model.clone(),
                targets: ps.spec.targets.clone(),
                search_space: SearchSpace::default(),
                tuning_budget_seconds: 30,
            },
        );
        profile.metadata.namespace = ps.metadata.namespace.clone();
        profile.status = Some(OptimizationProfileStatus::default());
        Self(profile)
    }
    fn status(mut self, change: impl FnOnce(&mut OptimizationProfileStatus)) -> Self {
        change(self.0.status.get_or_insert_with(Default::default));
        self
    }
    fn condition(self, type_: &str, status: &str, reason: &str, message: &str) -> Self {
        self.status(|s| {
            conditions::set(
                &mut s.conditions,
                type_,
                status,
                reason,
                message,
                Some(1),
                &Time(jiff::Timestamp::UNIX_EPOCH),
            );
        })
    }
    pub fn serving(self) -> Self {
        self.condition(LOADED, "True", "Loaded", "loaded")
            .condition(SERVING, "True", "Serving", "serving")
    }
    pub fn load_failed(self, reason: &str, message: &str) -> Self {
        self.condition(LOADED, "False", reason, message)
            .condition(SERVING, "False", reason, message)
    }
    /// The capacity sweep's figures: P50 = P99 / 2, P95 = 0.8 × P99.
    pub fn capacity(self, rps: f64, p99_ms: f64, memory_mib: f64) -> Self {
        self.status(|s| {
            s.capacity = Some(Capacity {
                throughput_rps: rps,
                latency_p50_ms: p99_ms / 2.0,
                latency_p95_ms: p99_ms * 0.8,
                latency_p99_ms: p99_ms,
                memory_mib: Some(memory_mib),
                ..Capacity::default()
            })
        })
    }
    /// A capacity whose memory could not be read.
    pub fn memory_unmeasured(self) -> Self {
        self.status(|s| {
            if let Some(capacity) = &mut s.capacity {
                capacity.memory_mib = None;
            }
        })
    }
    /// Live traffic over a 60 s window: `requests` answered, P50 = P99 / 2.
    pub fn served(self, requests: u64, p99_ms: f64) -> Self {
        self.status(|s| {
            s.served = Some(Served {
                window_seconds: 60,
                requests,
                throughput_rps: requests as f64 / 60.0,
                latency_p50_ms: Some(p99_ms / 2.0),
                latency_p95_ms: Some(p99_ms * 0.8),
                latency_p99_ms: Some(p99_ms),
                demand_rps: requests as f64 / 60.0,
                ..Served::default()
            })
        })
    }
    /// Where the agent serves the model, as it reports in `status.endpoint`.
    pub fn endpoint(self, address: &str, port: i32) -> Self {
        let model_name = format!(
            "{}.{}",
            self.0.metadata.namespace.clone().unwrap_or_default(),
            self.0.spec.policy_service
        );
        self.status(|s| {
            s.endpoint = Some(AgentEndpoint {
                address: address.into(),
                port,
                model_name,
            })
        })
    }
    pub fn build(self) -> OptimizationProfile {
        self.0
    }
}
