//! What can go wrong in the embedded controller.

use std::path::PathBuf;

/// Why the embedded controller could not load or run.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The model file could not be opened or read.
    #[error("cannot read {path}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The file is not a usable GGUF file (truncated, corrupt, not GGUF).
    #[error("{path} is not a usable GGUF file: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The model's architecture or quantization is not supported.
    #[error("{0}")]
    Unsupported(String),
    /// The tokenizer could not be built or used.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The chat template could not be compiled or rendered.
    #[error("chat template: {0}")]
    Template(String),
    /// The output grammar could not be compiled or followed.
    #[error("constrained decoding: {0}")]
    Grammar(String),
    /// The prompt does not fit the model's context window.
    #[error(
        "the prompt is {prompt} tokens, but the model's context window is {context} tokens \
         (with {reserve} kept for the answer)"
    )]
    ContextTooLong {
        /// Prompt tokens.
        prompt: usize,
        /// The context window.
        context: usize,
        /// Tokens kept free for generation.
        reserve: usize,
    },
    /// A tensor operation failed.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The model is not on this machine and may not be downloaded.
    #[error("{0}")]
    NotAvailable(String),
    /// Downloading the model failed.
    #[error("download failed: {0}")]
    Download(String),
}

impl From<candle_core::Error> for ControllerError {
    fn from(e: candle_core::Error) -> Self {
        Self::Inference(e.to_string())
    }
}

/// Results of this crate.
pub type Result<T, E = ControllerError> = std::result::Result<T, E>;
