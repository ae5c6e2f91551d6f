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

/// The task a cached model does by default, from its files: a
/// sentence-transformers layout (`modules.json`) or a bare `*Model` is
/// feature-extraction; otherwise the head named by `config.json`'s
/// `architectures` (`*ForSequenceClassification` -> text-classification,
/// `*ForTokenClassification` -> token-classification, `*ForQuestionAnswering`
/// -> question-answering, `*ForImageClassification` -> image-classification,
/// `*ForObjectDetection` -> object-detection). `None` when the files do not tell.
pub fn task_of(files: &ModelFiles) -> Option<TaskKind> {
    if files.get("modules.json").is_some() {
        return Some(TaskKind::FeatureExtraction);
    }
    let kind: ModelKind = files.json("config.json").ok()?;
    kind.architectures
        .iter()
        .find_map(|arch| task_of_architecture(arch))
}

fn task_of_architecture(arch: &str) -> Option<TaskKind> {
    const HEADS: &[(&str, TaskKind)] = &[
        ("ForSequenceClassification", TaskKind::TextClassification),
        ("ForTokenClassification", TaskKind::TokenClassification),
        ("ForQuestionAnswering", TaskKind::QuestionAnswering),
        ("ForImageClassification", TaskKind::ImageClassification),
        ("ForObjectDetection", TaskKind::ObjectDetection),
    ];
    if let Some((_, task)) = HEADS.iter().find(|(suffix, _)| arch.ends_with(suffix)) {
        return Some(*task);
    }
    let bare = arch.ends_with("Model")
        && !arch.contains("For")
        && !arch.contains("Head")
        && !arch.ends_with("PreTrainedModel");
    bare.then_some(TaskKind::FeatureExtraction)
}

#[cfg(test)]
mod task_of_tests {
    use super::*;

    fn files_with(config: &str, extra: &[&str]) -> (tempfile::TempDir, ModelFiles) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        for name in extra {
            std::fs::write(dir.path().join(name), "[]").unwrap();
        }
        let files = ModelFiles::from_dir("org/m", dir.path());
        (dir, files)
    }

    #[test]
    fn tasks_come_from_the_architecture() {
        let cases = [
            (
                "BertForSequenceClassification",
                Some(TaskKind::TextClassification),
            ),
            (
                "RobertaForTokenClassification",
                Some(TaskKind::TokenClassification),
            ),
            (
                "DistilBertForQuestionAnswering",
                Some(TaskKind::QuestionAnswering),
            ),
            (
                "ViTForImageClassification",
                Some(TaskKind::ImageClassification),
            ),
            ("YolosForObjectDetection", Some(TaskKind::ObjectDetection)),
            ("BertModel", Some(TaskKind::FeatureExtraction)),
            ("GPT2LMHeadModel", None),
            ("BertForMaskedLM", None),
        ];
        for (arch, expected) in cases {
            let (_dir, files) = files_with(&format!(r#"{{"architectures": ["{arch}"]}}"#), &[]);
            assert_eq!(task_of(&files), expected, "{arch}");
        }
        let (_dir, files) = files_with("{}", &[]);
        assert_eq!(task_of(&files), None);
        let (_dir, files) = files_with("not json", &[]);
        assert_eq!(task_of(&files), None);
    }

    #[test]
    fn a_sentence_transformers_layout_is_feature_extraction() {
        let (_dir, files) = files_with(
            r#"{"architectures": ["BertForSequenceClassification"]}"#,
            &["modules.json"],
        );
        assert_eq!(task_of(&files), Some(TaskKind::FeatureExtraction));
    }
}
