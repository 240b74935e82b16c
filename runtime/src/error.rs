//! The classifier library's errors: each names what is at fault and what was expected.

use std::path::{Path, PathBuf};

use crate::bundle::BundleError;
use crate::crop::CropError;
use crate::decode::DecodeError;

/// What went wrong in the library; `Display` is the whole message (no source to append).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image could not be decoded, or was refused by the limits.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The region of interest does not fit the image.
    #[error(transparent)]
    Crop(#[from] CropError),
    /// A file could not be read or written.
    #[error("{action} {}: {error}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// The bytes are not an ONNX model.
    #[error("not an ONNX model: {0}")]
    NotOnnx(String),
    /// The glimpse metadata of the model is malformed.
    #[error(transparent)]
    Bundle(#[from] BundleError),
    /// The model is ONNX but not a classifier glimpse can run: its inputs or outputs,
    /// an op tract lacks, a malformed graph, non-finite weights, bad quantization.
    #[error("{0}")]
    Model(String),
    /// The model's input size is neither fixed in the graph nor in its metadata.
    #[error("the model's input size is not fixed and the model has no glimpse.input_size")]
    NoInputSize,
    /// The preprocessing (from metadata and overrides) cannot be carried out.
    #[error("invalid preprocessing: {0}")]
    Preprocess(String),
    /// A labels file is empty, or the labels do not match the model.
    #[error("{0}")]
    Labels(String),
    /// The model failed on an input.
    #[error("{0}")]
    Inference(String),
    /// Something went wrong with the model in this file.
    #[error("{}: {error}", path.display())]
    InFile { path: PathBuf, error: Box<Error> },
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The same error, naming `path` (unless it already does).
    pub fn in_file(self, path: &Path) -> Error {
        match self {
            Error::Io { .. } | Error::InFile { .. } => self,
            error => Error::InFile {
                path: path.to_path_buf(),
                error: Box::new(error),
            },
        }
    }

    /// The error without the file it happened in.
    pub fn cause(&self) -> &Error {
        match self {
            Error::InFile { error, .. } => error.cause(),
            e => e,
        }
    }

    /// Makes an I/O error of `action` (`"reading"`, `"writing"`, ...) on `path`: for
    /// `map_err`.
    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.to_path_buf();
        move |error| Error::Io {
            action,
            path,
            error,
        }
    }

    /// An error of tract's about the model, with what was being done (`context`).
    pub(crate) fn model(context: &str, err: impl std::fmt::Display) -> Error {
        Error::Model(format!("{context}: {err:#}"))
    }
}

/// `Error::Model` from a format string.
macro_rules! model_error {
    ($($arg:tt)*) => { $crate::error::Error::Model(format!($($arg)*)) };
}
pub(crate) use model_error;
