//! Command-line interface of `glimpse-train`: one module per subcommand.

mod bench;
mod data_args;
mod eval;
mod import;
mod quantize;
mod reject;
mod train;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Train, import and export image classifiers as ONNX bundles glimpse runs on the board.
#[derive(Debug, Parser)]
#[command(name = "glimpse-train", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Train a classifier on a dataset and export it as a checked ONNX bundle.
    Train(Box<train::Args>),
    /// Evaluate an ONNX bundle on a dataset through the runtime and write a report.
    Eval(eval::Args),
    /// Import a pretrained network from another framework's checkpoint.
    Import(import::Args),
    /// Quantize an ONNX bundle to int8, calibrated on real images and gated on held-out
    /// ones.
    Quantize(quantize::Args),
    /// Add (or recalibrate) a bundle's "none of the above", as `train` does at its end,
    /// from the data it was trained on.
    Reject(reject::Args),
    /// Time training steps of a network on a batch of real images (steps/s, for
    /// comparison with PyTorch).
    Bench(bench::Args),
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Train(args) => train::run(*args),
        Command::Eval(args) => eval::run(args),
        Command::Import(args) => import::run(args),
        Command::Quantize(args) => quantize::run(args),
        Command::Reject(args) => reject::run(args),
        Command::Bench(args) => bench::run(args),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
