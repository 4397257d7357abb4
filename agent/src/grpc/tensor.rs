//! V2 tensors to and from the engine's float32 rows. The engine serves float32 models; inputs
//! of the other numeric V2 datatypes are converted (as a client sending FP64 or INT64
//! observations would expect), in both the typed `contents` and the raw little-endian form.

use half::f16;

use super::proto::InferTensorContents;
use super::proto::model_infer_request::InferInputTensor;
use crate::engine::{Error, Result, TensorSpec};

/// The V2 datatype the engine's tensors have.
pub const FP32: &str = "FP32";

/// Bytes per element of a V2 datatype the server accepts, or None when it is not numeric.
fn element_size(datatype: &str) -> Option<usize> {
    Some(match datatype {
        "BOOL" | "INT8" | "UINT8" => 1,
        "FP16" | "INT16" | "UINT16" => 2,
        "FP32" | "INT32" | "UINT32" => 4,
        "FP64" | "INT64" | "UINT64" => 8,
        _ => return None,
    })
}

/// Checks `tensor` against the model's input and returns its rows as float32, plus the row
/// count. `raw` is the tensor's `raw_input_contents` entry when the request uses that form.
/// Typed FP32 contents are moved out of `tensor`, not copied.
///
/// A request may carry at most `max_rows` rows (`--max-request-rows`, independent of the tuned
/// `maxBatchSize`, which clients cannot know). Every size is computed with checked
/// arithmetic and compared with what the request carries before anything is allocated, so a
/// shape claiming 2^58 rows costs nothing. This is the request path's fuzzing entry
/// (`fuzz/fuzz_targets/decode_request.rs`, `tensor_conversion.rs`).
///
/// # Errors
/// [`Error::InvalidRequest`] saying what does not fit: name, datatype, shape, rows or size.
pub fn decode_input(
    tensor: &mut InferInputTensor,
    raw: Option<&[u8]>,
    spec: &TensorSpec,
    max_rows: usize,
) -> Result<(Vec<f32>, usize)> {
    let invalid = |message: String| Err(Error::InvalidRequest(message));
    if tensor.name != spec.name {
        return invalid(format!(
            "unexpected input {:?}; the model's input is {:?}",
            tensor.name, spec.name
        ));
    }
    let Some(size) = element_size(&tensor.datatype) else {
        return invalid(format!(
            "input {:?} has datatype {:?}; send FP32 (or another numeric datatype, converted to FP32)",
            tensor.name, tensor.datatype
        ));
    };
    let rows = checked_rows(tensor, spec, max_rows)?;
    // Saturating row_len and checked products: an overflow is an invalid request, never a
    // wrapped small size.
    let Some((count, bytes_needed)) = rows
        .checked_mul(spec.row_len())
        .and_then(|count| Some((count, count.checked_mul(size)?)))
    else {
        return invalid(format!(
            "input {:?} of shape {:?} is larger than this server can address",
            tensor.name, tensor.shape
        ));
    };
    let values = match raw {
        Some(bytes) => {
            if bytes.len() != bytes_needed {
                return invalid(format!(
                    "input {:?}: raw contents are {} bytes; shape {:?} of {} needs {bytes_needed}",
                    tensor.name,
                    bytes.len(),
                    tensor.shape,
                    tensor.datatype,
                ));
            }
            from_raw(&tensor.datatype, bytes)
        }
        None => from_contents(
            &tensor.datatype,
            tensor.contents.as_mut(),
            count,
            &tensor.shape,
        )?,
    };
    if values.len() != count {
        return invalid(format!(
            "input {:?} carries {} values; shape {:?} needs {count}",
            tensor.name,
            values.len(),
            tensor.shape
        ));
    }
    Ok((values, rows))
}

/// The tensor's row count, once its shape is `[rows, <the model's row shape>]` with
/// `1 ≤ rows ≤ max_rows`.
fn checked_rows(tensor: &InferInputTensor, spec: &TensorSpec, max_rows: usize) -> Result<usize> {
    let expected_shape = || {
        format!(
            "[rows, {}]",
            spec.row_shape
                .iter()
                .map(i64::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    let Some((&rows, row_shape)) = tensor.shape.split_first() else {
        return Err(Error::InvalidRequest(format!(
            "input {:?} has no shape; expected {}",
            tensor.name,
            expected_shape()
        )));
    };
    if rows < 1 || row_shape != spec.row_shape.as_slice() {
        return Err(Error::InvalidRequest(format!(
            "input {:?} has shape {:?}; expected {} with rows ≥ 1",
            tensor.name,
            tensor.shape,
            expected_shape()
        )));
    }
    match usize::try_from(rows) {
        Ok(rows) if rows <= max_rows => Ok(rows),
        _ => Err(Error::InvalidRequest(format!(
            "input {:?} has {rows} rows; this server takes at most {max_rows} rows per request \
             (--max-request-rows): split the request",
            tensor.name
        ))),
    }
}

fn from_raw(datatype: &str, bytes: &[u8]) -> Vec<f32> {
    macro_rules! convert {
        ($t:ty, $n:literal) => {
            bytes
                .chunks_exact($n)
                .map(|c| <$t>::from_le_bytes(c.try_into().unwrap_or([0; $n])) as f32)
                .collect()
        };
    }
    match datatype {
        "FP32" => convert!(f32, 4),
        "FP64" => convert!(f64, 8),
        "FP16" => bytes
            .chunks_exact(2)
            .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        "INT8" => bytes.iter().map(|b| f32::from(*b as i8)).collect(),
        "UINT8" | "BOOL" => bytes.iter().map(|b| f32::from(*b)).collect(),
        "INT16" => convert!(i16, 2),
        "UINT16" => convert!(u16, 2),
        "INT32" => convert!(i32, 4),
        "UINT32" => convert!(u32, 4),
        "INT64" => convert!(i64, 8),
        _ => convert!(u64, 8),
    }
}

/// The typed contents as float32. Their length is compared with `count` before any
/// conversion, so a mismatched request allocates nothing.
fn from_contents(
    datatype: &str,
    contents: Option<&mut InferTensorContents>,
    count: usize,
    shape: &[i64],
) -> Result<Vec<f32>> {
    let Some(c) = contents else {
        return Err(Error::InvalidRequest(
            "an input carries neither contents nor raw_input_contents".into(),
        ));
    };
    let carried = match datatype {
        "FP32" => c.fp32_contents.len(),
        "FP64" => c.fp64_contents.len(),
        "BOOL" => c.bool_contents.len(),
        "INT8" | "INT16" | "INT32" => c.int_contents.len(),
        "UINT8" | "UINT16" | "UINT32" => c.uint_contents.len(),
        "INT64" => c.int64_contents.len(),
        "UINT64" => c.uint64_contents.len(),
        // FP16 has no typed field in the protocol: it travels raw only.
        _ => {
            return Err(Error::InvalidRequest(format!(
                "{datatype} inputs must use raw_input_contents; the protocol has no typed field for them"
            )));
        }
    };
    if carried != count {
        return Err(Error::InvalidRequest(format!(
            "input carries {carried} {datatype} values; shape {shape:?} needs {count}"
        )));
    }
    Ok(match datatype {
        // Moved, not copied: the request is consumed.
        "FP32" => std::mem::take(&mut c.fp32_contents),
        "FP64" => c.fp64_contents.iter().map(|v| *v as f32).collect(),
        "BOOL" => c
            .bool_contents
            .iter()
            .map(|v| f32::from(u8::from(*v)))
            .collect(),
        "INT8" | "INT16" | "INT32" => c.int_contents.iter().map(|v| *v as f32).collect(),
        "UINT8" | "UINT16" | "UINT32" => c.uint_contents.iter().map(|v| *v as f32).collect(),
        "INT64" => c.int64_contents.iter().map(|v| *v as f32).collect(),
        _ => c.uint64_contents.iter().map(|v| *v as f32).collect(),
    })
}

/// Raw little-endian bytes of float32 values.
pub fn to_raw(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> TensorSpec {
        TensorSpec {
            name: "obs".into(),
            row_shape: vec![2],
        }
    }

    fn tensor(
        datatype: &str,
        shape: Vec<i64>,
        contents: Option<InferTensorContents>,
    ) -> InferInputTensor {
        InferInputTensor {
            name: "obs".into(),
            datatype: datatype.into(),
            shape,
            contents,
            ..Default::default()
        }
    }

    fn fp32(values: Vec<f32>) -> Option<InferTensorContents> {
        Some(InferTensorContents {
            fp32_contents: values,
            ..Default::default()
        })
    }

    #[test]
    fn typed_and_raw_fp32_decode_to_the_same_rows() {
        let values = vec![1.0, -2.5, 3.0, 0.25];
        let typed = decode_input(
            &mut tensor(FP32, vec![2, 2], fp32(values.clone())),
            None,
            &spec(),
            8,
        )
        .unwrap();
        let raw = decode_input(
            &mut tensor(FP32, vec![2, 2], None),
            Some(&to_raw(&values)),
            &spec(),
            8,
        )
        .unwrap();
        assert_eq!(typed, (values.clone(), 2));
        assert_eq!(raw, (values, 2));
    }

    #[test]
    fn other_numeric_datatypes_are_converted_to_fp32() {
        let int64 = Some(InferTensorContents {
            int64_contents: vec![1, -2],
            ..Default::default()
        });
        assert_eq!(
            decode_input(&mut tensor("INT64", vec![1, 2], int64), None, &spec(), 8)
                .unwrap()
                .0,
            vec![1.0, -2.0]
        );
        let fp64: Vec<u8> = [0.5f64, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(
            decode_input(
                &mut tensor("FP64", vec![1, 2], None),
                Some(&fp64),
                &spec(),
                8
            )
            .unwrap()
            .0,
            vec![0.5, 4.0]
        );
        let fp16: Vec<u8> = [f16::from_f32(1.5), f16::from_f32(-3.0)]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(
            decode_input(
                &mut tensor("FP16", vec![1, 2], None),
                Some(&fp16),
                &spec(),
                8
            )
            .unwrap()
            .0,
            vec![1.5, -3.0]
        );
    }

    #[test]
    fn mismatches_are_invalid_arguments_that_say_what_is_wrong() {
        let cases = [
            (
                tensor(FP32, vec![1, 3], fp32(vec![0.0; 3])),
                None,
                "expected [rows, 2]",
            ),
            (tensor(FP32, vec![0, 2], fp32(vec![])), None, "rows ≥ 1"),
            (
                tensor(FP32, vec![2, 2], fp32(vec![0.0; 3])),
                None,
                "carries 3 FP32 values",
            ),
            (
                tensor("BYTES", vec![1, 2], None),
                None,
                "datatype \"BYTES\"",
            ),
            (
                tensor(FP32, vec![1, 2], None),
                Some(vec![0u8; 7]),
                "raw contents are 7 bytes",
            ),
            (
                tensor(FP32, vec![1, 2], None),
                None,
                "neither contents nor raw",
            ),
            (
                InferInputTensor {
                    name: "x".into(),
                    ..tensor(FP32, vec![1, 2], None)
                },
                None,
                "unexpected input \"x\"",
            ),
            (
                tensor(FP32, vec![9, 2], fp32(vec![0.0; 18])),
                None,
                "at most 8 rows per request",
            ),
            (
                tensor(FP32, vec![1 << 58, 2], fp32(vec![])),
                None,
                "has 288230376151711744 rows",
            ),
            (tensor(FP32, vec![-5, 2], fp32(vec![])), None, "rows ≥ 1"),
            (
                tensor(FP32, vec![1, 2, 1], fp32(vec![0.0; 2])),
                None,
                "expected [rows, 2]",
            ),
        ];
        for (mut input, raw, expected) in cases {
            let error = decode_input(&mut input, raw.as_deref(), &spec(), 8).unwrap_err();
            assert!(matches!(error, Error::InvalidRequest(_)));
            assert!(
                error.to_string().contains(expected),
                "{error} should contain {expected}"
            );
        }
    }

    #[test]
    fn sizes_that_overflow_are_invalid_not_wrapped() {
        // No row cap: the checked products alone must catch what would wrap.
        for (shape, raw) in [
            (vec![i64::MAX, 2], None),
            (vec![1 << 62, 2], Some(vec![])),
            (vec![1 << 62, 2], None),
        ] {
            let contents = raw.is_none().then(InferTensorContents::default);
            let error = decode_input(
                &mut tensor(FP32, shape.clone(), contents),
                raw.as_deref(),
                &spec(),
                usize::MAX,
            )
            .unwrap_err();
            assert!(
                matches!(error, Error::InvalidRequest(_)),
                "{shape:?}: {error}"
            );
        }
    }
}
