//! `jwt-issuer bench`.

use anyhow::{Context as _, Result, bail};
use clap::Args;

#[derive(Debug, Args)]
pub(super) struct BenchArgs {
    /// Time for each measurement, in seconds
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Print one JSON document instead of a table
    #[arg(long)]
    json: bool,
}

pub(super) fn run(context: &super::Context, args: &BenchArgs) -> Result<()> {
    let seconds = args.seconds;
    if !(seconds.is_finite() && (0.01..=600.0).contains(&seconds)) {
        bail!("--seconds must be between 0.01 and 600");
    }
    // With a PKCS#11 token configured, its signatures are measured beside the in-process
    // ones (keys made for the run, destroyed after it).
    let vault = jwt_issuer::storage::Stores::vault(&context.config)
        .map_err(|e| anyhow::anyhow!("{}", jwt_issuer::report::Report(&e)))?;
    let report = jwt_issuer::bench::run(seconds, vault).context("benchmark failed")?;
    if args.json {
        outln!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    outln!(
        "{:<11} {:>10} {:>10} {:>8} {:>9} {:>7}  WHO CAN VERIFY",
        "ALG",
        "SIGN/S",
        "VERIFY/S",
        "TOKEN B",
        "PUBKEY B",
        "JWK B"
    );
    for r in &report.results {
        outln!(
            "{:<11} {:>10.0} {:>10.0} {:>8} {:>9} {:>7}  {}",
            r.alg,
            r.sign_per_s,
            r.verify_per_s,
            r.token_bytes,
            r.public_key_bytes,
            r.jwk_bytes,
            r.who_can_verify
        );
    }
    outln!("(one thread, {seconds} s per figure, same claims for every algorithm)");
    Ok(())
}
