//! What the engine requires of a model: one float32 input and float32 outputs, all with a
//! dynamic leading batch dimension, so requests can be joined into batches.
//!
//! The checks are split in two: [`inspect`] reads what a loaded ONNX Runtime session declares,
//! and [`check_signature`] judges those declarations without ONNX Runtime, so that the judging
//! (the part a hostile model file can steer) can be fuzzed and tested on its own.

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};

use super::{Error, Result};

/// Most elements in one row of any input or output: 16 Mi float32 values, 64 MiB per row. A
/// policy model's rows are tens to thousands of values; a model declaring more (or dimensions
/// whose product overflows) is refused at load, so that no request or answer size computed from
/// its shape can overflow or ask for more memory than a node has.
pub const MAX_ROW_ELEMENTS: usize = 16 * 1024 * 1024;

/// A tensor's name and the shape of one row (the dimensions after the batch dimension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name in the ONNX graph.
    pub name: String,
    /// Dimensions after the batch dimension; all fixed.
    pub row_shape: Vec<i64>,
}

impl TensorSpec {
    /// Elements in one row, or `usize::MAX` when a dimension is negative or the product
    /// overflows (never the case for a spec [`check_signature`] made: it refuses such models).
    /// Saturating, so that any size computed from it with checked arithmetic fails instead of
    /// wrapping to a small number.
    pub fn row_len(&self) -> usize {
        checked_row_len(&self.row_shape).unwrap_or(usize::MAX)
    }
}

/// The product of `dims`, or None when one is negative or it overflows `usize`.
fn checked_row_len(dims: &[i64]) -> Option<usize> {
    dims.iter().try_fold(1usize, |product, dim| {
        product.checked_mul(usize::try_from(*dim).ok()?)
    })
}

/// The model's signature as the engine serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSignature {
    /// The one input.
    pub input: TensorSpec,
    /// The outputs, in graph order.
    pub outputs: Vec<TensorSpec>,
}

/// What a model file declares about one of its inputs or outputs, as ONNX Runtime reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeclaredTensor {
    /// Name in the graph.
    pub name: String,
    /// The element type's name (`Float32`, `Int64`, ...) for a tensor; None for a sequence,
    /// map or optional value.
    pub element: Option<String>,
    /// Dimensions, `-1` for symbolic ones.
    pub shape: Vec<i64>,
}

/// The element type name [`check_signature`] accepts.
pub const FLOAT32: &str = "Float32";

/// Checks a loaded session against what the engine can batch and serve.
///
/// # Errors
/// [`Error::UnsupportedModel`] naming the input or output that does not fit.
pub fn inspect(model: &str, session: &Session) -> Result<ModelSignature> {
    let declared = |name: &str, dtype: &ValueType| match dtype {
        ValueType::Tensor { ty, shape, .. } => DeclaredTensor {
            name: name.to_owned(),
            element: Some(if *ty == TensorElementType::Float32 {
                FLOAT32.to_owned()
            } else {
                format!("{ty:?}")
            }),
            shape: shape.to_vec(),
        },
        _ => DeclaredTensor {
            name: name.to_owned(),
            element: None,
            shape: Vec::new(),
        },
    };
    let inputs: Vec<_> = session
        .inputs()
        .iter()
        .map(|i| declared(i.name(), i.dtype()))
        .collect();
    let outputs: Vec<_> = session
        .outputs()
        .iter()
        .map(|o| declared(o.name(), o.dtype()))
        .collect();
    check_signature(model, &inputs, &outputs)
}

/// Judges a model's declared inputs and outputs: exactly one input, at least one output, all
/// float32 tensors with a dynamic batch dimension followed by fixed dimensions of at most
/// [`MAX_ROW_ELEMENTS`] elements per row. Pure: no ONNX Runtime, so it is fuzzed
/// (`fuzz/fuzz_targets/model_signature.rs`).
///
/// # Errors
/// [`Error::UnsupportedModel`] naming the input or output that does not fit.
pub fn check_signature(
    model: &str,
    inputs: &[DeclaredTensor],
    outputs: &[DeclaredTensor],
) -> Result<ModelSignature> {
    let unsupported = |reason: String| Error::UnsupportedModel {
        model: model.to_owned(),
        reason,
    };
    let [input] = inputs else {
        return Err(unsupported(format!(
            "the engine serves models with exactly one input; this one has {}",
            inputs.len()
        )));
    };
    if outputs.is_empty() {
        return Err(unsupported("the model has no outputs".into()));
    }
    Ok(ModelSignature {
        input: tensor_spec(input, "input").map_err(unsupported)?,
        outputs: outputs
            .iter()
            .map(|o| tensor_spec(o, "output").map_err(unsupported))
            .collect::<Result<_>>()?,
    })
}

/// One input's or output's spec, or why the engine cannot serve it.
fn tensor_spec(tensor: &DeclaredTensor, role: &str) -> std::result::Result<TensorSpec, String> {
    let name = &tensor.name;
    let Some(element) = &tensor.element else {
        return Err(format!("{role} {name:?} is not a tensor"));
    };
    if element != FLOAT32 {
        return Err(format!(
            "{role} {name:?} is {element}; the engine serves float32"
        ));
    }
    let Some((batch, rest)) = tensor.shape.split_first() else {
        return Err(format!(
            "{role} {name:?} is a scalar; it needs a batch dimension"
        ));
    };
    if *batch != -1 {
        return Err(format!(
            "{role} {name:?} has a fixed batch dimension of {batch}; the dynamic batcher needs \
             it dynamic (export with a symbolic first dimension)"
        ));
    }
    if rest.iter().any(|d| *d < 1) {
        return Err(format!(
            "{role} {name:?} has dynamic dimensions after the batch: {:?}",
            tensor.shape
        ));
    }
    match checked_row_len(rest) {
        Some(len) if len <= MAX_ROW_ELEMENTS => Ok(TensorSpec {
            name: name.clone(),
            row_shape: rest.to_vec(),
        }),
        len => Err(format!(
            "{role} {name:?} declares {} elements per row (shape {:?}); the engine serves at \
             most {MAX_ROW_ELEMENTS}",
            len.map_or_else(|| "more than usize::MAX".to_owned(), |l| l.to_string()),
            tensor.shape
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tensor(name: &str, element: Option<&str>, shape: &[i64]) -> DeclaredTensor {
        DeclaredTensor {
            name: name.into(),
            element: element.map(str::to_owned),
            shape: shape.to_vec(),
        }
    }

    fn float(name: &str, shape: &[i64]) -> DeclaredTensor {
        tensor(name, Some(FLOAT32), shape)
    }

    #[test]
    fn a_batched_float_model_gets_its_row_shapes() {
        let signature = check_signature(
            "m",
            &[float("obs", &[-1, 64])],
            &[float("act", &[-1, 4, 4])],
        )
        .unwrap();
        assert_eq!(signature.input.row_len(), 64);
        assert_eq!(signature.outputs[0].row_shape, vec![4, 4]);
    }

    #[test]
    fn declarations_the_engine_cannot_serve_are_refused_with_the_reason() {
        let ok = || float("act", &[-1, 4]);
        let cases = [
            (vec![], vec![ok()], "exactly one input"),
            (
                vec![float("a", &[-1, 2]), float("b", &[-1, 2])],
                vec![ok()],
                "this one has 2",
            ),
            (vec![float("obs", &[-1, 2])], vec![], "no outputs"),
            (vec![tensor("obs", None, &[])], vec![ok()], "not a tensor"),
            (
                vec![tensor("obs", Some("Int64"), &[-1, 2])],
                vec![ok()],
                "is Int64",
            ),
            (vec![float("obs", &[])], vec![ok()], "scalar"),
            (
                vec![float("obs", &[8, 2])],
                vec![ok()],
                "fixed batch dimension of 8",
            ),
            (
                vec![float("obs", &[-1, -1])],
                vec![ok()],
                "dynamic dimensions after",
            ),
            (
                vec![float("obs", &[-1, 1 << 40])],
                vec![ok()],
                "elements per row",
            ),
            (
                vec![float("obs", &[-1, i64::MAX, i64::MAX])],
                vec![ok()],
                "more than usize::MAX",
            ),
            (
                vec![float("obs", &[-1, 2])],
                vec![float("act", &[-1, 1 << 25])],
                "output \"act\"",
            ),
        ];
        for (inputs, outputs, expected) in cases {
            let error = check_signature("m", &inputs, &outputs).unwrap_err();
            assert!(matches!(error, Error::UnsupportedModel { .. }), "{error}");
            assert!(error.to_string().contains(expected), "{error}: {expected}");
        }
    }

    #[test]
    fn a_hand_made_spec_with_an_overflowing_shape_saturates_its_row_length() {
        let spec = TensorSpec {
            name: "x".into(),
            row_shape: vec![i64::MAX, i64::MAX],
        };
        assert_eq!(spec.row_len(), usize::MAX);
        assert_eq!(
            TensorSpec {
                name: "x".into(),
                row_shape: vec![-3],
            }
            .row_len(),
            usize::MAX
        );
    }
}
