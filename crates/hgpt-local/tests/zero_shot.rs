//! Parity of the zero-shot-image-classification pipeline with Hugging Face
//! transformers 4.57.6 on the tiny random CLIP checkpoint in
//! `tests/fixtures/clip-zeroshot` (made by `scripts/make_fixtures.py`).

mod common;

use candle_core::Device;
use common::*;
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::InferenceOutput;
use hgpt_core::task::TaskKind;
use hgpt_local::LocalError;
use hgpt_local::pipeline::{self, Pipeline};
use hgpt_local::vision::{ZeroShotImageClassifier, decode_image};
use serde_json::{Value, json};

const TASK: TaskKind = TaskKind::ZeroShotImageClassification;

fn classifier() -> ZeroShotImageClassifier {
    ZeroShotImageClassifier::load(&model_files("clip-zeroshot"), &Device::Cpu).unwrap()
}

fn labels() -> Vec<String> {
    let path = fixtures().join("clip-zeroshot/expected.json");
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    expected["candidate_labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

fn assert_same_labels(output: InferenceOutput, want: &Value, what: &str) {
    let InferenceOutput::Labels(got) = output else {
        panic!("{what}: not labels")
    };
    let want = want.as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.label, w["label"].as_str().unwrap(), "{what}");
        assert!(
            (g.score - w["score"].as_f64().unwrap()).abs() < 1e-5,
            "{what}: {} vs {}",
            g.score,
            w["score"]
        );
    }
}

#[test]
fn clip_embeddings_logits_and_rankings_match_transformers() {
    let files = model_files("clip-zeroshot");
    assert_eq!(pipeline::task_of(&files), Some(TASK));
    let classifier = classifier();
    let pipe = pipeline::load(TASK, &files, &Device::Cpu).unwrap();
    let labels = labels();
    for case in cases("clip-zeroshot") {
        let what = case["image"].to_string();
        let pixels = pixel_tensor(&case, 32);
        let image = decode_image(TASK, &image_bytes(&case)).unwrap();
        let ours = hgpt_local::vision::ImageProcessor::load(
            &files,
            hgpt_local::vision::ProcessorKind::Classification,
        )
        .unwrap()
        .preprocess(TASK, &image, &Device::Cpu)
        .unwrap();
        let diff = max_diff(&values(&ours), &floats(&case["pixel_values"]));
        assert!(diff < 1e-5, "{what}: pixel values differ by {diff}");

        let model = classifier.model();
        let image_embeds = model.image_embeds(&pixels).unwrap();
        let diff = max_diff(&values(&image_embeds), &floats(&case["image_embeds"]));
        assert!(diff < 1e-4, "{what}: image embeddings differ by {diff}");
        let mut logits = Vec::new();
        for (i, label) in labels.iter().enumerate() {
            let ids = classifier
                .encode(&format!("This is a photo of {label}."))
                .unwrap();
            assert_eq!(ids, common::ids(&case["input_ids"][i]), "{what} {label}");
            let text = model.text_embeds(&ids).unwrap();
            let diff = max_diff(&values(&text), &floats(&case["text_embeds"][i]));
            assert!(
                diff < 1e-4,
                "{what} {label}: text embeddings differ by {diff}"
            );
            let cosine: f32 = values(&text)
                .iter()
                .zip(values(&image_embeds))
                .map(|(a, b)| a * b)
                .sum();
            logits.push(cosine * model.logit_scale());
        }
        let diff = max_diff(&logits, &floats(&case["logits_per_image"]));
        assert!(diff < 1e-4, "{what}: logits differ by {diff}");

        // As the wire protocol sends them, and as a plan's text.
        let by_wire = args(image_bytes(&case), json!({"candidate_labels": labels}));
        assert_same_labels(pipe.run(TASK, &by_wire).unwrap(), &case["pipeline"], &what);
        let mut by_plan = args(image_bytes(&case), json!({}));
        by_plan.text = Some(labels.join(", "));
        assert_same_labels(pipe.run(TASK, &by_plan).unwrap(), &case["pipeline"], &what);
        let templated = args(
            image_bytes(&case),
            json!({"candidate_labels": &labels[..2], "hypothesis_template": "a {} here"}),
        );
        assert_same_labels(
            pipe.run(TASK, &templated).unwrap(),
            &case["pipeline_template"],
            &what,
        );
    }
}

#[test]
fn missing_labels_templates_and_images_are_bad_input() {
    let classifier = classifier();
    let case = &cases("clip-zeroshot")[0];
    for (request, needle) in [
        (args(image_bytes(case), json!({})), "no candidate labels"),
        (
            args(image_bytes(case), json!({"candidate_labels": []})),
            "no candidate labels",
        ),
        (
            args(image_bytes(case), json!({"candidate_labels": [1]})),
            "strings",
        ),
        (
            args(
                image_bytes(case),
                json!({"candidate_labels": "a, b", "hypothesis_template": "no slot"}),
            ),
            "hypothesis_template",
        ),
        (
            args(
                image_bytes(case),
                json!({"candidate_labels": ["word ".repeat(40)]}),
            ),
            "at most 32",
        ),
        (
            ResolvedArgs {
                text: Some("cat, dog".into()),
                ..ResolvedArgs::default()
            },
            "no image",
        ),
    ] {
        let err = classifier.run(TASK, &request).unwrap_err();
        assert!(
            matches!(&err, LocalError::BadInput { message, .. } if message.contains(needle)),
            "{needle}: {err}"
        );
    }
}
