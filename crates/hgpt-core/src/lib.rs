//! The orchestration core of hgpt.
//!
//! Pure logic plus the traits that backends implement: nothing here talks to
//! the network or links an ML framework. See ARCHITECTURE.md for the map.

pub mod backend;
pub mod catalog;
pub mod execute;
pub mod lenient_json;
pub mod output;
pub mod pipeline;
pub mod plan;
pub mod plan_stream;
pub mod prompt;
pub mod record;
pub mod routing;
pub mod scheduler;
pub mod selection;
pub mod shape;
pub mod task;
