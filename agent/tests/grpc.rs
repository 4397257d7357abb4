//! The gRPC server in-process with real ONNX Runtime, through a real tonic client.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use policyserve_agent::engine::{Engine, EngineOptions, ModelFiles, runtime};
use policyserve_agent::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use policyserve_agent::grpc::proto::model_infer_request::InferInputTensor;
use policyserve_agent::grpc::proto::*;
use policyserve_agent::metrics::Metrics;
use policyserve_agent::registry::{ModelRegistry, ServedModel};
use policyserve_agent::serve::serve_grpc;
use policyserve_crds::EngineConfig;
use tokio::sync::oneshot;
use tonic::Code;
use tonic::transport::Channel;

struct Server {
    client: GrpcInferenceServiceClient<Channel>,
    registry: Arc<ModelRegistry>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(config: EngineConfig, options: EngineOptions) -> Server {
    runtime::environment(None).expect("ORT_DYLIB_PATH names libonnxruntime.so (run `make deps`)");
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/policy-mlp.onnx");
    let files = ModelFiles::read("policy", &path, &[]).unwrap();
    let engine = Engine::load(&files, &config, &options).unwrap();
    let registry = Arc::new(ModelRegistry::new());
    registry.insert(ServedModel::new("policy", engine, 60));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(serve_grpc(
        listener,
        Arc::clone(&registry),
        Arc::new(Metrics::default()),
        1024 * 1024,
        async {
            let _ = stopped.await;
        },
    ));
    let client = GrpcInferenceServiceClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    Server {
        client,
        registry,
        stop: Some(stop),
        done,
    }
}

fn default_config() -> EngineConfig {
    EngineConfig {
        max_batch_size: 16,
        ..EngineConfig::default()
    }
}

fn request(rows: usize, values: Vec<f32>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: "policy".into(),
        id: "req-1".into(),
        inputs: vec![InferInputTensor {
            name: "obs".into(),
            datatype: "FP32".into(),
            shape: vec![rows as i64, 64],
            contents: Some(InferTensorContents {
                fp32_contents: values,
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn raw_request(rows: usize, values: &[f32]) -> ModelInferRequest {
    let mut request = request(rows, Vec::new());
    request.inputs[0].contents = None;
    request.raw_input_contents = vec![values.iter().flat_map(|v| v.to_le_bytes()).collect()];
    request
}

fn observation(seed: usize) -> Vec<f32> {
    (0..64)
        .map(|i| ((i * 13 + seed * 7) % 17) as f32 / 17.0 - 0.5)
        .collect()
}

#[tokio::test]
async fn health_and_metadata_describe_the_served_model() {
    let mut server = start(default_config(), EngineOptions::default()).await;
    let c = &mut server.client;
    assert!(
        c.server_live(ServerLiveRequest {})
            .await
            .unwrap()
            .into_inner()
            .live
    );
    assert!(
        c.server_ready(ServerReadyRequest {})
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let ready = |name: &str| ModelReadyRequest {
        name: name.into(),
        version: String::new(),
    };
    assert!(
        c.model_ready(ready("policy"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    assert!(
        !c.model_ready(ready("other"))
            .await
            .unwrap()
            .into_inner()
            .ready
    );
    let metadata = c
        .model_metadata(ModelMetadataRequest {
            name: "policy".into(),
            version: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(metadata.versions, vec!["1"]);
    assert_eq!(metadata.inputs[0].name, "obs");
    assert_eq!(metadata.inputs[0].datatype, "FP32");
    assert_eq!(metadata.inputs[0].shape, vec![-1, 64]);
    assert_eq!(metadata.outputs[0].shape, vec![-1, 16]);
    let server_metadata = c
        .server_metadata(ServerMetadataRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(server_metadata.name, "policyserve");
}

#[tokio::test]
async fn typed_and_raw_requests_get_the_same_answer_in_their_own_form() {
    let mut server = start(default_config(), EngineOptions::default()).await;
    let values: Vec<f32> = (0..3).flat_map(observation).collect();
    let typed = server
        .client
        .model_infer(request(3, values.clone()))
        .await
        .unwrap()
        .into_inner();
    let raw = server
        .client
        .model_infer(raw_request(3, &values))
        .await
        .unwrap()
        .into_inner();

    assert_eq!(typed.id, "req-1");
    assert_eq!(typed.outputs[0].shape, vec![3, 16]);
    let typed_values = typed.outputs[0]
        .contents
        .as_ref()
        .unwrap()
        .fp32_contents
        .clone();
    assert_eq!(typed_values.len(), 48);
    assert!(typed.raw_output_contents.is_empty());
    let raw_values: Vec<f32> = raw.raw_output_contents[0]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(typed_values, raw_values);
}

#[tokio::test]
async fn malformed_requests_are_invalid_arguments_and_the_server_keeps_serving() {
    let mut server = start(default_config(), EngineOptions::default()).await;
    let mut wrong_shape = request(1, vec![0.0; 64]);
    wrong_shape.inputs[0].shape = vec![1, 63];
    let mut wrong_count = request(2, vec![0.0; 64]);
    wrong_count.inputs[0].shape = vec![2, 64];
    let mut unknown_model = request(1, vec![0.0; 64]);
    unknown_model.model_name = "nope".into();
    let mut unknown_output = request(1, vec![0.0; 64]);
    unknown_output.outputs = vec![model_infer_request::InferRequestedOutputTensor {
        name: "q".into(),
        ..Default::default()
    }];
    let mut bytes = request(1, vec![0.0; 64]);
    bytes.inputs[0].datatype = "BYTES".into();
    let mut wrong_version = request(1, vec![0.0; 64]);
    wrong_version.model_version = "7".into();

    let cases = [
        (wrong_shape, Code::InvalidArgument, "expected [rows, 64]"),
        (wrong_count, Code::InvalidArgument, "needs 128"),
        (unknown_model, Code::NotFound, "is not served here"),
        (unknown_output, Code::InvalidArgument, "no output \"q\""),
        (bytes, Code::InvalidArgument, "BYTES"),
        (wrong_version, Code::NotFound, "no version \"7\""),
    ];
    for (bad, code, message) in cases {
        let status = server.client.model_infer(bad).await.unwrap_err();
        assert_eq!(status.code(), code, "{}", status.message());
        assert!(
            status.message().contains(message),
            "{} should say {message}",
            status.message()
        );
    }
    let ok = server
        .client
        .model_infer(request(1, observation(1)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.outputs[0].shape, vec![1, 16]);
}

#[tokio::test]
async fn many_concurrent_clients_each_get_their_own_answer() {
    let config = EngineConfig {
        max_batch_size: 32,
        batch_delay_micros: 200,
        ..EngineConfig::default()
    };
    let server = start(config, EngineOptions::default()).await;
    let alone = {
        let mut c = server.client.clone();
        let mut answers = Vec::new();
        for seed in 0..8 {
            let r = c
                .model_infer(request(1, observation(seed)))
                .await
                .unwrap()
                .into_inner();
            answers.push(r.outputs[0].contents.clone().unwrap().fp32_contents);
        }
        answers
    };
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..64 {
        let mut c = server.client.clone();
        tasks.spawn(async move {
            let seed = client % 8;
            let r = c
                .model_infer(request(1, observation(seed)))
                .await
                .unwrap()
                .into_inner();
            (seed, r.outputs[0].contents.clone().unwrap().fp32_contents)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (seed, values) = joined.unwrap();
        for (got, want) in values.iter().zip(&alone[seed]) {
            assert!((got - want).abs() < 1e-4);
        }
    }
}

#[tokio::test]
async fn a_full_queue_answers_resource_exhausted() {
    // While the one worker runs a large batch it takes nothing from the queue, so requests
    // beyond the queue's two places are refused rather than left to wait.
    let big = 4000;
    let config = EngineConfig {
        max_batch_size: big,
        ..EngineConfig::default()
    };
    let server = start(
        config,
        EngineOptions {
            queue_capacity: 2,
            ..EngineOptions::default()
        },
    )
    .await;
    let mut c = server.client.clone();
    let values: Vec<f32> = (0..big as usize).flat_map(observation).collect();
    let busy = tokio::spawn(async move { c.model_infer(request(big as usize, values)).await });
    let mut exhausted = 0;
    for _ in 0..20 {
        // Give the worker time to take the large request before the small ones arrive.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let mut tasks = tokio::task::JoinSet::new();
        for seed in 0..20 {
            let mut c = server.client.clone();
            tasks.spawn(async move { c.model_infer(request(1, observation(seed))).await });
        }
        while let Some(joined) = tasks.join_next().await {
            match joined.unwrap() {
                Ok(_) => {}
                Err(status) if status.code() == Code::ResourceExhausted => exhausted += 1,
                Err(other) => panic!("unexpected {other}"),
            }
        }
        if exhausted > 0 {
            break;
        }
    }
    busy.await.unwrap().expect("the large request is answered");
    assert!(
        exhausted > 0,
        "requests beyond a queue of 2 were all accepted"
    );
}

#[tokio::test]
async fn shutdown_while_busy_answers_every_accepted_request() {
    let config = EngineConfig {
        max_batch_size: 64,
        batch_delay_micros: 200_000,
        ..EngineConfig::default()
    };
    let mut server = start(config, EngineOptions::default()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for seed in 0..40 {
        let mut c = server.client.clone();
        tasks.spawn(async move { c.model_infer(request(1, observation(seed))).await });
    }
    // Wait until all 40 are inside the engine, then ask the server to stop.
    let model = server.registry.as_ref();
    let engine_busy = || {
        use policyserve_agent::registry::Models;
        model.model("policy").unwrap().engine.batcher().in_flight()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while engine_busy() < 40 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "requests never reached the engine"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.stop.take().unwrap().send(()).unwrap();
    let mut answered = 0;
    while let Some(joined) = tasks.join_next().await {
        joined
            .unwrap()
            .expect("an accepted request failed during shutdown");
        answered += 1;
    }
    assert_eq!(answered, 40);
    server.done.await.unwrap().unwrap();
}
