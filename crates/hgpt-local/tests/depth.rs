//! Parity of the depth-estimation pipeline with Hugging Face transformers
//! 4.57.6 on the tiny random DPT, DPT-hybrid and Depth Anything checkpoints
//! in `tests/fixtures/dpt-depth`, `dpt-hybrid-depth` and
//! `depth-anything-depth` (made by `scripts/make_fixtures.py`).

mod common;

use candle_core::{Device, Tensor};
use common::*;
use hgpt_core::output::InferenceOutput;
use hgpt_core::task::TaskKind;
use hgpt_local::LocalError;
use hgpt_local::pipeline;
use hgpt_local::vision::{DepthEstimator, ImageProcessor, ProcessorKind, decode_image};
use serde_json::{Value, json};

const TASK: TaskKind = TaskKind::DepthEstimation;

fn estimator(name: &str) -> DepthEstimator {
    let files = model_files(name);
    match name {
        "dpt-depth" | "dpt-hybrid-depth" => DepthEstimator::load_dpt(&files, &Device::Cpu),
        _ => DepthEstimator::load_depth_anything(&files, &Device::Cpu),
    }
    .unwrap()
}

/// The largest difference relative to the larger of 1 and the largest
/// magnitude expected.
fn scaled_diff(got: &[f32], want: &[f32]) -> f32 {
    let scale = want.iter().fold(1f32, |m, v| m.max(v.abs()));
    max_diff(got, want) / scale
}

fn check_family(name: &str) {
    let files = model_files(name);
    assert_eq!(pipeline::task_of(&files), Some(TASK), "{name}");
    let estimator = estimator(name);
    let pipe = pipeline::load(TASK, &files, &Device::Cpu).unwrap();
    let processor = ImageProcessor::load(&files, ProcessorKind::Dpt).unwrap();
    for case in cases(name) {
        let what = format!("{name} {}", case["image"]);
        let image = decode_image(TASK, &image_bytes(&case)).unwrap();
        let processed: Vec<usize> = case["processed_size"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as usize)
            .collect();
        let pixels = processor.preprocess(TASK, &image, &Device::Cpu).unwrap();
        assert_eq!(pixels.dims(), &[1, 3, processed[0], processed[1]], "{what}");
        let diff = max_diff(&values(&pixels), &floats(&case["pixel_values"]));
        assert!(diff < 1e-5, "{what}: pixel values differ by {diff}");

        // The network on transformers' own pixel values.
        let theirs = Tensor::from_vec(
            floats(&case["pixel_values"]),
            (1, 3, processed[0], processed[1]),
            &Device::Cpu,
        )
        .unwrap();
        let (depth, _) = estimator.model().forward(&theirs).unwrap();
        let diff = scaled_diff(&depth, &floats(&case["predicted_depth"]));
        assert!(diff < 1e-4, "{what}: predicted depth differs by {diff}");

        let map = estimator.estimate(&image).unwrap();
        let want = floats(&case["post_processed_depth"]);
        let diff = scaled_diff(&map.depth, &want);
        assert!(diff < 1e-4, "{what}: resized depth differs by {diff}");

        let output = pipe
            .run(TASK, &args(image_bytes(&case), json!({})))
            .unwrap();
        let InferenceOutput::Depth {
            image: Some(rendered),
            predicted: Some(predicted),
        } = output
        else {
            panic!("{what}: not a depth image with its tensor")
        };
        assert_eq!(rendered.mime.as_deref(), Some("image/png"));
        let rendered = image::load_from_memory(&rendered.bytes)
            .unwrap()
            .into_luma8();
        assert_eq!(
            (rendered.height(), rendered.width()),
            (image.height(), image.width())
        );
        let want: Vec<u8> = case["pipeline_depth_image"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u8)
            .collect();
        // Truncation to u8 may flip a value that sits on an integer by a
        // rounding-level difference; nothing else may differ.
        let off: Vec<_> = rendered
            .as_raw()
            .iter()
            .zip(&want)
            .filter(|(g, w)| g != w)
            .collect();
        assert!(
            off.iter().all(|(g, w)| g.abs_diff(**w) == 1) && off.len() * 100 <= want.len(),
            "{what}: {} depth pixels differ: {off:?}",
            off.len()
        );
        let rows = predicted.as_array().unwrap();
        assert_eq!(rows.len(), image.height() as usize, "{what}");
        let diff = scaled_diff(&floats(&predicted), &floats(&case["post_processed_depth"]));
        assert!(diff < 1e-4, "{what}: the returned tensor differs by {diff}");
    }
}

#[test]
fn dpt_matches_transformers() {
    check_family("dpt-depth");
}

#[test]
fn dpt_hybrid_matches_transformers() {
    check_family("dpt-hybrid-depth");
}

#[test]
fn depth_anything_matches_transformers() {
    check_family("depth-anything-depth");
}

fn expect_error(result: Result<impl Sized, LocalError>, needle: &str) {
    match result {
        Ok(_) => panic!("expected an error naming {needle:?}"),
        Err(err) => assert!(err.to_string().contains(needle), "{needle:?} not in: {err}"),
    }
}

#[test]
fn dpt_refuses_what_it_cannot_run() {
    // DPT's ViT reshapes its tokens to a square: a processor keeping the
    // aspect ratio gives a non-square grid, which transformers fails on too.
    let (_dir, files) = edited_copy("dpt-depth", |dir| {
        let path = dir.join("preprocessor_config.json");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config["keep_aspect_ratio"] = json!(true);
        config["ensure_multiple_of"] = json!(8);
        std::fs::write(path, config.to_string()).unwrap();
    });
    let estimator = DepthEstimator::load_dpt(&files, &Device::Cpu).unwrap();
    let case = &cases("dpt-depth")[0];
    let image = decode_image(TASK, &image_bytes(case)).unwrap();
    expect_error(estimator.estimate(&image), "square patch grid");

    // The hybrid takes its image_size only (transformers refuses others too).
    let (_dir, files) = edited_copy("dpt-hybrid-depth", |dir| {
        let path = dir.join("preprocessor_config.json");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config["size"] = json!({"height": 48, "width": 48});
        std::fs::write(path, config.to_string()).unwrap();
    });
    let estimator = DepthEstimator::load_dpt(&files, &Device::Cpu).unwrap();
    expect_error(estimator.estimate(&image), "takes 64x64 inputs only");
    let (_dir, files) = edited_copy("dpt-hybrid-depth", |dir| {
        edit_config(dir, |c| {
            c["backbone_config"]["layer_type"] = json!("preactivation");
        });
    });
    expect_error(
        DepthEstimator::load_dpt(&files, &Device::Cpu),
        "layer_type \"preactivation\"",
    );

    // Weights that do not fit the config are named.
    let (_dir, files) = edited_copy("dpt-depth", |dir| {
        edit_config(dir, |c| c["neck_hidden_sizes"] = json!([4, 8, 12, 20]));
    });
    expect_error(
        DepthEstimator::load_dpt(&files, &Device::Cpu),
        "shape mismatch for neck.convs.3.weight",
    );
}

#[test]
fn depth_anything_refuses_unknown_heads_and_bad_images() {
    let (_dir, files) = edited_copy("depth-anything-depth", |dir| {
        edit_config(dir, |c| c["depth_estimation_type"] = json!("absolute"));
    });
    expect_error(
        DepthEstimator::load_depth_anything(&files, &Device::Cpu),
        "depth_estimation_type",
    );
    let pipe = pipeline::load(TASK, &model_files("depth-anything-depth"), &Device::Cpu).unwrap();
    expect_error(pipe.run(TASK, &args(Vec::new(), json!({}))), "empty");
    expect_error(
        pipe.run(TASK, &args(b"not an image".to_vec(), json!({}))),
        "image",
    );
}

#[test]
fn metric_depth_is_a_sigmoid_times_the_maximum() {
    // The same checkpoint read as metric depth: every value is in
    // (0, max_depth), and the ordering of the relative depth's positive
    // values is kept where they differ clearly.
    let (_dir, files) = edited_copy("depth-anything-depth", |dir| {
        edit_config(dir, |c| {
            c["depth_estimation_type"] = json!("metric");
            c["max_depth"] = json!(20.0);
        });
    });
    let metric = DepthEstimator::load_depth_anything(&files, &Device::Cpu).unwrap();
    let relative = estimator("depth-anything-depth");
    let case = &cases("depth-anything-depth")[0];
    let image = decode_image(TASK, &image_bytes(case)).unwrap();
    let (m, _) = metric.predicted_depth(&image).unwrap();
    let (r, _) = relative.predicted_depth(&image).unwrap();
    assert!(m.iter().all(|&d| d > 0.0 && d < 20.0));
    for (&rm, &rr) in m.iter().zip(&r) {
        if rr > 0.0 {
            let want = 20.0 / (1.0 + (-rr).exp());
            assert!((rm - want).abs() < 1e-4, "{rm} vs {want}");
        }
    }
}
