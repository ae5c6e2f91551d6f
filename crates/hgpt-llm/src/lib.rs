//! hgpt-llm
