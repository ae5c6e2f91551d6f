//! Local inference for hgpt: Hugging Face models run in-process with candle,
//! read from the Hugging Face cache layout. CPU by default; the `cuda` and
//! `metal` features pass through to candle.

pub mod ast;
pub mod audio;
pub mod backend;
mod bert;
pub mod device;
pub mod diffusion;
pub mod embed;
pub mod error;
#[cfg(target_arch = "x86_64")]
mod few_rows;
pub mod files;
pub mod generate;
mod kernels;
mod noise;
#[cfg(target_arch = "x86_64")]
mod packed_attention;
pub mod pipeline;
pub mod pull;
pub mod safetensors;
pub mod speech;
pub mod text;
pub mod vision;
pub mod vits;
pub mod wav2vec2;
pub mod whisper;

pub use backend::{AutoPull, LoadedModel, LocalBackend, LocalConfig};
pub use error::LocalError;
pub use files::{ModelCache, ModelFiles};
