//! `glimpse`: classify images with an ONNX model on the CPU.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    glimpse_runtime::no_error_backtraces();
    init_logging();
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

/// Warnings and errors by default; the daemon's own status lines (listening, reloads,
/// shutdown) too. One line per record: `glimpse serve: listening on ...`,
/// `glimpse: warning: ...`; with `RUST_LOG=debug`, debug records name their module.
fn init_logging() {
    use std::io::Write;
    let env = env_logger::Env::default().default_filter_or("warn,glimpse_runtime::serve=info");
    env_logger::Builder::from_env(env)
        .format(|buf, record| {
            let who = if record.target().starts_with("glimpse_runtime::serve") {
                "glimpse serve"
            } else {
                "glimpse"
            };
            match record.level() {
                log::Level::Info => writeln!(buf, "{who}: {}", record.args()),
                log::Level::Warn => writeln!(buf, "{who}: warning: {}", record.args()),
                log::Level::Error => writeln!(buf, "{who}: error: {}", record.args()),
                level => writeln!(
                    buf,
                    "{who}: {level} [{}]: {}",
                    record.target(),
                    record.args()
                ),
            }
        })
        .init();
}
