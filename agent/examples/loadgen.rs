//! A KServe V2 gRPC load generator (docs/benchmarks.md, "Serving load"): drives the agent or
//! any V2 server (KServe's Python model server, Triton) with single-row FP32 requests.
//!
//! Closed loop: for each concurrency of the sweep, that many tasks each send a request and wait
//! for its answer, over up to `--connections` HTTP/2 connections, for `--duration` seconds
//! after `--warm-up`; the step reports throughput and p50/p95/p99 latency. Open loop
//! (`--open-fraction F`): after the sweep, requests leave on a fixed schedule at F × the
//! sweep's best throughput, or at `--open-rate RPS` (at most `--max-in-flight` outstanding), the
//! way the agent's capacity sweep sends them (`policyserve_agent::load`): each request's latency
//! counts from its scheduled send, and requests sent more than 1 ms late or not at all are
//! counted and reported. `--trace FILE` writes the open loop's sorted latencies.
//!
//! ```text
//! cargo run --release -p policyserve-agent --example loadgen -- \
//!     --target http://127.0.0.1:8001 --model policy --concurrency 1,2,4,8,16,32,64 \
//!     --duration 5 --open-fraction 0.5 --json out.json
//! # only an open loop at 10,000 requests/s:
//! loadgen --target http://127.0.0.1:8001 --concurrency '' --open-rate 10000
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use policyserve_agent::grpc::proto::grpc_inference_service_client::GrpcInferenceServiceClient;
use policyserve_agent::grpc::proto::model_infer_request::InferInputTensor;
use policyserve_agent::grpc::proto::{ModelInferRequest, ModelReadyRequest};
use policyserve_agent::load;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

/// Whether a failed request has been reported (only the first is printed).
static REPORTED: AtomicBool = AtomicBool::new(false);

#[derive(Debug)]
struct Options {
    target: String,
    model: String,
    input: String,
    row_len: usize,
    concurrency: Vec<usize>,
    connections: usize,
    duration: Duration,
    warm_up: Duration,
    open_fraction: Option<f64>,
    open_rate: Option<f64>,
    max_in_flight: usize,
    threads: usize,
    label: String,
    json: Option<std::path::PathBuf>,
    trace: Option<std::path::PathBuf>,
}

const HELP: &str = "loadgen --target URL --model NAME [--input obs] [--row-len 64] \
[--concurrency 1,2,4,8,16,32,64] [--connections 4] [--duration 5] [--warm-up 1] \
[--open-fraction 0.5 | --open-rate RPS] [--max-in-flight 1024] [--threads 1] [--label NAME] \
[--json FILE] [--trace FILE]";

fn options() -> Result<Options> {
    let mut o = Options {
        target: "http://127.0.0.1:8001".into(),
        model: "policy".into(),
        input: "obs".into(),
        row_len: 64,
        concurrency: vec![1, 2, 4, 8, 16, 32, 64],
        connections: 4,
        duration: Duration::from_secs(5),
        warm_up: Duration::from_secs(1),
        open_fraction: None,
        open_rate: None,
        max_in_flight: 1024,
        threads: 1,
        label: "server".into(),
        json: None,
        trace: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--target" => o.target = value()?,
            "--model" => o.model = value()?,
            "--input" => o.input = value()?,
            "--row-len" => o.row_len = value()?.parse()?,
            "--concurrency" => {
                o.concurrency = value()?
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--connections" => o.connections = value()?.parse()?,
            "--duration" => o.duration = Duration::from_secs_f64(value()?.parse()?),
            "--warm-up" => o.warm_up = Duration::from_secs_f64(value()?.parse()?),
            "--open-fraction" => o.open_fraction = Some(value()?.parse()?),
            "--open-rate" => o.open_rate = Some(value()?.parse()?),
            "--max-in-flight" => o.max_in_flight = value()?.parse()?,
            "--threads" => o.threads = value()?.parse()?,
            "--label" => o.label = value()?,
            "--json" => o.json = Some(value()?.into()),
            "--trace" => o.trace = Some(value()?.into()),
            "--help" | "-h" => {
                println!("{HELP}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{HELP}"),
        }
    }
    if o.connections == 0 || o.threads == 0 || o.concurrency.contains(&0) {
        bail!("--connections, --threads and every concurrency must be at least 1");
    }
    Ok(o)
}

/// One step's figures.
#[derive(Clone, Debug, Serialize)]
struct Step {
    mode: &'static str,
    concurrency: usize,
    target_rps: Option<f64>,
    rps: f64,
    p50_ms: f64,
    p95_ms: f64,
    p99_ms: f64,
    requests: usize,
    errors: u64,
    /// Open loop: requests that left more than 1 ms after their scheduled time.
    #[serde(skip_serializing_if = "Option::is_none")]
    late: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Report {
    label: String,
    target: String,
    model: String,
    duration_s: f64,
    steps: Vec<Step>,
    max_rps: f64,
}

fn request(o: &Options, seed: usize) -> ModelInferRequest {
    let values: Vec<f32> = (0..o.row_len)
        .map(|i| ((i * 13 + seed * 7) % 17) as f32 / 17.0 - 0.5)
        .collect();
    ModelInferRequest {
        model_name: o.model.clone(),
        inputs: vec![InferInputTensor {
            name: o.input.clone(),
            datatype: "FP32".into(),
            shape: vec![1, o.row_len as i64],
            ..Default::default()
        }],
        // The binary form, as tritonclient and KServe's own clients send it.
        raw_input_contents: vec![values.iter().flat_map(|v| v.to_le_bytes()).collect()],
        ..Default::default()
    }
}

fn percentile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}

fn step(
    mode: &'static str,
    concurrency: usize,
    target_rps: Option<f64>,
    mut latencies: Vec<Duration>,
    errors: u64,
    window: Duration,
) -> Step {
    latencies.sort_unstable();
    Step {
        mode,
        concurrency,
        target_rps,
        rps: latencies.len() as f64 / window.as_secs_f64(),
        p50_ms: percentile(&latencies, 0.50),
        p95_ms: percentile(&latencies, 0.95),
        p99_ms: percentile(&latencies, 0.99),
        requests: latencies.len(),
        errors,
        late: None,
    }
}

async fn connect(o: &Options) -> Result<Vec<GrpcInferenceServiceClient<Channel>>> {
    let mut clients = Vec::new();
    for _ in 0..o.connections {
        let channel = Endpoint::from_shared(o.target.clone())?
            .tcp_nodelay(true)
            .connect()
            .await
            .with_context(|| format!("failed to connect to {}", o.target))?;
        clients.push(GrpcInferenceServiceClient::new(channel));
    }
    let ready = clients[0]
        .model_ready(ModelReadyRequest {
            name: o.model.clone(),
            version: String::new(),
        })
        .await
        .context("ModelReady failed")?
        .into_inner()
        .ready;
    if !ready {
        bail!("model {} is not ready on {}", o.model, o.target);
    }
    Ok(clients)
}

/// `concurrency` tasks, each in a closed loop; latencies of requests sent in the window.
async fn closed_loop(
    o: &Options,
    clients: &[GrpcInferenceServiceClient<Channel>],
    concurrency: usize,
) -> Result<Step> {
    let start = Instant::now();
    let measure_from = start + o.warm_up;
    let stop = measure_from + o.duration;
    let errors = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let mut client = clients[task % clients.len().min(concurrency)].clone();
            let request = request(o, task);
            let errors = Arc::clone(&errors);
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 16);
                loop {
                    let sent = Instant::now();
                    if sent >= stop {
                        break;
                    }
                    let reply = client.model_infer(request.clone()).await;
                    if let Err(status) = &reply
                        && !REPORTED.swap(true, Ordering::Relaxed)
                    {
                        eprintln!("first error: {status}");
                    }
                    let ok = reply.is_ok();
                    if sent >= measure_from {
                        if ok {
                            latencies.push(sent.elapsed());
                        } else {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await?);
    }
    Ok(step(
        "closed",
        concurrency,
        None,
        latencies,
        errors.load(Ordering::Relaxed),
        o.duration,
    ))
}

/// An open loop at `rate`: requests leave on a fixed schedule for warm-up + duration, each
/// timed from its scheduled send (coordinated omission would hide a stalled server's queue),
/// and those that left late or not at all are counted (policyserve_agent::load). Runs on a
/// blocking thread: the pacer sleeps between sends.
async fn open_loop(o: &Options, rate: f64) -> Result<Step> {
    let address: std::net::SocketAddr = o
        .target
        .trim_start_matches("http://")
        .parse()
        .with_context(|| format!("--target {} is not http://IP:PORT", o.target))?;
    let target = load::Target::connect(
        address,
        None,
        o.connections,
        &o.model,
        &o.input,
        o.row_len,
        false,
    )
    .await?;
    let handle = tokio::runtime::Handle::current();
    let (warm_up, duration, max_in_flight) = (o.warm_up, o.duration, o.max_in_flight);
    let outcome = tokio::task::spawn_blocking(move || {
        let plan = |duration| load::Plan {
            rate,
            duration,
            max_in_flight,
        };
        if !warm_up.is_zero() {
            load::run(&handle, &target, &plan(warm_up), &|| false);
        }
        load::run(&handle, &target, &plan(duration), &|| false)
    })
    .await?;
    if let Some(path) = &o.trace {
        write_trace(path, &outcome.latencies)?;
    }
    let late = outcome.scheduled - outcome.on_time - outcome.unsent;
    eprintln!(
        "open loop at {rate:.0}/s: {} scheduled, {late} sent more than 1 ms late, {} not sent \
         (over {max_in_flight} in flight), {} not OK",
        outcome.scheduled,
        outcome.unsent,
        outcome.failed()
    );
    Ok(Step {
        mode: "open",
        concurrency: o.max_in_flight,
        target_rps: Some(rate),
        rps: outcome.answered_rps(),
        p50_ms: percentile(&outcome.latencies, 0.50),
        p95_ms: percentile(&outcome.latencies, 0.95),
        p99_ms: percentile(&outcome.latencies, 0.99),
        requests: outcome.latencies.len(),
        errors: outcome.failed() + outcome.unsent,
        late: Some(late),
    })
}

/// The open loop's latencies in microseconds, one per line, sorted, from each request's
/// scheduled send: the tail shows how long the worst requests waited.
fn write_trace(path: &std::path::Path, latencies: &[Duration]) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path)
            .with_context(|| format!("failed to create {}", path.display()))?,
    );
    writeln!(out, "latency_us")?;
    for latency in latencies {
        writeln!(out, "{}", latency.as_micros())?;
    }
    out.flush()?;
    Ok(())
}

fn print_step(label: &str, s: &Step) {
    let load = match s.target_rps {
        Some(rate) => format!("open loop {rate:.0}/s"),
        None => format!("{}", s.concurrency),
    };
    println!(
        "| {label} | {load} | {:.0} | {:.3} | {:.3} | {:.3} | {} |",
        s.rps, s.p50_ms, s.p95_ms, s.p99_ms, s.errors
    );
}

fn main() -> Result<()> {
    let o = options()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(o.threads)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let clients = connect(&o).await?;
        println!(
            "{} at {} · model {} · {} s per step after {} s warm-up · up to {} connections · {} client thread(s)",
            o.label,
            o.target,
            o.model,
            o.duration.as_secs_f64(),
            o.warm_up.as_secs_f64(),
            o.connections,
            o.threads
        );
        println!("| server | concurrency | rps | p50 ms | p95 ms | p99 ms | errors |");
        println!("|---|---|---|---|---|---|---|");
        let mut steps = Vec::new();
        for &concurrency in &o.concurrency {
            let s = closed_loop(&o, &clients, concurrency).await?;
            print_step(&o.label, &s);
            steps.push(s);
        }
        let max_rps = steps.iter().map(|s| s.rps).fold(0.0, f64::max);
        let fraction = o.open_fraction.filter(|_| max_rps > 0.0);
        if let Some(rate) = o.open_rate.or(fraction.map(|f| max_rps * f)) {
            let s = open_loop(&o, rate).await?;
            print_step(&o.label, &s);
            steps.push(s);
        }
        if let Some(path) = &o.json {
            let report = Report {
                label: o.label.clone(),
                target: o.target.clone(),
                model: o.model.clone(),
                duration_s: o.duration.as_secs_f64(),
                steps,
                max_rps,
            };
            std::fs::write(path, serde_json::to_string_pretty(&report)?)
                .with_context(|| format!("failed to write {}", path.display()))?;
        }
        Ok(())
    })
}
