//! The `jwt-issuer` binary: parse arguments, run the command, report the error.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::parse_args();
    match cli::run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` joins the context chain into one line: "what failed: why".
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
