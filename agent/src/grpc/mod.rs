//! The KServe V2 / Open Inference Protocol over gRPC. The service is generic over [`Models`]
//! and is the only place that turns engine errors into `tonic::Status`.

pub mod tensor;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use policyserve_crds::PROBE_METADATA;
use tonic::{Code, Request, Response, Status};

use crate::engine::Error;
use crate::metrics::{Metrics, ModelLabels, RequestLabels};
use crate::registry::{Models, ServedModel};

/// Code generated from `proto/grpc_predict_v2.proto`.
#[allow(missing_docs, missing_debug_implementations, clippy::all)]
pub mod proto {
    tonic::include_proto!("inference");

    /// The protocol's encoded `FileDescriptorSet`.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/inference_descriptor.bin"));
}

use proto::grpc_inference_service_server::GrpcInferenceService;
pub use proto::grpc_inference_service_server::GrpcInferenceServiceServer;
use proto::model_infer_response::InferOutputTensor;
use proto::model_metadata_response::TensorMetadata;
use proto::*;

/// Server name in ServerMetadata.
pub const SERVER_NAME: &str = "policyserve";

/// Inference requests a service has taken into a handler and answered (with any status),
/// probe requests aside: after a drain, equal counts say no accepted request went unanswered.
#[derive(Debug, Default)]
pub struct Tally {
    accepted: AtomicU64,
    answered: AtomicU64,
}

impl Tally {
    /// Requests taken into a handler.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// Requests whose handler returned an answer.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }
}

/// The inference service over a set of models.
#[derive(Debug)]
pub struct InferenceService<M> {
    models: Arc<M>,
    metrics: Arc<Metrics>,
    tally: Arc<Tally>,
}

impl<M: Models> InferenceService<M> {
    /// A service answering for `models`.
    pub fn new(models: Arc<M>, metrics: Arc<Metrics>) -> Self {
        Self {
            models,
            metrics,
            tally: Arc::default(),
        }
    }

    /// Its running account of requests taken and answered.
    pub fn tally(&self) -> Arc<Tally> {
        Arc::clone(&self.tally)
    }

    /// The tonic server wrapping this service, with the message size limit applied both ways.
    pub fn into_server(self, max_message_bytes: usize) -> GrpcInferenceServiceServer<Self> {
        GrpcInferenceServiceServer::new(self)
            .max_decoding_message_size(max_message_bytes)
            .max_encoding_message_size(max_message_bytes)
    }

    /// The model a request names: a served one, or for probe requests also a probe's engine.
    /// The error names no other model: which models a node serves is not the caller's business.
    fn find(&self, name: &str, version: &str, probe: bool) -> Result<Arc<ServedModel>, Status> {
        let model = probe
            .then(|| self.models.probe(name))
            .flatten()
            .or_else(|| self.models.model(name))
            .ok_or_else(|| Status::not_found(format!("model {name:?} is not served here")))?;
        if !version.is_empty() && version != model.version {
            return Err(Status::not_found(format!(
                "model {name:?} has no version {version:?}; served version: {:?}",
                model.version
            )));
        }
        Ok(model)
    }

    async fn infer(
        &self,
        model: &ServedModel,
        request: Request<ModelInferRequest>,
    ) -> Result<ModelInferResponse, Status> {
        let deadline = grpc_deadline(&request);
        let mut request = request.into_inner();
        let signature = model.engine.signature();
        let [input] = request.inputs.as_mut_slice() else {
            return Err(Status::invalid_argument(format!(
                "model {:?} takes one input ({:?}); the request has {}",
                model.name,
                signature.input.name,
                request.inputs.len()
            )));
        };
        let raw = match request.raw_input_contents.as_slice() {
            [] => None,
            [raw] => Some(raw.as_slice()),
            more => {
                return Err(Status::invalid_argument(format!(
                    "{} raw_input_contents entries for 1 input",
                    more.len()
                )));
            }
        };
        let wanted: Vec<usize> = if request.outputs.is_empty() {
            (0..signature.outputs.len()).collect()
        } else {
            request
                .outputs
                .iter()
                .map(|o| {
                    signature
                        .outputs
                        .iter()
                        .position(|s| s.name == o.name)
                        .ok_or_else(|| {
                            Status::invalid_argument(format!(
                                "model {:?} has no output {:?}",
                                model.name, o.name
                            ))
                        })
                })
                .collect::<Result<_, _>>()?
        };
        // A request of more rows than a batch holds is refused here, before it is decoded.
        let max_rows = model.engine.batcher().settings().max_request_rows;
        let (values, rows) =
            tensor::decode_input(input, raw, &signature.input, max_rows).map_err(status)?;

        let labels = ModelLabels {
            model: model.name.clone(),
        };
        let depth = self.metrics.queue_depth.get_or_create(&labels).clone();
        depth.inc();
        let result = model.engine.infer(values, rows, deadline).await;
        depth.dec();
        let mut answer = result.map_err(status)?;
        self.metrics
            .batch_rows
            .get_or_create(&labels)
            .observe(answer.batch_rows as f64);

        let mut response = ModelInferResponse {
            model_name: model.name.clone(),
            model_version: model.version.clone(),
            id: request.id,
            ..Default::default()
        };
        for index in wanted {
            let spec = &signature.outputs[index];
            let values = std::mem::take(&mut answer.outputs[index]);
            let mut shape = vec![rows as i64];
            shape.extend_from_slice(&spec.row_shape);
            let mut output = InferOutputTensor {
                name: spec.name.clone(),
                datatype: tensor::FP32.into(),
                shape,
                ..Default::default()
            };
            // Answer in the form the client used: raw for raw, typed for typed.
            if raw.is_some() {
                response.raw_output_contents.push(tensor::to_raw(&values));
            } else {
                output.contents = Some(InferTensorContents {
                    fp32_contents: values,
                    ..Default::default()
                });
            }
            response.outputs.push(output);
        }
        Ok(response)
    }

    /// Counts an answer in the metrics and the model's traffic window; `model` is `None` when
    /// the request named no served model, whose name then stays out of the metric labels.
    fn record(&self, model: Option<&ServedModel>, started: Instant, code: Code) {
        let latency = started.elapsed();
        let name = model.map(|m| m.name.clone()).unwrap_or_default();
        let labels = RequestLabels {
            model: name.clone(),
            code: format!("{code:?}"),
        };
        self.metrics.requests.get_or_create(&labels).inc();
        let Some(model) = model else { return };
        model.traffic.record(started, latency, code);
        if code == Code::Ok {
            self.metrics
                .latency
                .get_or_create(&ModelLabels { model: name })
                .observe(latency.as_secs_f64());
        }
    }
}

/// Whether the request is the agent's own capacity probe (`policyserve-probe: 1`).
fn is_probe<T>(request: &Request<T>) -> bool {
    request
        .metadata()
        .get(PROBE_METADATA)
        .is_some_and(|value| value == "1")
}

/// The client's deadline from the `grpc-timeout` header, so that requests whose caller has
/// given up are not run.
fn grpc_deadline<T>(request: &Request<T>) -> Option<Instant> {
    let header = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (amount, unit) = header.split_at(header.len().checked_sub(1)?);
    let amount: u64 = amount.parse().ok()?;
    let timeout = match unit {
        "H" => Duration::from_secs(amount.saturating_mul(3600)),
        "M" => Duration::from_secs(amount.saturating_mul(60)),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    };
    Instant::now().checked_add(timeout)
}

/// The one mapping from engine errors (the only ones a request can meet) to gRPC status codes.
fn status(error: Error) -> Status {
    let message = error.to_string();
    match error {
        Error::InvalidRequest(_) => Status::invalid_argument(message),
        Error::QueueFull(_) | Error::QueueBytesFull { .. } => Status::resource_exhausted(message),
        Error::DeadlineExceeded(_) => Status::deadline_exceeded(message),
        Error::Stopped => Status::unavailable(message),
        _ => Status::internal(message),
    }
}

#[tonic::async_trait]
impl<M: Models> GrpcInferenceService for InferenceService<M> {
    async fn server_live(
        &self,
        _: Request<ServerLiveRequest>,
    ) -> Result<Response<ServerLiveResponse>, Status> {
        Ok(Response::new(ServerLiveResponse { live: true }))
    }

    async fn server_ready(
        &self,
        _: Request<ServerReadyRequest>,
    ) -> Result<Response<ServerReadyResponse>, Status> {
        // Ready once it serves a model: a load balancer has nothing to send before that.
        Ok(Response::new(ServerReadyResponse {
            ready: !self.models.names().is_empty(),
        }))
    }

    async fn model_ready(
        &self,
        request: Request<ModelReadyRequest>,
    ) -> Result<Response<ModelReadyResponse>, Status> {
        let request = request.into_inner();
        let ready = self.find(&request.name, &request.version, false).is_ok();
        Ok(Response::new(ModelReadyResponse { ready }))
    }

    async fn server_metadata(
        &self,
        _: Request<ServerMetadataRequest>,
    ) -> Result<Response<ServerMetadataResponse>, Status> {
        Ok(Response::new(ServerMetadataResponse {
            name: SERVER_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            extensions: Vec::new(),
        }))
    }

    async fn model_metadata(
        &self,
        request: Request<ModelMetadataRequest>,
    ) -> Result<Response<ModelMetadataResponse>, Status> {
        let request = request.into_inner();
        let model = self.find(&request.name, &request.version, false)?;
        let signature = model.engine.signature();
        let describe = |spec: &crate::engine::TensorSpec| TensorMetadata {
            name: spec.name.clone(),
            datatype: tensor::FP32.into(),
            shape: std::iter::once(-1)
                .chain(spec.row_shape.iter().copied())
                .collect(),
        };
        Ok(Response::new(ModelMetadataResponse {
            name: model.name.clone(),
            versions: vec![model.version.clone()],
            platform: "onnxruntime_onnx".into(),
            inputs: vec![describe(&signature.input)],
            outputs: signature.outputs.iter().map(describe).collect(),
        }))
    }

    async fn model_infer(
        &self,
        request: Request<ModelInferRequest>,
    ) -> Result<Response<ModelInferResponse>, Status> {
        let started = Instant::now();
        let probe = is_probe(&request);
        if !probe {
            self.tally.accepted.fetch_add(1, Ordering::Relaxed);
        }
        let message = request.get_ref();
        let (model, result) = match self.find(&message.model_name, &message.model_version, probe) {
            Ok(model) => {
                let result = self.infer(&model, request).await;
                (Some(model), result)
            }
            Err(status) => (None, Err(status)),
        };
        // Probe requests measure the server; counting them would make it measure itself.
        if !probe {
            let code = result.as_ref().map_or_else(Status::code, |_| Code::Ok);
            self.record(model.as_deref(), started, code);
            self.tally.answered.fetch_add(1, Ordering::Relaxed);
        }
        result.map(Response::new)
    }
}
