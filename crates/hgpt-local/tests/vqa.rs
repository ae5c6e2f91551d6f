//! Parity of the visual-question-answering pipeline with Hugging Face
//! transformers 4.57.6 on the tiny random BLIP checkpoint in
//! `tests/fixtures/blip-vqa` (made by `scripts/make_fixtures.py`).

mod common;

use candle_core::Device;
use common::*;
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::InferenceOutput;
use hgpt_core::task::TaskKind;
use hgpt_local::LocalError;
use hgpt_local::generate::GenerationConfig;
use hgpt_local::pipeline::{self, Pipeline};
use hgpt_local::vision::{BlipQuestionAnswerer, BlipVqa, ViltQuestionAnswerer, decode_image};
use serde_json::json;

const TASK: TaskKind = TaskKind::VisualQuestionAnswering;

fn answerer() -> BlipQuestionAnswerer {
    BlipQuestionAnswerer::load(&model_files("blip-vqa"), &Device::Cpu).unwrap()
}

#[test]
fn blip_question_states_logits_and_answers_match_transformers() {
    let files = model_files("blip-vqa");
    assert_eq!(pipeline::task_of(&files), Some(TASK));
    let weights = files.weights(&Device::Cpu).unwrap();
    let model = BlipVqa::load(&files, weights.vb).unwrap();
    let generation = GenerationConfig::load(&files, "text_config").unwrap();
    let answerer = answerer();
    let pipe = pipeline::load(TASK, &files, &Device::Cpu).unwrap();
    let mut differ = 0;
    for case in cases("blip-vqa") {
        let question = case["question"].as_str().unwrap();
        let what = format!("{} {question:?}", case["image"]);
        let input_ids = ids(&case["input_ids"]);
        assert_eq!(
            answerer.encode_question(question).unwrap(),
            input_ids,
            "{what}"
        );
        let image = decode_image(TASK, &image_bytes(&case)).unwrap();
        let pixels = hgpt_local::vision::ImageProcessor::load(
            &files,
            hgpt_local::vision::ProcessorKind::Classification,
        )
        .unwrap()
        .preprocess(TASK, &image, &Device::Cpu)
        .unwrap();

        let embeds = model.image_embeds(&pixels).unwrap();
        let diff = max_diff(&values(&embeds), &floats(&case["image_embeds"]));
        assert!(diff < 1e-4, "{what}: image states differ by {diff}");
        let states = model.question_embeds(&pixels, &input_ids).unwrap();
        let diff = max_diff(&values(&states), &floats(&case["question_embeds"]));
        assert!(diff < 1e-4, "{what}: question states differ by {diff}");

        let want = ids(&case["generated_ids"]);
        let logits = model
            .logits(&pixels, &input_ids, &want[..want.len() - 1])
            .unwrap();
        let diff = max_diff(&values(&logits), &floats(&case["logits"]));
        assert!(diff < 1e-4, "{what}: logits differ by {diff}");
        let generated = model.answer(&pixels, &input_ids, &generation).unwrap();
        assert_eq!(generated.ids, want, "{what}");
        assert_eq!(
            answerer
                .generate(&image, question, answerer.generation())
                .unwrap()
                .ids,
            want,
            "{what}"
        );
        differ += check_beams(&case, answerer.generation(), &what, |generation| {
            answerer.generate(&image, question, generation).unwrap().ids
        });

        // Through the pipeline, the question as the wire protocol sends it
        // and as a plan's text argument.
        let mut by_wire = args(image_bytes(&case), json!({"question": question}));
        let mut by_plan = args(image_bytes(&case), json!({}));
        by_plan.text = Some(question.to_string());
        for request in [&mut by_wire, &mut by_plan] {
            let InferenceOutput::Answers(answers) = pipe.run(TASK, request).unwrap() else {
                panic!("{what}: not answers")
            };
            assert_eq!(answers.len(), 1, "{what}");
            assert_eq!(
                answers[0].answer,
                case["answer"].as_str().unwrap(),
                "{what}"
            );
            // The probability of the generated answer under the model.
            assert!(
                (answers[0].score - generated.log_prob.exp()).abs() < 1e-12
                    && answers[0].score > 0.0
                    && answers[0].score <= 1.0,
                "{what}: {}",
                answers[0].score
            );
        }
    }
    // Beam search is not greedy decoding in disguise.
    assert!(differ > 0);
}

#[test]
fn empty_or_missing_questions_and_images_are_bad_input() {
    let answerer = answerer();
    let case = &cases("blip-vqa")[0];
    for (request, needle) in [
        (args(image_bytes(case), json!({"question": "  "})), "empty"),
        (args(image_bytes(case), json!({})), "no question"),
        (args(image_bytes(case), json!({"question": 3})), "string"),
        (
            args(image_bytes(case), json!({"question": "word ".repeat(100)})),
            "at most 64",
        ),
        (
            args(b"not an image".to_vec(), json!({"question": "what?"})),
            "decode",
        ),
        (
            ResolvedArgs {
                text: Some("what?".into()),
                ..ResolvedArgs::default()
            },
            "no image",
        ),
    ] {
        let err = answerer.run(TASK, &request).unwrap_err();
        assert!(
            matches!(&err, LocalError::BadInput { message, .. } if message.contains(needle)),
            "{needle}: {err}"
        );
    }
}

#[test]
fn a_vqa_checkpoint_whose_decoder_cannot_read_the_question_is_refused() {
    let (_dir, files) = edited_copy("blip-vqa", |dir| {
        edit_config(dir, |c| c["text_config"]["encoder_hidden_size"] = json!(24));
    });
    let err = BlipQuestionAnswerer::load(&files, &Device::Cpu)
        .err()
        .unwrap();
    assert!(err.to_string().contains("encoder_hidden_size"), "{err}");
}

// ---------------------------------------------------------------- ViLT

#[test]
fn vilt_sizes_logits_and_answers_match_transformers() {
    let files = model_files("vilt-vqa");
    assert_eq!(pipeline::task_of(&files), Some(TASK));
    let answerer = ViltQuestionAnswerer::load(&files, &Device::Cpu).unwrap();
    let pipe = pipeline::load(TASK, &files, &Device::Cpu).unwrap();
    let processor =
        hgpt_local::vision::ImageProcessor::load(&files, hgpt_local::vision::ProcessorKind::Vilt)
            .unwrap();
    for case in cases("vilt-vqa") {
        let question = case["question"].as_str().unwrap();
        let what = format!("{} {question:?}", case["image"]);
        assert_eq!(
            answerer.encode_question(question).unwrap(),
            ids(&case["input_ids"]),
            "{what}"
        );
        let image = decode_image(TASK, &image_bytes(&case)).unwrap();
        let size = &case["processed_size"];
        assert_eq!(
            processor.resized_size(image.height(), image.width()),
            (
                size[0].as_u64().unwrap() as u32,
                size[1].as_u64().unwrap() as u32
            ),
            "{what}"
        );
        let pixels = processor.preprocess(TASK, &image, &Device::Cpu).unwrap();
        let diff = max_diff(&values(&pixels), &floats(&case["pixel_values"]));
        assert!(diff < 1e-5, "{what}: pixel values differ by {diff}");
        let logits = answerer.logits(&image, question).unwrap();
        let diff = max_diff(&logits, &floats(&case["logits"]));
        assert!(diff < 1e-4, "{what}: logits differ by {diff}");

        for (params, key) in [
            (json!({"question": question}), "pipeline"),
            (
                json!({"question": question, "top_k": 2}),
                "pipeline_top_k_2",
            ),
        ] {
            let InferenceOutput::Answers(answers) =
                pipe.run(TASK, &args(image_bytes(&case), params)).unwrap()
            else {
                panic!("{what}: not answers")
            };
            let want = case[key].as_array().unwrap();
            assert_eq!(answers.len(), want.len(), "{what} {key}");
            for (got, want) in answers.iter().zip(want) {
                assert_eq!(got.answer, want["answer"].as_str().unwrap(), "{what} {key}");
                assert!(
                    (got.score - want["score"].as_f64().unwrap()).abs() < 1e-5,
                    "{what} {key}"
                );
            }
        }
    }
}

#[test]
fn vilt_refuses_bad_questions_and_top_k() {
    let answerer = ViltQuestionAnswerer::load(&model_files("vilt-vqa"), &Device::Cpu).unwrap();
    let case = &cases("vilt-vqa")[0];
    for (params, needle) in [
        (json!({"question": ""}), "empty"),
        (json!({"question": "word ".repeat(60)}), "at most 40"),
        (json!({"question": "what?", "top_k": 0}), "top_k"),
        (json!({"question": "what?", "top_k": "many"}), "top_k"),
    ] {
        let err = answerer
            .run(TASK, &args(image_bytes(case), params))
            .unwrap_err();
        assert!(
            matches!(&err, LocalError::BadInput { message, .. } if message.contains(needle)),
            "{needle}: {err}"
        );
    }
}
