//! Parity of the image-segmentation pipeline's panoptic output with Hugging
//! Face transformers 4.57.6 on the tiny random `DetrForSegmentation`
//! checkpoint in `tests/fixtures/detr-panoptic` (made by
//! `scripts/make_fixtures.py`).

mod common;

use base64::Engine;
use candle_core::Device;
use common::*;
use hgpt_core::output::InferenceOutput;
use hgpt_core::task::TaskKind;
use hgpt_local::pipeline;
use hgpt_local::vision::{PanopticSegmenter, decode_image};
use serde_json::{Value, json};

const TASK: TaskKind = TaskKind::ImageSegmentation;
const NAME: &str = "detr-panoptic";

fn scaled_diff(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    max_diff(got, want) / scale
}

fn assert_same_segments(output: InferenceOutput, want: &Value, what: &str) {
    let InferenceOutput::Segments(got) = output else {
        panic!("{what}: not segments")
    };
    let want = want.as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{what}: {got:?}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.label, w["label"].as_str().unwrap(), "{what}");
        match (g.score, w["score"].as_f64()) {
            (Some(score), Some(want)) => assert!(
                (score - want).abs() < 1e-5,
                "{what}: score {score} vs {want}"
            ),
            (None, None) => {}
            (score, want) => panic!("{what}: score {score:?} vs {want:?}"),
        }
        let png = base64::engine::general_purpose::STANDARD
            .decode(&g.mask)
            .unwrap();
        let mask = image::load_from_memory(&png).unwrap().into_luma8();
        let bits: Vec<u64> = mask.as_raw().iter().map(|&p| u64::from(p / 255)).collect();
        let want_bits: Vec<u64> = w["mask"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(bits, want_bits, "{what}: the mask of {} differs", g.label);
    }
}

#[test]
fn detr_panoptic_matches_transformers() {
    let files = model_files(NAME);
    assert_eq!(pipeline::task_of(&files), Some(TASK));
    let segmenter = PanopticSegmenter::load(&files, &Device::Cpu).unwrap();
    let pipe = pipeline::load(TASK, &files, &Device::Cpu).unwrap();
    for case in cases(NAME) {
        let what = case["image"].to_string();
        let image = decode_image(TASK, &image_bytes(&case)).unwrap();
        let prediction = segmenter.predict(&image).unwrap();
        let logits: Vec<f32> = prediction.logits.concat();
        let diff = scaled_diff(&logits, &floats(&case["logits"]));
        assert!(diff < 1e-4, "{what}: logits differ by {diff}");
        let diff = scaled_diff(&prediction.masks, &floats(&case["pred_masks"]));
        assert!(diff < 1e-4, "{what}: mask logits differ by {diff}");

        let run = |params: Value| pipe.run(TASK, &args(image_bytes(&case), params)).unwrap();
        assert_same_segments(run(json!({})), &case["pipeline"], &what);
        assert_same_segments(
            run(json!({"threshold": 0.5})),
            &case["pipeline_threshold_0_5"],
            &format!("{what} threshold 0.5"),
        );
        assert_same_segments(
            run(
                json!({"threshold": 0.5, "overlap_mask_area_threshold": 0.8, "subtask": "panoptic"}),
            ),
            &case["pipeline_threshold_0_5_overlap_0_8"],
            &format!("{what} overlap 0.8"),
        );
        assert_same_segments(
            run(json!({"threshold": 0.5, "subtask": "instance"})),
            &case["pipeline_instance_threshold_0_5"],
            &format!("{what} instance"),
        );
        assert_same_segments(
            run(json!({"subtask": "semantic"})),
            &case["pipeline_semantic"],
            &format!("{what} semantic"),
        );
    }
}

#[test]
fn bad_settings_and_unknown_subtasks_are_refused() {
    let pipe = pipeline::load(TASK, &model_files(NAME), &Device::Cpu).unwrap();
    let case = &cases(NAME)[0];
    for (params, needle) in [
        (
            json!({"threshold": 1.5}),
            "threshold must be between 0 and 1",
        ),
        (
            json!({"mask_threshold": "high"}),
            "mask_threshold must be a number",
        ),
        (json!({"subtask": "stuff"}), "subtask must be"),
        (json!({"subtask": 3}), "subtask must be"),
    ] {
        let err = pipe
            .run(TASK, &args(image_bytes(case), params.clone()))
            .unwrap_err();
        assert!(err.to_string().contains(needle), "{params}: {err}");
    }
    let err = pipe.run(TASK, &args(Vec::new(), json!({}))).unwrap_err();
    assert!(err.to_string().contains("empty"), "{err}");
}
