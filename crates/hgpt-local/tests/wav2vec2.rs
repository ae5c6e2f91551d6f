//! wav2vec2 speech recognition and audio classification against the
//! transformers pipelines on tiny checkpoints (`tests/fixtures/wav2vec2-*`,
//! written by `scripts/make_fixtures.py`): a base-style model (group norm,
//! post-norm layers), a large-style one (layer norms, pre-norm layers, the
//! old weight-norm names) and a classifier.

mod common;

use candle_core::Device;
use common::{fixtures, floats};
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{Blob, InferenceOutput};
use hgpt_core::task::TaskKind;
use hgpt_local::ModelFiles;
use hgpt_local::audio::decode;
use hgpt_local::pipeline::Pipeline;
use hgpt_local::wav2vec2::Wav2Vec2Pipeline;
use serde_json::Value;

fn expected(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn files(name: &str) -> ModelFiles {
    ModelFiles::from_dir(name, fixtures().join(name))
}

fn clip(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("wav2vec2-ctc").join(name)).unwrap()
}

fn audio_args(bytes: Vec<u8>) -> ResolvedArgs {
    ResolvedArgs {
        audio: Some(Blob::sniffed(bytes)),
        ..ResolvedArgs::default()
    }
}

#[test]
fn ctc_transcripts_match_the_pipeline() {
    for name in ["wav2vec2-ctc", "wav2vec2-ctc-stable"] {
        let model = Wav2Vec2Pipeline::load(
            TaskKind::AutomaticSpeechRecognition,
            &files(name),
            &Device::Cpu,
        )
        .unwrap();
        // Loaded through the family table too, as the backend loads it.
        let registered = hgpt_local::pipeline::load(
            TaskKind::AutomaticSpeechRecognition,
            &files(name),
            &Device::Cpu,
        )
        .unwrap();
        for case in expected(name)["cases"].as_array().unwrap() {
            let clip_name = case["clip"].as_str().unwrap();
            let samples = decode(&clip(clip_name), 60).unwrap().samples;
            let logits = model.ctc_logits(&samples).unwrap();
            assert_eq!(
                logits.len() as u64,
                case["frames"].as_u64().unwrap(),
                "{name} {clip_name}"
            );
            if let Some(reference) = case.get("logits") {
                let reference = reference.as_array().unwrap();
                let mut worst = 0f32;
                for (ours, theirs) in logits.iter().zip(reference) {
                    for (a, b) in ours.iter().zip(floats(theirs)) {
                        worst = worst.max((a - b).abs());
                    }
                }
                assert!(worst < 1e-4, "{name} {clip_name}: logits off by {worst}");
            }
            let ids: Vec<u64> = logits
                .iter()
                .map(|row| {
                    row.iter()
                        .enumerate()
                        .max_by(|a, b| a.1.total_cmp(b.1))
                        .unwrap()
                        .0 as u64
                })
                .collect();
            let want: Vec<u64> = case["predicted_ids"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert_eq!(ids, want, "{name} {clip_name}: frame ids");
            let text = case["pipeline"]["text"].as_str().unwrap();
            assert_eq!(
                model.transcribe(&samples).unwrap(),
                text,
                "{name} {clip_name}"
            );
            let output = registered
                .run(
                    TaskKind::AutomaticSpeechRecognition,
                    &audio_args(clip(clip_name)),
                )
                .unwrap();
            assert_eq!(
                output,
                InferenceOutput::Transcription {
                    text: text.to_string(),
                    chunks: None
                }
            );
        }
    }
}

#[test]
fn audio_classification_matches_the_pipeline() {
    let name = "wav2vec2-audiocls";
    let model =
        hgpt_local::pipeline::load(TaskKind::AudioClassification, &files(name), &Device::Cpu)
            .unwrap();
    let direct =
        Wav2Vec2Pipeline::load(TaskKind::AudioClassification, &files(name), &Device::Cpu).unwrap();
    for case in expected(name)["cases"].as_array().unwrap() {
        let clip_name = case["clip"].as_str().unwrap();
        let samples = decode(&clip(clip_name), 60).unwrap().samples;
        let logits = direct.class_logits(&samples).unwrap();
        for (a, b) in logits.iter().zip(floats(&case["logits"])) {
            assert!((a - b).abs() < 1e-4, "{clip_name}: {a} vs {b}");
        }
        let mut args = audio_args(clip(clip_name));
        args.other.insert("top_k".into(), 4.into());
        let InferenceOutput::Labels(labels) =
            model.run(TaskKind::AudioClassification, &args).unwrap()
        else {
            panic!("labels expected")
        };
        let want = case["pipeline"].as_array().unwrap();
        assert_eq!(labels.len(), want.len());
        for (ours, theirs) in labels.iter().zip(want) {
            assert_eq!(ours.label, theirs["label"].as_str().unwrap(), "{clip_name}");
            assert!((ours.score - theirs["score"].as_f64().unwrap()).abs() < 1e-5);
        }
    }
}

#[test]
fn bad_audio_is_refused_with_a_reason() {
    let model = hgpt_local::pipeline::load(
        TaskKind::AutomaticSpeechRecognition,
        &files("wav2vec2-ctc"),
        &Device::Cpu,
    )
    .unwrap();
    let task = TaskKind::AutomaticSpeechRecognition;
    let err = model.run(task, &ResolvedArgs::default()).unwrap_err();
    assert!(
        err.to_string().contains("missing argument `audio`"),
        "{err}"
    );
    let err = model
        .run(task, &audio_args(b"<html>no</html>".to_vec()))
        .unwrap_err();
    assert!(err.to_string().contains("unknown format"), "{err}");
    // Shorter than the feature encoder's first window.
    let tiny = hgpt_local::audio::encode_wav(&[0.1; 8], 16_000).unwrap();
    let err = model.run(task, &audio_args(tiny)).unwrap_err();
    assert!(err.to_string().contains("too short"), "{err}");
    // Absurd chunk lengths are refused before they become sample counts.
    let mut args = audio_args(clip("chirp.wav"));
    args.other
        .insert("chunk_length_s".into(), serde_json::json!(1e300));
    args.other
        .insert("stride_length_s".into(), serde_json::json!([1e299, 1e299]));
    let err = model.run(task, &args).unwrap_err();
    assert!(err.to_string().contains("chunk_length_s"), "{err}");
}

#[test]
fn long_audio_is_transcribed_in_chunks_as_the_pipeline_does() {
    for name in ["wav2vec2-ctc", "wav2vec2-ctc-stable"] {
        let expected = expected(name);
        let chunked = &expected["chunked"];
        let long: Vec<f32> = chunked["clips"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| decode(&clip(c.as_str().unwrap()), 60).unwrap().samples)
            .collect();
        let model = Wav2Vec2Pipeline::load(
            TaskKind::AutomaticSpeechRecognition,
            &files(name),
            &Device::Cpu,
        )
        .unwrap();
        let sixth = 1.0 / 6.0;
        assert_eq!(
            model
                .transcribe_chunked(&long, 1.0, (sixth, sixth))
                .unwrap(),
            chunked["pipeline"]["text"].as_str().unwrap(),
            "{name}"
        );
        assert_eq!(
            model.transcribe_chunked(&long, 1.0, (0.3, 0.1)).unwrap(),
            chunked["pipeline_stride"]["text"].as_str().unwrap(),
            "{name}: uneven strides"
        );
        // Through the pipeline's arguments.
        let mut args = audio_args(hgpt_local::audio::encode_wav(&long, 16_000).unwrap());
        args.other.insert("chunk_length_s".into(), 1.0.into());
        let output = model
            .run(TaskKind::AutomaticSpeechRecognition, &args)
            .unwrap();
        assert_eq!(
            output,
            InferenceOutput::Transcription {
                text: chunked["pipeline"]["text"].as_str().unwrap().to_string(),
                chunks: None
            },
            "{name}"
        );
        assert!(
            model.transcribe_chunked(&long, 0.2, (0.1, 0.1)).is_err(),
            "strides as long as the chunk"
        );
    }
}

/// The output's text and chunks against the pipeline's `{text, chunks}`:
/// chunk texts equal, timestamps equal to f64 rounding.
fn assert_same_timed(output: &InferenceOutput, reference: &Value, what: &str) {
    let InferenceOutput::Transcription { text, chunks } = output else {
        panic!("{what}: not a transcription: {output:?}");
    };
    assert_eq!(text, reference["text"].as_str().unwrap(), "{what}");
    let ours = chunks.as_ref().and_then(Value::as_array).unwrap();
    let theirs = reference["chunks"].as_array().unwrap();
    assert_eq!(ours.len(), theirs.len(), "{what}: {ours:?}");
    assert!(!theirs.is_empty(), "{what}: the reference has chunks");
    for (a, b) in ours.iter().zip(theirs) {
        assert_eq!(a["text"], b["text"], "{what}");
        for i in 0..2 {
            let (x, y) = (
                a["timestamp"][i].as_f64().unwrap(),
                b["timestamp"][i].as_f64().unwrap(),
            );
            assert!((x - y).abs() < 1e-12, "{what}: {a} vs {b}");
        }
    }
}

#[test]
fn character_and_word_timestamps_match_the_pipeline() {
    for name in ["wav2vec2-ctc", "wav2vec2-ctc-stable"] {
        let expected = expected(name);
        let model = Wav2Vec2Pipeline::load(
            TaskKind::AutomaticSpeechRecognition,
            &files(name),
            &Device::Cpu,
        )
        .unwrap();
        let asr = TaskKind::AutomaticSpeechRecognition;
        for case in expected["cases"].as_array().unwrap() {
            let clip_name = case["clip"].as_str().unwrap();
            for (level, key) in [("char", "pipeline_chars"), ("word", "pipeline_words")] {
                let mut args = audio_args(clip(clip_name));
                args.other.insert("return_timestamps".into(), level.into());
                let output = model.run(asr, &args).unwrap();
                assert_same_timed(&output, &case[key], &format!("{name} {clip_name} {level}"));
            }
        }
        // Chunked: offsets count the frames the chunks keep.
        let chunked = &expected["chunked"];
        let long: Vec<f32> = chunked["clips"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|c| decode(&clip(c.as_str().unwrap()), 60).unwrap().samples)
            .collect();
        let mut args = audio_args(hgpt_local::audio::encode_wav(&long, 16_000).unwrap());
        args.other.insert("chunk_length_s".into(), 1.0.into());
        args.other.insert("return_timestamps".into(), "word".into());
        let output = model.run(asr, &args).unwrap();
        assert_same_timed(
            &output,
            &chunked["pipeline_words"],
            &format!("{name} chunked"),
        );
        // `true` reads as words; anything else is refused by name.
        args.other.insert("return_timestamps".into(), true.into());
        assert_eq!(model.run(asr, &args).unwrap(), output);
        args.other
            .insert("return_timestamps".into(), "sentence".into());
        let err = model.run(asr, &args).unwrap_err();
        assert!(err.to_string().contains("return_timestamps"), "{err}");
    }
}
