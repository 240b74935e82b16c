//! `glimpse classify`: inputs (files, folders, stdin) → ranked labels, one failure never
//! stopping the run.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};

use glimpse_runtime::classifier::Scores;
use glimpse_runtime::decode::{image_files, DecodeError, EXTENSIONS};
use glimpse_runtime::{Crop, Limits, Timings};

use super::output::{Format, Record, Writer};
use super::ModelArgs;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Image files, folders (searched recursively) or `-` for one image on stdin.
    #[arg(required = true, value_name = "INPUT")]
    inputs: Vec<PathBuf>,
    #[command(flatten)]
    model: ModelArgs,
    /// How many labels to show per image.
    #[arg(short = 'k', long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    top_k: u32,
    /// Report the image as unknown when the best probability is below this (0-1).
    #[arg(short, long, default_value_t = 0.0, value_parser = parse_probability)]
    threshold: f32,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Images classified at once, one per worker thread (default: one per CPU core).
    /// The model is loaded once and shared; each worker adds its own activations.
    #[arg(short, long, value_parser = clap::value_parser!(u32).range(1..))]
    jobs: Option<u32>,
    /// Classify only this region of each image: x,y,w,h in pixels or as fractions of the
    /// image (0.5,0,0.5,1), in the upright image as it is displayed.
    #[arg(long, value_name = "X,Y,W,H")]
    crop: Option<Crop>,
    /// Refuse images with more pixels than this.
    #[arg(long, default_value_t = Limits::default().max_pixels, help_heading = "Limits")]
    max_pixels: u64,
    /// Refuse files larger than this many bytes.
    #[arg(long, default_value_t = Limits::default().max_bytes, help_heading = "Limits")]
    max_bytes: u64,
}

/// One thing to classify.
enum Input {
    Stdin,
    File(PathBuf),
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (path, file) = args.model.read()?;
    let classifier = args.model.classifier_for(&path, file)?;
    let limits = Limits {
        max_pixels: args.max_pixels,
        max_bytes: args.max_bytes,
        ..Limits::default()
    };
    let mut out = Writer::new(std::io::stdout().lock(), args.format).context("writing output")?;
    let mut failures = 0usize;
    let mut report = |name: &str, err: &anyhow::Error| {
        failures += 1;
        eprintln!("{name}: {err:#}");
    };

    let inputs = collect_inputs(&args.inputs, &mut report);
    let jobs = args
        .jobs
        .map(|j| j as usize)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, inputs.len().max(1));
    log::info!("{} input(s), {jobs} worker(s)", inputs.len());
    let classify = |input: &Input| {
        let bytes = read_input(input, &limits)?;
        Ok(match args.crop {
            Some(crop) => classifier.classify_bytes_within(&bytes, &limits, crop)?,
            None => classifier.classify_bytes(&bytes, &limits)?,
        })
    };
    let mut emit = |input: &Input, result: Result<(Scores, Timings)>| -> Result<()> {
        let name = match input {
            Input::Stdin => "-".to_string(),
            Input::File(p) => p.display().to_string(),
        };
        match result {
            Ok((scores, timings)) => {
                let top = classifier.top_k(&scores.probs, args.top_k as usize);
                let record = Record {
                    path: &name,
                    top: &top,
                    threshold: args.threshold,
                    rejected: scores.rejected,
                    timings,
                };
                out.write(&record).context("writing output")?;
            }
            Err(err) => report(&name, &err),
        }
        Ok(())
    };
    if jobs == 1 {
        for input in &inputs {
            emit(input, classify(input))?;
        }
    } else {
        in_parallel(&inputs, jobs, classify, &mut emit)?;
    }
    Ok(super::exit_code(failures > 0))
}

/// Runs `classify` on the inputs with `jobs` worker threads and hands the results to
/// `emit` in input order (a result that comes early waits for the ones before it), so
/// the output is the same as a sequential run's.
fn in_parallel<R: Send>(
    inputs: &[Input],
    jobs: usize,
    classify: impl Fn(&Input) -> R + Sync,
    emit: &mut impl FnMut(&Input, R) -> Result<()>,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        // Bounded, so workers stay at most a few images ahead of a slow output.
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, R)>(jobs * 2);
        for _ in 0..jobs {
            let (tx, next, classify) = (tx.clone(), &next, &classify);
            s.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(input) = inputs.get(i) else { break };
                // A closed channel means the output failed: stop.
                if tx.send((i, classify(input))).is_err() {
                    break;
                }
            });
        }
        drop(tx);
        let mut waiting = BTreeMap::new();
        let mut due = 0;
        for (i, result) in rx {
            waiting.insert(i, result);
            while let Some(result) = waiting.remove(&due) {
                emit(&inputs[due], result)?;
                due += 1;
            }
        }
        Ok(())
    })
}

/// Expands folders into their image files (sorted, so runs are reproducible); a path that
/// cannot be walked is reported and skipped.
fn collect_inputs(paths: &[PathBuf], report: &mut impl FnMut(&str, &anyhow::Error)) -> Vec<Input> {
    let mut inputs = Vec::new();
    let mut stdin_taken = false;
    for path in paths {
        if path.as_os_str() == "-" {
            if stdin_taken {
                report("-", &anyhow::anyhow!("stdin can be given only once"));
            } else {
                stdin_taken = true;
                inputs.push(Input::Stdin);
            }
        } else if path.is_dir() {
            let before = inputs.len();
            for entry in image_files(path, true) {
                match entry {
                    Ok(file) => inputs.push(Input::File(file)),
                    Err(err) => {
                        let at = err.path().unwrap_or(path).display().to_string();
                        report(&at, &anyhow::anyhow!(lower(&err.to_string())));
                    }
                }
            }
            if inputs.len() == before {
                log::warn!(
                    "{}: no image files ({}) in this folder",
                    path.display(),
                    EXTENSIONS.join(", ")
                );
            }
        } else {
            // Named files are taken whatever their extension: the content decides.
            inputs.push(Input::File(path.clone()));
        }
    }
    inputs
}

/// Reads the encoded bytes, refusing oversized inputs before reading them whole.
fn read_input(input: &Input, limits: &Limits) -> Result<Vec<u8>> {
    let too_large = |size| DecodeError::FileTooLarge {
        size,
        limit: limits.max_bytes,
    };
    match input {
        Input::Stdin => {
            let mut bytes = Vec::new();
            std::io::stdin()
                .lock()
                .take(limits.max_bytes + 1)
                .read_to_end(&mut bytes)
                .context("reading stdin")?;
            if bytes.len() as u64 > limits.max_bytes {
                bail!(too_large(bytes.len() as u64));
            }
            Ok(bytes)
        }
        Input::File(path) => {
            let file =
                std::fs::File::open(path).map_err(|e| anyhow::anyhow!(lower(&e.to_string())))?;
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            if file.metadata().is_ok_and(|m| m.is_dir()) {
                bail!("is a directory");
            }
            if size > limits.max_bytes {
                bail!(too_large(size));
            }
            let mut bytes = Vec::with_capacity(size as usize);
            file.take(limits.max_bytes + 1)
                .read_to_end(&mut bytes)
                .map_err(|e| anyhow::anyhow!(lower(&e.to_string())))?;
            Ok(bytes)
        }
    }
}

fn parse_probability(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("expected a probability between 0 and 1, got {s:?}")),
    }
}

/// OS error messages start with a capital ("No such file or directory"); ours do not.
fn lower(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_lowercase().chain(c).collect())
        .unwrap_or_default()
}
