//! OpenAI-compatible chat completion client for hgpt's controller LLM.
//!
//! [`OpenAiClient`] implements [`hgpt_core::backend::ChatModel`] over the
//! `POST {base_url}/chat/completions` protocol spoken by OpenAI and by local
//! servers (vLLM, llama.cpp, Ollama, LM Studio, TGI): plain and streamed
//! (Server-Sent Events) completions, retries with exponential backoff for
//! connection errors, 408, 429 and 5xx, and per-call timeouts.
//! [`context_window`] knows the context sizes of common model names.

mod client;
mod models;
pub mod sse;

pub use client::{OpenAiClient, OpenAiConfig};
pub use models::context_window;
