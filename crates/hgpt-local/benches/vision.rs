//! Per-image latency of the local vision pipelines on full-size
//! architectures (random weights), against transformers (PyTorch CPU) in the
//! same run: `HGPT_BENCH_PYTHON=/abs/python cargo bench -p hgpt-local --bench
//! vision [-- FAMILY...]`. The Python (torch, transformers 4.57, pillow) also
//! writes the checkpoints, under `target/bench-models`
//! (`scripts/bench_vision.py`). Each family runs in its own process.

mod common;

use common::{each_in_own_process, rss_mb, run_python, start};

use candle_core::Device;
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::Blob;
use hgpt_core::task::TaskKind;
use hgpt_local::ModelFiles;
use hgpt_local::pipeline::{self, Pipeline};
use image::{ImageFormat, Rgb, RgbImage};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// (bench family, task) pairs the script knows.
const FAMILIES: &[(&str, TaskKind)] = &[
    ("segformer-b0", TaskKind::ImageSegmentation),
    ("vit-gpt2", TaskKind::ImageToText),
    ("blip-caption", TaskKind::ImageToText),
    ("blip-vqa", TaskKind::VisualQuestionAnswering),
    ("vilt-vqa", TaskKind::VisualQuestionAnswering),
    ("clip-b32", TaskKind::ZeroShotImageClassification),
    ("detr-resnet-50", TaskKind::ObjectDetection),
    ("detr-resnet-50-panoptic", TaskKind::ImageSegmentation),
    ("dpt-large", TaskKind::DepthEstimation),
    ("dpt-hybrid", TaskKind::DepthEstimation),
    ("depth-anything-v2-small", TaskKind::DepthEstimation),
];

/// The question the visual-question-answering benchmark asks.
const QUESTION: &str = "how many zebras are there?";

/// The labels the zero-shot benchmark scores.
const LABELS: [&str; 5] = ["a zebra", "a horse", "a cat", "a car", "a tree"];

/// A 640x480 test picture: gradients and blocks, so that every class map
/// has several regions.
fn picture(path: &Path) -> Vec<u8> {
    let image = RgbImage::from_fn(640, 480, |x, y| {
        let block = ((x / 80) + (y / 60)) % 3;
        Rgb([
            (x * 255 / 640) as u8,
            (y * 255 / 480) as u8,
            (block * 120) as u8,
        ])
    });
    if let Err(e) = image.save_with_format(path, ImageFormat::Png) {
        eprintln!("cannot write {}: {e}", path.display());
    }
    std::fs::read(path).unwrap_or_default()
}

fn python(python: &str, args: &[&str]) -> Option<String> {
    run_python(python, "bench_vision.py", args)
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let Some(py) = start(
        "torch and transformers 4.57: it writes the full-size checkpoints and times \
         transformers on them",
    ) else {
        return;
    };
    let families: Vec<&str> = FAMILIES.iter().map(|(f, _)| *f).collect();
    each_in_own_process(&families, |family| {
        if let Some(&(family, task)) = FAMILIES.iter().find(|(f, _)| *f == family) {
            bench_family(&py, family, task, if quick { 0.5 } else { 10.0 });
        }
    });
}

fn bench_family(py: &str, family: &str, task: TaskKind, seconds: f64) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-models");
    if let Err(e) = std::fs::create_dir_all(&root) {
        eprintln!("cannot create {}: {e}", root.display());
        return;
    }
    let image_path = root.join("picture-640x480.png");
    let bytes = picture(&image_path);
    let dir = root.join(family);
    let dir_arg = dir.display().to_string();
    if python(py, &["make", family, &dir_arg]).is_none() {
        return;
    }
    let files = ModelFiles::from_dir(family, &dir);
    let started = Instant::now();
    let loaded = match pipeline::load(task, &files, &Device::Cpu) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{family}: {e}");
            return;
        }
    };
    let load = started.elapsed().as_secs_f64();
    let args = ResolvedArgs {
        image: Some(Blob::sniffed(bytes.clone())),
        text: match task {
            TaskKind::VisualQuestionAnswering => Some(QUESTION.to_string()),
            TaskKind::ZeroShotImageClassification => Some(LABELS.join(", ")),
            _ => None,
        },
        ..Default::default()
    };
    let run = |p: &dyn Pipeline| p.run(task, &args).map(|_| ());
    if let Err(e) = run(loaded.as_ref()) {
        eprintln!("{family}: {e}");
        return;
    }
    let (mut done, start) = (0u32, Instant::now());
    while start.elapsed().as_secs_f64() < seconds || done < 3 {
        if run(loaded.as_ref()).is_err() {
            break;
        }
        done += 1;
    }
    let ours = start.elapsed().as_secs_f64() / f64::from(done.max(1)) * 1e3;
    println!(
        "{family} ({task}), 640x480 image: hgpt {ours:.1} ms/image, load {:.0} ms, peak resident {:.0} MiB",
        load * 1e3,
        rss_mb()
    );
    let image_arg = image_path.display().to_string();
    let Some(line) = python(
        py,
        &["time", family, &dir_arg, &image_arg, &seconds.to_string()],
    ) else {
        return;
    };
    let theirs: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
    let per_image = theirs["per_image_ms"].as_f64().unwrap_or(0.0);
    println!(
        "{family}: transformers {per_image:.1} ms/image, load {:.0} ms, peak resident {:.0} MiB ({}); hgpt is {:.2}x as fast",
        theirs["load_s"].as_f64().unwrap_or(0.0) * 1e3,
        theirs["rss_mb"].as_f64().unwrap_or(0.0),
        theirs["versions"],
        per_image / ours.max(f64::MIN_POSITIVE)
    );
}
