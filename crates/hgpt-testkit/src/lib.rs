//! Loopback fake servers for hgpt's tests and benchmarks: an OpenAI-compatible
//! chat server ([`openai`]) and a Hugging Face inference server ([`hf`]).
//! They bind 127.0.0.1 on an ephemeral port and never reach outside.

pub mod hf;
pub mod openai;
