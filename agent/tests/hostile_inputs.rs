//! Hostile input, table by table (docs/reliability.md): model paths that reach out of the model
//! root, downloads that never end or never answer, ConfigMaps that arrive late, requests whose
//! shapes overflow or exceed a batch, queues that fill by bytes, and model files that lie. Each
//! case names the error or gRPC code it must produce; the gRPC cases then check that the server
//! still answers both of its models.
#![allow(clippy::unwrap_used)]

mod hostile_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hostile_support::{MIB, Reply, Server, identity_model, kube_status, serve};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use policyserve_agent::engine::{Engine, EngineOptions, Error, ModelFiles, runtime};
use policyserve_agent::fetch::{
    FetchOptions, Fetcher, Retry, Retrying, hex_sha256, read_model_path,
};
use policyserve_agent::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use policyserve_agent::grpc::proto::model_infer_request::InferInputTensor;
use policyserve_agent::grpc::proto::*;
use policyserve_agent::metrics::Metrics;
use policyserve_agent::registry::{ModelRegistry, ServedModel};
use policyserve_agent::serve::serve_grpc;
use policyserve_crds::{ConfigMapModel, EngineConfig, ModelSource, UrlModel};
use tonic::Code;
use tonic::transport::Channel;

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

// ---------------------------------------------------------------------------------------------
// model.path

/// A model root with one good model and the usual ways out of it.
struct Root {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

fn model_root() -> Root {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("models");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("good.onnx"), b"small model bytes").unwrap();
    std::fs::write(root.join("big.onnx"), vec![0u8; 4096]).unwrap();
    std::fs::create_dir(root.join("folder.onnx")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", root.join("zero.onnx")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("passwd.onnx")).unwrap();
    std::os::unix::fs::symlink(root.join("good.onnx"), root.join("alias.onnx")).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(root.join("fifo.onnx"))
        .status()
        .unwrap();
    assert!(fifo.success(), "mkfifo failed");
    Root { _dir: dir, root }
}

#[test]
fn model_paths_stay_under_the_root_and_are_bounded_regular_files() {
    let Root { _dir, root } = model_root();
    let under = |name: &str| root.join(name).display().to_string();
    let escape = format!("{}/../../../../etc/passwd", root.display());
    let cases: Vec<(String, &str)> = vec![
        ("/dev/zero".into(), "outside the model root"),
        ("/etc/passwd".into(), "outside the model root"),
        (escape, "outside the model root"),
        ("models/good.onnx".into(), "must be absolute"),
        (under("zero.onnx"), "resolves through a symlink outside"),
        (under("passwd.onnx"), "resolves through a symlink outside"),
        (under("folder.onnx"), "not a regular file (a directory)"),
        // Opened without blocking: a FIFO with no writer would otherwise hang the fetch.
        (under("fifo.onnx"), "not a regular file (a FIFO)"),
        (
            under("big.onnx"),
            "larger than the agent's limit of 1024 bytes",
        ),
        (under("missing.onnx"), "no such file on this node"),
    ];
    for (path, expected) in cases {
        let error = read_model_path(&root, Path::new(&path), 1024).unwrap_err();
        let text = error.to_string();
        assert!(
            matches!(error, policyserve_agent::fetch::Error::Failed { .. }),
            "{path}: {text}"
        );
        assert!(
            text.contains(expected),
            "{path}: {text} should say {expected:?}"
        );
        // Errors name paths and limits, never what a file holds.
        assert!(!text.contains("root:"), "{path}: {text} leaks /etc/passwd");
        assert!(text.contains("--model-root") || text.contains("limit") || text.contains("file"));
    }
    for name in ["good.onnx", "alias.onnx"] {
        let bytes = read_model_path(&root, &root.join(name), 1024).unwrap();
        assert_eq!(bytes, b"small model bytes");
    }
    let missing_root = root.join("not-there");
    let error = read_model_path(&missing_root, &missing_root.join("m.onnx"), 1024).unwrap_err();
    assert!(error.to_string().contains("model root"), "{error}");
}

// ---------------------------------------------------------------------------------------------
// Downloads and ConfigMaps

const TEST_CAP: u64 = MIB;

fn options(root: &Path) -> FetchOptions {
    FetchOptions {
        model_root: root.to_owned(),
        max_model_bytes: TEST_CAP,
        connect_timeout: Duration::from_secs(5),
        // Generous for a loaded machine; the stalled servers below never send anything more.
        read_timeout: Duration::from_secs(2),
        download_timeout: Duration::from_secs(120),
        max_redirects: 5,
        retry: Retry {
            max_attempts: Some(3),
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
        },
    }
}

/// A fetcher whose Kubernetes API is `api` (a fake one), caching in a fresh folder.
fn fetcher(api: &Server, cache: &Path) -> Fetcher {
    let config = kube::Config::new(api.url("").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    Fetcher::with_options(client, cache.to_owned(), options(Path::new("/nonexistent"))).unwrap()
}

fn url_source(uri: String, sha256: &str) -> ModelSource {
    ModelSource {
        url: Some(UrlModel {
            uri,
            sha256: sha256.into(),
        }),
        ..Default::default()
    }
}

/// Fetches with retries, returning the result and the attempts reported before each retry.
async fn fetch_counting(
    fetcher: &Fetcher,
    source: &ModelSource,
) -> (policyserve_agent::fetch::Result<Arc<[u8]>>, Vec<String>) {
    let mut retries = Vec::new();
    let result = fetcher
        .fetch_with_retries("robots", source, &mut |r: &Retrying<'_>| {
            retries.push(r.to_string());
            std::future::ready(())
        })
        .await;
    (result, retries)
}

const MODEL: &[u8] = b"pretend this is an ONNX file";

#[tokio::test]
async fn hostile_download_servers_are_cut_off_at_the_cap_the_timeouts_and_the_redirect_rules() {
    let digest = hex_sha256(MODEL);
    let refused_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let api = serve(|_, _| Reply::status(500)).await;
    struct Case {
        name: &'static str,
        reply: fn(&str, usize) -> Reply,
        sha256: Option<&'static str>,
        uri: Option<String>,
        expected: &'static str,
        attempts: usize,
    }
    let case = |name, reply, expected, attempts| Case {
        name,
        reply,
        sha256: None,
        uri: None,
        expected,
        attempts,
    };
    let cases = vec![
        // 100 MiB without a Content-Length: counted as it arrives, stopped at 1 MiB.
        case(
            "chunked 100 MiB",
            |_, _| Reply::Chunked { total: 100 * MIB },
            "passed 1048576 bytes",
            1,
        ),
        case(
            "declared 2 MiB",
            |_, _| Reply::declared(2 * MIB),
            "larger than the agent's limit",
            1,
        ),
        // Headers, then silence: the read timeout, retried as transient.
        case(
            "stalled body",
            |_, _| Reply::StallBody { length: 1000 },
            "gave up after 3 attempts",
            3,
        ),
        case(
            "no answer",
            |_, _| Reply::Silent,
            "gave up after 3 attempts",
            3,
        ),
        case("HTTP 404", |_, _| Reply::status(404), "HTTP 404", 1),
        case(
            "HTTP 503 for ever",
            |_, _| Reply::status(503),
            "HTTP 503 Service Unavailable (gave up after 3 attempts)",
            3,
        ),
        case(
            "redirect loop",
            |path, _| Reply::redirect(path),
            "more than 5 redirects",
            6,
        ),
        case(
            "wrong bytes",
            |_, _| Reply::ok(b"other bytes".to_vec()),
            "has sha256",
            1,
        ),
        Case {
            sha256: Some("../../../../etc/cron.d/x"),
            ..case(
                "digest as a path",
                |_, _| Reply::ok(MODEL.to_vec()),
                "64 hex digits",
                0,
            )
        },
        Case {
            uri: Some(format!("http://127.0.0.1:{refused_port}/m.onnx")),
            ..case(
                "connection refused",
                |_, _| Reply::status(200),
                "gave up after 3 attempts",
                0,
            )
        },
    ];
    for case in cases {
        let cache = tempfile::tempdir().unwrap();
        let server = serve(case.reply).await;
        let fetcher = fetcher(&api, cache.path());
        let uri = case.uri.clone().unwrap_or_else(|| server.url("/m.onnx"));
        let source = url_source(uri, case.sha256.unwrap_or(&digest));
        let (result, retries) = fetch_counting(&fetcher, &source).await;
        let error = result.unwrap_err().to_string();
        assert!(
            error.contains(case.expected),
            "{}: {error} should say {:?}",
            case.name,
            case.expected
        );
        assert_eq!(server.requests(), case.attempts, "{}: requests", case.name);
        let retried = if case.expected.contains("gave up") {
            2
        } else {
            0
        };
        assert_eq!(retries.len(), retried, "{}: {retries:?}", case.name);
        let sent = server
            .body_bytes_sent
            .load(std::sync::atomic::Ordering::SeqCst);
        // Figures for docs/reliability.md (`--nocapture`).
        println!(
            "{}: {} request(s), {sent} body bytes sent: {error}",
            case.name,
            server.requests()
        );
        // The kernel's socket buffers take some megabytes beyond what the client read.
        assert!(
            sent < 32 * MIB,
            "{}: the server sent {sent} bytes",
            case.name
        );
    }
}

#[tokio::test]
async fn transient_failures_are_retried_and_reported_until_the_model_arrives() {
    let api = serve(|_, _| Reply::status(500)).await;
    // Two 503s, then the model.
    let flaky = serve(|_, n| {
        if n < 2 {
            Reply::status(503)
        } else {
            Reply::ok(MODEL.to_vec())
        }
    })
    .await;
    let cache = tempfile::tempdir().unwrap();
    let fetcher = fetcher(&api, cache.path());
    let source = url_source(flaky.url("/m.onnx"), &hex_sha256(MODEL));
    let (result, retries) = fetch_counting(&fetcher, &source).await;
    assert_eq!(&*result.unwrap(), MODEL);
    assert_eq!(retries.len(), 2, "{retries:?}");
    assert!(
        retries[0].starts_with("attempt 1 of 3 failed"),
        "{retries:?}"
    );
    assert!(retries[1].contains("HTTP 503"), "{retries:?}");
    // Cached by digest: the next fetch asks no server.
    let (again, _) = fetch_counting(&fetcher, &source).await;
    assert_eq!(&*again.unwrap(), MODEL);
    assert_eq!(flaky.requests(), 3);
}

fn config_map(binary: Option<&[u8]>, data: bool) -> ConfigMap {
    let mut map = ConfigMap::default();
    map.metadata.name = Some("lander-model".into());
    map.metadata.namespace = Some("robots".into());
    if let Some(bytes) = binary {
        map.binary_data = Some([("model.onnx".to_owned(), ByteString(bytes.to_vec()))].into());
    }
    if data {
        map.data = Some([("model.onnx".to_owned(), "text".to_owned())].into());
    }
    map
}

#[tokio::test]
async fn a_config_map_created_after_its_profile_is_waited_for() {
    const PATH: &str = "/api/v1/namespaces/robots/configmaps/lander-model";
    let cm = |s| ModelSource {
        config_map: Some(ConfigMapModel {
            name: "lander-model".into(),
            key: s,
        }),
        ..Default::default()
    };
    // Not found twice, then there.
    let late = serve(|path, n| {
        assert_eq!(path, PATH);
        if n < 2 {
            kube_status(404, "NotFound", "configmaps \"lander-model\" not found")
        } else {
            Reply::json(
                200,
                &serde_json::to_value(config_map(Some(MODEL), false)).unwrap(),
            )
        }
    })
    .await;
    let cache = tempfile::tempdir().unwrap();
    let (result, retries) =
        fetch_counting(&fetcher(&late, cache.path()), &cm("model.onnx".into())).await;
    assert_eq!(&*result.unwrap(), MODEL);
    assert_eq!(retries.len(), 2);
    assert!(retries[0].contains("does not exist"), "{retries:?}");

    // The key in `data`: retried (an edit of the ConfigMap fixes it), then reported.
    let textual =
        serve(|_, _| Reply::json(200, &serde_json::to_value(config_map(None, true)).unwrap()))
            .await;
    let (result, _) =
        fetch_counting(&fetcher(&textual, cache.path()), &cm("model.onnx".into())).await;
    let error = result.unwrap_err().to_string();
    assert!(error.contains("in data, not binaryData"), "{error}");
    assert!(error.contains("gave up after 3 attempts"), "{error}");

    // RBAC refusing the agent is not transient.
    let forbidden = serve(|_, _| kube_status(403, "Forbidden", "configmaps is forbidden")).await;
    let (result, retries) =
        fetch_counting(&fetcher(&forbidden, cache.path()), &cm("model.onnx".into())).await;
    assert!(result.unwrap_err().to_string().contains("forbidden"));
    assert!(retries.is_empty());
    assert_eq!(forbidden.requests(), 1);

    // Larger than the cap.
    let big = vec![7u8; (TEST_CAP + 1) as usize];
    let huge = serve(move |_, _| {
        Reply::json(
            200,
            &serde_json::to_value(config_map(Some(&big), false)).unwrap(),
        )
    })
    .await;
    let (result, _) = fetch_counting(&fetcher(&huge, cache.path()), &cm("model.onnx".into())).await;
    assert!(
        result
            .unwrap_err()
            .to_string()
            .contains("larger than the agent's limit")
    );
}

#[tokio::test]
async fn a_node_path_outside_the_root_is_refused_through_the_fetcher() {
    let Root { _dir, root } = model_root();
    let api = serve(|_, _| Reply::status(500)).await;
    let config = kube::Config::new(api.url("").parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let fetcher = Fetcher::with_options(client, cache.path().to_owned(), options(&root)).unwrap();
    let path = |p: &str| ModelSource {
        path: Some(p.into()),
        ..Default::default()
    };
    let (zero, retries) = fetch_counting(&fetcher, &path("/dev/zero")).await;
    assert!(
        zero.unwrap_err()
            .to_string()
            .contains("outside the model root")
    );
    // Not transient: a spec change fixes it, waiting does not.
    assert!(retries.is_empty());
    let good = root.join("good.onnx").display().to_string();
    let (bytes, _) = fetch_counting(&fetcher, &path(&good)).await;
    assert_eq!(&*bytes.unwrap(), b"small model bytes");
}

// ---------------------------------------------------------------------------------------------
// Requests over gRPC

struct Grpc {
    client: GrpcInferenceServiceClient<Channel>,
    _registry: Arc<ModelRegistry>,
}

const MAX_BATCH: u32 = 8;

async fn grpc_server(options: EngineOptions, config: EngineConfig) -> Grpc {
    runtime::environment(None).expect("ORT_DYLIB_PATH names libonnxruntime.so (run `make deps`)");
    let registry = Arc::new(ModelRegistry::new());
    for (name, file) in [("policy", "policy-mlp.onnx"), ("other", "policy-mlp.onnx")] {
        let files = ModelFiles::read(name, &models_dir().join(file), &[]).unwrap();
        let engine = Engine::load(&files, &config, &options).unwrap();
        registry.insert(ServedModel::new(name, engine, 60));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(serve_grpc(
        listener,
        Arc::clone(&registry),
        Arc::new(Metrics::default()),
        4 * 1024 * 1024,
        std::future::pending(),
    ));
    let client = GrpcInferenceServiceClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    Grpc {
        client,
        _registry: registry,
    }
}

fn input(
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

fn request(model: &str, inputs: Vec<InferInputTensor>, raw: Vec<Vec<u8>>) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        inputs,
        raw_input_contents: raw,
        ..Default::default()
    }
}

fn valid(model: &str) -> ModelInferRequest {
    request(
        model,
        vec![input("FP32", vec![1, 64], fp32(vec![0.5; 64]))],
        vec![],
    )
}

async fn assert_serving(client: &mut GrpcInferenceServiceClient<Channel>, after: &str) {
    for model in ["policy", "other"] {
        let answer = client.model_infer(valid(model)).await;
        let answer = answer.unwrap_or_else(|e| panic!("after {after}: {model} failed: {e}"));
        assert_eq!(
            answer.into_inner().outputs[0].shape,
            vec![1, 16],
            "after {after}"
        );
    }
}

#[tokio::test]
async fn a_request_larger_than_the_tuned_batch_runs_as_a_batch_of_its_own() {
    let config = EngineConfig {
        max_batch_size: MAX_BATCH,
        ..EngineConfig::default()
    };
    let mut grpc = grpc_server(EngineOptions::default(), config).await;
    let rows = MAX_BATCH as usize * 4;
    let answer = grpc
        .client
        .model_infer(request(
            "policy",
            vec![input(
                "FP32",
                vec![rows as i64, 64],
                fp32(vec![0.1; rows * 64]),
            )],
            vec![],
        ))
        .await
        .unwrap();
    assert_eq!(answer.into_inner().outputs[0].shape, vec![rows as i64, 16]);
}

#[tokio::test]
async fn malformed_requests_get_invalid_argument_and_the_server_keeps_serving() {
    let config = EngineConfig {
        max_batch_size: MAX_BATCH,
        ..EngineConfig::default()
    };
    // The row cap is the server's (--max-request-rows), not the tuned batch size.
    let options = EngineOptions {
        max_request_rows: MAX_BATCH as usize,
        ..EngineOptions::default()
    };
    let mut grpc = grpc_server(options, config).await;
    let c = &mut grpc.client;
    let huge: i64 = 1 << 58;
    let one_row_raw = vec![vec![0u8; 64 * 4]];
    let cases: Vec<(&str, ModelInferRequest, Code, &str)> = vec![
        (
            "2^58 rows, no values",
            request(
                "policy",
                vec![input("FP32", vec![huge, 64], fp32(vec![]))],
                vec![],
            ),
            Code::InvalidArgument,
            "at most 8 rows per request",
        ),
        (
            "2^58 rows, raw, one row of bytes",
            request(
                "policy",
                vec![input("FP32", vec![huge, 64], None)],
                one_row_raw.clone(),
            ),
            Code::InvalidArgument,
            "at most 8 rows per request",
        ),
        (
            "i64::MAX rows",
            request(
                "policy",
                vec![input("FP64", vec![i64::MAX, 64], None)],
                vec![vec![]],
            ),
            Code::InvalidArgument,
            "at most 8 rows per request",
        ),
        (
            "more rows than --max-request-rows",
            request(
                "policy",
                vec![input("FP32", vec![9, 64], fp32(vec![0.0; 9 * 64]))],
                vec![],
            ),
            Code::InvalidArgument,
            "at most 8 rows per request",
        ),
        (
            "huge row dimension",
            request(
                "policy",
                vec![input("FP32", vec![1, 1 << 62], None)],
                vec![vec![]],
            ),
            Code::InvalidArgument,
            "expected [rows, 64]",
        ),
        (
            "negative rows",
            request(
                "policy",
                vec![input("FP32", vec![-1, 64], fp32(vec![]))],
                vec![],
            ),
            Code::InvalidArgument,
            "rows ≥ 1",
        ),
        (
            "no shape",
            request("policy", vec![input("FP32", vec![], fp32(vec![]))], vec![]),
            Code::InvalidArgument,
            "has no shape",
        ),
        (
            "raw bytes short by one",
            request(
                "policy",
                vec![input("FP32", vec![1, 64], None)],
                vec![vec![0; 255]],
            ),
            Code::InvalidArgument,
            "raw contents are 255 bytes",
        ),
        (
            "typed values short",
            request(
                "policy",
                vec![input("FP32", vec![2, 64], fp32(vec![0.0; 64]))],
                vec![],
            ),
            Code::InvalidArgument,
            "carries 64 FP32 values",
        ),
        (
            "BYTES",
            request(
                "policy",
                vec![input("BYTES", vec![1, 64], None)],
                vec![vec![0; 64]],
            ),
            Code::InvalidArgument,
            "datatype \"BYTES\"",
        ),
        (
            "FP16 typed",
            request(
                "policy",
                vec![input("FP16", vec![1, 64], fp32(vec![0.0; 64]))],
                vec![],
            ),
            Code::InvalidArgument,
            "must use raw_input_contents",
        ),
        (
            "two inputs",
            request(
                "policy",
                vec![
                    input("FP32", vec![1, 64], None),
                    input("FP32", vec![1, 64], None),
                ],
                vec![],
            ),
            Code::InvalidArgument,
            "takes one input",
        ),
        (
            "raw entries for two inputs",
            request(
                "policy",
                vec![input("FP32", vec![1, 64], None)],
                vec![vec![0; 256], vec![0; 256]],
            ),
            Code::InvalidArgument,
            "2 raw_input_contents entries",
        ),
        (
            "no contents at all",
            request("policy", vec![input("FP32", vec![1, 64], None)], vec![]),
            Code::InvalidArgument,
            "neither contents nor raw",
        ),
        (
            "wrong input name",
            request(
                "policy",
                vec![InferInputTensor {
                    name: "../../etc".into(),
                    ..input("FP32", vec![1, 64], fp32(vec![0.0; 64]))
                }],
                vec![],
            ),
            Code::InvalidArgument,
            "unexpected input",
        ),
        (
            "unknown model",
            valid("nobody"),
            Code::NotFound,
            "is not served here",
        ),
    ];
    for (name, message, code, expected) in cases {
        let status = c.model_infer(message).await.unwrap_err();
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(
            status.message().contains(expected),
            "{name}: {:?} should say {expected:?}",
            status.message()
        );
        assert_serving(c, name).await;
    }
    // A message larger than the server's limit is refused by the transport, not decoded.
    let oversized = request(
        "policy",
        vec![input("FP32", vec![1, 64], None)],
        vec![vec![0; 5 * 1024 * 1024]],
    );
    let status = c.model_infer(oversized).await.unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert_serving(c, "an oversized message").await;
}

#[tokio::test]
async fn a_queue_full_of_bytes_answers_resource_exhausted_and_the_server_keeps_serving() {
    // Batches of up to 32 rows that wait 2 s to fill: the bound (one full batch, the least a
    // worker needs) fills before the batch runs, so concurrent single rows beyond it are refused.
    let config = EngineConfig {
        max_batch_size: 32,
        batch_delay_micros: 2_000_000,
        ..EngineConfig::default()
    };
    let options = EngineOptions {
        max_queued_bytes: 1,
        ..EngineOptions::default()
    };
    let mut grpc = grpc_server(options, config).await;
    let mut refusal = None;
    for _ in 0..20 {
        let calls = (0..96).map(|_| {
            let mut client = grpc.client.clone();
            async move { client.model_infer(valid("policy")).await }
        });
        let answers = futures::future::join_all(calls).await;
        for answer in answers {
            match answer {
                Ok(_) => {}
                Err(status) if status.code() == Code::ResourceExhausted => {
                    refusal = Some(status);
                }
                Err(status) => panic!("unexpected {status:?}"),
            }
        }
        if refusal.is_some() {
            break;
        }
    }
    let refusal = refusal.expect("96 concurrent rows against a 32-row bound were all accepted");
    assert!(
        refusal.message().contains("bytes of requests waiting"),
        "{refusal:?}"
    );
    let c = &mut grpc.client;
    // The "other" model shares nothing with the full queue; "policy" drains and serves again.
    for model in ["other", "policy"] {
        let answer = tokio::time::timeout(Duration::from_secs(30), c.model_infer(valid(model)))
            .await
            .unwrap();
        assert!(answer.is_ok(), "{model}: {answer:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Model files

#[test]
fn hostile_model_files_fail_to_load_with_a_reason_and_nothing_else_breaks() {
    runtime::environment(None).expect("ORT_DYLIB_PATH names libonnxruntime.so (run `make deps`)");
    let broken = models_dir().join("broken");
    let read = |name: &str| std::fs::read(broken.join(name)).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", read("truncated.onnx"), "failed to load model"),
        ("not ONNX", read("not-onnx.onnx"), "failed to load model"),
        (
            "unknown operator",
            read("unsupported-op.onnx"),
            "failed to load model",
        ),
        (
            "int64 input",
            read("int64-input.onnx"),
            "is Int64; the engine serves float32",
        ),
        (
            "fixed batch",
            read("static-batch.onnx"),
            "fixed batch dimension of 1",
        ),
        ("empty file", Vec::new(), "failed to load model"),
        (
            "2^40 elements per row",
            identity_model(&[1 << 40]),
            "elements per row",
        ),
        (
            "dimensions whose product overflows",
            identity_model(&[1 << 40, 1 << 40]),
            "more than usize::MAX",
        ),
        (
            "2^25 elements per row",
            identity_model(&[1 << 25]),
            "engine serves at most",
        ),
    ];
    let config = EngineConfig::default();
    for (name, bytes, expected) in cases {
        let files = ModelFiles::new(
            name,
            [(policyserve_crds::Precision::Fp32, Arc::from(bytes))].into(),
        )
        .unwrap();
        let error = Engine::load(&files, &config, &EngineOptions::default()).unwrap_err();
        assert!(
            matches!(
                error,
                Error::ModelLoad { .. } | Error::UnsupportedModel { .. }
            ),
            "{name}: {error}"
        );
        assert!(
            error.to_string().contains(expected),
            "{name}: {error} should say {expected:?}"
        );
    }
    // The hand-made model itself is fine at a sane size: the refusals above are about the dims.
    let sane = ModelFiles::new(
        "identity",
        [(
            policyserve_crds::Precision::Fp32,
            Arc::from(identity_model(&[4])),
        )]
        .into(),
    )
    .unwrap();
    let engine = Engine::load(&sane, &config, &EngineOptions::default()).unwrap();
    let answer = engine.infer_blocking(vec![1.0, 2.0, 3.0, 4.0], 1).unwrap();
    assert_eq!(answer.outputs[0], vec![1.0, 2.0, 3.0, 4.0]);
}

#[test]
fn the_byte_bound_holds_past_one_full_batch_and_is_released_when_answered() {
    runtime::environment(None).expect("ORT_DYLIB_PATH names libonnxruntime.so (run `make deps`)");
    let files = ModelFiles::read("policy", &models_dir().join("policy-mlp.onnx"), &[]).unwrap();
    let config = EngineConfig {
        max_batch_size: 32,
        batch_delay_micros: 2_000_000,
        ..EngineConfig::default()
    };
    // One request may carry at most one batch here, so no single request exceeds the bound.
    let options = EngineOptions {
        max_queued_bytes: 1,
        max_request_rows: 32,
        ..EngineOptions::default()
    };
    let engine = Engine::load(&files, &config, &options).unwrap();
    let batcher = engine.batcher();
    // Raised to one full batch: 32 rows × (64 inputs + 16 outputs) × 4 bytes.
    let bound = 32 * (64 + 16) * 4;
    assert_eq!(batcher.settings().max_queued_bytes, bound);
    let too_many = batcher.submit(vec![0.0; 33 * 64], 33, None).unwrap_err();
    assert!(matches!(too_many, Error::InvalidRequest(_)), "{too_many}");

    // Single rows as fast as a loop submits them: the 33rd arrives while the first batch (full
    // at 32) still holds its bytes, or a later one does; never more than the bound is held.
    let mut pending = Vec::new();
    let mut refusal = None;
    for _ in 0..10_000 {
        match batcher.submit(vec![0.5; 64], 1, None) {
            Ok(reply) => pending.push(reply),
            Err(error) => {
                refusal = Some(error);
                break;
            }
        }
        assert!(batcher.queued_bytes() <= bound);
    }
    let refusal = refusal.expect("10,000 rows submitted without a refusal");
    assert!(matches!(refusal, Error::QueueBytesFull { .. }), "{refusal}");
    for reply in pending {
        assert!(reply.blocking_recv().unwrap().is_ok());
    }
    // Released as each request is dropped, just after its answer is sent.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while batcher.queued_bytes() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(batcher.queued_bytes(), 0);
    assert!(engine.infer_blocking(vec![0.5; 64], 1).is_ok());
}
