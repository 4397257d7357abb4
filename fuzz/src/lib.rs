//! The fuzzing harness: one function per target, each feeding arbitrary bytes to a function that
//! hostile input reaches and asserting what must hold whatever the bytes. A panic is a finding.
//!
//! Shared by the cargo-fuzz targets (`fuzz/fuzz_targets/`) and by the corpus replay that CI runs
//! as a plain test (`agent/tests/fuzz_corpora.rs` includes this file as a module), so both call
//! exactly the same code.

use policyserve_agent::engine::model::{self, DeclaredTensor};
use policyserve_agent::engine::{Error, TensorSpec};
use policyserve_agent::grpc::proto::model_infer_request::InferInputTensor;
use policyserve_agent::grpc::proto::{InferTensorContents, ModelInferRequest};
use policyserve_agent::grpc::tensor::{decode_input, to_raw};
use policyserve_agent::hardware::Hardware;
use policyserve_crds::labels::{is_valid_key, is_valid_value};
use prost::Message;

/// Rows a fuzzed request may carry: the harness model's maxBatchSize.
pub const MAX_ROWS: usize = 8;

/// The harness model's input: `obs`, rows of shape `[2, 2]`.
fn spec() -> TensorSpec {
    TensorSpec {
        name: "obs".into(),
        row_shape: vec![2, 2],
    }
}

/// A protobuf `ModelInferRequest`, as the gRPC server receives it, through input validation
/// and decoding against a model of input `obs` `[rows, 2, 2]` and at most [`MAX_ROWS`] rows.
pub fn decode_request(data: &[u8]) {
    let Ok(mut request) = ModelInferRequest::decode(data) else {
        return;
    };
    let spec = spec();
    let raw_entries = &request.raw_input_contents;
    for (index, input) in request.inputs.iter_mut().enumerate() {
        let raw = raw_entries.get(index).map(Vec::as_slice);
        check_decoded(input, raw, &spec);
    }
}

/// Decodes and checks what must hold: an accepted input has between 1 and [`MAX_ROWS`] rows
/// and exactly `rows × row length` values; anything else is an invalid request.
fn check_decoded(input: &mut InferInputTensor, raw: Option<&[u8]>, spec: &TensorSpec) {
    let shape = input.shape.clone();
    match decode_input(input, raw, spec, MAX_ROWS) {
        Ok((values, rows)) => {
            assert!((1..=MAX_ROWS).contains(&rows), "{rows} rows accepted");
            assert_eq!(values.len(), rows * spec.row_len());
            assert_eq!(usize::try_from(shape[0]).ok(), Some(rows));
            assert_eq!(to_raw(&values).len(), values.len() * 4);
        }
        Err(Error::InvalidRequest(message)) => assert!(!message.is_empty()),
        Err(other) => panic!("a bad request must be an invalid request, not {other}"),
    }
}

/// Every V2 datatype the server names, and one it refuses.
const DATATYPES: [&str; 13] = [
    "BOOL", "INT8", "UINT8", "FP16", "INT16", "UINT16", "FP32", "INT32", "UINT32", "FP64", "INT64",
    "UINT64", "BYTES",
];

/// A tensor built from the bytes (datatype, row count from -1 to 10, raw or typed form, then
/// the values), converted to float32, with the conversion compared against a reference for
/// the datatypes whose conversion is exact.
pub fn tensor_conversion(data: &[u8]) {
    let [selector, rows, form, values @ ..] = data else {
        return;
    };
    let datatype = DATATYPES[usize::from(*selector) % DATATYPES.len()];
    let rows = i64::from(*rows % 12) - 1;
    let spec = TensorSpec {
        name: "obs".into(),
        row_shape: vec![3],
    };
    let mut tensor = InferInputTensor {
        name: "obs".into(),
        datatype: datatype.into(),
        shape: vec![rows, 3],
        ..Default::default()
    };
    let raw = form % 2 == 0;
    if !raw {
        tensor.contents = Some(typed_contents(datatype, values));
    }
    let typed_fp32 = tensor
        .contents
        .as_ref()
        .map(|c| c.fp32_contents.clone())
        .unwrap_or_default();
    let raw_bytes = raw.then_some(values);
    let result = decode_input(&mut tensor, raw_bytes, &spec, MAX_ROWS);
    let Ok((decoded, rows)) = result else {
        assert!(matches!(result, Err(Error::InvalidRequest(_))));
        return;
    };
    assert_eq!(decoded.len(), rows * 3);
    match (raw, datatype) {
        // Float32 passes through bit for bit, in both forms.
        (true, "FP32") => assert_eq!(to_raw(&decoded), values),
        (false, "FP32") => assert_eq!(to_raw(&decoded), to_raw(&typed_fp32)),
        (true, "INT8") => {
            let expected: Vec<f32> = values.iter().map(|b| f32::from(*b as i8)).collect();
            assert_eq!(decoded, expected);
        }
        (true, "UINT8" | "BOOL") => {
            let expected: Vec<f32> = values.iter().map(|b| f32::from(*b)).collect();
            assert_eq!(decoded, expected);
        }
        _ => {}
    }
}

/// Typed contents of `datatype` from raw bytes: the field the protocol gives that datatype.
fn typed_contents(datatype: &str, bytes: &[u8]) -> InferTensorContents {
    let words = |n: usize| bytes.chunks_exact(n);
    let mut c = InferTensorContents::default();
    match datatype {
        "FP32" => {
            c.fp32_contents = words(4)
                .map(|w| f32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .collect();
        }
        "FP64" => c.fp64_contents = words(8).map(|w| f64::from_le_bytes(eight(w))).collect(),
        "BOOL" => c.bool_contents = bytes.iter().map(|b| b & 1 == 1).collect(),
        "INT8" | "INT16" | "INT32" => {
            c.int_contents = words(4)
                .map(|w| i32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .collect();
        }
        "UINT8" | "UINT16" | "UINT32" => {
            c.uint_contents = words(4)
                .map(|w| u32::from_le_bytes([w[0], w[1], w[2], w[3]]))
                .collect();
        }
        "INT64" => c.int64_contents = words(8).map(|w| i64::from_le_bytes(eight(w))).collect(),
        "UINT64" => c.uint64_contents = words(8).map(|w| u64::from_le_bytes(eight(w))).collect(),
        // FP16 and BYTES have no typed field: the decoder must refuse them.
        _ => c.bytes_contents = vec![bytes.to_vec()],
    }
    c
}

fn eight(w: &[u8]) -> [u8; 8] {
    let mut out = [0; 8];
    out.copy_from_slice(&w[..8]);
    out
}

/// A model's declared inputs and outputs, built from the bytes, through the engine's signature
/// check: what an accepted model declares must be servable (row lengths within
/// [`model::MAX_ROW_ELEMENTS`], so no size computed from them overflows).
pub fn model_signature(data: &[u8]) {
    let mut bytes = data.iter().copied();
    let mut next = move || bytes.next().unwrap_or(0);
    let mut tensors = |role: &str| -> Vec<DeclaredTensor> {
        let count = next() % 4;
        (0..count)
            .map(|i| {
                let element = match next() % 4 {
                    0 => None,
                    1 => Some("Int64".to_owned()),
                    _ => Some(model::FLOAT32.to_owned()),
                };
                let dims = next() % 6;
                let shape = (0..dims).map(|_| dimension(next())).collect();
                DeclaredTensor {
                    name: format!("{role}{i}"),
                    element,
                    shape,
                }
            })
            .collect()
    };
    let inputs = tensors("in");
    let outputs = tensors("out");
    match model::check_signature("fuzz", &inputs, &outputs) {
        Ok(signature) => {
            assert_eq!(inputs.len(), 1);
            assert_eq!(signature.input.name, inputs[0].name);
            assert_eq!(signature.outputs.len(), outputs.len());
            for spec in std::iter::once(&signature.input).chain(&signature.outputs) {
                assert!(spec.row_len() <= model::MAX_ROW_ELEMENTS, "{spec:?}");
                assert!(spec.row_shape.iter().all(|d| *d >= 1), "{spec:?}");
            }
        }
        Err(Error::UnsupportedModel { .. }) => {}
        Err(other) => panic!("a model the engine cannot serve is unsupported, not {other}"),
    }
}

/// A dimension from one byte: small values (-1 for symbolic, 0 to 198) mostly, powers of two
/// up to 2^53 and the extremes for the rest.
fn dimension(byte: u8) -> i64 {
    match byte {
        0..=199 => i64::from(byte) - 1,
        254 => i64::MIN,
        255 => i64::MAX,
        shift => 1 << (shift - 200),
    }
}

/// A hardware file (`--hardware-file`, the JSON `detect --output json` prints): whatever it
/// says, an accepted description gives valid label keys and values, and what the agent writes
/// it reads back unchanged.
pub fn hardware_file(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(hardware) = Hardware::from_json(text) else {
        return;
    };
    let _ = hardware.class();
    assert!(hardware.usable_physical_cores() >= 1);
    for (key, value) in policyserve_agent::labels::labels(&hardware) {
        assert!(is_valid_key(&key), "invalid label key {key:?}");
        assert!(
            is_valid_value(&value),
            "invalid label value {key}={value:?}"
        );
    }
    let written = serde_json::to_string(&hardware).expect("a parsed description serialises");
    let read_back = Hardware::from_json(&written).expect("what the agent writes, it reads");
    assert_eq!(read_back, hardware);
}
