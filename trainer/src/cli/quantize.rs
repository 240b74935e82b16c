//! `glimpse-train quantize`: an int8 bundle from a float one, calibrated on real images and
//! kept only if the gate (float vs int8 on held-out images) passes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use glimpse_runtime::decode::image_files_in;
use glimpse_runtime::{Classifier, OnnxFile, Overrides};
use glimpse_trainer::data::{self, Dataset, LoadOptions};
use glimpse_trainer::quantize::gate::{self, Probe};
use glimpse_trainer::quantize::{self, Granularity, Method, Mode, Options};
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::data_args::DataArgs;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Calibration {
    Minmax,
    Percentile,
}

/// Quantization settings shared by `quantize` and `train --quantize`.
#[derive(Debug, Clone, clap::Args)]
pub struct QuantArgs {
    /// Weight-only int8 (float compute, 4x smaller), full static int8 (integer kernels), or
    /// mixed (static int8 but depthwise convs, which stay float).
    #[arg(long, value_enum, default_value_t = Mode::Weights)]
    pub mode: Mode,
    /// How activation ranges are calibrated (static mode).
    #[arg(long, value_enum, default_value_t = Calibration::Percentile)]
    pub calibration: Calibration,
    /// The percentile kept by percentile calibration.
    #[arg(long, default_value_t = 99.99)]
    pub percentile: f64,
    /// One weight scale per output channel, or per tensor.
    #[arg(long, value_enum, default_value_t = Granularity::PerChannel)]
    pub granularity: Granularity,
    /// Leave the biases as they are (by default each layer's bias is corrected for the mean
    /// shift its rounded weights cause, measured on the calibration images).
    #[arg(long)]
    pub no_bias_correction: bool,
    /// Calibration images to use (a seeded sample).
    #[arg(long, default_value_t = 256)]
    pub calib_images: usize,
    /// Gate on at most this many held-out images (a seeded sample; default: all).
    #[arg(long)]
    pub eval_images: Option<usize>,
    /// Refuse the int8 model when its top-1 accuracy is more than this many points below
    /// the float model's (or, without labels, when they disagree on more than this % of
    /// the images the float model is decided on).
    #[arg(long, default_value_t = 1.0)]
    pub max_drop: f64,
}

impl QuantArgs {
    fn options(&self) -> Options {
        Options {
            mode: self.mode,
            granularity: self.granularity,
            method: match self.calibration {
                Calibration::Minmax => Method::MinMax,
                Calibration::Percentile => Method::Percentile(self.percentile),
            },
            bias_correction: !self.no_bias_correction,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The float ONNX bundle.
    model: PathBuf,
    /// Calibration images: a dataset as `train --data` reads it (its training split is
    /// used) or a folder of images (the files directly inside it). Repeat to combine.
    #[arg(long, value_name = "DATA", required = true)]
    calib: Vec<PathBuf>,
    /// Held-out images for the gate (default: the test split of a single --calib
    /// dataset, or, for folders of images, the same images).
    #[arg(long, value_name = "DATA")]
    eval: Option<PathBuf>,
    /// Where to write the int8 bundle (default: MODEL.int8.onnx).
    #[arg(short, long, value_name = "MODEL.int8.onnx")]
    out: Option<PathBuf>,
    #[command(flatten)]
    quant: QuantArgs,
    /// (`--class-names` defaults to the model's labels.)
    #[command(flatten)]
    data_args: DataArgs,
}

/// Images to calibrate or evaluate on.
enum Source {
    /// A dataset with classes, mapped to the model's labels where the names match.
    Labeled(Dataset, Option<Vec<usize>>),
    /// A folder of images without classes.
    Images(Vec<Arc<RgbImage>>),
}

fn load_source(path: &Path, labels: &[String], data_args: &DataArgs) -> Result<Source> {
    // A folder holding images directly is a set of unlabelled images (sub-folders may
    // hold anything, e.g. darknet's glyphs); otherwise it is a dataset.
    let files = if path.is_dir() {
        image_files_in(path).with_context(|| format!("reading {}", path.display()))?
    } else {
        Vec::new()
    };
    if !files.is_empty() {
        let mut report = data::LoadReport::default();
        let files = files.into_iter().map(|f| (f, 0)).collect();
        let images: Vec<_> = data::decode_files(files, None, &mut report)
            .into_iter()
            .map(|e| e.image)
            .collect();
        for (file, reason) in &report.skipped {
            log::warn!("{file}: skipped: {reason}");
        }
        if images.is_empty() {
            bail!("{}: no readable images", path.display());
        }
        return Ok(Source::Images(images));
    }
    let opts = LoadOptions {
        flag_below: 0,
        ..data_args.load_options(Some(labels.to_vec()))?
    };
    let ds = data::load(path, &opts).with_context(|| format!("loading {}", path.display()))?;
    let map: Option<Vec<usize>> = ds
        .classes
        .iter()
        .map(|c| labels.iter().position(|l| l == c))
        .collect();
    if map.is_none() {
        log::warn!(
            "{}: its classes are not the model's labels; the gate compares int8 with float answers only",
            path.display()
        );
    }
    Ok(Source::Labeled(ds, map))
}

fn sample(mut images: Vec<Arc<RgbImage>>, n: usize, seed: u64) -> Vec<Arc<RgbImage>> {
    images.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    images.truncate(n);
    images
}

/// The images a source offers for calibration (a dataset's training split).
fn calibration_pool(source: &Source) -> Vec<Arc<RgbImage>> {
    match source {
        Source::Images(images) => images.clone(),
        Source::Labeled(ds, _) => ds.train.iter().map(|e| e.image.clone()).collect(),
    }
}

fn probes(source: &Source) -> Vec<Probe> {
    match source {
        Source::Images(images) => images
            .iter()
            .map(|i| Probe {
                image: i.clone(),
                label: None,
            })
            .collect(),
        Source::Labeled(ds, map) => ds
            .held_out()
            .iter()
            .map(|e| Probe {
                image: e.image.clone(),
                label: map.as_ref().map(|m| m[e.label]),
            })
            .collect(),
    }
}

/// `MODEL.onnx` -> `MODEL.int8.onnx`.
pub fn default_out(model: &Path) -> PathBuf {
    let stem = model
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    model.with_file_name(format!("{stem}.int8.onnx"))
}

/// Quantizes `model` to `out` and runs the gate; writes the int8 bundle (and its
/// `.quantize.json` report) only when it passes.
pub fn quantize_and_gate(
    model: &Path,
    out: &Path,
    calib: &[Arc<RgbImage>],
    probes: &[Probe],
    q: &QuantArgs,
) -> Result<()> {
    if probes.is_empty() {
        bail!(
            "no held-out images for the gate: pass --eval DATA, or keep a test or validation split"
        );
    }
    let probes = match q.eval_images {
        Some(n) if n < probes.len() => {
            let mut p = probes.to_vec();
            p.shuffle(&mut ChaCha8Rng::seed_from_u64(0x6A7E));
            p.truncate(n);
            p
        }
        _ => probes.to_vec(),
    };
    let probes = &probes[..];
    let float_file =
        OnnxFile::read(model).with_context(|| format!("loading model {}", model.display()))?;
    let float = Classifier::new(float_file.clone(), &Overrides::default())
        .with_context(|| format!("loading model {}", model.display()))?;
    let opts = q.options();
    let refs: Vec<&RgbImage> = calib.iter().map(|i| &**i).collect();
    let (proto, what) = quantize::quantize(&float_file, &float.preprocess, &refs, &opts)
        .with_context(|| format!("quantizing {}", model.display()))?;
    let bytes = prost::Message::encode_to_vec(&proto);
    let int8_file = OnnxFile::from_bytes(&bytes)?;
    let int8 = Classifier::new(int8_file, &Overrides::default())
        .context("the int8 model does not load in the runtime")?;
    println!("{what}");
    let cmp = gate::compare(&float, &int8, probes)?;
    print!(
        "{}",
        gate::table(&cmp, float_file.size_bytes, bytes.len() as u64)
    );
    if cmp.drop_points > q.max_drop || !cmp.drop_points.is_finite() {
        bail!(
            "int8 model refused: top-1 drop of {:.2} points exceeds --max-drop {} ({}); no int8 model written",
            cmp.drop_points,
            q.max_drop,
            if opts.mode != Mode::Weights {
                "check that the calibration images look like the real inputs, or try --calibration minmax, --granularity per-channel or --mode weights"
            } else {
                "try --granularity per-channel"
            }
        );
    }
    let report = serde_json::json!({
        "model": model.display().to_string(),
        "int8_model": out.display().to_string(),
        "options": opts,
        "description": what,
        "calibration_images": calib.len(),
        "float_bytes": float_file.size_bytes,
        "int8_bytes": bytes.len(),
        "comparison": cmp,
        "max_drop": q.max_drop,
    });
    let report_path = out.with_extension("quantize.json");
    glimpse_runtime::fsutil::atomic_write(
        &report_path,
        serde_json::to_string_pretty(&report)?.as_bytes(),
    )?;
    glimpse_runtime::fsutil::atomic_write(out, &bytes)?;
    println!("wrote {} and {}", out.display(), report_path.display());
    Ok(())
}

pub fn run(args: Args) -> Result<ExitCode> {
    let labels = OnnxFile::read(&args.model)
        .with_context(|| format!("loading model {}", args.model.display()))?
        .meta
        .labels
        .unwrap_or_default();
    let sources: Vec<Source> = args
        .calib
        .iter()
        .map(|c| load_source(c, &labels, &args.data_args))
        .collect::<Result<_>>()?;
    let calib = sample(
        sources.iter().flat_map(calibration_pool).collect(),
        args.quant.calib_images,
        args.data_args.seed,
    );
    let probes: Vec<Probe> = match &args.eval {
        Some(e) => probes(&load_source(e, &labels, &args.data_args)?),
        None => sources.iter().flat_map(probes).collect(),
    };
    let out = args.out.clone().unwrap_or_else(|| default_out(&args.model));
    quantize_and_gate(&args.model, &out, &calib, &probes, &args.quant)?;
    Ok(ExitCode::SUCCESS)
}

/// `train --quantize`: calibrate on the run's training images, gate on its test split.
pub fn after_training(model: &Path, ds: &Dataset, seed: u64, q: &QuantArgs) -> Result<()> {
    let identity = Some((0..ds.classes.len()).collect());
    let source = Source::Labeled(ds.clone(), identity);
    let calib = sample(calibration_pool(&source), q.calib_images, seed);
    quantize_and_gate(model, &default_out(model), &calib, &probes(&source), q)
}
