//! The embedded controller of hgpt: a GGUF LLM in the hgpt process.
//!
//! - [`gguf`]: reading GGUF files, with clear errors for unsupported or
//!   damaged ones.
//! - [`model`]: one decoder for the llama, qwen2, qwen3, phi3 and gemma3
//!   families on candle's quantized matmuls, with a separate [`model::KvCache`].
//! - [`attention`]: attention over the KV cache as one CPU operation.
//! - [`qmatmul`]: the quantized products, with hgpt's own CPU kernels for
//!   Q4_1 and Q8_0 on weights repacked eight rows at a time.
//! - [`tokenizer`]: the vocabulary from the GGUF file or a `tokenizer.json`.
//! - [`template`]: the model's own chat template.
//! - [`engine`]: generation with llguidance token masks, so that plans and
//!   model choices follow [`hgpt_core::shape::OutputShape`] by construction.
//! - [`prompt_cache`]: prefilled prompt prefixes in memory and on disk.
//! - [`source`]: which file to run, from a path or the Hub.
//! - [`controller`]: [`EmbeddedController`], the [`hgpt_core::backend::ChatModel`].

pub mod attention;
pub mod controller;
mod cpu;
pub mod engine;
pub mod error;
pub mod gguf;
pub mod model;
pub mod prompt_cache;
pub mod qmatmul;
pub mod source;
pub mod template;
pub mod tokenizer;

pub use controller::{ControllerSettings, EmbeddedController};
pub use engine::{Engine, EngineOptions, GenerateRequest, Generation, Sampling};
pub use error::ControllerError;
pub use source::{DEFAULT_MODEL, HubAccess, ModelSpec};
