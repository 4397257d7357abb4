//! Validation of a PolicyService spec: what the CRD schema and its CEL rules say, checked again
//! here because clusters before Kubernetes 1.25 drop CEL rules silently, plus what only the
//! operator can judge (pins that contradict the model's variants).

use std::collections::HashSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use policyserve_crds::{
    ExecutionProvider, MAX_PATH_LENGTH, MAX_URI_LENGTH, ModelSource, PolicyService,
    PolicyServiceSpec, Precision, Quantile, Target,
};

use super::selector;

/// Why a spec cannot be planned: the field and a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Invalid {
    /// Field path, such as `spec.targets.latencyP99Ms`.
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> Invalid {
    Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// A PolicyService that passed validation: its identity read once and its spec checked. The
/// steps after validation take this, so none of them looks for a name, namespace or uid again.
#[derive(Clone, Debug)]
pub struct Validated<'a> {
    /// The object as read (status, references, the spec).
    pub ps: &'a PolicyService,
    pub name: &'a str,
    pub namespace: &'a str,
    /// The controller owner reference every object made for it carries.
    pub owner: OwnerReference,
}

impl Validated<'_> {
    pub fn spec(&self) -> &PolicyServiceSpec {
        &self.ps.spec
    }
}

/// Checks a PolicyService: the metadata every object made for it needs (an apiserver always
/// sets them), then its spec. The first problem found is returned.
///
/// # Errors
/// [`Invalid`] naming the first offending field.
pub fn validate(ps: &PolicyService) -> Result<Validated<'_>, Invalid> {
    let missing = |field: &str| invalid(field, "missing; the apiserver sets it on every object");
    let name = ps
        .metadata
        .name
        .as_deref()
        .ok_or_else(|| missing("metadata.name"))?;
    let namespace = ps
        .metadata
        .namespace
        .as_deref()
        .ok_or_else(|| missing("metadata.namespace"))?;
    let owner = ps
        .controller_owner_ref(&())
        .ok_or_else(|| missing("metadata.uid"))?;
    validate_spec(&ps.spec)?;
    Ok(Validated {
        ps,
        name,
        namespace,
        owner,
    })
}

/// Checks a spec alone; the first problem found is returned.
///
/// # Errors
/// [`Invalid`] naming the first offending field.
pub fn validate_spec(spec: &PolicyServiceSpec) -> Result<(), Invalid> {
    model(spec)?;
    targets(spec)?;
    placement(spec)?;
    tuning(spec)
}

fn source(source: &ModelSource, field: &str) -> Result<(), Invalid> {
    match source.source_count() {
        1 => {}
        0 => return Err(invalid(field, "set one of configMap, url or path")),
        _ => return Err(invalid(field, "set only one of configMap, url or path")),
    }
    if let Some(url) = &source.url {
        if url.uri.len() > MAX_URI_LENGTH as usize {
            return Err(invalid(
                format!("{field}.url.uri"),
                format!("must be at most {MAX_URI_LENGTH} characters"),
            ));
        }
        if !(url.uri.starts_with("http://") || url.uri.starts_with("https://")) {
            return Err(invalid(
                format!("{field}.url.uri"),
                "must start with http:// or https://",
            ));
        }
        let hex = url.sha256.len() == 64
            && url
                .sha256
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
        if !hex {
            return Err(invalid(
                format!("{field}.url.sha256"),
                "must be 64 lower-case hex digits",
            ));
        }
    }
    if let Some(path) = &source.path {
        if !path.starts_with('/') {
            return Err(invalid(format!("{field}.path"), "must be an absolute path"));
        }
        if path.len() > MAX_PATH_LENGTH as usize {
            return Err(invalid(
                format!("{field}.path"),
                format!("must be at most {MAX_PATH_LENGTH} characters"),
            ));
        }
    }
    if let Some(cm) = &source.config_map
        && (cm.name.is_empty() || cm.key.is_empty())
    {
        return Err(invalid(
            format!("{field}.configMap"),
            "name and key must not be empty",
        ));
    }
    Ok(())
}

fn model(spec: &PolicyServiceSpec) -> Result<(), Invalid> {
    source(&spec.model.source, "spec.model")?;
    let mut seen = HashSet::new();
    for (i, variant) in spec.model.variants.iter().enumerate() {
        let field = format!("spec.model.variants[{i}]");
        if variant.precision == Precision::Fp32 {
            return Err(invalid(
                format!("{field}.precision"),
                "fp32 is the main model; variants are other precisions",
            ));
        }
        if !seen.insert(variant.precision) {
            return Err(invalid(
                format!("{field}.precision"),
                format!("a second {} variant", variant.precision),
            ));
        }
        source(&variant.source, &field)?;
    }
    Ok(())
}

fn targets(spec: &PolicyServiceSpec) -> Result<(), Invalid> {
    let targets = &spec.targets;
    if targets.is_empty() {
        return Err(invalid("spec.targets", "set at least one target"));
    }
    let mut positive: Vec<(&str, Option<f64>)> = Quantile::ALL
        .into_iter()
        .map(|q| (q.target_field(), targets.latency_ms(q)))
        .collect();
    positive.push((Target::Throughput.field(), targets.throughput_rps));
    for (name, value) in positive {
        if let Some(value) = value
            && !(value.is_finite() && value > 0.0)
        {
            return Err(invalid(
                format!("spec.targets.{name}"),
                format!("must be greater than 0, got {value}"),
            ));
        }
    }
    let limits: Vec<(Quantile, f64)> = targets.latency_limits().collect();
    for (i, (lower_name, lower)) in limits.iter().enumerate() {
        for (upper_name, upper) in &limits[i + 1..] {
            if lower > upper {
                return Err(invalid(
                    format!("spec.targets.{lower_name}"),
                    format!("{lower_name} {lower} must not exceed {upper_name} {upper}"),
                ));
            }
        }
    }
    let memory = format!("spec.targets.{}", Target::Memory.field());
    match targets.memory_limit_mib() {
        Err(e) => Err(invalid(memory, e.to_string())),
        Ok(Some(mib)) if mib <= 0.0 => Err(invalid(memory, "must be greater than 0")),
        Ok(_) => Ok(()),
    }
}

fn placement(spec: &PolicyServiceSpec) -> Result<(), Invalid> {
    let placement = &spec.placement;
    if placement.min_replicas < 1 {
        return Err(invalid(
            "spec.placement.minReplicas",
            format!("must be at least 1, got {}", placement.min_replicas),
        ));
    }
    if placement.max_replicas < placement.min_replicas {
        return Err(invalid(
            "spec.placement.maxReplicas",
            format!(
                "maxReplicas {} is below minReplicas {}",
                placement.max_replicas, placement.min_replicas
            ),
        ));
    }
    if !(0..=1000).contains(&placement.headroom_percent) {
        return Err(invalid(
            "spec.placement.headroomPercent",
            format!("must be 0 to 1000, got {}", placement.headroom_percent),
        ));
    }
    if let Some(selector) = &placement.node_selector {
        selector::check(selector, "spec.placement.nodeSelector")
            .map_err(|(field, message)| invalid(field, message))?;
    }
    Ok(())
}

fn tuning(spec: &PolicyServiceSpec) -> Result<(), Invalid> {
    let Some(pins) = &spec.tuning else {
        return Ok(());
    };
    if let Some(providers) = &pins.execution_providers {
        if providers.is_empty() {
            return Err(invalid(
                "spec.tuning.executionProviders",
                "must list at least one provider",
            ));
        }
        let unique: HashSet<_> = providers.iter().collect();
        if unique.len() != providers.len() {
            return Err(invalid(
                "spec.tuning.executionProviders",
                "lists a provider twice",
            ));
        }
    }
    let has_variant = |p: Precision| spec.model.variants.iter().any(|v| v.precision == p);
    match pins.precision {
        Some(Precision::Int8) if !has_variant(Precision::Int8) => {
            return Err(invalid(
                "spec.tuning.precision",
                "int8 needs an int8 entry in spec.model.variants",
            ));
        }
        Some(Precision::Fp16) if !has_variant(Precision::Fp16) => {
            // Without a converted file only TensorRT's fp16 mode can run fp16.
            let tensorrt_allowed = pins
                .execution_providers
                .as_ref()
                .is_none_or(|eps| eps.contains(&ExecutionProvider::TensorRT));
            if !tensorrt_allowed {
                return Err(invalid(
                    "spec.tuning.precision",
                    "fp16 needs an fp16 variant or TensorRT among the execution providers",
                ));
            }
        }
        _ => {}
    }
    if pins.max_batch_size == Some(0) {
        return Err(invalid("spec.tuning.maxBatchSize", "must be at least 1"));
    }
    if pins.intra_op_threads == Some(0) {
        return Err(invalid("spec.tuning.intraOpThreads", "must be at least 1"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures::PolicyServiceBuilder;

    #[test]
    fn the_fixture_policy_service_is_valid() {
        assert_eq!(
            validate_spec(&PolicyServiceBuilder::new("ps").build().spec),
            Ok(())
        );
    }

    #[test]
    fn invalid_specs_name_the_offending_field() {
        let cases: Vec<(&str, PolicyServiceBuilder)> = vec![
            (
                "spec.model",
                PolicyServiceBuilder::new("ps").no_model_source(),
            ),
            (
                "spec.model",
                PolicyServiceBuilder::new("ps").model_path_and_config_map(),
            ),
            (
                "spec.model.url.sha256",
                PolicyServiceBuilder::new("ps").model_url("https://m/x.onnx", "abc"),
            ),
            ("spec.targets", PolicyServiceBuilder::new("ps").no_targets()),
            (
                "spec.targets.latencyP99Ms",
                PolicyServiceBuilder::new("ps").latency_p99(-1.0),
            ),
            (
                "spec.targets.latencyP50Ms",
                PolicyServiceBuilder::new("ps")
                    .latency_p50(9.0)
                    .latency_p99(5.0),
            ),
            (
                "spec.targets.memoryLimit",
                PolicyServiceBuilder::new("ps").memory_limit("lots"),
            ),
            (
                "spec.placement.minReplicas",
                PolicyServiceBuilder::new("ps").replicas(0, 3),
            ),
            (
                "spec.placement.maxReplicas",
                PolicyServiceBuilder::new("ps").replicas(4, 2),
            ),
            (
                "spec.placement.headroomPercent",
                PolicyServiceBuilder::new("ps").headroom(-5),
            ),
            (
                "spec.tuning.precision",
                PolicyServiceBuilder::new("ps").pin_precision(Precision::Int8),
            ),
            (
                "spec.tuning.executionProviders",
                PolicyServiceBuilder::new("ps").pin_providers(vec![]),
            ),
            (
                "spec.model.variants[0].precision",
                PolicyServiceBuilder::new("ps").variant(Precision::Fp32),
            ),
        ];
        for (field, builder) in cases {
            let result = validate_spec(&builder.build().spec);
            assert_eq!(
                result.as_ref().map_err(|e| e.field.as_str()),
                Err(field),
                "{result:?}"
            );
        }
    }

    #[test]
    fn an_int8_pin_with_an_int8_variant_is_valid() {
        let spec = PolicyServiceBuilder::new("ps")
            .variant(Precision::Int8)
            .pin_precision(Precision::Int8)
            .build()
            .spec;
        assert_eq!(validate_spec(&spec), Ok(()));
    }

    #[test]
    fn fp16_without_a_variant_needs_tensorrt_allowed() {
        let on_cpu = PolicyServiceBuilder::new("ps")
            .pin_precision(Precision::Fp16)
            .pin_providers(vec![ExecutionProvider::Cpu])
            .build();
        assert_eq!(
            validate_spec(&on_cpu.spec).unwrap_err().field,
            "spec.tuning.precision"
        );
        let open = PolicyServiceBuilder::new("ps")
            .pin_precision(Precision::Fp16)
            .build();
        assert_eq!(validate_spec(&open.spec), Ok(()));
    }
}
