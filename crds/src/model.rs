//! Where a model comes from.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::Precision;

/// Longest `model.path`: Linux's PATH_MAX.
pub const MAX_PATH_LENGTH: u32 = 4096;
/// Longest `model.url.uri`: what browsers and most servers accept.
pub const MAX_URI_LENGTH: u32 = 2048;
/// Most variants a model has: one per precision besides fp32 (fp16 and int8).
pub const MAX_VARIANTS: u32 = 2;

/// Exactly one source of an ONNX model file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "[has(self.configMap), has(self.url), has(self.path)].filter(x, x).size() == 1",
    "message": "set exactly one of configMap, url or path"
}]))]
pub struct ModelSource {
    /// A key of a ConfigMap in the PolicyService's namespace whose binaryData holds the model.
    /// A ConfigMap holds at most 1 MiB: apply it with `kubectl apply --server-side`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<ConfigMapModel>,
    /// An HTTP(S) address the agent downloads the model from, checked against a SHA-256 digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<UrlModel>,
    /// An absolute path to the model file, present on every node that may serve it (at most
    /// 4096 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = MAX_PATH_LENGTH))]
    pub path: Option<String>,
}

impl ModelSource {
    /// How many sources are set; a valid source has exactly one.
    pub fn source_count(&self) -> usize {
        [
            self.config_map.is_some(),
            self.url.is_some(),
            self.path.is_some(),
        ]
        .into_iter()
        .filter(|set| *set)
        .count()
    }
}

/// A model stored in a ConfigMap.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigMapModel {
    /// Name of the ConfigMap, in the PolicyService's namespace (a DNS subdomain, at most 253
    /// characters).
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key in the ConfigMap's binaryData (at most 253 characters, as Kubernetes allows).
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A model downloaded over HTTP(S).
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UrlModel {
    /// The http:// or https:// address of the model file (at most 2048 characters).
    #[schemars(regex(pattern = r"^https?://"), length(max = MAX_URI_LENGTH))]
    pub uri: String,
    /// Lower-case hex SHA-256 of the file; a download that does not match is refused.
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"), length(max = 64))]
    pub sha256: String,
}

/// The model a PolicyService serves: its fp32 source and optional precision variants.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// The model as exported (fp32).
    #[serde(flatten)]
    pub source: ModelSource,
    /// The same model in other precisions (for example an int8 file quantized from it); the
    /// tuner may choose one where the node's hardware runs it well. At most two: one fp16 and
    /// one int8.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = MAX_VARIANTS))]
    pub variants: Vec<ModelVariant>,
}

/// The model in another precision.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ModelVariant {
    /// Precision of this file.
    pub precision: Precision,
    /// Where this file comes from.
    #[serde(flatten)]
    pub source: ModelSource,
}
