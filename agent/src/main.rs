use clap::Parser;
use policyserve_agent::args::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    policyserve_agent::telemetry::init(&cli.log);
    match cli.command {
        Command::Detect(args) => policyserve_agent::detect::run(&args),
        Command::Tune(args) => policyserve_agent::tune::run(&args),
        Command::Serve(args) => {
            tokio::runtime::Runtime::new()?.block_on(policyserve_agent::serve::run(args))
        }
        Command::Run(args) => {
            tokio::runtime::Runtime::new()?.block_on(policyserve_agent::run::run(args))
        }
    }
}
