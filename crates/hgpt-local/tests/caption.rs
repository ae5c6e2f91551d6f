//! Parity of the image-to-text pipeline with Hugging Face transformers 4.57.6
//! on the tiny random checkpoints in `tests/fixtures/vit-gpt2-caption` and
//! `tests/fixtures/blip-caption` (made by `scripts/make_fixtures.py`).

mod common;

use candle_core::Device;
use common::*;
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::task::TaskKind;
use hgpt_local::LocalError;
use hgpt_local::generate::GenerationConfig;
use hgpt_local::pipeline::{self, Pipeline};
use hgpt_local::vision::{BlipCaptioner, ImageCaptioner, VitGpt2, decode_image};
use serde_json::json;

const TASK: TaskKind = TaskKind::ImageToText;

#[test]
fn vit_gpt2_states_logits_and_greedy_ids_match_transformers() {
    let files = model_files("vit-gpt2-caption");
    assert_eq!(pipeline::task_of(&files), Some(TASK));
    let generation = GenerationConfig::load(&files, "decoder").unwrap();
    assert_eq!(generation.max_length, 12);
    assert_eq!(generation.max_new_tokens, None);
    let weights = files.weights(&Device::Cpu).unwrap();
    let model = VitGpt2::load(&files, &generation, weights.vb).unwrap();
    let captioner = ImageCaptioner::load_vit_gpt2(&files, &Device::Cpu).unwrap();
    let mut stopped_early = false;
    for case in cases("vit-gpt2-caption") {
        let what = case["image"].to_string();
        let pixels = pixel_tensor(&case, 32);
        let states = model.encoder_states(&pixels).unwrap();
        assert_eq!(states.dims(), [1, 17, 24], "{what}");
        let states = states.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let diff = max_diff(&states, &floats(&case["encoder_hidden_state"]));
        assert!(diff < 1e-4, "{what}: encoder states differ by {diff}");

        let want_ids = ids(&case["generated_ids"]);
        let logits = model
            .logits(&pixels, &want_ids[..want_ids.len() - 1])
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let diff = max_diff(&logits, &floats(&case["logits"]));
        assert!(diff < 1e-4, "{what}: logits differ by {diff}");

        let image = decode_image(TASK, &image_bytes(&case)).unwrap();
        let got_ids = captioner
            .generate_ids(&image, captioner.generation())
            .unwrap();
        assert_eq!(got_ids, want_ids, "{what}");
        stopped_early |= got_ids.len() < 12;

        let text = text_of(
            captioner
                .run(TASK, &args(image_bytes(&case), json!({})))
                .unwrap(),
        );
        assert_eq!(
            text,
            case["pipeline"][0]["generated_text"].as_str().unwrap(),
            "{what}"
        );
    }
    assert!(stopped_early, "no fixture caption ends with the end token");
}

#[test]
fn the_loaded_family_is_the_registered_one_and_max_new_tokens_is_honoured() {
    let files = model_files("vit-gpt2-caption");
    let pipe = pipeline::load(TASK, &files, &Device::Cpu).unwrap();
    let case = &cases("vit-gpt2-caption")[0];
    let want = ids(&case["generated_ids"]);
    let captioner = ImageCaptioner::load_vit_gpt2(&files, &Device::Cpu).unwrap();
    let image = decode_image(TASK, &image_bytes(case)).unwrap();
    // Greedy decoding is a prefix of the longer run.
    let mut three = captioner.generation().clone();
    three.max_new_tokens = Some(3);
    assert_eq!(captioner.generate_ids(&image, &three).unwrap(), want[..4]);
    let short = text_of(
        pipe.run(TASK, &args(image_bytes(case), json!({"max_new_tokens": 3})))
            .unwrap(),
    );
    let full = case["pipeline"][0]["generated_text"].as_str().unwrap();
    assert!(
        full.starts_with(&short) && short.len() < full.len(),
        "{short:?}"
    );
    for bad in [json!(0), json!(2.5), json!("many"), json!(100000)] {
        let err = pipe
            .run(
                TASK,
                &args(image_bytes(case), json!({"max_new_tokens": bad})),
            )
            .unwrap_err();
        assert!(
            matches!(&err, LocalError::BadInput { message, .. } if message.contains("max_new_tokens")),
            "{bad}: {err}"
        );
    }
}

#[test]
fn a_gpt2_tokenizer_without_tokenizer_json_decodes_the_same() {
    let (_dir, files) = edited_copy("vit-gpt2-caption", |dir| {
        std::fs::remove_file(dir.join("tokenizer.json")).unwrap();
    });
    let captioner = ImageCaptioner::load_vit_gpt2(&files, &Device::Cpu).unwrap();
    for case in cases("vit-gpt2-caption") {
        let text = text_of(
            captioner
                .run(TASK, &args(image_bytes(&case), json!({})))
                .unwrap(),
        );
        assert_eq!(
            text,
            case["pipeline"][0]["generated_text"].as_str().unwrap()
        );
    }
    let (_dir, files) = edited_copy("vit-gpt2-caption", |dir| {
        for name in ["tokenizer.json", "vocab.json"] {
            std::fs::remove_file(dir.join(name)).unwrap();
        }
    });
    let err = ImageCaptioner::load_vit_gpt2(&files, &Device::Cpu)
        .err()
        .unwrap();
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}

#[test]
fn unsupported_parts_and_mismatched_weights_are_clear_errors() {
    // Another decoder: not taken for image-to-text, and loading says why.
    let (_dir, files) = edited_copy("vit-gpt2-caption", |dir| {
        edit_config(dir, |c| c["decoder"]["model_type"] = json!("trocr"));
    });
    assert_eq!(pipeline::task_of(&files), None);
    let err = ImageCaptioner::load_vit_gpt2(&files, &Device::Cpu)
        .err()
        .unwrap();
    assert!(
        matches!(&err, LocalError::Unsupported(m) if m.contains("\"trocr\"")),
        "{err}"
    );
    // A config that does not match the weights.
    let (_dir, files) = edited_copy("vit-gpt2-caption", |dir| {
        edit_config(dir, |c| c["decoder"]["n_inner"] = json!(64));
    });
    let err = ImageCaptioner::load_vit_gpt2(&files, &Device::Cpu)
        .err()
        .unwrap();
    assert!(
        matches!(&err, LocalError::Load { message, .. } if message.contains("mlp.c_fc")),
        "{err}"
    );
    // No way to start decoding.
    let (_dir, files) = edited_copy("vit-gpt2-caption", |dir| {
        std::fs::remove_file(dir.join("generation_config.json")).unwrap();
        edit_config(dir, |c| {
            for key in ["decoder_start_token_id", "bos_token_id"] {
                c.as_object_mut().unwrap().remove(key);
                c["decoder"].as_object_mut().unwrap().remove(key);
            }
        });
    });
    let err = ImageCaptioner::load_vit_gpt2(&files, &Device::Cpu)
        .err()
        .unwrap();
    assert!(err.to_string().contains("decoder_start_token_id"), "{err}");
}

#[test]
fn without_generation_config_json_the_config_decides() {
    // transformers derives the generation settings from config.json: no
    // max_length there means the pipeline's 256 new tokens.
    let (_dir, files) = edited_copy("vit-gpt2-caption", |dir| {
        std::fs::remove_file(dir.join("generation_config.json")).unwrap();
    });
    let generation = GenerationConfig::load(&files, "decoder").unwrap();
    assert_eq!(generation.max_new_tokens, Some(256));
    assert_eq!(generation.decoder_start_token_id, Some(691));
    assert_eq!(generation.eos_token_ids, vec![691]);
    let (_dir, files) = edited_copy("vit-gpt2-caption", |dir| {
        std::fs::remove_file(dir.join("generation_config.json")).unwrap();
        edit_config(dir, |c| c["decoder"]["max_length"] = json!(7));
    });
    let generation = GenerationConfig::load(&files, "decoder").unwrap();
    assert_eq!(
        (generation.max_new_tokens, generation.max_length),
        (None, 7)
    );
}

#[test]
fn bad_images_are_bad_input() {
    let files = model_files("vit-gpt2-caption");
    let captioner = ImageCaptioner::load_vit_gpt2(&files, &Device::Cpu).unwrap();
    let err = captioner
        .run(TASK, &args(b"not an image".to_vec(), json!({})))
        .unwrap_err();
    assert!(matches!(err, LocalError::BadInput { .. }), "{err}");
    let err = captioner.run(TASK, &ResolvedArgs::default()).unwrap_err();
    assert!(matches!(err, LocalError::BadInput { .. }), "{err}");
}

#[test]
fn blip_image_states_logits_and_captions_match_transformers() {
    let files = model_files("blip-caption");
    assert_eq!(pipeline::task_of(&files), Some(TASK));
    let weights = files.weights(&Device::Cpu).unwrap();
    let model = BlipCaptioner::load(&files, weights.vb).unwrap();
    let captioner = ImageCaptioner::load_blip(&files, &Device::Cpu).unwrap();
    let pipe = pipeline::load(TASK, &files, &Device::Cpu).unwrap();
    for case in cases("blip-caption") {
        let what = case["image"].to_string();
        let pixels = pixel_tensor(&case, 32);
        let image = decode_image(TASK, &image_bytes(&case)).unwrap();
        // The bicubic resize and CLIP normalisation of BlipImageProcessor.
        let ours = hgpt_local::vision::ImageProcessor::load(
            &files,
            hgpt_local::vision::ProcessorKind::Classification,
        )
        .unwrap()
        .preprocess(TASK, &image, &Device::Cpu)
        .unwrap();
        let diff = max_diff(&values(&ours), &floats(&case["pixel_values"]));
        assert!(diff < 1e-5, "{what}: pixel values differ by {diff}");

        let embeds = model.image_embeds(&pixels).unwrap();
        assert_eq!(embeds.dims(), [1, 17, 24], "{what}");
        let diff = max_diff(&values(&embeds), &floats(&case["image_embeds"]));
        assert!(diff < 1e-4, "{what}: image states differ by {diff}");

        let want = ids(&case["generated_ids"]);
        let logits = model.logits(&pixels, &want[..want.len() - 1]).unwrap();
        let diff = max_diff(&values(&logits), &floats(&case["logits"]));
        assert!(diff < 1e-4, "{what}: logits differ by {diff}");

        assert_eq!(
            captioner
                .generate_ids(&image, captioner.generation())
                .unwrap(),
            want,
            "{what}"
        );
        let text = text_of(
            pipe.run(TASK, &args(image_bytes(&case), json!({})))
                .unwrap(),
        );
        assert_eq!(
            text,
            case["pipeline"][0]["generated_text"].as_str().unwrap(),
            "{what}"
        );
    }
}

#[test]
fn blip_checkpoints_that_do_not_fit_their_processor_or_weights_are_refused() {
    let (_dir, files) = edited_copy("blip-caption", |dir| {
        edit_config(dir, |c| c["vision_config"]["image_size"] = json!(64));
    });
    let err = ImageCaptioner::load_blip(&files, &Device::Cpu)
        .err()
        .unwrap();
    assert!(
        matches!(&err, LocalError::Load { message, .. } if message.contains("position_embedding")),
        "{err}"
    );
    let (_dir, files) = edited_copy("blip-caption", |dir| {
        edit_config(dir, |c| c["text_config"]["bos_token_id"] = json!(100_000));
    });
    let err = ImageCaptioner::load_blip(&files, &Device::Cpu)
        .err()
        .unwrap();
    assert!(err.to_string().contains("bos_token_id"), "{err}");
}

#[test]
fn beam_search_matches_transformers() {
    let mut differ = 0;
    for (fixture, captioner) in [
        (
            "vit-gpt2-caption",
            ImageCaptioner::load_vit_gpt2(&model_files("vit-gpt2-caption"), &Device::Cpu),
        ),
        (
            "blip-caption",
            ImageCaptioner::load_blip(&model_files("blip-caption"), &Device::Cpu),
        ),
    ] {
        let captioner = captioner.unwrap();
        for case in cases(fixture) {
            let what = format!("{fixture} {}", case["image"]);
            let image = decode_image(TASK, &image_bytes(&case)).unwrap();
            differ += check_beams(&case, captioner.generation(), &what, |generation| {
                captioner.generate_ids(&image, generation).unwrap()
            });
        }
    }
    // Beam search is not greedy decoding in disguise.
    assert!(differ > 0);
}

#[test]
fn requests_choose_beam_search_by_the_wire_protocols_parameters() {
    let files = model_files("vit-gpt2-caption");
    let pipe = pipeline::load(TASK, &files, &Device::Cpu).unwrap();
    let case = cases("vit-gpt2-caption")
        .into_iter()
        .find(|c| c["beam_pipeline"] != c["pipeline"])
        .expect("a fixture whose beam caption differs");
    let want = case["beam_pipeline"][0]["generated_text"].as_str().unwrap();
    for name in ["generation_parameters", "generate_kwargs"] {
        let request = args(image_bytes(&case), json!({ name: {"num_beams": 3} }));
        assert_eq!(text_of(pipe.run(TASK, &request).unwrap()), want, "{name}");
    }
    for (parameters, named) in [
        (
            json!({"generation_parameters": {"num_beams": 0}}),
            "num_beams",
        ),
        (
            json!({"generation_parameters": {"num_beams": 17}}),
            "num_beams",
        ),
        (
            json!({"generation_parameters": {"early_stopping": "soon"}}),
            "early_stopping",
        ),
        (
            json!({"generation_parameters": {"temperature": 0.7}}),
            "temperature",
        ),
        (
            json!({"generation_parameters": [3]}),
            "generation_parameters",
        ),
    ] {
        let err = pipe
            .run(TASK, &args(image_bytes(&case), parameters.clone()))
            .unwrap_err();
        assert!(
            matches!(&err, LocalError::BadInput { message, .. } if message.contains(named)),
            "{parameters}: {err}"
        );
    }
}
