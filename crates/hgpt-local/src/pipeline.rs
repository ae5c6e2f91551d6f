//! The seam between the backend and the model families: a loaded pipeline
//! answers requests of its task types with the wire protocol's shapes.

use crate::error::LocalError;
use crate::files::ModelFiles;
use candle_core::Device;
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::InferenceOutput;
use hgpt_core::task::TaskKind;
use serde::Deserialize;

/// A model loaded and ready to run. Running is CPU- or GPU-bound: callers run
/// it on a blocking thread.
pub trait Pipeline: Send + Sync {
    /// The task types it serves.
    fn tasks(&self) -> &[TaskKind];
    /// Run one request.
    fn run(&self, task: TaskKind, args: &ResolvedArgs) -> Result<InferenceOutput, LocalError>;
    /// Bytes of weights it holds (for the memory budget).
    fn weight_bytes(&self) -> u64;
}

/// The part of `config.json` that tells which family a model is.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ModelKind {
    /// `bert`, `distilbert`, `roberta`, `xlm-roberta`, `vit`, `yolos`, ...
    #[serde(default)]
    pub model_type: Option<String>,
    /// `BertForSequenceClassification`, ...
    #[serde(default)]
    pub architectures: Vec<String>,
}

/// Load the pipeline serving `task` for a cached model.
pub fn load(
    task: TaskKind,
    files: &ModelFiles,
    device: &Device,
) -> Result<Box<dyn Pipeline>, LocalError> {
    let kind: ModelKind = files.json("config.json")?;
    match task {
        TaskKind::FeatureExtraction | TaskKind::SentenceSimilarity => Ok(Box::new(
            crate::embed::SentenceEmbedder::load(files, device)?,
        )),
        task if crate::text::supports(task) => crate::text::load(task, &kind, files, device),
        task if crate::vision::supports(task) => crate::vision::load(task, &kind, files, device),
        task => Err(LocalError::Unsupported(format!(
            "hgpt has no local pipeline for {task}"
        ))),
    }
}

/// Whether hgpt has a local pipeline for this task type.
pub fn supports(task: TaskKind) -> bool {
    matches!(
        task,
        TaskKind::FeatureExtraction | TaskKind::SentenceSimilarity
    ) || crate::text::supports(task)
        || crate::vision::supports(task)
}
