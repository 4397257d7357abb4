//! Tier 1 (no I/O beyond the repository): the shipped examples stay in step with the models.

use policyserve_tests::workspace_root;
use serde_json::Value;

#[test]
fn the_configmap_example_carries_the_tiny_model_byte_for_byte() {
    let root = workspace_root();
    let text = std::fs::read_to_string(root.join("examples/policyservice-configmap.yaml")).unwrap();
    let config_map = serde_yaml::Deserializer::from_str(&text)
        .map(|doc| <Value as serde::Deserialize>::deserialize(doc).unwrap())
        .find(|doc| doc["kind"] == "ConfigMap")
        .expect("a ConfigMap document");
    let encoded: String = config_map["binaryData"]["model.onnx"]
        .as_str()
        .expect("binaryData model.onnx")
        // The apiserver's base64 decoder skips line breaks, nothing else.
        .replace(['\n', '\r'], "");
    let model = std::fs::read(root.join("models/policy-mlp-tiny.onnx")).unwrap();
    let decoded = k8s_openapi::ByteString(model);
    let expected = serde_json::to_value(&decoded).unwrap();
    assert_eq!(
        Value::String(encoded),
        expected,
        "regenerate the example from models/policy-mlp-tiny.onnx"
    );
}

#[test]
fn the_tiny_model_fits_a_configmap_with_room_to_spare() {
    let size = std::fs::metadata(workspace_root().join("models/policy-mlp-tiny.onnx"))
        .unwrap()
        .len();
    assert!(
        size <= 64 * 1024,
        "policy-mlp-tiny.onnx is {size} bytes; the ConfigMap example allows 64 KB"
    );
}
