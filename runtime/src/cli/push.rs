//! `glimpse push`: sends a model to a running `glimpse serve` (`PUT /v1/model`), or asks
//! it to go back to the previous one (`POST /v1/model/rollback`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::serve::{read_secret_file, TOKEN_ENV};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The ONNX model to serve (not with --rollback).
    #[arg(value_name = "MODEL.onnx", required_unless_present = "rollback")]
    pub model: Option<PathBuf>,
    /// The daemon's address, as `http://board:8080` (or its `https://` proxy).
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// Read the daemon's bearer token from this file (its first line); default
    /// $GLIMPSE_TOKEN.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Serve the previous model again instead (the one the last push replaced).
    #[arg(long, conflicts_with = "model")]
    pub rollback: bool,
    /// Seconds to wait for the daemon's answer: it checks the model before answering,
    /// which takes a while on a small board.
    #[arg(long, value_name = "SECS", default_value_t = 600.0)]
    pub timeout: f64,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let token = token(&args)?;
    let base = args.to.trim_end_matches('/');
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs_f64(args.timeout)))
        .user_agent(concat!("glimpse/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    let bearer = format!("Bearer {token}");
    let (what, response) = match &args.model {
        Some(model) if !args.rollback => {
            let bytes = read_model(model)?;
            let sha256 = glimpse_runtime::fsutil::sha256_hex(&bytes);
            let url = format!("{base}/v1/model");
            let sent = agent
                .put(&url)
                .header("Authorization", &bearer)
                .header("Content-Type", "application/octet-stream")
                .header("X-Model-Sha256", &sha256)
                .send(&bytes[..]);
            (format!("pushing {} to {url}", model.display()), sent)
        }
        _ => {
            let url = format!("{base}/v1/model/rollback");
            let sent = agent
                .post(&url)
                .header("Authorization", &bearer)
                .send_empty();
            (format!("rolling back {url}"), sent)
        }
    };
    let mut response = response.with_context(|| what.clone())?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .with_context(|| format!("{what}: reading the answer"))?;
    let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    if !(200..300).contains(&status) {
        bail!("{what}: {}", refusal(status, &answer, &body));
    }
    super::print(&summary(&answer)).context("writing output")?;
    Ok(ExitCode::SUCCESS)
}

/// The token from --token-file or, as the daemon reads it, the environment.
fn token(args: &Args) -> Result<String> {
    let token = match &args.token_file {
        Some(file) => read_secret_file(file, "API token")?,
        None => std::env::var(TOKEN_ENV).unwrap_or_default(),
    };
    if token.is_empty() {
        bail!("no token: pass --token-file FILE or set ${TOKEN_ENV} (the daemon takes models only with its token)");
    }
    Ok(token)
}

/// The model file, refused early if it is not one.
fn read_model(path: &Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    if bytes.is_empty() {
        bail!("{}: the file is empty", path.display());
    }
    Ok(bytes)
}

/// The daemon's refusal in one line, with a hint for a wrong token.
fn refusal(status: u16, answer: &Value, body: &str) -> String {
    let message = answer["error"].as_str().unwrap_or(body.trim());
    let kind = answer["kind"].as_str().unwrap_or("");
    match status {
        401 => format!("the daemon refused the token (401 {kind}): {message}; check --token-file"),
        _ => format!("the daemon refused it ({status} {kind}): {message}"),
    }
}

/// What the daemon serves now, from its answer (`GET /v1/model`'s document).
fn summary(answer: &Value) -> String {
    let previous = match answer["previous"]["sha256"].as_str() {
        Some(sha) => format!("; previous model {sha} kept (glimpse push --rollback)"),
        None => String::new(),
    };
    format!(
        "serving {} (sha256 {}, {} classes){previous}\n",
        answer["path"].as_str().unwrap_or("?"),
        answer["sha256"].as_str().unwrap_or("?"),
        answer["classes"],
    )
}
