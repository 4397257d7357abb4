//! `policyserve-agent detect`. PLACEHOLDER: replaced by the detection issue's implementation.

use crate::args::DetectArgs;

/// Prints the detected hardware.
///
/// # Errors
/// When detection fails.
pub fn run(args: &DetectArgs) -> anyhow::Result<()> {
    let hardware = crate::hardware::load(&args.hardware)?;
    println!("{}", serde_json::to_string_pretty(&hardware)?);
    Ok(())
}
