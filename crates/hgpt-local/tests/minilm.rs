//! Parity with the Python sentence-transformers library on the real
//! all-MiniLM-L6-v2 weights (laid out by `scripts/fetch-minilm.sh`; reference
//! numbers made by `scripts/make_fixtures.py`).

use candle_core::Device;
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::InferenceOutput;
use hgpt_core::task::TaskKind;
use hgpt_local::embed::{Pooling, SentenceEmbedder};
use hgpt_local::pipeline::{self, Pipeline};
use hgpt_local::{LocalError, ModelCache};
use serde_json::{Value, json};
use std::path::PathBuf;

const MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

fn hub_dir() -> PathBuf {
    let dir = std::env::var_os("HGPT_TEST_HUB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-models/hub")
        });
    assert!(
        dir.join("models--sentence-transformers--all-MiniLM-L6-v2")
            .is_dir(),
        "the MiniLM test model is missing from {}: run `bash scripts/fetch-minilm.sh` (scripts/test does it)",
        dir.display()
    );
    dir
}

fn fixture() -> Value {
    let text = include_str!("fixtures/minilm/embeddings.json");
    serde_json::from_str(text).unwrap()
}

fn floats(value: &Value) -> Vec<f32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap() as f32)
        .collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn embedder() -> SentenceEmbedder {
    let files = ModelCache::at(hub_dir()).model(MODEL);
    SentenceEmbedder::load(&files, &Device::Cpu).unwrap()
}

#[test]
fn reads_pooling_and_normalization_from_the_model() {
    let model = embedder();
    assert_eq!(model.pooling(), Pooling::Mean);
    assert!(model.normalizes());
}

#[test]
fn embeddings_match_sentence_transformers() {
    let fixture = fixture();
    let tolerance = fixture["tolerance"].as_f64().unwrap() as f32;
    let model = embedder();
    let cases = fixture["sentences"].as_array().unwrap();
    let texts: Vec<String> = cases
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .collect();
    let normalized = model.embed(&texts, None).unwrap();
    let raw = model.embed(&texts, Some(false)).unwrap();
    for (i, case) in cases.iter().enumerate() {
        let ids: Vec<u32> = case["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            model.token_ids(&texts[i]).unwrap(),
            ids,
            "token ids of {:?}",
            texts[i]
        );
        let diff = max_diff(&normalized[i], &floats(&case["embedding"]));
        assert!(
            diff < tolerance,
            "sentence {i} ({:?}): max diff {diff}",
            texts[i]
        );
        let diff = max_diff(&raw[i], &floats(&case["raw_embedding"]));
        assert!(diff < tolerance, "raw sentence {i}: max diff {diff}");
    }
    // One at a time (no padding in the batch) gives the same vectors.
    let alone = model.embed(&texts[..1], None).unwrap();
    assert!(max_diff(&alone[0], &normalized[0]) < 1e-5);
}

#[test]
fn sentence_similarity_matches_the_pipeline() {
    let fixture = fixture();
    let case = &fixture["sentence_similarity"];
    let model = embedder();
    let args = ResolvedArgs {
        other: [
            (
                "source_sentence".to_string(),
                case["source_sentence"].clone(),
            ),
            ("sentences".to_string(), case["sentences"].clone()),
        ]
        .into_iter()
        .collect(),
        ..ResolvedArgs::default()
    };
    let InferenceOutput::Similarities(scores) =
        model.run(TaskKind::SentenceSimilarity, &args).unwrap()
    else {
        panic!("not similarities");
    };
    let expected = floats(&case["scores"]);
    assert_eq!(scores.len(), expected.len());
    for (got, want) in scores.iter().zip(&expected) {
        assert!((*got as f32 - want).abs() < 1e-4, "{got} vs {want}");
    }
}

#[test]
fn feature_extraction_shapes_follow_the_input() {
    let files = ModelCache::at(hub_dir()).model(MODEL);
    let model = pipeline::load(TaskKind::FeatureExtraction, &files, &Device::Cpu).unwrap();
    let single = ResolvedArgs {
        text: Some("hello world".into()),
        ..ResolvedArgs::default()
    };
    let InferenceOutput::Embeddings(Value::Array(vector)) =
        model.run(TaskKind::FeatureExtraction, &single).unwrap()
    else {
        panic!("not an embedding")
    };
    assert_eq!(vector.len(), 384);
    assert!(vector[0].is_number());
    let list = ResolvedArgs {
        other: [("inputs".to_string(), json!(["a", "b", "c"]))]
            .into_iter()
            .collect(),
        ..ResolvedArgs::default()
    };
    let InferenceOutput::Embeddings(Value::Array(rows)) =
        model.run(TaskKind::FeatureExtraction, &list).unwrap()
    else {
        panic!("not embeddings")
    };
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].as_array().unwrap().len(), 384);
}

#[test]
fn bad_inputs_are_named() {
    let model = embedder();
    let empty = ResolvedArgs {
        text: Some("   ".into()),
        ..ResolvedArgs::default()
    };
    let err = model.run(TaskKind::FeatureExtraction, &empty).unwrap_err();
    assert!(matches!(err, LocalError::BadInput { .. }), "{err}");
    let no_sentences = ResolvedArgs {
        text: Some("source".into()),
        ..ResolvedArgs::default()
    };
    let err = model
        .run(TaskKind::SentenceSimilarity, &no_sentences)
        .unwrap_err();
    assert!(err.to_string().contains("sentences"), "{err}");
}

#[test]
fn a_model_missing_from_the_cache_says_what_to_fetch() {
    let files = ModelCache::at(hub_dir()).model("nobody/absent-model");
    let err = pipeline::load(TaskKind::FeatureExtraction, &files, &Device::Cpu)
        .err()
        .unwrap();
    assert!(
        err.to_string()
            .contains("hgpt models pull nobody/absent-model"),
        "{err}"
    );
}
