//! Inference results encoded in the shapes the Python `huggingface_hub`
//! client reads (the wire reference's table).

use crate::error::ApiError;
use axum::Json;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hgpt_core::output::{Blob, Detection, InferenceOutput, sniff_mime};
use hgpt_core::task::TaskKind;
use serde_json::{Map, Value, json};

/// What one output becomes.
enum Encoded {
    Json(Value),
    Media(Blob),
}

/// Encode the outputs of a call: one per input, a list of them for a batch.
pub(crate) fn encode(
    task: TaskKind,
    outputs: Vec<InferenceOutput>,
    batch: bool,
    params: &Map<String, Value>,
) -> Result<Response, ApiError> {
    let mut values = Vec::with_capacity(outputs.len());
    for output in outputs {
        match encode_one(task, output, params)? {
            Encoded::Json(value) => values.push(value),
            // A single generated file goes back as bytes.
            Encoded::Media(blob) if !batch => return Ok(media_response(blob)),
            Encoded::Media(blob) => values.push(Value::String(STANDARD.encode(&blob.bytes))),
        }
    }
    let value = if batch || task == TaskKind::TextClassification {
        // text-classification is nested even for one input: `[[{label, score}]]`.
        Value::Array(values)
    } else {
        values.into_iter().next().unwrap_or(Value::Null)
    };
    Ok(Json(value).into_response())
}

fn media_response(blob: Blob) -> Response {
    let mime = sniff_mime(&blob.bytes)
        .map(str::to_string)
        .or(blob.mime)
        .unwrap_or_else(|| "application/octet-stream".to_string());
    ([(CONTENT_TYPE, mime)], blob.bytes).into_response()
}

fn to_value<T: serde::Serialize>(value: &T) -> Result<Value, ApiError> {
    serde_json::to_value(value)
        .map_err(|e| ApiError::internal(format!("cannot encode the result: {e}")))
}

/// `top_k` as a number, if given.
fn top_k(params: &Map<String, Value>) -> Option<u64> {
    params.get("top_k").and_then(|v| {
        v.as_u64()
            .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
    })
}

/// Box coordinates as the integers the transformers pipeline returns
/// (truncated toward zero).
fn detection(d: &Detection) -> Value {
    let int = |v: f64| v.trunc() as i64;
    json!({
        "label": d.label,
        "score": d.score,
        "box": {
            "xmin": int(d.bbox.xmin),
            "ymin": int(d.bbox.ymin),
            "xmax": int(d.bbox.xmax),
            "ymax": int(d.bbox.ymax),
        },
    })
}

fn encode_one(
    task: TaskKind,
    output: InferenceOutput,
    params: &Map<String, Value>,
) -> Result<Encoded, ApiError> {
    use TaskKind as T;
    let value = match output {
        InferenceOutput::Text(text) => {
            let key = match task {
                T::Summarization => "summary_text",
                T::Translation => "translation_text",
                _ => "generated_text",
            };
            json!([{ key: text }])
        }
        InferenceOutput::Transcription { text, chunks } => {
            let mut map = Map::new();
            map.insert("text".into(), Value::String(text));
            if let Some(chunks) = chunks {
                map.insert("chunks".into(), chunks);
            }
            Value::Object(map)
        }
        InferenceOutput::Labels(labels) => to_value(&labels)?,
        InferenceOutput::Entities(entities) => to_value(&entities)?,
        InferenceOutput::Answers(answers) => {
            // Extractive QA answers one bare object unless more were asked for.
            let listed = task != T::QuestionAnswering || top_k(params).is_some_and(|k| k > 1);
            match answers.first() {
                Some(first) if !listed => to_value(first)?,
                _ => to_value(&answers)?,
            }
        }
        InferenceOutput::Similarities(scores) => to_value(&scores)?,
        InferenceOutput::Embeddings(value) => value,
        InferenceOutput::Detections(detections) => {
            Value::Array(detections.iter().map(detection).collect())
        }
        InferenceOutput::Segments(segments) => to_value(&segments)?,
        InferenceOutput::Depth { image, predicted } => json!({
            "predicted_depth": predicted,
            "depth": image.map(|blob| STANDARD.encode(&blob.bytes)),
        }),
        InferenceOutput::Media(blob) => return Ok(Encoded::Media(blob)),
        InferenceOutput::AudioSources(sources) => to_value(&sources)?,
        InferenceOutput::Json(value) => value,
    };
    Ok(Encoded::Json(value))
}

#[cfg(test)]
mod tests {
    use super::*;
    use hgpt_core::output::{Answer, BoundingBox, ScoredLabel};

    async fn body_of(response: Response) -> Value {
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    fn answer(text: &str) -> Answer {
        Answer {
            answer: text.into(),
            score: 0.5,
            start: Some(0),
            end: Some(text.len()),
        }
    }

    #[tokio::test]
    async fn shapes_follow_the_python_client() {
        let none = Map::new();
        let labels = InferenceOutput::Labels(vec![ScoredLabel {
            label: "pos".into(),
            score: 0.75,
        }]);
        let out = encode(
            TaskKind::TextClassification,
            vec![labels.clone()],
            false,
            &none,
        );
        assert_eq!(
            body_of(out.unwrap()).await,
            json!([[{"label": "pos", "score": 0.75}]])
        );
        let out = encode(TaskKind::ImageClassification, vec![labels], false, &none);
        assert_eq!(
            body_of(out.unwrap()).await,
            json!([{"label": "pos", "score": 0.75}])
        );

        let answers = InferenceOutput::Answers(vec![answer("Paris"), answer("Rome")]);
        let out = encode(
            TaskKind::QuestionAnswering,
            vec![answers.clone()],
            false,
            &none,
        );
        assert_eq!(
            body_of(out.unwrap()).await,
            json!({"answer": "Paris", "score": 0.5, "start": 0, "end": 5})
        );
        let top2: Map<String, Value> = [("top_k".to_string(), json!(2))].into_iter().collect();
        let out = encode(TaskKind::QuestionAnswering, vec![answers], false, &top2);
        assert_eq!(body_of(out.unwrap()).await.as_array().unwrap().len(), 2);

        let boxes = InferenceOutput::Detections(vec![Detection {
            label: "dog".into(),
            score: 0.25,
            bbox: BoundingBox {
                xmin: 20.9,
                ymin: 3.2,
                xmax: 38.5,
                ymax: 11.99,
            },
        }]);
        let out = encode(TaskKind::ObjectDetection, vec![boxes], false, &none);
        assert_eq!(
            body_of(out.unwrap()).await,
            json!([{"label": "dog", "score": 0.25, "box": {"xmin": 20, "ymin": 3, "xmax": 38, "ymax": 11}}])
        );

        let text = InferenceOutput::Text("short".into());
        let out = encode(TaskKind::Summarization, vec![text], false, &none);
        assert_eq!(
            body_of(out.unwrap()).await,
            json!([{"summary_text": "short"}])
        );
    }

    #[tokio::test]
    async fn media_goes_back_as_bytes() {
        let png = b"\x89PNG\r\n\x1a\nrest".to_vec();
        let out = encode(
            TaskKind::TextToImage,
            vec![InferenceOutput::Media(Blob {
                bytes: png.clone().into(),
                mime: None,
            })],
            false,
            &Map::new(),
        )
        .unwrap();
        assert_eq!(out.headers()[CONTENT_TYPE], "image/png");
        let bytes = axum::body::to_bytes(out.into_body(), usize::MAX)
            .await
            .unwrap();
        assert_eq!(bytes, png);
    }
}
