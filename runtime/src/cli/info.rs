//! `glimpse info`: what a model file is, what it expects and what it outputs.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::ValueEnum;
use glimpse_runtime::{Classifier, OnnxFile};
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
    // The file is described even when tract cannot run it, so the reason can be seen
    // next to what the file holds.
    let loaded = args.model.try_classifier_for(&path, file);
    let (file, classifier, error) = match &loaded {
        Ok(c) => (&c.file, Some(c), None),
        Err((e, file)) => (&**file, None, Some(e)),
    };
    let model = Model {
        path: &path,
        file,
        classifier,
    };
    let text = match args.format {
        InfoFormat::Json => format!("{}\n", json_doc(&model, error)),
        InfoFormat::Text => text_doc(&model),
    };
    super::print(&text).context("writing output")?;
    loaded.map(|_| ExitCode::SUCCESS).map_err(|(e, _)| e)
}

/// What is described: the file, and the classifier when tract can run it.
struct Model<'a> {
    path: &'a Path,
    file: &'a OnnxFile,
    classifier: Option<&'a Classifier>,
}

fn json_doc(m: &Model, error: Option<&anyhow::Error>) -> serde_json::Value {
    let (file, meta) = (m.file, &m.file.meta);
    let preprocess = m.classifier.map(|c| {
        let p = &c.preprocess;
        json!({
            "description": p.to_string(),
            "width": p.width,
            "height": p.height,
            "resize": p.resize.to_string(),
            "mean": p.mean,
            "std": p.std,
            "channels": p.channels.to_string(),
            "layout": p.layout.to_string(),
        })
    });
    json!({
        "path": m.path.display().to_string(),
        "size_bytes": file.size_bytes,
        "parameters": file.parameter_count(),
        "producer": file.proto.producer_name,
        "producer_version": file.proto.producer_version,
        "name": meta.name,
        "version": meta.version,
        "source": meta.source,
        "license": meta.license,
        "opsets": file.opsets().iter().map(|(d, v)| json!({"domain": d, "version": v})).collect::<Vec<_>>(),
        "inputs": file.inputs.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
        "outputs": file.outputs.iter().map(|o| o.to_string()).collect::<Vec<_>>(),
        "output_kind": m.classifier.and_then(|c| c.output).map(|o| o.to_string()),
        "preprocess": preprocess,
        "labels": m.classifier.map(|c| &c.labels),
        "ops": file.op_counts(),
        "metadata": file.proto.metadata_props.iter().map(|p| json!({"key": p.key, "value": p.value})).collect::<Vec<_>>(),
        "error": error.map(|e| format!("{e:#}")),
    })
}

fn text_doc(m: &Model) -> String {
    let (file, meta) = (m.file, &m.file.meta);
    let mut text = String::new();
    let mut row = |k: &str, v: String| text.push_str(&format!("{k:<12}{v}\n"));
    row(
        "model",
        format!(
            "{} ({:.1} MB, {} parameters)",
            m.path.display(),
            file.size_bytes as f64 / 1e6,
            file.parameter_count()
        ),
    );
    if let Some(n) = &meta.name {
        let version = meta.version.as_deref().unwrap_or("");
        row("name", format!("{n} {version}").trim_end().to_string());
    }
    let producer = &file.proto;
    row(
        "producer",
        format!("{} {}", producer.producer_name, producer.producer_version)
            .trim()
            .to_string(),
    );
    row(
        "opsets",
        join(file.opsets().iter().map(|(d, v)| format!("{d} {v}"))),
    );
    for i in &file.inputs {
        row("input", i.to_string());
    }
    for o in &file.outputs {
        row("output", o.to_string());
    }
    if let Some(s) = &meta.source {
        row("source", s.clone());
    }
    if let Some(l) = &meta.license {
        row("license", l.clone());
    }
    if let Some(c) = m.classifier {
        row("preprocess", c.preprocess.to_string());
        row(
            "outputs",
            match c.output {
                Some(o) => o.to_string(),
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
        join(file.op_counts().iter().map(|(k, n)| format!("{k} {n}"))),
    );
    for p in &file.proto.metadata_props {
        if p.key != glimpse_runtime::bundle::keys::LABELS {
            row(
                "metadata",
                format!("{} = {}", p.key, shorten(&p.value, 100)),
            );
        }
    }
    text
}

fn join(items: impl Iterator<Item = String>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

/// `s` cut to `n` characters, with an ellipsis when it was longer.
fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() > n {
        format!("{}…", s.chars().take(n).collect::<String>())
    } else {
        s.to_string()
    }
}
