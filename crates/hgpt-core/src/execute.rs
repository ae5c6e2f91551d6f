//! Stage 3 pieces: resolving a task's arguments from earlier results and
//! turning backend outputs into task outputs (saving generated files, drawing
//! detections and masks).

use crate::backend::{MediaStore, ResolvedArgs};
use crate::output::{Blob, InferenceOutput};
use crate::plan::{PlanTask, pure_references, references_in, replace_references};
use crate::record::TaskOutput;
use crate::task::{ResourceKind, TaskKind};
use base64::Engine as _;
use serde_json::{Value, json};
use std::collections::BTreeMap;

/// What a finished task leaves for the tasks after it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Finished {
    /// Its output.
    pub output: TaskOutput,
    /// Its arguments after resolution (paths and texts).
    pub inputs: BTreeMap<String, Value>,
}

/// Resolve `<GENERATED>-k` references and load media for one task.
///
/// A reference resolves to task k's generated resource of the argument's
/// kind; failing that, any dependency's generated resource of that kind; failing
/// that, task k's own input of that kind (the reference's fallbacks). Text
/// arguments may embed references, which are replaced by the referenced
/// task's text. Returns the loaded arguments and their shown form.
pub async fn resolve_args(
    task: &PlanTask,
    finished: &BTreeMap<usize, Finished>,
    media: &dyn MediaStore,
) -> Result<(ResolvedArgs, BTreeMap<String, Value>), String> {
    let mut resolved = ResolvedArgs::default();
    let mut shown = BTreeMap::new();
    for (key, value) in &task.args {
        let kind = ResourceKind::from_arg_name(key);
        let text_value = match value {
            Value::String(s) => Some(s.as_str()),
            _ => None,
        };
        match (kind, text_value) {
            (Some(ResourceKind::Text) | None, Some(text)) => {
                let text = resolve_text(text, task, finished)?;
                shown.insert(key.clone(), Value::String(text.clone()));
                if kind.is_some() {
                    resolved.text = Some(text);
                } else {
                    resolved.other.insert(key.clone(), Value::String(text));
                }
            }
            (Some(media_kind), Some(reference)) => {
                let path = match pure_references(reference).and_then(|ids| ids.first().copied()) {
                    Some(id) => generated(id, media_kind, task, finished)?,
                    None => reference.trim().to_string(),
                };
                if path.is_empty() {
                    return Err(format!("the {key} argument is empty"));
                }
                let blob = media
                    .load(&path, media_kind)
                    .await
                    .map_err(|e| e.to_string())?;
                shown.insert(key.clone(), Value::String(path));
                match media_kind {
                    ResourceKind::Image => resolved.image = Some(blob),
                    ResourceKind::Audio => resolved.audio = Some(blob),
                    ResourceKind::Video => resolved.video = Some(blob),
                    ResourceKind::Text => {}
                }
            }
            (Some(ResourceKind::Text), None) | (None, None) => {
                shown.insert(key.clone(), value.clone());
                if kind.is_some() {
                    resolved.text = Some(value.to_string());
                } else {
                    resolved.other.insert(key.clone(), value.clone());
                }
            }
            (Some(media_kind), None) => {
                return Err(format!(
                    "the {media_kind} argument must be a path or URL, got {value}"
                ));
            }
        }
    }
    Ok((resolved, shown))
}

fn resolve_text(
    text: &str,
    task: &PlanTask,
    finished: &BTreeMap<usize, Finished>,
) -> Result<String, String> {
    let ids = references_in(text);
    if ids.is_empty() {
        return Ok(text.to_string());
    }
    let mut resolved = BTreeMap::new();
    for id in &ids {
        resolved.insert(*id, generated(*id, ResourceKind::Text, task, finished)?);
    }
    if pure_references(text).is_some() {
        return Ok(ids
            .iter()
            .filter_map(|id| resolved.get(id).cloned())
            .collect::<Vec<_>>()
            .join("\n"));
    }
    Ok(replace_references(text, |id| {
        resolved.get(&id).cloned().unwrap_or_default()
    }))
}

/// What task `id` generated of `kind`; failing that, what any dependency
/// generated of that kind; failing that, task `id`'s own input of that kind.
fn generated(
    id: usize,
    kind: ResourceKind,
    task: &PlanTask,
    finished: &BTreeMap<usize, Finished>,
) -> Result<String, String> {
    let of_kind = |f: &Finished| match kind {
        ResourceKind::Text => output_text(&f.output),
        ResourceKind::Image => f.output.generated_image.clone(),
        ResourceKind::Audio => f.output.generated_audio.clone(),
        ResourceKind::Video => f.output.generated_video.clone(),
    };
    finished
        .get(&id)
        .and_then(of_kind)
        .or_else(|| {
            task.dep
                .iter()
                .filter_map(|d| finished.get(d))
                .find_map(of_kind)
        })
        .or_else(|| {
            finished
                .get(&id)?
                .inputs
                .get(kind.arg_name())?
                .as_str()
                .map(str::to_string)
        })
        .ok_or_else(|| format!("task {id} produced no {kind} to use"))
}

/// A text view of a task's output: its generated text, or a short summary of
/// its predictions (top labels, object counts, the best answer, ...).
pub fn output_text(output: &TaskOutput) -> Option<String> {
    if let Some(text) = &output.generated_text {
        return Some(text.clone());
    }
    output.predicted.as_ref().map(summarize_prediction)
}

/// A one-line human summary of a prediction value.
pub fn summarize_prediction(value: &Value) -> String {
    let Some(items) = value.as_array() else {
        return match value {
            Value::String(s) => s.clone(),
            Value::Object(o) if o.contains_key("answer") => {
                o["answer"].as_str().unwrap_or_default().to_string()
            }
            other => truncate_chars(&other.to_string(), 500),
        };
    };
    let field = |item: &Value, key: &str| item.get(key).and_then(Value::as_str).map(str::to_string);
    let first = items.first();
    if first.is_some_and(|i| i.get("answer").is_some()) {
        return first.and_then(|i| field(i, "answer")).unwrap_or_default();
    }
    if first.is_some_and(|i| i.get("box").is_some()) {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for item in items {
            *counts
                .entry(field(item, "label").unwrap_or_default())
                .or_default() += 1;
        }
        return counts
            .iter()
            .map(|(l, n)| format!("{n} {l}"))
            .collect::<Vec<_>>()
            .join(", ");
    }
    if first.is_some_and(|i| i.get("entity_group").is_some()) {
        return items
            .iter()
            .map(|i| {
                format!(
                    "{} ({})",
                    field(i, "word").unwrap_or_default(),
                    field(i, "entity_group").unwrap_or_default()
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
    }
    if first.is_some_and(|i| i.get("label").is_some()) {
        return items
            .iter()
            .take(5)
            .map(|i| match i.get("score").and_then(Value::as_f64) {
                Some(score) => format!("{} ({score:.2})", field(i, "label").unwrap_or_default()),
                None => field(i, "label").unwrap_or_default(),
            })
            .collect::<Vec<_>>()
            .join(", ");
    }
    truncate_chars(&value.to_string(), 500)
}

/// Cut a string to `max` characters, saying how much was cut.
pub fn truncate_chars(text: &str, max: usize) -> String {
    let total = text.chars().count();
    if total <= max {
        return text.to_string();
    }
    let kept: String = text.chars().take(max).collect();
    format!("{kept}… [cut: {} more characters]", total - max)
}

/// Turn a backend output into the task's output: generated files are saved
/// under the output directory, detections and segments are also drawn onto
/// the input image.
pub async fn into_task_output(
    task: TaskKind,
    output: InferenceOutput,
    input: &ResolvedArgs,
    media: &dyn MediaStore,
) -> Result<TaskOutput, String> {
    let mut out = TaskOutput::default();
    match output {
        InferenceOutput::Text(text) => out.generated_text = Some(text),
        InferenceOutput::Transcription { text, chunks } => {
            out.generated_text = Some(text);
            out.predicted = chunks;
        }
        InferenceOutput::Labels(v) => out.predicted = Some(json_of(&v)),
        InferenceOutput::Entities(v) => out.predicted = Some(json_of(&v)),
        InferenceOutput::Answers(v) => out.predicted = Some(json_of(&v)),
        InferenceOutput::Similarities(v) => out.predicted = Some(json_of(&v)),
        InferenceOutput::Embeddings(v) | InferenceOutput::Json(v) => out.predicted = Some(v),
        InferenceOutput::Detections(detections) => {
            out.predicted = Some(json_of(&detections));
            if let Some(image) = &input.image {
                match media.draw_detections(image, &detections).await {
                    Ok(drawn) => {
                        out.generated_image = Some(save(media, ResourceKind::Image, &drawn).await?)
                    }
                    Err(e) => tracing::warn!("could not draw detections: {e}"),
                }
            }
        }
        InferenceOutput::Segments(segments) => {
            let labels: Vec<Value> = segments
                .iter()
                .map(|s| json!({"label": s.label, "score": s.score}))
                .collect();
            out.predicted = Some(Value::Array(labels));
            if let Some(image) = &input.image {
                match media.draw_segments(image, &segments).await {
                    Ok(drawn) => {
                        out.generated_image = Some(save(media, ResourceKind::Image, &drawn).await?)
                    }
                    Err(e) => tracing::warn!("could not draw segments: {e}"),
                }
            }
        }
        InferenceOutput::Depth {
            image,
            predicted: _,
        } => {
            let image = image.ok_or("the depth estimation returned no depth image")?;
            out.generated_image = Some(save(media, ResourceKind::Image, &image).await?);
        }
        InferenceOutput::Media(blob) => {
            let kind = task
                .output()
                .filter(|k| *k != ResourceKind::Text)
                .unwrap_or(ResourceKind::Image);
            let path = save(media, kind, &blob).await?;
            match kind {
                ResourceKind::Audio => out.generated_audio = Some(path),
                ResourceKind::Video => out.generated_video = Some(path),
                _ => out.generated_image = Some(path),
            }
        }
        InferenceOutput::AudioSources(sources) => {
            let mut listed = Vec::new();
            for source in sources {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(source.blob.trim())
                    .map_err(|e| {
                        format!("audio source {:?} is not valid base64: {e}", source.label)
                    })?;
                let blob = Blob {
                    bytes: bytes.into(),
                    mime: Some(source.content_type.clone()),
                };
                let path = save(media, ResourceKind::Audio, &blob).await?;
                out.generated_audio.get_or_insert_with(|| path.clone());
                listed.push(json!({"label": source.label, "audio": path}));
            }
            out.predicted = Some(Value::Array(listed));
        }
    }
    Ok(out)
}

async fn save(media: &dyn MediaStore, kind: ResourceKind, blob: &Blob) -> Result<String, String> {
    media
        .save(kind, blob)
        .await
        .map_err(|e| format!("could not save the generated {kind}: {e}"))
}

/// Any output shape as JSON (shapes are plain data; failure is impossible in
/// practice and maps to `null`).
fn json_of<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prediction_summaries() {
        let detections = json!([
            {"label": "zebra", "score": 0.9, "box": {}},
            {"label": "zebra", "score": 0.8, "box": {}},
            {"label": "giraffe", "score": 0.7, "box": {}}
        ]);
        assert_eq!(summarize_prediction(&detections), "1 giraffe, 2 zebra");
        assert_eq!(
            summarize_prediction(&json!([{"label": "cat", "score": 0.5}])),
            "cat (0.50)"
        );
        assert_eq!(
            summarize_prediction(&json!([{"answer": "blue", "score": 0.5}])),
            "blue"
        );
        assert_eq!(
            summarize_prediction(&json!({"answer": "Paris", "score": 0.9})),
            "Paris"
        );
        assert_eq!(
            summarize_prediction(&json!([{"entity_group": "PER", "word": "Ada", "score": 0.9}])),
            "Ada (PER)"
        );
    }

    #[tokio::test]
    async fn references_are_substituted_in_one_pass() {
        let task = PlanTask {
            id: 11,
            task: crate::task::TaskName::Known(TaskKind::Summarization),
            dep: vec![1, 10],
            args: BTreeMap::from([(
                "text".to_string(),
                json!("say <GENERATED>-1 then <GENERATED-10>"),
            )]),
        };
        let done = |text: &str| Finished {
            output: TaskOutput {
                generated_text: Some(text.to_string()),
                ..TaskOutput::default()
            },
            inputs: BTreeMap::new(),
        };
        let finished = BTreeMap::from([(1, done("one <GENERATED>-10")), (10, done("ten"))]);
        let text = resolve_text(task.args["text"].as_str().unwrap(), &task, &finished).unwrap();
        assert_eq!(text, "say one <GENERATED>-10 then ten");
    }

    #[test]
    fn truncation_says_what_was_cut() {
        assert_eq!(truncate_chars("abcdef", 10), "abcdef");
        assert_eq!(truncate_chars("abcdef", 2), "ab… [cut: 4 more characters]");
    }
}
