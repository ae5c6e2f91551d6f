//! Which models this server serves, and for which task.

use crate::error::ApiError;
use hgpt_core::task::TaskKind;
use hgpt_local::{LocalBackend, ModelFiles, pipeline};
use serde::Serialize;

/// A model path of a request: the model id and the task named by a
/// `/pipeline/{task}` suffix, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ModelPath {
    pub(crate) model: String,
    pub(crate) pipeline: Option<String>,
}

/// Whether `id` is a Hub model id: `name` or `org/name` made of the Hub's
/// characters, with no empty or dot-only segments.
pub(crate) fn valid_model_id(id: &str) -> bool {
    let segments: Vec<&str> = id.split('/').collect();
    (1..=2).contains(&segments.len())
        && segments.iter().all(|segment| {
            !segment.is_empty()
                && segment.len() <= 96
                && !segment.chars().all(|c| c == '.')
                && segment
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// Split `org/name[/pipeline/task]` (the path after `/models/`).
pub(crate) fn parse_model_path(rest: &str) -> Result<ModelPath, ApiError> {
    let rest = rest.trim_matches('/');
    let segments: Vec<&str> = rest.split('/').collect();
    let (model, pipeline) = match segments.as_slice() {
        [model @ .., "pipeline", task] if !model.is_empty() => {
            (model.join("/"), Some((*task).to_string()))
        }
        _ => (rest.to_string(), None),
    };
    if !valid_model_id(&model) {
        return Err(ApiError::not_found(format!(
            "{model:?} is not a model id (expected `org/name` or `name`)"
        )));
    }
    Ok(ModelPath { model, pipeline })
}

/// A model the server can serve, as `GET /models` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct ServedModel {
    pub(crate) id: String,
    /// The task a plain `POST /models/{id}` runs.
    pub(crate) task: TaskKind,
    /// Every task it answers (feature-extraction models also do sentence-similarity).
    pub(crate) tasks: Vec<TaskKind>,
    pub(crate) loaded: bool,
}

/// The tasks a cached model answers, its default first: its pipeline's
/// ([`pipeline::tasks_of`]; Stable Diffusion does image-to-image too), and
/// sentence-similarity for feature-extraction models.
pub(crate) fn tasks_for(files: &ModelFiles) -> Vec<TaskKind> {
    with_similarity(pipeline::tasks_of(files))
}

/// The tasks a request for `task` (its default, or the one its path
/// names) may turn into, on a model whose files are `files`: the model's
/// own, and `task` with sentence-similarity beside feature-extraction.
pub(crate) fn answerable(task: TaskKind, files: &ModelFiles) -> Vec<TaskKind> {
    let mut tasks = pipeline::tasks_of(files);
    tasks.push(task);
    with_similarity(tasks)
}

/// `tasks`, once each, with sentence-similarity after feature-extraction.
fn with_similarity(tasks: Vec<TaskKind>) -> Vec<TaskKind> {
    let mut out: Vec<TaskKind> = Vec::with_capacity(tasks.len() + 1);
    for task in tasks {
        let pair: &[TaskKind] = match task {
            TaskKind::FeatureExtraction => {
                &[TaskKind::FeatureExtraction, TaskKind::SentenceSimilarity]
            }
            _ => std::slice::from_ref(&task),
        };
        for &t in pair {
            if !out.contains(&t) {
                out.push(t);
            }
        }
    }
    out
}

/// The allow list and the cache, together.
pub(crate) struct Catalog<'a> {
    pub(crate) backend: &'a LocalBackend,
    pub(crate) allowed: &'a [String],
}

impl Catalog<'_> {
    fn is_allowed(&self, model: &str) -> bool {
        self.allowed.is_empty() || self.allowed.iter().any(|m| m == model)
    }

    /// The cached files of a model this server may serve, or a 404.
    pub(crate) fn files(&self, model: &str) -> Result<ModelFiles, ApiError> {
        if !valid_model_id(model) {
            return Err(ApiError::not_found(format!("{model:?} is not a model id")));
        }
        if !self.is_allowed(model) {
            return Err(ApiError::not_found(format!(
                "this server does not serve {model} (it serves: {})",
                self.allowed.join(", ")
            )));
        }
        let files = self.backend.cache().model(model);
        if !pipeline::is_present(&files) {
            return Err(ApiError::not_found(format!(
                "{model} is not in this server's model cache ({}); fetch it with `hgpt models pull {model}`",
                self.backend.cache().path().display()
            )));
        }
        Ok(files)
    }

    /// The model's listing entry when the server can serve it (allowed,
    /// cached with weights, a known task with a local pipeline).
    pub(crate) fn served(&self, model: &str) -> Result<ServedModel, ApiError> {
        let files = self.files(model)?;
        if !pipeline::is_complete(&files) {
            return Err(ApiError::not_found(format!(
                "{model} has no weights (model.safetensors or pytorch_model.bin, or a diffusers pipeline's folders) in this server's cache; fetch it with `hgpt models pull {model}`"
            )));
        }
        let task = pipeline::task_of(&files).ok_or_else(|| {
            ApiError::not_found(format!(
                "{model} is cached but its config.json names no architecture this server knows"
            ))
        })?;
        if !pipeline::supports(task) {
            return Err(ApiError::not_found(format!(
                "{model} is a {task} model and this server has no local pipeline for {task}"
            )));
        }
        Ok(ServedModel {
            id: model.to_string(),
            task,
            tasks: tasks_for(&files),
            loaded: self.backend.is_loaded(model),
        })
    }

    /// Every model the server can serve: the allow list, else every model in
    /// the cache.
    pub(crate) fn list(&self) -> Vec<ServedModel> {
        let candidates = if self.allowed.is_empty() {
            cached_model_ids(self.backend)
        } else {
            self.allowed.to_vec()
        };
        let mut models: Vec<ServedModel> = candidates
            .iter()
            .filter_map(|id| self.served(id).ok())
            .collect();
        models.sort_by(|a, b| a.id.cmp(&b.id));
        models.dedup_by(|a, b| a.id == b.id);
        models
    }
}

/// Model ids of the `models--{org}--{name}` folders in the cache.
fn cached_model_ids(backend: &LocalBackend) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(backend.cache().path()) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let id = name.strip_prefix("models--")?.replace("--", "/");
            valid_model_id(&id).then_some(id)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_paths() {
        let parse = |p: &str| parse_model_path(p).map(|m| (m.model, m.pipeline));
        assert_eq!(parse("org/name"), Ok(("org/name".into(), None)));
        assert_eq!(parse("gpt2/"), Ok(("gpt2".into(), None)));
        assert_eq!(
            parse("org/name/pipeline/feature-extraction"),
            Ok(("org/name".into(), Some("feature-extraction".into())))
        );
        assert_eq!(
            parse("gpt2/pipeline/text-classification"),
            Ok(("gpt2".into(), Some("text-classification".into())))
        );
        // A model called `pipeline/x` is a model, not a suffix.
        assert_eq!(parse("pipeline/x"), Ok(("pipeline/x".into(), None)));
        assert!(parse("a/b/c").is_err());
        assert!(parse("../etc").is_err());
        assert!(parse("a//b").is_err());
        assert!(parse("a/b?c").is_err());
        assert!(parse("").is_err());
    }

    fn config(architectures: &str) -> (tempfile::TempDir, ModelFiles) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("config.json"),
            format!(r#"{{"model_type": "bert", "architectures": {architectures}}}"#),
        )
        .unwrap();
        let files = ModelFiles::from_dir("org/m", dir.path());
        (dir, files)
    }

    #[test]
    fn a_model_answers_its_tasks_once_each() {
        use TaskKind::*;
        let (_dir, bare) = config(r#"["BertModel"]"#);
        assert_eq!(tasks_for(&bare), [FeatureExtraction, SentenceSimilarity]);
        // A classifier named as a feature extractor in the path may also
        // be asked for similarity; by default it classifies only.
        let (_dir, classifier) = config(r#"["BertForSequenceClassification"]"#);
        assert_eq!(tasks_for(&classifier), [TextClassification]);
        assert_eq!(
            answerable(FeatureExtraction, &classifier),
            [TextClassification, FeatureExtraction, SentenceSimilarity]
        );
        assert_eq!(
            answerable(TextClassification, &classifier),
            [TextClassification]
        );
    }
}
