//! hgpt-hf
