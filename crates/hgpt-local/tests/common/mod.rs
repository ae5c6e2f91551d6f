//! Helpers shared by the generation tests (captioning, visual question
//! answering): fixture files, expected outputs, edited copies.

#![allow(dead_code)]

use candle_core::{Device, Tensor};
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{Blob, InferenceOutput};
use hgpt_local::ModelFiles;
use hgpt_local::generate::{EarlyStopping, GenerationConfig};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn model_files(name: &str) -> ModelFiles {
    ModelFiles::from_dir(&format!("hgpt-fixtures/{name}"), fixtures().join(name))
}

pub fn cases(name: &str) -> Vec<Value> {
    let path = fixtures().join(name).join("expected.json");
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let cases = expected["cases"].as_array().unwrap().clone();
    assert!(!cases.is_empty());
    cases
}

pub fn image_bytes(case: &Value) -> Vec<u8> {
    std::fs::read(fixtures().join(case["image"].as_str().unwrap())).unwrap()
}

pub fn floats(value: &Value) -> Vec<f32> {
    match value {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        v => vec![v.as_f64().unwrap() as f32],
    }
}

pub fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

pub fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

pub fn args(image: Vec<u8>, other: Value) -> ResolvedArgs {
    ResolvedArgs {
        image: Some(Blob::sniffed(image)),
        other: serde_json::from_value(other).unwrap(),
        ..ResolvedArgs::default()
    }
}

pub fn text_of(output: InferenceOutput) -> String {
    match output {
        InferenceOutput::Text(text) => text,
        other => panic!("not text: {other:?}"),
    }
}

/// A copy of a fixture folder, with `edit` applied, in a temporary folder.
pub fn edited_copy(name: &str, edit: impl FnOnce(&Path)) -> (tempfile::TempDir, ModelFiles) {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    edit(dir.path());
    let files = ModelFiles::from_dir("org/edited", dir.path());
    (dir, files)
}

/// `[1, 3, side, side]` pixel values from a fixture case.
pub fn pixel_tensor(case: &Value, side: usize) -> Tensor {
    Tensor::from_vec(
        floats(&case["pixel_values"]),
        (1, 3, side, side),
        &Device::Cpu,
    )
    .unwrap()
}

/// A tensor's values, flattened.
pub fn values(tensor: &Tensor) -> Vec<f32> {
    tensor.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

pub fn edit_config(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(path, config.to_string()).unwrap();
}

/// `base` with a fixture's beam search settings (`num_beams`,
/// `early_stopping`, `length_penalty`) applied.
pub fn beam_config(base: &GenerationConfig, settings: &Value) -> GenerationConfig {
    let mut config = base.clone();
    config.num_beams = settings["num_beams"].as_u64().unwrap() as usize;
    config.early_stopping = match &settings["early_stopping"] {
        Value::Null | Value::Bool(false) => EarlyStopping::Heuristic,
        Value::Bool(true) => EarlyStopping::Done,
        Value::String(s) if s == "never" => EarlyStopping::Never,
        other => panic!("early_stopping {other}"),
    };
    if let Some(penalty) = settings["length_penalty"].as_f64() {
        config.length_penalty = penalty as f32;
    }
    config
}

/// Checks generation under each of a case's `beam_search` settings with
/// `generate`, and returns how many runs differ from greedy decoding.
pub fn check_beams(
    case: &Value,
    base: &GenerationConfig,
    what: &str,
    generate: impl Fn(&GenerationConfig) -> Vec<u32>,
) -> usize {
    let greedy = ids(&case["generated_ids"]);
    let mut differ = 0;
    for beam in case["beam_search"].as_array().unwrap() {
        let want = ids(&beam["generated_ids"]);
        let got = generate(&beam_config(base, &beam["settings"]));
        assert_eq!(got, want, "{what} with {}", beam["settings"]);
        differ += usize::from(want != greedy);
    }
    differ
}
