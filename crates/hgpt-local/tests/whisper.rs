//! Whisper speech recognition against the transformers 4.57
//! automatic-speech-recognition pipeline on a tiny multilingual checkpoint
//! (`tests/fixtures/whisper-tiny-random`, written by
//! `scripts/make_fixtures.py`; 3 s windows): log-mel features, language
//! detection, beam search and greedy token ids, forced languages and the
//! translate task, timestamps, chunked long audio, and refused inputs.

mod common;

use candle_core::Device;
use common::{edited_copy, fixtures, floats, ids, max_diff};
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{Blob, InferenceOutput};
use hgpt_core::task::TaskKind;
use hgpt_local::audio::decode;
use hgpt_local::pipeline::Pipeline;
use hgpt_local::whisper::{LogMel, WhisperPipeline};
use hgpt_local::{LocalError, ModelFiles};
use serde_json::{Value, json};
use std::sync::OnceLock;

const NAME: &str = "whisper-tiny-random";
const ASR: TaskKind = TaskKind::AutomaticSpeechRecognition;

fn expected() -> &'static Value {
    static EXPECTED: OnceLock<Value> = OnceLock::new();
    EXPECTED.get_or_init(|| {
        let text = std::fs::read_to_string(fixtures().join(NAME).join("expected.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

fn files() -> ModelFiles {
    ModelFiles::from_dir(NAME, fixtures().join(NAME))
}

fn model() -> &'static WhisperPipeline {
    static MODEL: OnceLock<WhisperPipeline> = OnceLock::new();
    MODEL.get_or_init(|| WhisperPipeline::load(&files(), &Device::Cpu).unwrap())
}

fn clip_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("wav2vec2-ctc").join(name)).unwrap()
}

fn samples(name: &str) -> Vec<f32> {
    decode(&clip_bytes(name), 60).unwrap().samples
}

/// A 16 kHz mono 16-bit WAV file of samples read from 16-bit files (exact).
fn wav_bytes(samples: &[f32]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&16_000u32.to_le_bytes());
    out.extend_from_slice(&32_000u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for &s in samples {
        out.extend_from_slice(&((s * 32768.0).round() as i16).to_le_bytes());
    }
    out
}

fn args(audio: Vec<u8>, other: Value) -> ResolvedArgs {
    ResolvedArgs {
        audio: Some(Blob::sniffed(audio)),
        other: serde_json::from_value(other).unwrap(),
        ..ResolvedArgs::default()
    }
}

/// The pipeline's output as the fixture records it.
fn run(pipeline: &dyn Pipeline, audio: Vec<u8>, other: Value) -> Value {
    match pipeline.run(ASR, &args(audio, other)).unwrap() {
        InferenceOutput::Transcription { text, chunks } => match chunks {
            Some(chunks) => json!({"text": text, "chunks": chunks}),
            None => json!({"text": text}),
        },
        other => panic!("not a transcription: {other:?}"),
    }
}

#[test]
fn features_match_the_feature_extractor() {
    let model = model();
    for case in expected()["cases"].as_array().unwrap() {
        let Some(reference) = case.get("input_features") else {
            continue;
        };
        // The first 100 frames of each mel bin.
        let features = model.input_features(&samples(case["clip"].as_str().unwrap()));
        let frames = features.len() / 80;
        let ours: Vec<f32> = (0..80)
            .flat_map(|m| features[m * frames..m * frames + 100].to_vec())
            .collect();
        let diff = max_diff(&ours, &floats(reference));
        assert!(diff < 1e-4, "features off by {diff}");
    }
    // The real 30 s extractors (80 and 128 mel bins): the first 70 frames.
    for real in expected()["real_extractors"].as_array().unwrap() {
        let mels = real["feature_size"].as_u64().unwrap() as usize;
        let extractor = LogMel::new(mels, 16_000, 160, 30, 400).unwrap();
        let frames = extractor.frames();
        assert_eq!(frames as u64, real["frames"].as_u64().unwrap());
        let features = extractor.features(&samples(real["clip"].as_str().unwrap()));
        let ours: Vec<f32> = (0..mels)
            .flat_map(|m| features[m * frames..m * frames + 70].to_vec())
            .collect();
        let diff = max_diff(&ours, &floats(&real["input_features"]));
        assert!(diff < 1e-4, "{mels} mel bins: features off by {diff}");
    }
}

#[test]
fn token_ids_and_languages_match_generate() {
    let model = model();
    for case in expected()["cases"].as_array().unwrap() {
        let clip = case["clip"].as_str().unwrap();
        let samples = samples(clip);
        assert_eq!(
            u64::from(model.detect_language(&samples).unwrap()),
            case["language_id"].as_u64().unwrap(),
            "{clip}"
        );
        // The pipeline's default: 5 beams.
        let options = model.default_options();
        assert_eq!(options.generation.num_beams, 5);
        assert_eq!(
            model.generate_ids(&samples, &options).unwrap(),
            ids(&case["default_ids"]),
            "{clip} beam search"
        );
        let mut greedy = model.default_options();
        greedy.generation.num_beams = 1;
        assert_eq!(
            model.generate_ids(&samples, &greedy).unwrap(),
            ids(&case["greedy_ids"]),
            "{clip} greedy"
        );
    }
}

#[test]
fn transcripts_match_the_pipeline() {
    let model = model();
    // Loaded through the family table too, as the backend loads it.
    let registered = hgpt_local::pipeline::load(ASR, &files(), &Device::Cpu).unwrap();
    for case in expected()["cases"].as_array().unwrap() {
        let clip = case["clip"].as_str().unwrap();
        let audio = clip_bytes(clip);
        let greedy = json!({"num_beams": 1});
        let runs = [
            ("pipeline", json!({})),
            ("greedy_pipeline", json!({"generate_kwargs": greedy})),
            (
                "beam3_pipeline",
                json!({"generate_kwargs": {"num_beams": 3}}),
            ),
            (
                "french_pipeline",
                json!({"generate_kwargs": {"language": "french", "num_beams": 1}}),
            ),
            (
                "translate_pipeline",
                json!({"generation_parameters": {"task": "translate", "language": "de", "num_beams": 1}}),
            ),
            (
                "timestamps_pipeline",
                json!({"return_timestamps": true, "generate_kwargs": greedy}),
            ),
            (
                "timestamps_beam_pipeline",
                json!({"return_timestamps": true}),
            ),
        ];
        for (key, other) in runs {
            assert_eq!(
                run(model, audio.clone(), other.clone()),
                case[key],
                "{clip} {key}"
            );
        }
        assert_eq!(
            run(registered.as_ref(), audio, json!({})),
            case["pipeline"],
            "{clip} registered"
        );
    }
}

#[test]
fn long_audio_is_transcribed_in_chunks_as_the_pipeline_does() {
    let model = model();
    let chunked = &expected()["chunked"];
    let long: Vec<f32> = chunked["clips"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| samples(c.as_str().unwrap()))
        .collect();
    let audio = wav_bytes(&long);
    let explicit = json!({"chunk_length_s": chunked["chunk_length_s"]});
    assert_eq!(
        run(model, audio.clone(), explicit.clone()),
        chunked["pipeline"]
    );
    // Longer than one window: chunked by the window's length unasked.
    assert_eq!(run(model, audio.clone(), json!({})), chunked["pipeline"]);
    assert_eq!(
        run(
            model,
            audio.clone(),
            json!({"generate_kwargs": {"num_beams": 1}})
        ),
        chunked["greedy_pipeline"]
    );
    assert_eq!(
        run(
            model,
            audio,
            json!({"return_timestamps": true, "generate_kwargs": {"num_beams": 1}})
        ),
        chunked["timestamps_pipeline"]
    );
}

fn run_error(other: Value, audio: Vec<u8>) -> LocalError {
    model().run(ASR, &args(audio, other)).unwrap_err()
}

#[test]
fn bad_requests_are_refused_with_their_reason() {
    let clip = clip_bytes("burst.wav");
    let bad_input = |err: &LocalError, needle: &str| {
        assert!(
            matches!(err, LocalError::BadInput { message, .. } if message.contains(needle)),
            "{err}"
        );
    };
    bad_input(&run_error(json!({}), Vec::new()), "audio");
    bad_input(
        &run_error(json!({}), b"certainly not audio".to_vec()),
        "audio",
    );
    bad_input(
        &run_error(json!({"language": "klingon"}), clip.clone()),
        "klingon",
    );
    bad_input(
        &run_error(
            json!({"generate_kwargs": {"task": "summarize"}}),
            clip.clone(),
        ),
        "summarize",
    );
    bad_input(
        &run_error(
            json!({"generate_kwargs": {"temperature": 0.5}}),
            clip.clone(),
        ),
        "temperature",
    );
    bad_input(
        &run_error(
            json!({"generate_kwargs": {"max_new_tokens": 100}}),
            clip.clone(),
        ),
        "positions",
    );
    bad_input(
        &run_error(
            json!({"chunk_length_s": 1, "stride_length_s": 0.5}),
            clip.clone(),
        ),
        "stride",
    );
    bad_input(
        &run_error(
            json!({"chunk_length_s": 1e300, "stride_length_s": [1e299, 1e299]}),
            clip.clone(),
        ),
        "chunk_length_s",
    );
    assert!(matches!(
        run_error(json!({"return_timestamps": "word"}), clip.clone()),
        LocalError::Unsupported(_)
    ));
    // An empty WAV file (a header, no samples).
    bad_input(&run_error(json!({}), wav_bytes(&[])), "");
}

#[test]
fn bad_checkpoints_are_refused_at_load() {
    let load_error = |edit: &dyn Fn(&mut Value), needle: &str| {
        let (_dir, files) = edited_copy(NAME, |dir| common::edit_config(dir, edit));
        let err = WhisperPipeline::load(&files, &Device::Cpu).err().unwrap();
        assert!(
            matches!(&err, LocalError::Load { message, .. } if message.contains(needle)),
            "{err}"
        );
    };
    load_error(&|c| c["d_model"] = json!(30), "d_model");
    load_error(&|c| c["num_mel_bins"] = json!(128), "mel bins");
    load_error(&|c| c["max_source_positions"] = json!(1500), "frames");
    load_error(&|c| c["decoder_layers"] = json!(0), "positive");
    load_error(&|c| c["vocab_size"] = json!(100), "vocabulary");
}

#[test]
fn english_only_models_take_no_language() {
    let english = &expected()["english_only"];
    let (_dir, files) = edited_copy(NAME, |dir| {
        std::fs::write(
            dir.join("generation_config.json"),
            english["generation_config"].to_string(),
        )
        .unwrap();
    });
    let model = WhisperPipeline::load(&files, &Device::Cpu).unwrap();
    let audio = clip_bytes(english["clip"].as_str().unwrap());
    assert_eq!(run(&model, audio.clone(), json!({})), english["pipeline"]);
    assert_eq!(
        run(&model, audio.clone(), json!({"return_timestamps": true})),
        english["timestamps_pipeline"]
    );
    let err = model
        .run(ASR, &args(audio, json!({"language": "en"})))
        .unwrap_err();
    assert!(
        matches!(&err, LocalError::BadInput { message, .. } if message.contains("English-only")),
        "{err}"
    );
    assert!(model.detect_language(&samples("tones.wav")).is_err());
}
