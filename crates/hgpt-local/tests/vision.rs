//! Parity of the vision pipelines with Hugging Face transformers 4.57.6 on the
//! tiny random checkpoints in `tests/fixtures/vit-imgcls` and
//! `tests/fixtures/yolos-det` (made by `scripts/make_fixtures.py`).

use base64::Engine;
use candle_core::{Device, Tensor};
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{Blob, Detection, InferenceOutput, ScoredLabel};
use hgpt_core::task::TaskKind;
use hgpt_local::pipeline::{self, Pipeline};
use hgpt_local::vision::detection::post_process;
use hgpt_local::vision::{DetrForObjectDetection, ImageClassifier, ObjectDetector, decode_image};
use hgpt_local::{LocalError, ModelFiles};
use image::RgbImage;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn model_files(name: &str) -> ModelFiles {
    ModelFiles::from_dir(&format!("hgpt-fixtures/{name}"), fixtures().join(name))
}

fn expected(name: &str) -> Value {
    let text = std::fs::read_to_string(fixtures().join(name).join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn cases(name: &str) -> Vec<Value> {
    let cases = expected(name)["cases"].as_array().unwrap().clone();
    assert!(!cases.is_empty());
    cases
}

fn image_bytes(case: &Value) -> Vec<u8> {
    std::fs::read(fixtures().join(case["image"].as_str().unwrap())).unwrap()
}

fn floats(value: &Value) -> Vec<f32> {
    match value {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        v => vec![v.as_f64().unwrap() as f32],
    }
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn hw(value: &Value) -> (u32, u32) {
    let v: Vec<u32> = value
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_u64().unwrap() as u32)
        .collect();
    (v[0], v[1])
}

/// The fixture's resized image (HWC u8) of `(height, width)`.
fn resized_image(case: &Value, (height, width): (u32, u32)) -> RgbImage {
    let bytes: Vec<u8> = case["resized_rgb_u8"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    RgbImage::from_raw(width, height, bytes).unwrap()
}

/// The fixture's `pixel_values` `[3, H, W]` as a `[1, 3, H, W]` tensor.
fn pixel_tensor(case: &Value, (height, width): (u32, u32)) -> Tensor {
    let values = floats(&case["pixel_values"]);
    Tensor::from_vec(
        values,
        (1, 3, height as usize, width as usize),
        &Device::Cpu,
    )
    .unwrap()
}

fn args(image: Vec<u8>, other: Value) -> ResolvedArgs {
    ResolvedArgs {
        image: Some(Blob::sniffed(image)),
        other: serde_json::from_value(other).unwrap(),
        ..ResolvedArgs::default()
    }
}

fn run(pipeline: &dyn Pipeline, task: TaskKind, args: &ResolvedArgs) -> InferenceOutput {
    pipeline.run(task, args).unwrap()
}

fn vit() -> ImageClassifier {
    ImageClassifier::load(&model_files("vit-imgcls"), &Device::Cpu).unwrap()
}

fn yolos() -> ObjectDetector {
    ObjectDetector::load_yolos(&model_files("yolos-det"), &Device::Cpu).unwrap()
}

const VIT_SIZE: (u32, u32) = (32, 32);

// ---------------------------------------------------------------- ViT

#[test]
fn vit_resize_is_pil_exact() {
    let model = vit();
    for case in cases("vit-imgcls") {
        let image = decode_image(TaskKind::ImageClassification, &image_bytes(&case)).unwrap();
        assert_eq!((image.height(), image.width()), hw(&case["original_size"]));
        let resized = model
            .processor()
            .resize(TaskKind::ImageClassification, &image)
            .unwrap();
        assert_eq!(
            resized.as_raw(),
            resized_image(&case, VIT_SIZE).as_raw(),
            "{}",
            case["image"]
        );
    }
}

#[test]
fn vit_pixel_values_match() {
    let model = vit();
    for case in cases("vit-imgcls") {
        let (values, size) = model
            .processor()
            .pixel_values(
                TaskKind::ImageClassification,
                &resized_image(&case, VIT_SIZE),
            )
            .unwrap();
        assert_eq!(size, (32, 32));
        let diff = max_diff(&values, &floats(&case["pixel_values"]));
        assert!(diff <= 1e-6, "{}: {diff}", case["image"]);
    }
}

#[test]
fn vit_logits_match() {
    let model = vit();
    for case in cases("vit-imgcls") {
        let logits = model.logits(&pixel_tensor(&case, VIT_SIZE)).unwrap();
        let diff = max_diff(&logits[0], &floats(&case["logits"]));
        assert!(diff < 1e-4, "{}: {diff}", case["image"]);
    }
}

fn labels_of(output: InferenceOutput) -> Vec<ScoredLabel> {
    match output {
        InferenceOutput::Labels(labels) => labels,
        other => panic!("expected labels, got {other:?}"),
    }
}

fn assert_same_labels(got: &[ScoredLabel], want: &Value, what: &str) {
    let want = want.as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.label, w["label"].as_str().unwrap(), "{what}");
        let diff = (g.score - w["score"].as_f64().unwrap()).abs();
        assert!(diff < 1e-5, "{what}: {} vs {}", g.score, w["score"]);
    }
}

#[test]
fn vit_pipeline_outputs_match() {
    let task = TaskKind::ImageClassification;
    let pipe = pipeline::load(task, &model_files("vit-imgcls"), &Device::Cpu).unwrap();
    assert_eq!(pipe.tasks(), &[task]);
    for case in cases("vit-imgcls") {
        let what = case["image"].to_string();
        let default = labels_of(run(
            pipe.as_ref(),
            task,
            &args(image_bytes(&case), json!({})),
        ));
        assert_same_labels(&default, &case["pipeline"], &what);
        let top2 = labels_of(run(
            pipe.as_ref(),
            task,
            &args(image_bytes(&case), json!({"top_k": 2})),
        ));
        assert_same_labels(&top2, &case["pipeline_top_k_2"], &what);
    }
}

#[test]
fn a_checkpoint_with_only_pytorch_weights_gives_the_same_results() {
    // vit-imgcls-bin holds vit-imgcls's weights as pytorch_model.bin only.
    let task = TaskKind::ImageClassification;
    let files = model_files("vit-imgcls-bin");
    assert_eq!(files.weight_file().as_deref(), Some("pytorch_model.bin"));
    let from_bin = pipeline::load(task, &files, &Device::Cpu).unwrap();
    let from_safetensors = vit();
    for case in cases("vit-imgcls") {
        let request = args(image_bytes(&case), json!({"top_k": 5}));
        assert_eq!(
            run(from_bin.as_ref(), task, &request),
            run(&from_safetensors, task, &request),
            "{}",
            case["image"]
        );
        let default = labels_of(run(
            from_bin.as_ref(),
            task,
            &args(image_bytes(&case), json!({})),
        ));
        assert_same_labels(&default, &case["pipeline"], &case["image"].to_string());
    }
    // A damaged state dict is a load error naming the file.
    let dir = tempfile::tempdir().unwrap();
    for name in ["config.json", "preprocessor_config.json"] {
        std::fs::copy(
            fixtures().join("vit-imgcls-bin").join(name),
            dir.path().join(name),
        )
        .unwrap();
    }
    std::fs::write(
        dir.path().join("pytorch_model.bin"),
        b"PK\x03\x04 not a zip",
    )
    .unwrap();
    let err = load_error(task, dir.path());
    assert!(
        matches!(&err, LocalError::Load { message, .. } if message.contains("pytorch_model.bin")),
        "{err}"
    );
}

#[test]
fn vit_top_k_and_score_function_arguments() {
    let task = TaskKind::ImageClassification;
    let pipe = vit();
    let case = &cases("vit-imgcls")[0];
    let one = labels_of(run(
        &pipe,
        task,
        &args(image_bytes(case), json!({"top_k": "1"})),
    ));
    assert_eq!(one.len(), 1);
    assert_eq!(one[0].label, case["pipeline"][0]["label"].as_str().unwrap());
    let raw = labels_of(run(
        &pipe,
        task,
        &args(image_bytes(case), json!({"function_to_apply": "none"})),
    ));
    let mut logits = floats(&case["logits"]);
    logits.sort_by(|a, b| b.total_cmp(a));
    let got: Vec<f32> = raw.iter().map(|l| l.score as f32).collect();
    assert!(max_diff(&got, &logits) < 1e-4);
    for bad in [
        json!({"top_k": -1}),
        json!({"top_k": 1.5}),
        json!({"top_k": "many"}),
    ] {
        let err = pipe
            .run(task, &args(image_bytes(case), bad.clone()))
            .unwrap_err();
        assert!(matches!(err, LocalError::BadInput { .. }), "{bad}: {err}");
    }
    let err = pipe
        .run(
            task,
            &args(image_bytes(case), json!({"function_to_apply": "tanh"})),
        )
        .unwrap_err();
    assert!(err.to_string().contains("function_to_apply"), "{err}");
}

// ---------------------------------------------------------------- YOLOS

#[test]
fn yolos_resize_is_pil_exact() {
    let model = yolos();
    for case in cases("yolos-det") {
        let image = decode_image(TaskKind::ObjectDetection, &image_bytes(&case)).unwrap();
        assert_eq!((image.height(), image.width()), hw(&case["original_size"]));
        let processed = hw(&case["processed_size"]);
        assert_eq!(
            model
                .processor()
                .resized_size(image.height(), image.width()),
            processed
        );
        let resized = model
            .processor()
            .resize(TaskKind::ObjectDetection, &image)
            .unwrap();
        assert_eq!(
            resized.as_raw(),
            resized_image(&case, processed).as_raw(),
            "{}",
            case["image"]
        );
    }
}

#[test]
fn yolos_pixel_values_match() {
    let model = yolos();
    for case in cases("yolos-det") {
        let processed = hw(&case["processed_size"]);
        let (values, size) = model
            .processor()
            .pixel_values(TaskKind::ObjectDetection, &resized_image(&case, processed))
            .unwrap();
        assert_eq!(size, (processed.0 as usize, processed.1 as usize));
        let diff = max_diff(&values, &floats(&case["pixel_values"]));
        assert!(diff <= 1e-6, "{}: {diff}", case["image"]);
    }
}

#[test]
fn yolos_logits_and_boxes_match() {
    let model = yolos();
    for case in cases("yolos-det") {
        let raw = model
            .predict(&pixel_tensor(&case, hw(&case["processed_size"])))
            .unwrap();
        let (logits, boxes) = (raw.logits, raw.boxes);
        assert_eq!(logits.len(), 10);
        let flat = |rows: &Vec<Vec<f32>>| rows.concat();
        let diff = max_diff(&flat(&logits), &floats(&case["logits"]));
        assert!(diff < 1e-4, "{} logits: {diff}", case["image"]);
        let diff = max_diff(&flat(&boxes), &floats(&case["pred_boxes"]));
        assert!(diff < 1e-4, "{} boxes: {diff}", case["image"]);
    }
}

#[test]
fn yolos_post_processing_matches() {
    let model = yolos();
    for case in cases("yolos-det") {
        let what = case["image"].to_string();
        let raw = model
            .predict(&pixel_tensor(&case, hw(&case["processed_size"])))
            .unwrap();
        let kept = post_process(&raw.logits, &raw.boxes, hw(&case["original_size"]), 0.0);
        let want = &case["post_processed_threshold_0"];
        let labels: Vec<u64> = kept.iter().map(|d| d.label as u64).collect();
        let want_labels: Vec<u64> = want["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(labels, want_labels, "{what}");
        let scores: Vec<f32> = kept.iter().map(|d| d.score).collect();
        assert!(max_diff(&scores, &floats(&want["scores"])) < 1e-5, "{what}");
        let got_boxes: Vec<f32> = kept.iter().flat_map(|d| d.bbox).collect();
        let diff = max_diff(&got_boxes, &floats(&want["boxes"]));
        assert!(diff < 1e-3, "{what}: boxes differ by {diff}");
    }
}

fn detections_of(output: InferenceOutput) -> Vec<Detection> {
    match output {
        InferenceOutput::Detections(d) => d,
        other => panic!("expected detections, got {other:?}"),
    }
}

fn assert_same_detections(got: &[Detection], want: &Value, what: &str) {
    let want = want.as_array().unwrap();
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.label, w["label"].as_str().unwrap(), "{what}");
        assert!(
            (g.score - w["score"].as_f64().unwrap()).abs() < 1e-5,
            "{what}"
        );
        let b = &w["box"];
        let want_box = ["xmin", "ymin", "xmax", "ymax"].map(|k| b[k].as_f64().unwrap());
        let got_box = [g.bbox.xmin, g.bbox.ymin, g.bbox.xmax, g.bbox.ymax];
        assert_eq!(got_box, want_box, "{what}");
    }
}

#[test]
fn yolos_pipeline_outputs_match_at_every_threshold() {
    let task = TaskKind::ObjectDetection;
    let pipe = pipeline::load(task, &model_files("yolos-det"), &Device::Cpu).unwrap();
    assert_eq!(pipe.tasks(), &[task]);
    for case in cases("yolos-det") {
        let what = case["image"].to_string();
        for (params, key) in [
            (json!({}), "pipeline"),
            (json!({"threshold": 0}), "pipeline_threshold_0"),
            (json!({"threshold": 0.3}), "pipeline_threshold_0_3"),
            (json!({"threshold": "0.3"}), "pipeline_threshold_0_3"),
        ] {
            let got = detections_of(run(pipe.as_ref(), task, &args(image_bytes(&case), params)));
            assert_same_detections(&got, &case[key], &format!("{what} {key}"));
        }
    }
    // The default threshold keeps nothing here, so check that it is 0.5 and strict.
    assert_eq!(hgpt_local::vision::detection::DEFAULT_THRESHOLD, 0.5);
}

#[test]
fn yolos_threshold_must_be_a_number() {
    let pipe = yolos();
    let case = &cases("yolos-det")[0];
    let err = pipe
        .run(
            TaskKind::ObjectDetection,
            &args(image_bytes(case), json!({"threshold": [0.1]})),
        )
        .unwrap_err();
    assert!(
        matches!(&err, LocalError::BadInput { message, .. } if message.contains("threshold")),
        "{err}"
    );
}

// ---------------------------------------------------------------- errors

#[test]
fn undecodable_or_missing_images_are_bad_input() {
    let classifier = vit();
    let detector = yolos();
    let pipes: [(&dyn Pipeline, TaskKind); 2] = [
        (&classifier, TaskKind::ImageClassification),
        (&detector, TaskKind::ObjectDetection),
    ];
    for (pipe, task) in pipes {
        let err = pipe
            .run(task, &args(b"definitely not an image".to_vec(), json!({})))
            .unwrap_err();
        match &err {
            LocalError::BadInput { task: t, message } => {
                assert_eq!(*t, task);
                assert!(message.contains("cannot decode the image"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // A PNG signature followed by garbage: the decoder's own error is named.
        let mut broken = b"\x89PNG\r\n\x1a\n".to_vec();
        broken.extend_from_slice(&[0u8; 40]);
        let err = pipe.run(task, &args(broken, json!({}))).unwrap_err();
        assert!(
            matches!(&err, LocalError::BadInput { message, .. } if message.starts_with("cannot decode the image: ") && message.len() > "cannot decode the image: ".len()),
            "{err}"
        );
        let err = pipe.run(task, &ResolvedArgs::default()).unwrap_err();
        assert!(
            matches!(&err, LocalError::BadInput { message, .. } if message == "no image given"),
            "{err}"
        );
        let err = pipe.run(task, &args(Vec::new(), json!({}))).unwrap_err();
        assert!(matches!(err, LocalError::BadInput { .. }), "{err}");
    }
}

#[test]
fn other_image_formats_decode() {
    let original = decode_image(
        TaskKind::ImageClassification,
        &std::fs::read(fixtures().join("images/shapes_64x48.png")).unwrap(),
    )
    .unwrap();
    let mut jpeg = Vec::new();
    original
        .write_to(
            &mut std::io::Cursor::new(&mut jpeg),
            image::ImageFormat::Jpeg,
        )
        .unwrap();
    let decoded = decode_image(TaskKind::ImageClassification, &jpeg).unwrap();
    assert_eq!(decoded.dimensions(), (64, 48));
    let pipe = vit();
    let labels = labels_of(run(
        &pipe,
        TaskKind::ImageClassification,
        &args(jpeg, json!({})),
    ));
    assert_eq!(labels.len(), 4);
}

#[test]
fn weight_bytes_is_the_safetensors_size() {
    for (name, task) in [
        ("vit-imgcls", TaskKind::ImageClassification),
        ("yolos-det", TaskKind::ObjectDetection),
    ] {
        let pipe = pipeline::load(task, &model_files(name), &Device::Cpu).unwrap();
        let size = std::fs::metadata(fixtures().join(name).join("model.safetensors"))
            .unwrap()
            .len();
        assert_eq!(pipe.weight_bytes(), size);
    }
}

/// A model folder holding copies of `from`'s files, with `config.json`
/// edited and `model.safetensors` taken from `weights_from`.
fn altered_model(
    from: &str,
    weights_from: &str,
    edit: impl FnOnce(&mut Value),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let src = fixtures().join(from);
    let copy = |name: &str, src: &Path| {
        std::fs::copy(src.join(name), dir.path().join(name)).unwrap();
    };
    copy("preprocessor_config.json", &src);
    copy("model.safetensors", &fixtures().join(weights_from));
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();
    dir
}

fn load_error(task: TaskKind, dir: &Path) -> LocalError {
    let files = ModelFiles::from_dir("test/altered", dir);
    match pipeline::load(task, &files, &Device::Cpu) {
        Ok(_) => panic!("loaded a broken model"),
        Err(e) => e,
    }
}

#[test]
fn weights_with_unexpected_shapes_or_names_fail_to_load() {
    // Shapes: the config says 48-wide MLPs, the weights have 37.
    let dir = altered_model("vit-imgcls", "vit-imgcls", |c| {
        c["intermediate_size"] = json!(48)
    });
    let err = load_error(TaskKind::ImageClassification, dir.path());
    assert!(
        matches!(&err, LocalError::Load { message, .. } if message.contains("intermediate.dense") && message.contains("shape")),
        "{err}"
    );
    // Names: the head saved as `head.*` instead of `classifier.*`.
    let dir = altered_model("vit-imgcls", "vit-imgcls", |_| {});
    let weights = dir.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    for name in ["weight", "bias"] {
        let t = tensors.remove(&format!("classifier.{name}")).unwrap();
        tensors.insert(format!("head.{name}"), t);
    }
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let err = load_error(TaskKind::ImageClassification, dir.path());
    assert!(
        matches!(&err, LocalError::Load { message, .. } if message.contains("classifier.weight")),
        "{err}"
    );
    // Another family's weights: YOLOS tensors under the ViT config.
    let dir = altered_model("vit-imgcls", "yolos-det", |_| {});
    let err = load_error(TaskKind::ImageClassification, dir.path());
    assert!(
        matches!(&err, LocalError::Load { message, .. } if message.contains("position_embeddings")),
        "{err}"
    );
    // Labels: 5 classes in the config, 3 + no-object in the weights.
    let dir = altered_model("yolos-det", "yolos-det", |c| {
        c["id2label"]["3"] = json!("cat");
        c["id2label"]["4"] = json!("tree");
    });
    let err = load_error(TaskKind::ObjectDetection, dir.path());
    assert!(
        matches!(&err, LocalError::Load { message, .. } if message.contains("class_labels_classifier")),
        "{err}"
    );
    // A config that cannot describe a model is a load error too, not a panic.
    let dir = altered_model("yolos-det", "yolos-det", |c| {
        c["num_attention_heads"] = json!(5)
    });
    let err = load_error(TaskKind::ObjectDetection, dir.path());
    assert!(
        matches!(&err, LocalError::Load { message, .. } if message.contains("num_attention_heads")),
        "{err}"
    );
    // A corrupt weights file.
    let dir = altered_model("yolos-det", "yolos-det", |_| {});
    std::fs::write(dir.path().join("model.safetensors"), b"not safetensors").unwrap();
    let err = load_error(TaskKind::ObjectDetection, dir.path());
    assert!(matches!(err, LocalError::Load { .. }), "{err}");
}

#[test]
fn wrong_architectures_and_missing_files_are_reported() {
    let err = match pipeline::load(
        TaskKind::ObjectDetection,
        &model_files("vit-imgcls"),
        &Device::Cpu,
    ) {
        Ok(_) => panic!("a ViT classifier loaded as a detector"),
        Err(e) => e,
    };
    assert!(
        matches!(&err, LocalError::Unsupported(m) if m.contains("YolosForObjectDetection")),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("vit-imgcls/config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    let err = load_error(TaskKind::ImageClassification, dir.path());
    assert!(
        matches!(&err, LocalError::MissingFiles { missing, .. } if missing == "preprocessor_config.json, model.safetensors or pytorch_model.bin"),
        "{err}"
    );
    // A processor whose output does not fit the model's position embeddings.
    let dir = altered_model("vit-imgcls", "vit-imgcls", |_| {});
    let processor = json!({"size": {"height": 48, "width": 48}, "resample": 2});
    std::fs::write(
        dir.path().join("preprocessor_config.json"),
        processor.to_string(),
    )
    .unwrap();
    let err = load_error(TaskKind::ImageClassification, dir.path());
    assert!(
        matches!(&err, LocalError::Load { message, .. } if message.contains("48x48") && message.contains("32x32")),
        "{err}"
    );
    assert!(pipeline::supports(TaskKind::ImageClassification));
    assert!(pipeline::supports(TaskKind::ObjectDetection));
}

#[test]
fn segformer_logits_and_masks_match_transformers() {
    let task = TaskKind::ImageSegmentation;
    let files = model_files("segformer-seg");
    assert_eq!(pipeline::task_of(&files), Some(task));
    let segmenter = hgpt_local::vision::Segmenter::load(&files, &Device::Cpu).unwrap();
    let pipe = pipeline::load(task, &files, &Device::Cpu).unwrap();
    for case in cases("segformer-seg") {
        let what = case["image"].to_string();
        let image = decode_image(task, &image_bytes(&case)).unwrap();
        let logits = segmenter.logits(&image).unwrap();
        assert_eq!(logits.dims(), [4, 8, 8], "{what}");
        let logits = logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let diff = max_diff(&logits, &floats(&case["logits"]));
        assert!(diff < 1e-4, "{what}: logits differ by {diff}");

        let InferenceOutput::Segments(segments) =
            run(pipe.as_ref(), task, &args(image_bytes(&case), json!({})))
        else {
            panic!("{what}: not segments")
        };
        let expected = case["pipeline"].as_array().unwrap();
        assert_eq!(segments.len(), expected.len(), "{what}");
        for (got, want) in segments.iter().zip(expected) {
            assert_eq!(got.label, want["label"].as_str().unwrap(), "{what}");
            assert_eq!(got.score, None, "{what}");
            let png = base64::engine::general_purpose::STANDARD
                .decode(&got.mask)
                .unwrap();
            let mask = image::load_from_memory(&png).unwrap().into_luma8();
            assert_eq!(mask.dimensions(), image.dimensions(), "{what}");
            let bits: Vec<u64> = mask.pixels().map(|p| u64::from(p.0[0] / 255)).collect();
            let want: Vec<u64> = want["mask"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap())
                .collect();
            assert!(mask.pixels().all(|p| p.0[0] == 0 || p.0[0] == 255));
            assert_eq!(bits, want, "{what}: mask of {}", got.label);
        }
    }
    // Only semantic segmentation.
    let case = &cases("segformer-seg")[0];
    let err = pipe
        .run(
            task,
            &args(image_bytes(case), json!({"subtask": "panoptic"})),
        )
        .unwrap_err();
    assert!(matches!(err, LocalError::BadInput { .. }), "{err}");
}

// ---------------------------------------------------------------- DETR

/// The DETR fixture with transformers' ResNet names, and the same weights
/// with timm's names (as the Hub's checkpoints have them).
const DETR_FIXTURES: [&str; 2] = ["detr-det", "detr-det-timm"];

#[test]
fn detr_encoder_logits_and_boxes_match_with_either_backbone_naming() {
    let task = TaskKind::ObjectDetection;
    for name in DETR_FIXTURES {
        let files = model_files(name);
        assert_eq!(pipeline::task_of(&files), Some(task), "{name}");
        let detector = ObjectDetector::load_detr(&files, &Device::Cpu).unwrap();
        let config: hgpt_local::vision::detr::DetrConfig = serde_json::from_str(
            &std::fs::read_to_string(fixtures().join(name).join("config.json")).unwrap(),
        )
        .unwrap();
        let weights = files.weights(&Device::Cpu).unwrap();
        let model = DetrForObjectDetection::load(&config, 3, weights.vb).unwrap();
        for case in cases(name) {
            let what = format!("{name} {}", case["image"]);
            let image = decode_image(task, &image_bytes(&case)).unwrap();
            let processed = hw(&case["processed_size"]);
            assert_eq!(
                detector
                    .processor()
                    .resized_size(image.height(), image.width()),
                processed,
                "{what}"
            );
            let pixels = detector
                .processor()
                .preprocess(task, &image, &Device::Cpu)
                .unwrap();
            let diff = max_diff(
                &pixels.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                &floats(&case["pixel_values"]),
            );
            assert!(diff <= 1e-6, "{what}: pixel values differ by {diff}");

            let pixels = pixel_tensor(&case, processed);
            let (states, _) = model.encode(&pixels).unwrap();
            let states = states.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let diff = max_diff(&states, &floats(&case["encoder_hidden_state"]));
            assert!(diff < 1e-4, "{what}: encoder states differ by {diff}");

            let raw = detector.predict(&pixels).unwrap();
            let diff = max_diff(&raw.logits.concat(), &floats(&case["logits"]));
            assert!(diff < 1e-4, "{what}: logits differ by {diff}");
            let diff = max_diff(&raw.boxes.concat(), &floats(&case["pred_boxes"]));
            assert!(diff < 1e-4, "{what}: boxes differ by {diff}");

            let kept = post_process(&raw.logits, &raw.boxes, hw(&case["original_size"]), 0.0);
            let want = &case["post_processed_threshold_0"];
            let got_boxes: Vec<f32> = kept.iter().flat_map(|d| d.bbox).collect();
            let diff = max_diff(&got_boxes, &floats(&want["boxes"]));
            assert!(diff < 1e-3, "{what}: boxes differ by {diff} px");
        }
    }
}

#[test]
fn detr_pipeline_outputs_match_at_every_threshold() {
    let task = TaskKind::ObjectDetection;
    for name in DETR_FIXTURES {
        let pipe = pipeline::load(task, &model_files(name), &Device::Cpu).unwrap();
        for case in cases(name) {
            let what = format!("{name} {}", case["image"]);
            for (params, key) in [
                (json!({}), "pipeline"),
                (json!({"threshold": 0}), "pipeline_threshold_0"),
                (json!({"threshold": 0.3}), "pipeline_threshold_0_3"),
            ] {
                let got =
                    detections_of(run(pipe.as_ref(), task, &args(image_bytes(&case), params)));
                assert_same_detections(&got, &case[key], &format!("{what} {key}"));
            }
        }
    }
}

#[test]
fn detr_checkpoints_hgpt_cannot_run_are_refused_with_the_reason() {
    let task = TaskKind::ObjectDetection;
    for (edit, needle) in [
        (json!({"dilation": true}), "dilated"),
        (json!({"backbone": "efficientnet_b0"}), "efficientnet_b0"),
        (json!({"position_embedding_type": "learned"}), "learned"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        for entry in std::fs::read_dir(fixtures().join("detr-det-timm")).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
        let path = dir.path().join("config.json");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for (key, value) in edit.as_object().unwrap() {
            config[key] = value.clone();
        }
        std::fs::write(&path, config.to_string()).unwrap();
        let files = ModelFiles::from_dir("org/detr", dir.path());
        let err = pipeline::load(task, &files, &Device::Cpu).err().unwrap();
        assert!(
            matches!(&err, LocalError::Load { message, .. } if message.contains(needle)),
            "{needle}: {err}"
        );
    }
    // Weights that do not match the config name the tensor.
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures().join("detr-det")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let path = dir.path().join("config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    config["d_model"] = json!(64);
    std::fs::write(&path, config.to_string()).unwrap();
    let err = pipeline::load(
        task,
        &ModelFiles::from_dir("org/detr", dir.path()),
        &Device::Cpu,
    )
    .err()
    .unwrap();
    assert!(
        matches!(&err, LocalError::Load { message, .. } if message.contains("weights")),
        "{err}"
    );
}

/// A PNG whose header claims `width` x `height` RGB pixels, with one tiny
/// (invalid) data chunk: decoding must refuse it before allocating.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let chunk = |kind: &[u8], data: &[u8]| {
        let mut out = (data.len() as u32).to_be_bytes().to_vec();
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
        out
    };
    let mut ihdr = width.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(chunk(b"IHDR", &ihdr));
    png.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    png.extend(chunk(b"IEND", &[]));
    png
}

#[test]
fn a_huge_image_is_refused_without_allocating_it() {
    // 100000 x 100000 RGB would be 30 GB.
    let err = decode_image(TaskKind::ImageToText, &png_claiming(100_000, 100_000)).unwrap_err();
    assert!(
        matches!(&err, LocalError::BadInput { message, .. } if message.contains("100000x100000") && message.contains("64 million")),
        "{err}"
    );
    // Just under the limit is not refused for its size (its data is broken).
    let err = decode_image(TaskKind::ImageToText, &png_claiming(8000, 8000)).unwrap_err();
    assert!(err.to_string().contains("cannot decode the image"), "{err}");
}
