//! Parity of Stable Diffusion and SDXL text-to-image and image-to-image
//! with diffusers 0.36 on the tiny random pipelines in
//! `tests/fixtures/sd-tiny` and `tests/fixtures/sdxl-tiny` (made by
//! `scripts/make_fixtures.py`), fed the latents and noise diffusers drew, for
//! the PNDM, DDIM, Euler and Euler ancestral schedulers; the pipelines'
//! parameters, output and errors.

mod common;

use candle_core::{Device, Tensor};
use common::*;
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{Blob, InferenceOutput};
use hgpt_core::task::TaskKind;
use hgpt_local::diffusion::{GenerationRequest, InitImage, Noise, StableDiffusion, to_rgb};
use hgpt_local::pipeline;
use hgpt_local::vision::decode_image;
use hgpt_local::{LocalError, ModelFiles};
use serde_json::{Value, json};
use std::cell::Cell;
use std::path::Path;

const NAME: &str = "sd-tiny";
/// The SDXL fixture (sdxl-turbo's layout and scheduler).
const XL_NAME: &str = "sdxl-tiny";
/// Largest difference allowed between hgpt's decoded images (values around
/// [-3, 3]) and diffusers': f32 sums in other orders (Winograd convolutions,
/// blocked attention and GEMMs against PyTorch's) carried through up to 5
/// UNet evaluations, the schedulers' updates and the decoder.
const TOLERANCE: f32 = 5e-5;

fn expected(name: &str) -> Value {
    let path = fixtures().join(name).join("expected.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A copy of the SD fixture with `edit` applied.
fn edited(id: &str, edit: impl FnOnce(&Path)) -> (tempfile::TempDir, ModelFiles) {
    edited_fixture(NAME, id, edit)
}

/// A copy of fixture `name` with `edit` applied.
fn edited_fixture(
    name: &str,
    id: &str,
    edit: impl FnOnce(&Path),
) -> (tempfile::TempDir, ModelFiles) {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixtures().join(name), dir.path());
    edit(dir.path());
    let files = ModelFiles::from_dir(id, dir.path());
    (dir, files)
}

/// Fixture `name` with the scheduler a case ran.
fn with_scheduler(name: &str, case: &Value) -> (tempfile::TempDir, StableDiffusion) {
    let (dir, files) = edited_fixture(name, &format!("hgpt-fixtures/{name}"), |dir| {
        let mut config = case["scheduler_config"].clone();
        config["_class_name"] = case["scheduler"].clone();
        std::fs::write(
            dir.join("scheduler/scheduler_config.json"),
            config.to_string(),
        )
        .unwrap();
    });
    let model = StableDiffusion::load(&files, &Device::Cpu).unwrap();
    (dir, model)
}

fn latent_tensor(values: &Value, width: usize, height: usize) -> Tensor {
    Tensor::from_vec(floats(values), (1, 4, height / 4, width / 4), &Device::Cpu).unwrap()
}

/// The noise an ancestral scheduler drew at each step (none for others).
fn step_noises(case: &Value, width: usize, height: usize) -> Vec<Tensor> {
    case.get("step_noises")
        .and_then(Value::as_array)
        .map(|noises| {
            noises
                .iter()
                .map(|n| latent_tensor(n, width, height))
                .collect()
        })
        .unwrap_or_default()
}

fn size(case: &Value) -> (usize, usize) {
    (
        case["width"].as_u64().unwrap() as usize,
        case["height"].as_u64().unwrap() as usize,
    )
}

/// Compare a decoded image with diffusers'; check that the post-processing
/// renders diffusers' own decoded image to exactly its pipeline's bytes.
fn assert_same_image(decoded: &Tensor, case: &Value, what: &str) {
    let diff = max_diff(&values(decoded), &floats(&case["image"]));
    eprintln!("{what}: max diff {diff:e}");
    assert!(diff < TOLERANCE, "{what}: max diff {diff}");
    let theirs = Tensor::from_vec(floats(&case["image"]), decoded.dims(), &Device::Cpu).unwrap();
    let pixels = to_rgb(&theirs).unwrap().into_raw();
    let want: Vec<u8> = case["pixels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u8)
        .collect();
    assert_eq!(pixels, want, "{what}");
}

#[test]
fn text_to_image_matches_diffusers() {
    for name in [NAME, XL_NAME] {
        text_to_image_matches(name);
    }
}

fn text_to_image_matches(name: &str) {
    for case in expected(name)["text_to_image"].as_array().unwrap() {
        let what = format!(
            "{name}: {} {} steps, guidance {}, negative {}",
            case["scheduler"],
            case["num_inference_steps"],
            case["guidance_scale"],
            case["negative_prompt"]
        );
        let (_dir, model) = with_scheduler(name, case);
        let (width, height) = size(case);
        let request = GenerationRequest {
            prompt: case["prompt"].as_str().unwrap().to_string(),
            negative_prompt: case["negative_prompt"].as_str().map(str::to_string),
            num_inference_steps: case["num_inference_steps"].as_u64().unwrap() as usize,
            guidance_scale: case["guidance_scale"].as_f64().unwrap(),
            width,
            height,
            seed: 0,
            init: None,
        };
        let noise = Noise {
            latents: latent_tensor(&case["latents"], width, height),
            posterior: None,
            steps: step_noises(case, width, height),
        };
        let steps = Cell::new(Vec::new());
        let on_step = |done: usize, total: usize| {
            let mut seen = steps.take();
            seen.push((done, total));
            steps.set(seen);
        };
        let decoded = model
            .generate_with_noise(&request, &noise, &on_step)
            .unwrap();
        assert_eq!(decoded.dims(), &[3, height, width], "{what}");
        assert_same_image(&decoded, case, &what);
        // Every model evaluation is reported (PNDM repeats one timestep).
        let total = case["timesteps"].as_array().unwrap().len();
        let want: Vec<(usize, usize)> = (1..=total).map(|done| (done, total)).collect();
        assert_eq!(steps.take(), want, "{what}");
    }
}

#[test]
fn image_to_image_matches_diffusers() {
    for name in [NAME, XL_NAME] {
        image_to_image_matches(name);
    }
}

fn image_to_image_matches(name: &str) {
    for case in expected(name)["image_to_image"].as_array().unwrap() {
        let what = format!(
            "{name}: img2img {} strength {}",
            case["scheduler"], case["strength"]
        );
        let (_dir, model) = with_scheduler(name, case);
        let (width, height) = size(case);
        let bytes = std::fs::read(fixtures().join(case["image_in"].as_str().unwrap())).unwrap();
        let request = GenerationRequest {
            prompt: case["prompt"].as_str().unwrap().to_string(),
            negative_prompt: None,
            num_inference_steps: case["num_inference_steps"].as_u64().unwrap() as usize,
            guidance_scale: case["guidance_scale"].as_f64().unwrap(),
            width: 0,
            height: 0,
            seed: 0,
            init: Some(InitImage {
                image: decode_image(TaskKind::ImageToImage, &bytes).unwrap(),
                strength: case["strength"].as_f64().unwrap(),
            }),
        };
        let noise = Noise {
            latents: latent_tensor(&case["noise"], width, height),
            posterior: Some(latent_tensor(&case["posterior_noise"], width, height)),
            steps: step_noises(case, width, height),
        };
        let count = Cell::new(0);
        let decoded = model
            .generate_with_noise(&request, &noise, &|_, _| count.set(count.get() + 1))
            .unwrap();
        assert_eq!(decoded.dims(), &[3, height, width], "{what}");
        assert_same_image(&decoded, case, &what);
        assert!(count.get() >= 1, "{what}");
    }
}

#[test]
fn prompts_tokenize_as_the_clip_tokenizer() {
    let model = StableDiffusion::load(&model_files(NAME), &Device::Cpu).unwrap();
    let expected = expected(NAME);
    let case = &expected["text_to_image"][0];
    assert_eq!(
        model.prompt_ids(case["prompt"].as_str().unwrap()).unwrap(),
        ids(&expected["input_ids"])
    );
    assert_eq!(
        model.prompt_ids("blurry, dark").unwrap(),
        ids(&expected["negative_input_ids"])
    );
    assert_eq!(
        model.prompt_ids("").unwrap(),
        ids(&expected["empty_input_ids"])
    );
    // A long prompt is cut to 75 tokens between the start and end tokens.
    let long = model.prompt_ids(&"red car ".repeat(100)).unwrap();
    assert_eq!(long.len(), 77);
    assert_eq!(long[76], *ids(&expected["input_ids"]).iter().max().unwrap());
}

fn text_args(text: &str, other: Value) -> ResolvedArgs {
    ResolvedArgs {
        text: Some(text.to_string()),
        other: serde_json::from_value(other).unwrap(),
        ..ResolvedArgs::default()
    }
}

fn png_of(output: InferenceOutput) -> Vec<u8> {
    match output {
        InferenceOutput::Media(Blob { bytes, mime }) => {
            assert_eq!(mime.as_deref(), Some("image/png"));
            bytes.to_vec()
        }
        other => panic!("not media: {other:?}"),
    }
}

#[test]
fn the_pipeline_is_found_from_model_index_and_makes_pngs() {
    let files = model_files(NAME);
    assert_eq!(pipeline::task_of(&files), Some(TaskKind::TextToImage));
    let pipe = pipeline::load(TaskKind::TextToImage, &files, &Device::Cpu).unwrap();
    assert_eq!(
        pipe.tasks(),
        &[TaskKind::TextToImage, TaskKind::ImageToImage]
    );
    // fp16 files, held as f32.
    assert!(pipe.weight_bytes() > 1_500_000, "{}", pipe.weight_bytes());
    let args = |seed: u64, prompt: &str| {
        text_args(
            prompt,
            json!({"parameters": {"num_inference_steps": 2, "width": 16, "height": 24, "seed": seed}}),
        )
    };
    let first = png_of(
        pipe.run(TaskKind::TextToImage, &args(3, "a red car"))
            .unwrap(),
    );
    let image = decode_image(TaskKind::TextToImage, &first).unwrap();
    assert_eq!(image.dimensions(), (16, 24));
    let again = png_of(
        pipe.run(TaskKind::TextToImage, &args(3, "a red car"))
            .unwrap(),
    );
    assert_eq!(first, again, "a seed gives the same image");
    let other = png_of(
        pipe.run(TaskKind::TextToImage, &args(4, "a red car"))
            .unwrap(),
    );
    assert_ne!(first, other, "another seed gives another image");
    // Each denoising step is reported (PNDM takes 3 for 2 inference steps,
    // as diffusers' loop does), and the image is the same.
    let steps = std::sync::Mutex::new(Vec::new());
    let reported = png_of(
        pipe.run_with_progress(TaskKind::TextToImage, &args(3, "a red car"), &|step| {
            steps.lock().unwrap().push((step.done, step.total))
        })
        .unwrap(),
    );
    assert_eq!(reported, first);
    assert_eq!(steps.into_inner().unwrap(), [(1, 3), (2, 3), (3, 3)]);
    // An empty prompt is allowed, as in diffusers; the default size is the
    // UNet's sample size times the VAE's scale (8 x 4).
    let empty = text_args("", json!({"num_inference_steps": 1}));
    let image = decode_image(
        TaskKind::TextToImage,
        &png_of(pipe.run(TaskKind::TextToImage, &empty).unwrap()),
    )
    .unwrap();
    assert_eq!(image.dimensions(), (32, 32));
    // Image-to-image: the image's size cut to multiples of 4.
    let bytes = std::fs::read(fixtures().join("images/gradient_40x30.png")).unwrap();
    let img2img = ResolvedArgs {
        text: Some("a red car".into()),
        image: Some(Blob::sniffed(bytes)),
        other: serde_json::from_value(json!({"strength": 0.5, "num_inference_steps": 2})).unwrap(),
        ..ResolvedArgs::default()
    };
    let pipe = pipeline::load(TaskKind::ImageToImage, &files, &Device::Cpu).unwrap();
    let out = png_of(pipe.run(TaskKind::ImageToImage, &img2img).unwrap());
    let image = decode_image(TaskKind::ImageToImage, &out).unwrap();
    assert_eq!(image.dimensions(), (40, 28));
}

#[test]
fn bad_requests_are_refused_by_name() {
    let model = StableDiffusion::load(&model_files(NAME), &Device::Cpu).unwrap();
    let t2i = TaskKind::TextToImage;
    let refused = |task: TaskKind, args: ResolvedArgs, wanted: &str| {
        let err = model.request(task, &args).unwrap_err();
        assert!(
            matches!(&err, LocalError::BadInput { message, .. } if message.contains(wanted)),
            "{wanted}: {err}"
        );
    };
    refused(t2i, text_args("x", json!({"width": 12})), "multiple of 8");
    refused(
        t2i,
        text_args("x", json!({"height": 4096})),
        "from 8 to 2048",
    );
    refused(
        t2i,
        text_args("x", json!({"width": 2048, "height": 2048})),
        "pixels",
    );
    refused(
        t2i,
        text_args("x", json!({"num_inference_steps": 0})),
        "num_inference_steps",
    );
    refused(
        t2i,
        text_args("x", json!({"guidance_scale": -1})),
        "guidance_scale",
    );
    refused(t2i, text_args("x", json!({"seed": -3})), "seed");
    refused(
        t2i,
        text_args("x", json!({"negative_prompt": 5})),
        "negative_prompt",
    );
    refused(t2i, ResolvedArgs::default(), "no prompt");
    let i2i = TaskKind::ImageToImage;
    refused(i2i, text_args("x", json!({})), "no image");
    let bytes = std::fs::read(fixtures().join("images/gradient_40x30.png")).unwrap();
    let with_image = |other: Value| ResolvedArgs {
        image: Some(Blob::sniffed(bytes.clone())),
        other: serde_json::from_value(other).unwrap(),
        ..ResolvedArgs::default()
    };
    for strength in [json!(0), json!(1.5), json!("strong")] {
        refused(i2i, with_image(json!({"strength": strength})), "strength");
    }
    // Defaults: diffusers' pipeline defaults, strength 0.8, no prompt is "".
    let request = model.request(i2i, &with_image(json!({}))).unwrap();
    assert_eq!(request.prompt, "");
    assert_eq!(request.num_inference_steps, 50);
    assert_eq!(request.guidance_scale, 7.5);
    assert_eq!(request.init.unwrap().strength, 0.8);
    // A strength too small for the steps leaves nothing to run.
    let request = model
        .request(
            i2i,
            &with_image(json!({"strength": 0.1, "num_inference_steps": 2})),
        )
        .unwrap();
    let err = model.generate(&request, &|_, _| {}).unwrap_err();
    assert!(err.to_string().contains("leaves no step"), "{err}");
}

#[test]
fn broken_and_other_repositories_are_named() {
    let (_dir, files) = edited("org/no-vae", |dir| {
        std::fs::remove_dir_all(dir.join("vae")).unwrap();
    });
    let err = StableDiffusion::load(&files, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, LocalError::MissingFiles { missing, .. } if missing.contains("vae/config.json")),
        "{err}"
    );
    let (_dir, files) = edited("stabilityai/stable-diffusion-3-medium", |dir| {
        std::fs::write(
            dir.join("model_index.json"),
            r#"{"_class_name": "StableDiffusion3Pipeline"}"#,
        )
        .unwrap();
    });
    assert_eq!(pipeline::task_of(&files), None);
    let err = pipeline::load(TaskKind::TextToImage, &files, &Device::Cpu)
        .err()
        .unwrap();
    assert!(
        matches!(&err, LocalError::Unsupported(m) if m.contains("StableDiffusion3Pipeline")),
        "{err}"
    );
    // An inpainting UNet (9 input channels) is refused, not run.
    let (_dir, files) = edited("org/inpaint", |dir| {
        let path = dir.join("unet/config.json");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config["in_channels"] = json!(9);
        std::fs::write(path, config.to_string()).unwrap();
    });
    let err = StableDiffusion::load(&files, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, LocalError::Unsupported(m) if m.contains("inpainting")),
        "{err}"
    );
    // An unknown scheduler falls back to DDIM with the repository's config.
    let (_dir, files) = edited("org/lms", |dir| {
        let path = dir.join("scheduler/scheduler_config.json");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config["_class_name"] = json!("LMSDiscreteScheduler");
        std::fs::write(path, config.to_string()).unwrap();
    });
    let model = StableDiffusion::load(&files, &Device::Cpu).unwrap();
    assert!(format!("{model:?}").contains("Ddim"));
}

#[test]
fn sdxl_prompts_tokenize_with_both_tokenizers() {
    let model = StableDiffusion::load(&model_files(XL_NAME), &Device::Cpu).unwrap();
    let expected = expected(XL_NAME);
    assert!(model.is_xl());
    // The first tokenizer's ids; tokenizer_2 pads with "!" instead of the
    // end token, and the pooled output is taken at the end token all the
    // same (the parity cases depend on it).
    let prompt = expected["text_to_image"][0]["prompt"].as_str().unwrap();
    let first = ids(&expected["input_ids"]);
    let second = ids(&expected["input_ids_2"]);
    assert_eq!(model.prompt_ids(prompt).unwrap(), first);
    let content = first.iter().rposition(|&id| id != first[76]).unwrap();
    assert_eq!(first[..=content + 1], second[..=content + 1]);
    assert!(second[content + 2..].iter().all(|&id| id != first[76]));
}

#[test]
fn sdxl_pipelines_run_with_turbo_defaults_and_refuse_refiners() {
    let files = model_files(XL_NAME);
    assert_eq!(pipeline::task_of(&files), Some(TaskKind::TextToImage));
    assert!(pipeline::is_complete(&files));
    let model = StableDiffusion::load(&files, &Device::Cpu).unwrap();
    // Euler ancestral with trailing timesteps: a turbo model, run as
    // sdxl-turbo's card says; the size limit of a UNet that attends at half
    // resolution.
    let t2i = TaskKind::TextToImage;
    let request = model
        .request(t2i, &text_args("a red car", json!({})))
        .unwrap();
    assert_eq!(
        (request.num_inference_steps, request.guidance_scale),
        (1, 0.0)
    );
    assert_eq!((request.width, request.height), (32, 32));
    assert_eq!(model.max_pixels(), 1024 * 1024);
    assert!(
        model
            .request(t2i, &text_args("x", json!({"width": 1024, "height": 1024})))
            .is_ok()
    );
    let i2i = model.defaults(TaskKind::ImageToImage);
    assert_eq!((i2i.steps, i2i.strength), (2, 0.5));
    // Seeded generation draws the ancestral steps' noise too: repeatable,
    // and another seed differs.
    let pipe = pipeline::load(t2i, &files, &Device::Cpu).unwrap();
    let args = |seed: u64| {
        text_args(
            "a red car",
            json!({"num_inference_steps": 3, "guidance_scale": 2.0, "seed": seed}),
        )
    };
    let first = png_of(pipe.run(t2i, &args(5)).unwrap());
    assert_eq!(first, png_of(pipe.run(t2i, &args(5)).unwrap()));
    assert_ne!(first, png_of(pipe.run(t2i, &args(6)).unwrap()));
    // The step noise drawn as the steps run is what `Noise::seeded` draws
    // up front.
    let request = model.request(t2i, &args(5)).unwrap();
    let noise = Noise::seeded(5, (1, 4, 8, 8), false, 3, &Device::Cpu).unwrap();
    let given = model
        .generate_with_noise(&request, &noise, &|_, _| {})
        .unwrap();
    assert_eq!(
        to_rgb(&given).unwrap(),
        model.generate(&request, &|_, _| {}).unwrap()
    );
    let image = decode_image(t2i, &first).unwrap();
    assert_eq!(image.dimensions(), (32, 32));
    let bytes = std::fs::read(fixtures().join("images/gradient_40x30.png")).unwrap();
    let img2img = ResolvedArgs {
        text: Some("a red car".into()),
        image: Some(Blob::sniffed(bytes)),
        ..ResolvedArgs::default()
    };
    let out = png_of(pipe.run(TaskKind::ImageToImage, &img2img).unwrap());
    assert_eq!(
        decode_image(TaskKind::ImageToImage, &out)
            .unwrap()
            .dimensions(),
        (40, 28)
    );

    // The refiner (one text encoder, aesthetic scores) is refused by name.
    let (_dir, files) = edited_fixture(XL_NAME, "stabilityai/refiner", |dir| {
        let path = dir.join("model_index.json");
        let mut index: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        index["_class_name"] = json!("StableDiffusionXLImg2ImgPipeline");
        index["requires_aesthetics_score"] = json!(true);
        index["text_encoder"] = json!([null, null]);
        std::fs::write(path, index.to_string()).unwrap();
    });
    let err = StableDiffusion::load(&files, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, LocalError::Unsupported(m) if m.contains("refiner")),
        "{err}"
    );
    // A missing second encoder is named, and the cache check sees it.
    let (_dir, files) = edited_fixture(XL_NAME, "org/half-xl", |dir| {
        std::fs::remove_dir_all(dir.join("text_encoder_2")).unwrap();
    });
    assert!(!pipeline::is_complete(&files));
    let err = StableDiffusion::load(&files, &Device::Cpu).unwrap_err();
    assert!(
        matches!(&err, LocalError::MissingFiles { missing, .. } if missing.contains("text_encoder_2/config.json")),
        "{err}"
    );
    // An added embedding that does not fit the time ids and pooled text.
    let (_dir, files) = edited_fixture(XL_NAME, "org/odd-xl", |dir| {
        let path = dir.join("unet/config.json");
        let mut config: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        config["addition_time_embed_dim"] = json!(4);
        std::fs::write(path, config.to_string()).unwrap();
    });
    let err = StableDiffusion::load(&files, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("time ids"), "{err}");
    // An SD pipeline class over an SDXL UNet.
    let (_dir, files) = edited_fixture(XL_NAME, "org/mislabelled", |dir| {
        let path = dir.join("model_index.json");
        let mut index: Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        index["_class_name"] = json!("StableDiffusionPipeline");
        std::fs::write(path, index.to_string()).unwrap();
    });
    let err = StableDiffusion::load(&files, &Device::Cpu).unwrap_err();
    assert!(err.to_string().contains("attends to"), "{err}");
}
