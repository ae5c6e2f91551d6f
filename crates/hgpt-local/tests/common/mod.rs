//! Helpers shared by the generation tests (captioning, visual question
//! answering): fixture files, expected outputs, edited copies.

#![allow(dead_code)]

use candle_core::{Device, Tensor};
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{Blob, InferenceOutput};
use hgpt_local::ModelFiles;
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
