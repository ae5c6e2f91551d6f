//! Text classification, token classification and extractive question
//! answering with BERT, DistilBERT and RoBERTa/XLM-R checkpoints.

use crate::error::LocalError;
use crate::files::ModelFiles;
use crate::pipeline::{ModelKind, Pipeline};
use candle_core::Device;
use hgpt_core::task::TaskKind;

/// Whether this module serves the task.
pub fn supports(task: TaskKind) -> bool {
    let _ = task;
    false
}

/// Load the pipeline for `task`.
pub fn load(
    task: TaskKind,
    kind: &ModelKind,
    files: &ModelFiles,
    device: &Device,
) -> Result<Box<dyn Pipeline>, LocalError> {
    let _ = (kind, files, device);
    Err(LocalError::Unsupported(format!(
        "hgpt has no local pipeline for {task}"
    )))
}
