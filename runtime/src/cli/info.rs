//! `glimpse info`: what a model file is, what it expects and what it outputs.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::ValueEnum;
use serde_json::json;

use super::ModelArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = InfoFormat::Text)]
    format: InfoFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum InfoFormat {
    Text,
    Json,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (path, file) = args.model.read()?;
    let ops = file.op_counts();
    let opsets = file.opsets();
    let props: Vec<(String, String)> = file
        .proto
        .metadata_props
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect();
    let (producer, producer_version) = (
        file.proto.producer_name.clone(),
        file.proto.producer_version.clone(),
    );
    let (inputs, outputs) = (file.inputs.clone(), file.outputs.clone());
    let (params, size) = (file.parameter_count(), file.size_bytes);
    let meta = file.meta.clone();
    let (name, version, source, license) = (meta.name, meta.version, meta.source, meta.license);
    // The file is described even when tract cannot run it, so the reason can be seen
    // next to what the file holds.
    let classifier = args.model.classifier_for(&path, file);

    let mut text = String::new();
    match args.format {
        InfoFormat::Json => {
            let (preprocess, labels, outputs_kind, error) = match &classifier {
                Ok(c) => (
                    Some(json!({
                        "description": c.preprocess.to_string(),
                        "width": c.preprocess.width,
                        "height": c.preprocess.height,
                        "resize": c.preprocess.resize.to_string(),
                        "mean": c.preprocess.mean,
                        "std": c.preprocess.std,
                        "channels": c.preprocess.channels.to_string(),
                        "layout": c.preprocess.layout.to_string(),
                    })),
                    Some(c.labels.clone()),
                    c.output.map(|o| format!("{o:?}").to_lowercase()),
                    None,
                ),
                Err(e) => (None, None, None, Some(format!("{e:#}"))),
            };
            let doc = json!({
                "path": path.display().to_string(),
                "size_bytes": size,
                "parameters": params,
                "producer": producer,
                "producer_version": producer_version,
                "name": name,
                "version": version,
                "source": source,
                "license": license,
                "opsets": opsets.iter().map(|(d, v)| json!({"domain": d, "version": v})).collect::<Vec<_>>(),
                "inputs": inputs.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
                "outputs": outputs.iter().map(|o| o.to_string()).collect::<Vec<_>>(),
                "output_kind": outputs_kind,
                "preprocess": preprocess,
                "labels": labels,
                "ops": ops,
                "metadata": props.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
                "error": error,
            });
            text = format!("{doc}\n");
        }
        InfoFormat::Text => {
            let mut row = |k: &str, v: String| text.push_str(&format!("{k:<12}{v}\n"));
            row(
                "model",
                format!(
                    "{} ({:.1} MB, {} parameters)",
                    path.display(),
                    size as f64 / 1e6,
                    params
                ),
            );
            if let Some(n) = &name {
                row(
                    "name",
                    format!("{n} {}", version.as_deref().unwrap_or(""))
                        .trim_end()
                        .to_string(),
                );
            }
            row(
                "producer",
                format!("{producer} {producer_version}").trim().to_string(),
            );
            row(
                "opsets",
                opsets
                    .iter()
                    .map(|(d, v)| format!("{d} {v}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            for i in &inputs {
                row("input", i.to_string());
            }
            for o in &outputs {
                row("output", o.to_string());
            }
            if let Some(s) = &source {
                row("source", s.clone());
            }
            if let Some(l) = &license {
                row("license", l.clone());
            }
            if let Ok(c) = &classifier {
                row("preprocess", c.preprocess.to_string());
                row(
                    "outputs",
                    match c.output {
                        Some(o) => format!("{o:?}").to_lowercase(),
                        None => "not stated (detected per result)".into(),
                    },
                );
                let preview: Vec<&str> = c.labels.iter().take(3).map(String::as_str).collect();
                let more = if c.labels.len() > 3 { ", …" } else { "" };
                row(
                    "labels",
                    format!("{} ({}{more})", c.labels.len(), preview.join("; ")),
                );
            }
            row(
                "ops",
                ops.iter()
                    .map(|(k, n)| format!("{k} {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            for (k, v) in props
                .iter()
                .filter(|(k, _)| k != glimpse_runtime::bundle::keys::LABELS)
            {
                let v = if v.chars().count() > 100 {
                    format!("{}…", v.chars().take(100).collect::<String>())
                } else {
                    v.clone()
                };
                row("metadata", format!("{k} = {v}"));
            }
        }
    }
    super::print(&text).context("writing output")?;
    match classifier {
        Ok(_) => Ok(ExitCode::SUCCESS),
        Err(e) => Err(e),
    }
}
