//! Runs an ONNX model N times on ONNX Runtime with one intra-op thread, on a fixed input.
//!
//! usage: glimpse-ort-bench LIBONNXRUNTIME.so MODEL.onnx N
//!
//! The input is the model's one float input, its dynamic dimensions set to 1, filled with
//! a fixed ramp in [-1, 1] (what a normalized image spans): the instruction count of the
//! graph does not depend on the pixel values. Prints the first output's arg-max, so that a
//! run that computed nothing cannot pass for one that did.
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context, Result};
use ort::session::{builder::GraphOptimizationLevel, Session};
use ort::value::Tensor;

fn run(dylib: &str, model: &str, n: usize) -> Result<usize> {
    let env = ort::init_from(dylib)
        .with_context(|| format!("{dylib}: cannot load ONNX Runtime"))?
        .build()
        .map_err(|e| anyhow!("ONNX Runtime environment: {e}"))?;
    let mut session = Session::builder(&env)
        .and_then(|b| b.with_intra_threads(1).map_err(Into::into))
        .and_then(|b| b.with_inter_threads(1).map_err(Into::into))
        .and_then(|b| b.with_optimization_level(GraphOptimizationLevel::Level3).map_err(Into::into))
        .and_then(|mut b| b.commit_from_file(model))
        .map_err(|e| anyhow!("{model}: {e}"))?;
    let inputs = session.inputs();
    let [input] = inputs else {
        bail!("{model}: expected one input, got {}", inputs.len());
    };
    let shape: Vec<usize> = input
        .dtype()
        .tensor_shape()
        .with_context(|| format!("{model}: input {:?} is not a tensor", input.name()))?
        .iter()
        .map(|&d| if d > 0 { d as usize } else { 1 })
        .collect();
    let len: usize = shape.iter().product();
    let data: Vec<f32> = (0..len).map(|i| (i % 256) as f32 / 127.5 - 1.0).collect();
    let mut best = 0;
    for _ in 0..n {
        let tensor = Tensor::from_array((shape.clone(), data.clone()))?;
        let outputs = session
            .run(ort::inputs![tensor])
            .map_err(|e| anyhow!("{model}: {e}"))?;
        let (_, out) = outputs[0].try_extract_tensor::<f32>()?;
        best = (0..out.len())
            .max_by(|&a, &b| out[a].total_cmp(&out[b]))
            .context("empty output")?;
    }
    Ok(best)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dylib, model, n] = args.as_slice() else {
        eprintln!("usage: glimpse-ort-bench LIBONNXRUNTIME.so MODEL.onnx N");
        return ExitCode::from(2);
    };
    let result = n
        .parse()
        .with_context(|| format!("N: expected a count, got {n:?}"))
        .and_then(|n| run(dylib, model, n));
    match result {
        Ok(best) => {
            println!("arg-max {best}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("glimpse-ort-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}
