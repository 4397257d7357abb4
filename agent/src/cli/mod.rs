//! The agent's command line: one clap struct per subcommand (`commands`), the flag groups they
//! share (`shared`), with environment fallbacks. Only the subcommand modules (`run`, `serve`,
//! `tune`, `detect`) take these types; they hand the library plain values.

use clap::{Parser, Subcommand, ValueEnum};

mod commands;
mod shared;

pub use commands::{DetectArgs, RunArgs, ServeArgs, TuneArgs};
pub use shared::{HardwareArgs, OrtArgs, ServingArgs};

/// The policyserve agent: detects its node's hardware, tunes ONNX Runtime for it and serves
/// policy models over gRPC (KServe V2).
#[derive(Debug, Parser)]
#[command(name = "policyserve-agent", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log filter, as RUST_LOG (for example `info,policyserve_agent=debug`).
    #[arg(
        long,
        global = true,
        env = "POLICYSERVE_LOG",
        default_value = "info,ort=warn"
    )]
    pub log: String,
    /// Log line format: text for people, json for log collectors.
    #[arg(
        long,
        global = true,
        env = "POLICYSERVE_LOG_FORMAT",
        value_enum,
        default_value_t = policyserve_runtime::LogFormat::Text
    )]
    pub log_format: policyserve_runtime::LogFormat,
}

/// The agent's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Detect this machine's hardware and print its class and capability labels.
    Detect(DetectArgs),
    /// Measure a model under candidate engine configurations and choose the best for targets.
    Tune(TuneArgs),
    /// Serve models over gRPC (KServe V2) without Kubernetes.
    Serve(ServeArgs),
    /// In a cluster: label this node, then serve the OptimizationProfiles planned for it.
    Run(Box<RunArgs>),
}

/// How results are printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A table for people.
    #[default]
    Table,
    /// One JSON object for programs.
    Json,
}
