//! Errors of local inference.

use hgpt_core::task::TaskKind;

/// Why a local model could not load or run.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LocalError {
    /// Some files of the model are not in the local cache.
    #[error(
        "{model} is not fully in the local cache (missing: {missing}); fetch it with `hgpt models pull {model}`"
    )]
    MissingFiles {
        /// The model id.
        model: String,
        /// The missing files, comma-separated.
        missing: String,
    },
    /// Downloading the model would exceed the download limit.
    #[error(
        "{model} is {} MiB to download, more than the limit of {} MiB; fetch it with `hgpt models pull {model}` or raise the limit (`--model-download-limit-mb`)",
        bytes.div_ceil(1 << 20),
        limit / (1 << 20)
    )]
    TooLarge {
        /// The model id.
        model: String,
        /// Bytes of its files.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// The model's architecture or task is not one hgpt runs locally.
    #[error("{0}")]
    Unsupported(String),
    /// A file of the model is malformed (bad JSON, unexpected tensor names or shapes).
    #[error("cannot load {model}: {message}")]
    Load {
        /// The model id.
        model: String,
        /// What went wrong.
        message: String,
    },
    /// The request's inputs do not fit the task.
    #[error("bad input for {task}: {message}")]
    BadInput {
        /// The task.
        task: TaskKind,
        /// What is wrong.
        message: String,
    },
    /// The computation failed.
    #[error("inference failed: {0}")]
    Compute(String),
}

impl From<candle_core::Error> for LocalError {
    fn from(error: candle_core::Error) -> Self {
        Self::Compute(error.to_string())
    }
}

/// Shorthand for bad input errors.
pub(crate) fn bad_input(task: TaskKind, message: impl Into<String>) -> LocalError {
    LocalError::BadInput {
        task,
        message: message.into(),
    }
}
