//! PolicyService documents shared by the CRD tests of both apiservers: a valid one, and one
//! table of invalid ones with the field each must be refused for. Every judge reads the same
//! table (the 1.20 apiserver for what its schema enforces, the 1.36 CRD server for all of it,
//! and the operator's own validation for all of it), so the judges cannot drift apart.

use policyserve_crds::PolicyServiceSpec;
use serde_json::{Value, json};

/// A valid PolicyService named `name`: a ConfigMap model with an int8 variant and four targets.
pub fn lander(name: &str) -> Value {
    json!({
        "apiVersion": "policyserve.io/v1alpha1",
        "kind": "PolicyService",
        "metadata": {"name": name},
        "spec": {
            "model": {
                "configMap": {"name": "lander-model", "key": "model.onnx"},
                "variants": [{"precision": "int8", "configMap": {"name": "lander-model", "key": "model.int8.onnx"}}]
            },
            "targets": {"latencyP50Ms": 2.0, "latencyP99Ms": 5.0, "throughputRps": 5000, "memoryLimit": "512Mi"}
        }
    })
}

/// Which apiservers refuse a case by themselves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enforced {
    /// The OpenAPI schema (types, enums, bounds, patterns, required): every apiserver.
    Schema,
    /// A CEL rule (`x-kubernetes-validations`): Kubernetes 1.25 and newer only; older ones drop
    /// the rules and the operator's own validation is all there is.
    Cel,
}

/// One invalid PolicyService and the field its refusal must name.
#[derive(Clone, Debug)]
pub struct InvalidCase {
    /// Also the object's name.
    pub name: &'static str,
    /// The whole object, as a user would send it.
    pub object: Value,
    /// The field path a person has to fix, such as `spec.targets.latencyP99Ms`.
    pub field: &'static str,
    /// Who refuses it besides the operator.
    pub enforced: Enforced,
}

fn case(
    name: &'static str,
    field: &'static str,
    enforced: Enforced,
    edit: impl FnOnce(&mut Value),
) -> InvalidCase {
    let mut object = lander(name);
    edit(&mut object["spec"]);
    InvalidCase {
        name,
        object,
        field,
        enforced,
    }
}

fn remove(spec: &mut Value, key: &str) {
    if let Some(map) = spec.as_object_mut() {
        map.remove(key);
    }
}

/// Every invalid PolicyService the CRD tests send.
pub fn invalid_policy_services() -> Vec<InvalidCase> {
    use Enforced::{Cel, Schema};
    vec![
        case("negative", "spec.targets.latencyP99Ms", Schema, |s| {
            s["targets"]["latencyP99Ms"] = json!(-1.0);
        }),
        case("unknown-profile", "spec.profile", Schema, |s| {
            s["profile"] = json!("Turbo");
        }),
        case("no-model", "spec.model", Schema, |s| remove(s, "model")),
        case("no-targets", "spec.targets", Schema, |s| {
            remove(s, "targets")
        }),
        case("empty-targets", "spec.targets", Schema, |s| {
            s["targets"] = json!({});
        }),
        case("bad-hash", "spec.model.url.sha256", Schema, |s| {
            s["model"] = json!({"url": {"uri": "https://models.example/l.onnx", "sha256": "abc"}});
        }),
        case("zero-replicas", "spec.placement.minReplicas", Schema, |s| {
            s["placement"] = json!({"minReplicas": 0});
        }),
        case(
            "memory-not-a-quantity",
            "spec.targets.memoryLimit",
            Schema,
            |s| {
                s["targets"]["memoryLimit"] = json!("lots");
            },
        ),
        case("min-above-max", "spec.placement.maxReplicas", Cel, |s| {
            s["placement"] = json!({"minReplicas": 4, "maxReplicas": 2});
        }),
        case("p50-above-p99", "spec.targets.latencyP50Ms", Cel, |s| {
            s["targets"] = json!({"latencyP50Ms": 9.0, "latencyP99Ms": 5.0});
        }),
        case("p95-above-p99", "spec.targets.latencyP95Ms", Cel, |s| {
            s["targets"] = json!({"latencyP50Ms": 1.0, "latencyP95Ms": 9.0, "latencyP99Ms": 5.0});
        }),
        case("two-sources", "spec.model", Cel, |s| {
            s["model"]["path"] = json!("/var/lib/policyserve/models/lander.onnx");
        }),
        case("no-source", "spec.model", Cel, |s| {
            s["model"] =
                json!({"variants": [{"precision": "int8", "path": "/m/lander.int8.onnx"}]});
        }),
        case("variant-two-sources", "spec.model.variants[0]", Cel, |s| {
            s["model"]["variants"][0]["path"] = json!("/var/lib/policyserve/models/l.int8.onnx");
        }),
    ]
}

/// The operator's verdict on a PolicyService document: its spec must deserialize into
/// [`PolicyServiceSpec`] and pass the operator's validation. The error names the field first,
/// as the apiserver's messages do (`spec.profile: unknown variant ...`).
///
/// # Errors
/// The operator's refusal, starting with the field path.
pub fn operator_verdict(object: &Value) -> Result<(), String> {
    let spec: PolicyServiceSpec = serde_path_to_error::deserialize(&object["spec"])
        .map_err(|e| format!("{}: {}", field_of(&e), e.inner()))?;
    policyserve_operator::validate_spec(&spec).map_err(|invalid| invalid.to_string())
}

/// `spec.<path>` of a deserialization error; a missing field is named by serde only in its
/// message ("missing field `model`"), so it is appended to the path of its parent.
fn field_of(error: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let path = error.path().to_string();
    let parent = if path == "." {
        "spec".to_owned()
    } else {
        format!("spec.{path}")
    };
    let message = error.inner().to_string();
    match message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
    {
        Some(missing) => format!("{parent}.{missing}"),
        None => parent,
    }
}
