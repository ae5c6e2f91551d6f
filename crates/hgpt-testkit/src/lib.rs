//! Fakes for hgpt's tests and benchmarks, never used by the binary:
//! loopback fake servers — an OpenAI-compatible chat server ([`openai`]) and
//! a Hugging Face inference server ([`hf`]), a Hub for downloads ([`hub`]) that bind 127.0.0.1 on an
//! ephemeral port and never reach outside — and in-process fakes of the
//! core's traits ([`inproc`]).

pub mod hf;
pub mod hub;
pub mod inproc;
pub mod models;
pub mod openai;
