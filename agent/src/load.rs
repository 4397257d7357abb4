//! Open-loop load over KServe V2 gRPC: requests leave on a fixed schedule whatever the server
//! does, each one's latency is timed from its scheduled send (so a stalled server is charged for
//! the requests it held up, not just the ones it answered), and requests that left late or not at
//! all are counted, never dropped. The capacity sweep and `examples/loadgen.rs` both use it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use policyserve_crds::{Figures, PROBE_METADATA, Quantile};
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::grpc::proto::ModelInferRequest;
use crate::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use crate::grpc::proto::model_infer_request::InferInputTensor;
use crate::tuner::percentile;
use crate::{Error, Result};

/// A request that leaves more than this after its scheduled time counts as late.
pub const ON_TIME: Duration = Duration::from_millis(1);
/// How long one request may take before it counts as failed (DEADLINE_EXCEEDED).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the load goes: connections to a server, the model, and sample requests.
#[derive(Clone, Debug)]
pub struct Target {
    clients: Vec<GrpcInferenceServiceClient<Channel>>,
    requests: Vec<ModelInferRequest>,
    probe: bool,
}

impl Target {
    /// Opens `connections` HTTP/2 connections to `address`, over TLS with `tls` when given,
    /// for single-row requests to `model` (input `input`, `row_len` values, raw binary contents
    /// as tritonclient sends them). `probe` marks every request as the agent's own
    /// (`policyserve-probe: 1`).
    ///
    /// # Errors
    /// [`Error::Load`] when a connection cannot be made.
    pub async fn connect(
        address: SocketAddr,
        tls: Option<Arc<rustls::ClientConfig>>,
        connections: usize,
        model: &str,
        input: &str,
        row_len: usize,
        probe: bool,
    ) -> Result<Self> {
        let mut clients = Vec::new();
        for _ in 0..connections.max(1) {
            let endpoint = Endpoint::from_shared(format!("http://{address}"))
                .map_err(|e| Error::Load(format!("bad address {address}: {e}")))?
                .tcp_nodelay(true);
            let channel = match &tls {
                None => endpoint.connect().await,
                Some(tls) => {
                    endpoint
                        .connect_with_connector(tls_connector(address, tls))
                        .await
                }
            }
            .map_err(|e| Error::Load(format!("failed to connect to {address}: {e}")))?;
            clients.push(GrpcInferenceServiceClient::new(channel));
        }
        let requests = (0..64)
            .map(|seed| single_row(model, input, row_len, seed))
            .collect();
        Ok(Self {
            clients,
            requests,
            probe,
        })
    }
}

/// Connects to `address` over TLS with `config`, for tonic; the endpoint's own address is
/// ignored (it is `address`) and its scheme stays `http`, which tonic's own TLS would insist
/// on handling.
fn tls_connector(
    address: SocketAddr,
    config: &Arc<rustls::ClientConfig>,
) -> impl tower::Service<
    tonic::codegen::http::Uri,
    Response = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    Error = std::io::Error,
    Future = impl Send,
> + Send
+ 'static {
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
    tower::service_fn(move |_| {
        let connector = connector.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect(address).await?;
            // Set by hand: the endpoint's setting applies to its own connector only.
            tcp.set_nodelay(true)?;
            let stream = connector
                .connect(crate::tls::server_name(address), tcp)
                .await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        }
    })
}

/// One single-row FP32 request with deterministic, varied values.
fn single_row(model: &str, input: &str, row_len: usize, seed: usize) -> ModelInferRequest {
    let values: Vec<f32> = (0..row_len)
        .map(|i| ((i * 13 + seed * 7) % 17) as f32 / 17.0 - 0.5)
        .collect();
    ModelInferRequest {
        model_name: model.to_owned(),
        inputs: vec![InferInputTensor {
            name: input.to_owned(),
            datatype: "FP32".into(),
            shape: vec![1, row_len as i64],
            ..Default::default()
        }],
        raw_input_contents: vec![values.iter().flat_map(|v| v.to_le_bytes()).collect()],
        ..Default::default()
    }
}

/// One open-loop run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Plan {
    /// Requests per second.
    pub rate: f64,
    /// How long requests are sent.
    pub duration: Duration,
    /// Most requests outstanding at once; a request due beyond it is not sent (and counted).
    pub max_in_flight: usize,
}

/// What an open-loop run saw.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Outcome {
    /// The offered rate, requests per second.
    pub rate: f64,
    /// Requests the schedule called for.
    pub scheduled: u64,
    /// Of those, sent within [`ON_TIME`] of their time.
    pub on_time: u64,
    /// Not sent: too many in flight, or the run was stopped.
    pub unsent: u64,
    /// Latencies of the OK answers, sorted, from each request's scheduled send.
    pub latencies: Vec<Duration>,
    /// Answers that were not OK, by gRPC code name (`ResourceExhausted` among them).
    pub errors: BTreeMap<String, u64>,
    /// From the first scheduled send to the last answer.
    pub elapsed: Duration,
    /// Whether the run ended early because `stop` said so.
    pub stopped: bool,
}

impl Outcome {
    /// OK answers per second over the run.
    pub fn answered_rps(&self) -> f64 {
        if self.elapsed.is_zero() {
            return 0.0;
        }
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The fraction of scheduled requests that left on time (1 for an empty run).
    pub fn on_time_fraction(&self) -> f64 {
        if self.scheduled == 0 {
            return 1.0;
        }
        self.on_time as f64 / self.scheduled as f64
    }

    /// Answers that were not OK.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
}

impl Figures for Outcome {
    fn latency_ms(&self, quantile: Quantile) -> Option<f64> {
        (!self.latencies.is_empty()).then(|| percentile(&self.latencies, quantile.fraction()))
    }

    fn throughput_rps(&self) -> Option<f64> {
        Some(self.answered_rps())
    }
}

/// Runs `plan` against `target`: the calling thread paces (it sleeps between sends, so run it
/// on a thread of its own, never an async worker), the requests run as tasks on `runtime`.
/// `stop` is asked before every send; once it says true, the rest are counted unsent.
pub fn run(
    runtime: &tokio::runtime::Handle,
    target: &Target,
    plan: &Plan,
    stop: &dyn Fn() -> bool,
) -> Outcome {
    let interval = Duration::from_secs_f64(1.0 / plan.rate.max(1e-3));
    let total = (plan.rate * plan.duration.as_secs_f64()).round().max(1.0) as u64;
    let (done, answers) = std::sync::mpsc::channel::<(Duration, Code)>();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let mut outcome = Outcome {
        rate: plan.rate,
        scheduled: total,
        ..Outcome::default()
    };
    let start = Instant::now();
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        if stop() {
            outcome.stopped = true;
            outcome.unsent += total - i;
            break;
        }
        wait_until(due);
        if in_flight.load(Ordering::Relaxed) >= plan.max_in_flight {
            outcome.unsent += 1;
            continue;
        }
        if Instant::now().saturating_duration_since(due) <= ON_TIME {
            outcome.on_time += 1;
        }
        let index = usize::try_from(i).unwrap_or(0);
        let mut client = target.clients[index % target.clients.len()].clone();
        let mut request =
            tonic::Request::new(target.requests[index % target.requests.len()].clone());
        request.set_timeout(REQUEST_TIMEOUT);
        if target.probe {
            request.metadata_mut().insert(
                PROBE_METADATA,
                tonic::metadata::MetadataValue::from_static("1"),
            );
        }
        let (done, in_flight) = (done.clone(), Arc::clone(&in_flight));
        in_flight.fetch_add(1, Ordering::Relaxed);
        runtime.spawn(async move {
            let code = client
                .model_infer(request)
                .await
                .map_or_else(|status| status.code(), |_| Code::Ok);
            // Timed in the task, from the schedule: a late send is the server's queue too.
            let latency = due.elapsed();
            in_flight.fetch_sub(1, Ordering::Relaxed);
            let _ = done.send((latency, code));
        });
    }
    drop(done);
    // Every sent request ends within its timeout, so this ends too.
    for (latency, code) in answers {
        if code == Code::Ok {
            outcome.latencies.push(latency);
        } else {
            *outcome.errors.entry(format!("{code:?}")).or_insert(0) += 1;
        }
    }
    outcome.elapsed = start.elapsed();
    outcome.latencies.sort_unstable();
    outcome
}

/// Sleeps until `due`. Only a sleep: a pacer that yields in a loop near its time is, to the
/// scheduler, a thread that used up its share, and on CPUs the server keeps busy it waits a
/// whole time slice to run again. With two CPU-bound threads on the 2 vCPUs here, 16-18% of
/// requests at 300 rps left within 1 ms of their time that way, against 98.9-99.5% asleep
/// (`cargo run --release -p policyserve-agent --example pacing`; docs/benchmarks.md).
pub fn wait_until(due: Instant) {
    let now = Instant::now();
    if due > now {
        std::thread::sleep(due - now);
    }
}

/// A runtime for the load's client tasks, on one thread of its own: the load generator shares
/// the node's CPUs with the server it measures, and should take as little of them as it can.
///
/// # Errors
/// [`Error::Load`] when the runtime cannot start.
pub fn client_runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("policyserve-load")
        .enable_all()
        .build()
        .map_err(|e| Error::Load(format!("failed to start the load generator: {e}")))
}
