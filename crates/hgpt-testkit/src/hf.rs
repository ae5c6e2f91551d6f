//! Fake Hugging Face inference server.
