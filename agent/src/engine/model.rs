//! What the engine requires of a model: one float32 input and float32 outputs, all with a
//! dynamic leading batch dimension, so requests can be joined into batches.

use ort::session::Session;
use ort::value::{TensorElementType, ValueType};

use crate::{Error, Result};

/// A tensor's name and the shape of one row (the dimensions after the batch dimension).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Name in the ONNX graph.
    pub name: String,
    /// Dimensions after the batch dimension; all fixed.
    pub row_shape: Vec<i64>,
}

impl TensorSpec {
    /// Elements in one row.
    pub fn row_len(&self) -> usize {
        self.row_shape.iter().map(|d| *d as usize).product()
    }
}

/// The model's signature as the engine serves it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelSignature {
    /// The one input.
    pub input: TensorSpec,
    /// The outputs, in graph order.
    pub outputs: Vec<TensorSpec>,
}

/// Checks a loaded session against what the engine can batch and serve.
///
/// # Errors
/// [`Error::UnsupportedModel`] naming the input or output that does not fit.
pub fn inspect(model: &str, session: &Session) -> Result<ModelSignature> {
    let unsupported = |reason: String| Error::UnsupportedModel {
        model: model.to_owned(),
        reason,
    };
    let [input] = session.inputs() else {
        return Err(unsupported(format!(
            "the engine serves models with exactly one input; this one has {}",
            session.inputs().len()
        )));
    };
    if session.outputs().is_empty() {
        return Err(unsupported("the model has no outputs".into()));
    }
    let spec = |name: &str, dtype: &ValueType, role: &str| -> Result<TensorSpec> {
        let ValueType::Tensor { ty, shape, .. } = dtype else {
            return Err(unsupported(format!("{role} {name:?} is not a tensor")));
        };
        if *ty != TensorElementType::Float32 {
            return Err(unsupported(format!(
                "{role} {name:?} is {ty:?}; the engine serves float32"
            )));
        }
        let Some((batch, rest)) = shape.split_first() else {
            return Err(unsupported(format!(
                "{role} {name:?} is a scalar; it needs a batch dimension"
            )));
        };
        if *batch != -1 {
            return Err(unsupported(format!(
                "{role} {name:?} has a fixed batch dimension of {batch}; the dynamic batcher needs \
                 it dynamic (export with a symbolic first dimension)"
            )));
        }
        if rest.iter().any(|d| *d < 1) {
            return Err(unsupported(format!(
                "{role} {name:?} has dynamic dimensions after the batch: {:?}",
                &shape[..]
            )));
        }
        Ok(TensorSpec {
            name: name.to_owned(),
            row_shape: rest.to_vec(),
        })
    };
    Ok(ModelSignature {
        input: spec(input.name(), input.dtype(), "input")?,
        outputs: session
            .outputs()
            .iter()
            .map(|o| spec(o.name(), o.dtype(), "output"))
            .collect::<Result<_>>()?,
    })
}
