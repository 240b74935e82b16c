//! Classifies photos with the library alone: `cargo run -p glimpse-runtime
//! --no-default-features --example classify_photo -- photo.jpg [MODEL.onnx]`.

use std::path::PathBuf;

use glimpse_runtime::{Classifier, Limits, Overrides};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let photo = args
        .next()
        .ok_or("usage: classify_photo PHOTO [MODEL.onnx]")?;
    let model = args.next().map_or_else(default_model, Ok)?;
    let classifier = Classifier::load(&model, &Overrides::default())?;
    let bytes = std::fs::read(&photo).map_err(|e| format!("{}: {e}", photo.display()))?;
    let (scores, _timings) = classifier.classify_bytes(&bytes, &Limits::default())?;
    for ranked in classifier.top_k(&scores.probs, 5) {
        println!("{:.4}  {}", ranked.probability, ranked.label);
    }
    Ok(())
}

/// The model glimpse ships (`$GLIMPSE_MODEL`, else the first default location that exists).
fn default_model() -> Result<PathBuf, Box<dyn std::error::Error>> {
    let candidates = glimpse_runtime::default_model_candidates();
    let found = candidates.into_iter().find(|p| p.is_file());
    Ok(found.ok_or("the default model was not found: pass MODEL.onnx")?)
}
