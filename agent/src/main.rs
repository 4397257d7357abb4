use clap::Parser;
use policyserve_agent::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    policyserve_runtime::telemetry::init(&cli.log, cli.log_format);
    match cli.command {
        Command::Detect(args) => policyserve_agent::detect::run(&args),
        Command::Tune(args) => policyserve_agent::tune::run(&args),
        Command::Serve(args) => policyserve_agent::serve::main(args),
        Command::Run(args) => policyserve_agent::run::main(*args),
    }
}
