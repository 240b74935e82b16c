//! `glimpse-train`: build image classifiers as self-describing ONNX bundles.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    glimpse_runtime::no_error_backtraces();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .init();
    match cli::run(cli::Cli::parse()) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("glimpse-train: {err:#}");
            ExitCode::from(2)
        }
    }
}
