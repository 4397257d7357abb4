//! A benchmark probe, not a product: `policyserve-agent serve` for one model, except that
//! accepted gRPC sockets get TCP_NODELAY. `serve::serve_grpc` hands tonic a
//! `TcpListenerStream`, and tonic ignores its `tcp_nodelay` setting for a caller's stream, so
//! the agent's sockets keep Nagle's algorithm; running the load benchmark against both shows
//! what that costs (docs/benchmarks.md, "Serving load").
//!
//! ```text
//! serve_nodelay --model policy=models/policy-mlp.onnx --grpc-addr 127.0.0.1:18001 --profile FILE
//! ```

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use policyserve_agent::engine::{Engine, EngineOptions, ModelFiles, runtime};
use policyserve_agent::grpc::InferenceService;
use policyserve_agent::metrics::Metrics;
use policyserve_agent::registry::{ModelRegistry, ServedModel};
use policyserve_agent::serve::{default_config, read_profile};
use tonic::transport::server::TcpIncoming;

fn main() -> Result<()> {
    let (mut model, mut address, mut profile) = (None, "127.0.0.1:18001".to_owned(), None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--model" => model = Some(value()?),
            "--grpc-addr" => address = value()?,
            "--profile" => profile = Some(PathBuf::from(value()?)),
            other => bail!("unknown argument {other:?}"),
        }
    }
    let model = model.context("--model NAME=PATH")?;
    let (name, path) = model.split_once('=').context("--model NAME=PATH")?;
    runtime::environment(None)?;
    let config = match &profile {
        Some(path) => read_profile(path)?,
        None => default_config(),
    };
    let files = ModelFiles::read(name, std::path::Path::new(path), &[])?;
    let engine = Engine::load(&files, &config, &EngineOptions::default())?;
    engine.warm_up()?;
    let registry = Arc::new(ModelRegistry::new());
    registry.insert(ServedModel {
        name: name.to_owned(),
        version: "1".into(),
        engine,
    });
    // The engine is loaded and warmed up above, outside the runtime: warm-up blocks.
    tokio::runtime::Runtime::new()?.block_on(async {
        let listener = tokio::net::TcpListener::bind(&address).await?;
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let service =
            InferenceService::new(registry, Arc::new(Metrics::default())).into_server(64 << 20);
        // No graceful shutdown: the benchmark ends it with SIGTERM.
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(incoming)
            .await?;
        Ok(())
    })
}
