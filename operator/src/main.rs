//! `policyserve-operator`: runs the controller (see `--help`).

use clap::Parser;
use policyserve_operator::{Args, run, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    telemetry::init(&args.log_filter, args.log_format);
    run(args).await
}
