//! VITS text-to-speech against transformers 4.57 on tiny checkpoints with
//! mms-tts-eng's character vocabulary (`tests/fixtures/vits-tts`: stochastic
//! duration predictor, blanks between characters; `vits-tts-plain`: plain
//! duration predictor, no blanks, two speakers, weight norms under the old
//! `weight_g` / `weight_v` names). The references were taken with both
//! noise scales at 0, so the waveforms are exact.

mod common;

use candle_core::Device;
use common::{cases, edited_copy, fixtures, floats, ids, max_diff, model_files};
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::InferenceOutput;
use hgpt_core::task::TaskKind;
use hgpt_local::LocalError;
use hgpt_local::audio::decode;
use hgpt_local::vits::{SpeechParams, VitsPipeline};
use serde_json::{Value, json};

const FIXTURES: [&str; 2] = ["vits-tts", "vits-tts-plain"];

fn expected(name: &str) -> Value {
    let path = fixtures().join(name).join("expected.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn exact_params(model: &VitsPipeline, case: &Value) -> SpeechParams {
    SpeechParams {
        speaking_rate: case["speaking_rate"].as_f64().unwrap(),
        noise_scale: 0.0,
        noise_scale_duration: 0.0,
        speaker_id: case["speaker_id"].as_u64().map(|s| s as usize),
        ..model.default_params()
    }
}

fn text_args(text: &str, other: Value) -> ResolvedArgs {
    ResolvedArgs {
        text: Some(text.to_string()),
        other: serde_json::from_value(other).unwrap(),
        ..ResolvedArgs::default()
    }
}

fn wav_of(output: InferenceOutput) -> Vec<u8> {
    match output {
        InferenceOutput::Media(blob) => {
            assert_eq!(blob.mime.as_deref(), Some("audio/wav"));
            blob.bytes.to_vec()
        }
        other => panic!("not media: {other:?}"),
    }
}

#[test]
fn token_ids_durations_and_waveforms_match_transformers() {
    for name in FIXTURES {
        let model = VitsPipeline::load(&model_files(name), &Device::Cpu).unwrap();
        for case in cases(name) {
            let text = case["text"].as_str().unwrap();
            assert_eq!(
                model.tokenize(text).unwrap(),
                ids(&case["input_ids"]),
                "{name}: {text}"
            );
            let speech = model
                .synthesize(text, &exact_params(&model, &case))
                .unwrap();
            let durations: Vec<u32> = ids(&case["durations"]);
            assert_eq!(speech.durations, durations, "{name}: {text}: {case}");
            assert_eq!(speech.sampling_rate, 16_000);
            let want = floats(&case["waveform"]);
            assert_eq!(
                speech.waveform.len(),
                case["samples"].as_u64().unwrap() as usize
            );
            let diff = max_diff(&speech.waveform, &want);
            assert!(
                diff < 1e-4,
                "{name}: {text} at rate {}: off by {diff}",
                case["speaking_rate"]
            );
        }
    }
}

#[test]
fn the_tokenizer_matches_vits_tokenizer() {
    for name in FIXTURES {
        let model = VitsPipeline::load(&model_files(name), &Device::Cpu).unwrap();
        for case in expected(name)["tokenizer"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let want = ids(&case["input_ids"]);
            match model.tokenize(text) {
                Ok(got) => assert_eq!(got, want, "{name}: {text:?}"),
                Err(err) => {
                    // VitsTokenizer gives no ids; hgpt says why.
                    assert!(want.is_empty(), "{name}: {text:?}: {err}");
                    assert!(
                        matches!(&err, LocalError::BadInput { message, .. }
                            if message.contains("no characters the model can speak")),
                        "{err}"
                    );
                }
            }
        }
    }
}

#[test]
fn the_pipeline_answers_with_a_16_bit_mono_wav() {
    let name = "vits-tts";
    let files = model_files(name);
    let registered =
        hgpt_local::pipeline::load(TaskKind::TextToSpeech, &files, &Device::Cpu).unwrap();
    assert_eq!(registered.tasks(), &[TaskKind::TextToSpeech]);
    for case in cases(name) {
        let text = case["text"].as_str().unwrap();
        let args = text_args(
            text,
            json!({"noise_scale": 0, "noise_scale_duration": 0.0,
                   "forward_params": {"speaking_rate": case["speaking_rate"]}}),
        );
        let wav = wav_of(registered.run(TaskKind::TextToSpeech, &args).unwrap());
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(&wav[8..12], b"WAVE");
        assert_eq!(u16::from_le_bytes([wav[22], wav[23]]), 1, "mono");
        assert_eq!(
            u32::from_le_bytes([wav[24], wav[25], wav[26], wav[27]]),
            16_000
        );
        assert_eq!(u16::from_le_bytes([wav[34], wav[35]]), 16, "16-bit");
        let audio = decode(&wav, 60).unwrap();
        let want = floats(&case["waveform"]);
        assert_eq!(audio.samples.len(), want.len());
        let diff = max_diff(&audio.samples, &want);
        assert!(diff < 1e-4 + 1.0 / 32767.0, "{text}: off by {diff}");
    }
}

#[test]
fn speakers_are_chosen_by_speaker_id() {
    let name = "vits-tts-plain";
    let registered =
        hgpt_local::pipeline::load(TaskKind::TextToSpeech, &model_files(name), &Device::Cpu)
            .unwrap();
    let case = &cases(name)[1];
    assert_eq!(case["speaker_id"], 1);
    let args = text_args(
        case["text"].as_str().unwrap(),
        json!({"noise_scale": 0, "noise_scale_duration": 0, "speaker_id": 1}),
    );
    let audio = decode(
        &wav_of(registered.run(TaskKind::TextToSpeech, &args).unwrap()),
        60,
    )
    .unwrap();
    let diff = max_diff(&audio.samples, &floats(&case["waveform"]));
    assert!(diff < 1e-4 + 1.0 / 32767.0, "off by {diff}");
    let args = text_args("hello", json!({"speaker_id": 2}));
    let err = registered.run(TaskKind::TextToSpeech, &args).unwrap_err();
    assert!(
        err.to_string().contains("speaker_id must be in 0-1"),
        "{err}"
    );
}

#[test]
fn noise_is_seeded_per_request() {
    let files = model_files("vits-tts");
    let model = hgpt_local::pipeline::load(TaskKind::TextToSpeech, &files, &Device::Cpu).unwrap();
    let run = |other: Value| {
        wav_of(
            model
                .run(TaskKind::TextToSpeech, &text_args("Hello, world!", other))
                .unwrap(),
        )
    };
    // The config's noise scales (0.667, 0.8) with the default seed.
    let first = run(json!({}));
    assert_eq!(first, run(json!({})));
    assert_eq!(first, run(json!({"seed": 0})));
    assert_ne!(first, run(json!({"seed": 1})));
    assert_ne!(
        first,
        run(json!({"noise_scale": 0, "noise_scale_duration": 0}))
    );
}

#[test]
fn bad_requests_are_named() {
    let model = hgpt_local::pipeline::load(
        TaskKind::TextToSpeech,
        &model_files("vits-tts"),
        &Device::Cpu,
    )
    .unwrap();
    let message = |args: ResolvedArgs| match model.run(TaskKind::TextToSpeech, &args) {
        Ok(_) => panic!("{:?} {:?} was accepted", args.text, args.other),
        Err(err) => err.to_string(),
    };
    for text in ["", "   ", "?!...", "日本語"] {
        let err = message(text_args(text, json!({})));
        assert!(
            err.contains("no characters the model can speak"),
            "{text:?}: {err}"
        );
    }
    assert!(message(ResolvedArgs::default()).contains("missing argument `text`"));
    let err = message(text_args("hello", json!({"speaking_rate": 0})));
    assert!(
        err.contains("speaking_rate must be a positive number"),
        "{err}"
    );
    let err = message(text_args("hello", json!({"noise_scale": -1})));
    assert!(
        err.contains("noise_scale must be a non-negative number"),
        "{err}"
    );
    let err = message(text_args("hello", json!({"seed": "x"})));
    assert!(err.contains("seed must be a non-negative integer"), "{err}");
    let err = message(text_args(&"a".repeat(1001), json!({})));
    assert!(err.contains("at most 1000"), "{err}");
    // A very slow rate makes more than a minute of speech.
    let err = message(text_args(
        "hello world",
        json!({"speaking_rate": 0.0001, "noise_scale": 0, "noise_scale_duration": 0}),
    ));
    assert!(err.contains("hgpt makes at most 60 s at once"), "{err}");
    let err = model
        .run(
            TaskKind::AutomaticSpeechRecognition,
            &text_args("hi", json!({})),
        )
        .unwrap_err();
    assert!(matches!(err, LocalError::Unsupported(_)), "{err}");
}

fn edit_json(dir: &std::path::Path, file: &str, edit: impl FnOnce(&mut Value)) {
    let path = dir.join(file);
    let mut value: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut value);
    std::fs::write(path, value.to_string()).unwrap();
}

#[test]
fn phonemizing_checkpoints_are_refused_and_uroman_texts_explained() {
    let (_dir, files) = edited_copy("vits-tts", |dir| {
        edit_json(dir, "tokenizer_config.json", |v| {
            v["phonemize"] = json!(true)
        });
    });
    let err = VitsPipeline::load(&files, &Device::Cpu).err().unwrap();
    assert!(
        matches!(&err, LocalError::Unsupported(m) if m.contains("phonemize") && m.contains("espeak")),
        "{err}"
    );
    // VitsTokenizer's default is to phonemize.
    let (_dir, files) = edited_copy("vits-tts", |dir| {
        edit_json(dir, "tokenizer_config.json", |v| {
            v.as_object_mut().unwrap().remove("phonemize");
        });
    });
    assert!(VitsPipeline::load(&files, &Device::Cpu).is_err());
    let (_dir, files) = edited_copy("vits-tts", |dir| {
        edit_json(dir, "tokenizer_config.json", |v| {
            v["is_uroman"] = json!(true)
        });
    });
    let model = VitsPipeline::load(&files, &Device::Cpu).unwrap();
    let err = model.tokenize("Привет").unwrap_err();
    assert!(
        matches!(&err, LocalError::Unsupported(m) if m.contains("uroman")),
        "{err}"
    );
    // Latin text needs no romanising.
    let plain = VitsPipeline::load(&model_files("vits-tts"), &Device::Cpu).unwrap();
    assert_eq!(
        model.tokenize("Kick it.").unwrap(),
        plain.tokenize("Kick it.").unwrap()
    );
}

/// A change to `config.json`.
type ConfigEdit = fn(&mut Value);

#[test]
fn inconsistent_configs_are_load_errors() {
    let edits: [(&str, ConfigEdit); 7] = [
        ("samples per frame", |v| {
            v["upsample_rates"] = json!([4294967296u64, 4294967296u64]);
            v["upsample_kernel_sizes"] = json!([4294967296u64, 4294967296u64]);
        }),
        ("window_size", |v| v["window_size"] = json!(u64::MAX)),
        ("not a multiple of 3 heads", |v| {
            v["num_attention_heads"] = json!(3)
        }),
        ("depth_separable_channels", |v| {
            v["depth_separable_channels"] = json!(4)
        }),
        ("differ in length", |v| v["upsample_rates"] = json!([4])),
        ("wavenet_kernel_size 4 is not odd", |v| {
            v["wavenet_kernel_size"] = json!(4)
        }),
        ("shape", |v| v["hidden_size"] = json!(18)),
    ];
    for (wanted, edit) in edits {
        let (_dir, files) = edited_copy("vits-tts", |dir| edit_json(dir, "config.json", edit));
        let err = VitsPipeline::load(&files, &Device::Cpu).err().unwrap();
        assert!(
            matches!(&err, LocalError::Load { message, .. } if message.contains(wanted)),
            "{wanted}: {err}"
        );
    }
    let (_dir, files) = edited_copy("vits-tts", |dir| {
        std::fs::remove_file(dir.join("vocab.json")).unwrap();
    });
    let err = VitsPipeline::load(&files, &Device::Cpu).err().unwrap();
    assert!(matches!(err, LocalError::MissingFiles { .. }), "{err}");
}
