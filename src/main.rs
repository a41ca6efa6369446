//! The `jwt-issuer` binary: parse arguments, run the command, report the error.

mod cli;

use std::process::ExitCode;

fn main() -> ExitCode {
    let (args, given) = cli::parse_args();
    match cli::run(args, &given) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): stop quietly, with the status a shell reports
        // for a process ended by SIGPIPE, as Unix tools do.
        Err(err) if cli::is_broken_pipe(&err) => ExitCode::from(141),
        Err(err) => {
            // `{:#}` joins the context chain into one line: "what failed: why".
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
