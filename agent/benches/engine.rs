//! Engine vs ONNX Runtime (docs/benchmarks.md): the engine's request path against raw
//! `Session::run` through the same library, and against Python onnxruntime, side by side.
//!
//! For each (intra-op threads, batch) it runs `--repeats` rounds; each round measures, one
//! after the other on a freshly built session, (i) raw ort `Session::run` in a loop on this
//! thread, (ii) `Engine::infer_blocking` from this thread (the batcher's queue and worker
//! thread), (iii) Python onnxruntime (`bench/python_onnxruntime.py --serve`, when
//! `POLICYSERVE_PYTHON` is set). The table shows the median over rounds of each round's p50,
//! mean and inferences/s. Run with `cargo bench -p policyserve-agent --bench engine`.
//! Options (after `--`): `--window SECS`, `--repeats N`, `--model PATH`, `--no-python`.

use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::TensorRef;
use policyserve_agent::engine::{Engine, EngineOptions, ModelFiles, runtime};
use policyserve_crds::EngineConfig;

const WARM_UP: Duration = Duration::from_millis(200);

#[derive(Clone, Copy, Debug, Default)]
struct Figures {
    p50_us: f64,
    mean_us: f64,
    inf_per_s: f64,
}

#[derive(Debug)]
struct Options {
    model: PathBuf,
    window: Duration,
    repeats: usize,
    python: bool,
}

fn options() -> Result<Options> {
    let mut options = Options {
        model: Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/policy-mlp.onnx"),
        window: Duration::from_secs(1),
        repeats: 5,
        python: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--window" => {
                options.window = Duration::from_secs_f64(args.next().context("--window")?.parse()?)
            }
            "--repeats" => options.repeats = args.next().context("--repeats")?.parse()?,
            "--model" => options.model = args.next().context("--model")?.into(),
            "--no-python" => options.python = false,
            // `cargo bench` passes `--bench`; other harness flags are ignored too.
            _ => {}
        }
    }
    Ok(options)
}

/// Per-call latencies of `call` for `window`, after a warm-up.
fn time_loop(
    window: Duration,
    rows: usize,
    mut call: impl FnMut() -> Result<()>,
) -> Result<Figures> {
    let warm_until = Instant::now() + WARM_UP;
    while Instant::now() < warm_until {
        call()?;
    }
    let mut latencies = Vec::with_capacity(1 << 18);
    let started = Instant::now();
    let stop = started + window;
    let mut now = started;
    while now < stop {
        let sent = now;
        call()?;
        now = Instant::now();
        latencies.push(now - sent);
    }
    let elapsed = (now - started).as_secs_f64();
    latencies.sort_unstable();
    let total: Duration = latencies.iter().sum();
    Ok(Figures {
        p50_us: latencies[latencies.len() / 2].as_secs_f64() * 1e6,
        mean_us: total.as_secs_f64() * 1e6 / latencies.len() as f64,
        inf_per_s: (latencies.len() * rows) as f64 / elapsed,
    })
}

fn input(rows: usize, row_len: usize) -> Vec<f32> {
    (0..rows * row_len).map(|i| (i % 7) as f32 * 0.1).collect()
}

/// A session with exactly the engine's settings (agent/src/engine/session.rs).
fn raw_session(model: &[u8], threads: usize) -> Result<Session> {
    let environment = runtime::environment(None)?;
    let session = Session::builder(environment)?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_intra_threads(threads)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_inter_threads(1)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_parallel_execution(false)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_intra_op_spinning(true)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .with_memory_pattern(true)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .commit_from_memory(model)?;
    Ok(session)
}

fn measure_raw(model: &[u8], threads: usize, rows: usize, window: Duration) -> Result<Figures> {
    let mut session = raw_session(model, threads)?;
    let input_name = session.inputs()[0].name().to_owned();
    let row_len = 64;
    let data = input(rows, row_len);
    let shape = vec![rows as i64, row_len as i64];
    time_loop(window, rows, || {
        let tensor = TensorRef::from_array_view((shape.clone(), data.as_slice()))?;
        let outputs = session.run(ort::inputs![input_name.as_str() => tensor])?;
        let (_, values) = outputs[0].try_extract_tensor::<f32>()?;
        black_box(values.first().copied());
        Ok(())
    })
}

fn measure_engine(
    files: &ModelFiles,
    threads: u32,
    rows: usize,
    window: Duration,
) -> Result<Figures> {
    let config = EngineConfig {
        intra_op_threads: threads,
        instances: 1,
        max_batch_size: rows as u32,
        batch_delay_micros: 0,
        ..EngineConfig::default()
    };
    let engine = Engine::load(files, &config, &EngineOptions::default())?;
    engine.warm_up()?;
    let data = input(rows, engine.signature().input.row_len());
    time_loop(window, rows, || {
        let response = engine.infer_blocking(data.clone(), rows)?;
        black_box(response.outputs[0].first().copied());
        Ok(())
    })
}

/// The batcher's hand-off without inference: a request over a bounded crossbeam channel to a
/// worker thread, the answer back over a tokio oneshot waited on with `blocking_recv`, exactly
/// the primitives `Engine::infer_blocking` uses. What this costs is the engine's floor.
fn measure_handoff(window: Duration) -> Result<Figures> {
    type Reply = tokio::sync::oneshot::Sender<Vec<f32>>;
    let (queue, receiver) = crossbeam_channel::bounded::<(Vec<f32>, Reply)>(1024);
    let worker = std::thread::spawn(move || {
        while let Ok((input, reply)) = receiver.recv() {
            let _ = reply.send(input);
        }
    });
    let data = input(1, 64);
    let figures = time_loop(window, 1, || {
        let (reply, answer) = tokio::sync::oneshot::channel();
        queue
            .send((data.clone(), reply))
            .map_err(|_| anyhow::anyhow!("worker gone"))?;
        black_box(answer.blocking_recv()?);
        Ok(())
    });
    drop(queue);
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("hand-off worker panicked"))?;
    figures
}

struct Python {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Python {
    fn start(model: &Path) -> Result<Option<Self>> {
        let Some(python) = std::env::var_os("POLICYSERVE_PYTHON") else {
            eprintln!("POLICYSERVE_PYTHON is not set: skipping Python onnxruntime");
            return Ok(None);
        };
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/python_onnxruntime.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(model)
            .arg("--serve")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("failed to start Python")?;
        let stdin = child.stdin.take().context("no stdin")?;
        let stdout = BufReader::new(child.stdout.take().context("no stdout")?);
        let mut python = Self {
            child,
            stdin,
            stdout,
        };
        let ready = python.line()?;
        eprintln!("python: {}", ready.trim());
        Ok(Some(python))
    }

    fn line(&mut self) -> Result<String> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            bail!("Python onnxruntime exited");
        }
        Ok(line)
    }

    fn measure(&mut self, threads: u32, rows: usize, window: Duration) -> Result<Figures> {
        writeln!(self.stdin, "{threads} {rows} {}", window.as_secs_f64())?;
        self.stdin.flush()?;
        let reply: serde_json::Value = serde_json::from_str(&self.line()?)?;
        let field = |name: &str| reply[name].as_f64().context("bad reply from Python");
        Ok(Figures {
            p50_us: field("p50_us")?,
            mean_us: field("mean_us")?,
            inf_per_s: field("inf_per_s")?,
        })
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        0.0
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn summarise(rounds: &[Figures]) -> Figures {
    Figures {
        p50_us: median(rounds.iter().map(|f| f.p50_us).collect()),
        mean_us: median(rounds.iter().map(|f| f.mean_us).collect()),
        inf_per_s: median(rounds.iter().map(|f| f.inf_per_s).collect()),
    }
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not: stay out of tests.
    if !std::env::args().any(|a| a == "--bench") {
        println!("a benchmark: run it with `cargo bench` (scripts/bench.sh)");
        return Ok(());
    }
    let options = options()?;
    runtime::environment(None)
        .context("set ORT_DYLIB_PATH (source ~/.cache/policyserve/env.sh)")?;
    let bytes = std::fs::read(&options.model)
        .with_context(|| format!("failed to read {}", options.model.display()))?;
    let files = ModelFiles::read("policy", &options.model, &[])?;
    let mut python = if options.python {
        Python::start(&options.model)?
    } else {
        None
    };
    println!(
        "model {} · {} rounds of {:.1} s per path, interleaved; medians over rounds",
        options.model.display(),
        options.repeats,
        options.window.as_secs_f64()
    );
    println!("| threads | batch | path | p50 µs | mean µs | inferences/s | engine overhead |");
    println!("|---|---|---|---|---|---|---|");
    for threads in [1u32, 2] {
        for rows in [1usize, 32] {
            let (mut raw, mut engine, mut py) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..options.repeats {
                raw.push(measure_raw(&bytes, threads as usize, rows, options.window)?);
                engine.push(measure_engine(&files, threads, rows, options.window)?);
                if let Some(python) = python.as_mut() {
                    py.push(python.measure(threads, rows, options.window)?);
                }
            }
            let raw = summarise(&raw);
            let engine = summarise(&engine);
            // Overhead per round would pair noisy windows; medians of each path are steadier.
            let vs = |other: &Figures| {
                format!(
                    "{:+.1} % p50, {:+.1} % mean",
                    (engine.p50_us / other.p50_us - 1.0) * 100.0,
                    (engine.mean_us / other.mean_us - 1.0) * 100.0
                )
            };
            let row = |path: &str, f: &Figures, note: String| {
                println!(
                    "| {threads} | {rows} | {path} | {:.1} | {:.1} | {:.0} | {note} |",
                    f.p50_us, f.mean_us, f.inf_per_s
                );
            };
            row("ort-rs Session::run (raw)", &raw, String::new());
            row(
                "engine infer_blocking",
                &engine,
                format!("{} vs raw", vs(&raw)),
            );
            if !py.is_empty() {
                let py = summarise(&py);
                row(
                    "Python onnxruntime",
                    &py,
                    format!("engine {} vs Python", vs(&py)),
                );
            }
        }
    }
    let handoff: Vec<Figures> = (0..options.repeats)
        .map(|_| measure_handoff(options.window))
        .collect::<Result<_>>()?;
    let handoff = summarise(&handoff);
    println!(
        "hand-off alone (crossbeam send + worker thread + oneshot blocking_recv, no inference): \
         p50 {:.1} µs, mean {:.1} µs",
        handoff.p50_us, handoff.mean_us
    );
    Ok(())
}
