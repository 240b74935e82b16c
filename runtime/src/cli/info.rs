//! `glimpse info`: what a model file is, what it expects and what it outputs.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::ValueEnum;
use glimpse_runtime::plan::Kernel;
use glimpse_runtime::{Classifier, OnnxFile};
use serde_json::json;
use tract_onnx::pb;

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
        "reject": meta.reject,
        "preprocess": preprocess,
        "labels": m.classifier.map(|c| &c.labels),
        "ops": file.op_counts(),
        "kernels": m.classifier.map(|c| kernels_json(m.file, c)),
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
    if let Some(r) = &meta.reject {
        row("reject", r.to_string());
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
    if let Some(c) = m.classifier {
        row("kernels", kernels_text(file, c));
    }
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

/// Each convolution and matrix product of the file with the plan nodes it became.
///
/// tract names a plan node after the ONNX node it came from, and a product that absorbed
/// the ops after it (a residual `Add`, a `Clip`) after the last of them; so a node with
/// no plan node of its own name is looked up through the ONNX nodes that read its output,
/// a few steps on. Each plan node is counted for one ONNX node only.
fn compute_kernels<'a>(
    file: &'a OnnxFile,
    c: &Classifier,
) -> Vec<(&'a pb::NodeProto, Vec<Kernel>)> {
    let kernels = c.kernels();
    let graph = file.graph();
    let readers = |node: &pb::NodeProto| -> Vec<&pb::NodeProto> {
        graph
            .node
            .iter()
            .filter(|n| n.input.iter().any(|i| node.output.contains(i)))
            .collect()
    };
    let mut claimed = vec![false; kernels.len()];
    file.compute_nodes()
        .map(|node| {
            let mut frontier = vec![node];
            let mut mine = vec![];
            for _ in 0..4 {
                for n in &frontier {
                    for (k, taken) in kernels.iter().zip(claimed.iter_mut()) {
                        if !*taken && !n.name.is_empty() && k.is_from(&n.name) {
                            *taken = true;
                            mine.push(k.clone());
                        }
                    }
                }
                if !mine.is_empty() {
                    break;
                }
                frontier = frontier.iter().flat_map(|n| readers(n)).collect();
            }
            (node, mine)
        })
        .collect()
}

/// How a plan node computes, in a word: its matrix-product kernels, or its op.
fn describe(k: &Kernel) -> String {
    if k.mmm.is_empty() {
        k.op.clone()
    } else {
        k.mmm.join("/")
    }
}

/// One line: how many of the file's convolutions and products run in integers, how many
/// in float, and on which kernels.
fn kernels_text(file: &OnnxFile, c: &Classifier) -> String {
    let mut int: BTreeMap<String, usize> = BTreeMap::new();
    let mut float: BTreeMap<String, usize> = BTreeMap::new();
    let mut unknown = 0;
    let nodes = compute_kernels(file, c);
    for (_, kernels) in &nodes {
        let Some(main) = kernels.first() else {
            unknown += 1;
            continue;
        };
        let side = if kernels.iter().all(|k| k.integer) {
            &mut int
        } else {
            &mut float
        };
        *side.entry(describe(main)).or_default() += 1;
    }
    let part = |what: &str, counts: &BTreeMap<String, usize>| {
        let n: usize = counts.values().sum();
        let list = join(counts.iter().map(|(k, n)| format!("{k} {n}")));
        format!(
            "{what} {n}{}",
            if n > 0 {
                format!(" ({list})")
            } else {
                String::new()
            }
        )
    };
    let mut text = format!(
        "{} convs and products: {}, {}",
        nodes.len(),
        part("int8", &int),
        part("float", &float)
    );
    if unknown > 0 {
        text.push_str(&format!(", {unknown} not traced to a plan node"));
    }
    text
}

fn kernels_json(file: &OnnxFile, c: &Classifier) -> serde_json::Value {
    let nodes = compute_kernels(file, c);
    serde_json::Value::Array(
        nodes
            .iter()
            .map(|(node, kernels)| {
                json!({
                    "node": node.name,
                    "op_type": node.op_type,
                    "runs_on": kernels.iter().map(|k| json!({
                        "plan_node": k.node,
                        "op": k.op,
                        "mmm": k.mmm,
                        "integer": k.integer,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect(),
    )
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
