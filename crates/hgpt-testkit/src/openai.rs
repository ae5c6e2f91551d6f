//! Fake OpenAI-compatible chat server.
