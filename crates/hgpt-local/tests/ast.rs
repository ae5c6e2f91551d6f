//! The Audio Spectrogram Transformer against transformers 4.57 on a tiny
//! checkpoint (`tests/fixtures/ast-audiocls`): the feature extractor's
//! log-mel filter banks, the logits and the audio-classification pipeline.

mod common;

use candle_core::Device;
use common::{fixtures, floats};
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{Blob, InferenceOutput};
use hgpt_core::task::TaskKind;
use hgpt_local::ModelFiles;
use hgpt_local::ast::AstClassifier;
use hgpt_local::audio::decode;
use serde_json::Value;

#[test]
fn filter_banks_logits_and_labels_match_transformers() {
    let folder = fixtures().join("ast-audiocls");
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("expected.json")).unwrap())
            .unwrap();
    let files = ModelFiles::from_dir("ast-audiocls", folder);
    let direct = AstClassifier::load(&files, &Device::Cpu).unwrap();
    let registered =
        hgpt_local::pipeline::load(TaskKind::AudioClassification, &files, &Device::Cpu).unwrap();
    for case in expected["cases"].as_array().unwrap() {
        let clip = case["clip"].as_str().unwrap();
        let bytes = std::fs::read(fixtures().join("wav2vec2-ctc").join(clip)).unwrap();
        let samples = decode(&bytes, 60).unwrap().samples;
        let input = direct.input_values(&samples);
        let want = case["input_values"].as_array().unwrap();
        assert_eq!(input.len(), want.len(), "{clip}: frames");
        let mut worst = 0f32;
        for (ours, theirs) in input.iter().zip(want) {
            for (a, b) in ours.iter().zip(floats(theirs)) {
                worst = worst.max((a - b).abs());
            }
        }
        assert!(worst < 1e-4, "{clip}: filter banks off by {worst}");
        let logits = direct.logits(&samples).unwrap();
        for (a, b) in logits.iter().zip(floats(&case["logits"])) {
            assert!((a - b).abs() < 1e-4, "{clip}: logit {a} vs {b}");
        }
        let args = ResolvedArgs {
            audio: Some(Blob::sniffed(bytes)),
            ..ResolvedArgs::default()
        };
        let InferenceOutput::Labels(labels) = registered
            .run(TaskKind::AudioClassification, &args)
            .unwrap()
        else {
            panic!("labels expected")
        };
        let want = case["pipeline"].as_array().unwrap();
        assert_eq!(labels.len(), want.len(), "{clip}");
        for (ours, theirs) in labels.iter().zip(want) {
            assert_eq!(ours.label, theirs["label"].as_str().unwrap(), "{clip}");
            assert!((ours.score - theirs["score"].as_f64().unwrap()).abs() < 1e-5);
        }
    }
}

#[test]
fn audio_too_short_for_one_frame_is_refused() {
    let files = ModelFiles::from_dir("ast-audiocls", fixtures().join("ast-audiocls"));
    let model =
        hgpt_local::pipeline::load(TaskKind::AudioClassification, &files, &Device::Cpu).unwrap();
    let wav = hgpt_local::audio::encode_wav(&[0.2; 100], 16_000).unwrap();
    let args = ResolvedArgs {
        audio: Some(Blob::sniffed(wav)),
        ..ResolvedArgs::default()
    };
    let err = model.run(TaskKind::AudioClassification, &args).unwrap_err();
    assert!(
        err.to_string().contains("shorter than one 25 ms frame"),
        "{err}"
    );
}
