//! `glimpse`: classify images with an ONNX model on the CPU.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    glimpse_runtime::no_error_backtraces();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        // The reader went away (`glimpse info | head -1`): nothing left to say, to anyone.
        Err(err) if cli::is_broken_pipe(&err) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("glimpse: {err:#}");
            ExitCode::from(cli::FATAL)
        }
    }
}
