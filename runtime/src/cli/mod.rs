//! Command-line interface: argument definitions and dispatch to one module per subcommand.

mod bench;
mod camera;
mod classify;
mod info;
mod model_args;
mod output;
#[cfg(feature = "serve")]
mod push;
#[cfg(feature = "serve")]
mod serve;
mod source_args;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

pub use model_args::ModelArgs;

/// Classify images with a self-describing ONNX model, on the CPU.
///
/// Exit status: 0 when every input was classified; 1 when some failed (each failure is
/// reported as `path: reason` on stderr while the other inputs are still processed); 2
/// when the run could not go on (a bad model, bad arguments).
#[derive(Debug, Parser)]
#[command(name = "glimpse", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Classify image files, folders (recursively) or `-` (an image on stdin).
    Classify(classify::Args),
    /// Show a model's inputs, outputs, metadata, preprocessing, labels and ops.
    Info(info::Args),
    /// Classify a live stream: a V4L2 camera, a network camera or video file (through
    /// ffmpeg), a folder played as video, or raw frames; prints a label stream and
    /// debounced state-change events.
    Camera(Box<camera::Args>),
    /// Measure model load, per-stage latency percentiles, throughput and peak memory on
    /// a folder of images.
    Bench(bench::Args),
    /// Run as a daemon: an HTTP API (classify, model, metrics, health), optionally a
    /// camera with debounced events over server-sent events and MQTT; hot model reload.
    #[cfg(feature = "serve")]
    Serve(Box<serve::Args>),
    /// Send a model to a running `glimpse serve` over its API (it is checked there before
    /// it is served, and the old one is kept), or go back to the previous one.
    #[cfg(feature = "serve")]
    Push(push::Args),
}

/// Exit status when some inputs (files, frames) failed and the others were classified.
pub const PARTIAL: u8 = 1;
/// Exit status when the run could not go on: a bad model, bad arguments.
pub const FATAL: u8 = 2;

/// `PARTIAL` when some inputs failed, else `SUCCESS`.
pub fn exit_code(some_failed: bool) -> ExitCode {
    if some_failed {
        ExitCode::from(PARTIAL)
    } else {
        ExitCode::SUCCESS
    }
}

/// Whether `err` comes from writing to a pipe whose reader has closed it.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Writes `text` to stdout: an error (a closed pipe) is returned, where `println!` panics.
pub fn print(text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Classify(args) => classify::run(args),
        Command::Info(args) => info::run(args),
        Command::Camera(args) => camera::run(*args),
        Command::Bench(args) => bench::run(args),
        #[cfg(feature = "serve")]
        Command::Serve(args) => serve::run(*args),
        #[cfg(feature = "serve")]
        Command::Push(args) => push::run(args),
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
