//! hgpt-media
