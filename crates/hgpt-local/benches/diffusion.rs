//! Seconds per 512x512 image of Stable Diffusion on full-size architectures
//! (random weights), against diffusers (PyTorch CPU) in the same run:
//! `HGPT_BENCH_PYTHON=/abs/python cargo bench -p hgpt-local --bench
//! diffusion [-- FAMILY...]`. The Python (torch, transformers 4.57, diffusers
//! 0.36) also writes the repositories, under `target/bench-models`
//! (`scripts/bench_diffusion.py`). Each family runs in its own process.
//!
//! `sd-turbo` and `sdxl-turbo` are timed for their one step; `sd15` for
//! `HGPT_BENCH_STEPS` steps (default 2) and a one-step run, the difference
//! giving the cost of a step, from which a 20-step image is extrapolated
//! (the text encoder and decoder run once per image either way).

mod common;

use common::{rss_mb, run_python};

use candle_core::Device;
use hgpt_local::ModelFiles;
use hgpt_local::diffusion::{GenerationRequest, StableDiffusion};
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

/// (family, guidance scale) pairs the script knows.
const FAMILIES: &[(&str, f64)] = &[("sd-turbo", 0.0), ("sd15", 7.5), ("sdxl-turbo", 0.0)];
const SIDE: usize = 512;
const PROMPT: &str = "a photograph of an astronaut riding a horse";
/// The step count the SD 1.5 figure is extrapolated to.
const FULL_STEPS: usize = 20;

fn python(python: &str, args: &[&str]) -> Option<String> {
    run_python(python, "bench_diffusion.py", args)
}

fn main() {
    // SAFETY: first thing in main; no other thread exists yet.
    unsafe { hgpt_local::device::pin_cpu_threads() };
    hgpt_local::device::keep_freed_memory();
    let Some(py) = std::env::var("HGPT_BENCH_PYTHON").ok() else {
        println!(
            "set HGPT_BENCH_PYTHON to a Python with torch, transformers 4.57 and diffusers 0.36: \
             it writes the full-size repositories and times diffusers on them"
        );
        return;
    };
    let steps: usize = std::env::var("HGPT_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&s| s >= 2)
        .unwrap_or(2);
    if let Ok(family) = std::env::var("HGPT_BENCH_FAMILY") {
        if let Some(&(family, guidance)) = FAMILIES.iter().find(|(f, _)| *f == family) {
            bench_family(&py, family, guidance, steps);
        }
        return;
    }
    let chosen: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let Ok(exe) = std::env::current_exe() else {
        eprintln!("cannot find the benchmark's own executable");
        return;
    };
    for &(family, _) in FAMILIES {
        if !chosen.is_empty() && !chosen.iter().any(|c| family == c.as_str()) {
            continue;
        }
        let status = Command::new(&exe)
            .args(std::env::args().skip(1).filter(|a| a.starts_with("--")))
            .env("HGPT_BENCH_FAMILY", family)
            .status();
        if let Err(e) = status {
            eprintln!("{family}: cannot run the benchmark: {e}");
        }
    }
}

fn bench_family(py: &str, family: &str, guidance: f64, steps: usize) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-models");
    let dir = root.join(family);
    let dir_arg = dir.display().to_string();
    if python(py, &["make", family, &dir_arg]).is_none() {
        return;
    }
    let turbo = family.ends_with("turbo");
    let steps = if turbo { 1 } else { steps };
    let started = Instant::now();
    let model = match StableDiffusion::load(&ModelFiles::from_dir(family, &dir), &Device::Cpu) {
        Ok(model) => model,
        Err(e) => {
            eprintln!("{family}: {e}");
            return;
        }
    };
    let load = started.elapsed().as_secs_f64();
    let run = |n: usize| -> Option<f64> {
        let request = GenerationRequest {
            prompt: PROMPT.to_string(),
            negative_prompt: None,
            num_inference_steps: n,
            guidance_scale: guidance,
            width: SIDE,
            height: SIDE,
            seed: 0,
            init: None,
        };
        let started = Instant::now();
        match model.generate(&request, &|_, _| {}) {
            Ok(_) => Some(started.elapsed().as_secs_f64()),
            Err(e) => {
                eprintln!("{family}: {e}");
                None
            }
        }
    };
    // No warm-up run: one takes minutes on a CPU.
    let Some(one) = run(1) else {
        return;
    };
    let many = if steps > 1 { run(steps) } else { Some(one) };
    let Some(many) = many else { return };
    let per_step = if steps > 1 {
        (many - one) / (steps - 1) as f64
    } else {
        one
    };
    // The model goes before diffusers runs: both at once would not fit in
    // memory for SDXL.
    drop(model);
    let full = |one: f64, per_step: f64| one + per_step * (FULL_STEPS - 1) as f64;
    if turbo {
        println!(
            "{family}, {SIDE}x{SIDE}, 1 step: hgpt {one:.1} s/image, load {load:.1} s, peak resident {:.0} MiB",
            rss_mb()
        );
    } else {
        println!(
            "{family}, {SIDE}x{SIDE}, guidance {guidance}: hgpt {per_step:.2} s/step, {one:.1} s for 1 step, {many:.1} s for {steps}; {FULL_STEPS} steps ~{:.0} s; load {load:.1} s, peak resident {:.0} MiB",
            full(one, per_step),
            rss_mb()
        );
    }
    let Some(line) = python(
        py,
        &[
            "time",
            family,
            &dir_arg,
            &steps.to_string(),
            &SIDE.to_string(),
        ],
    ) else {
        return;
    };
    let theirs: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
    let number = |key: &str| theirs[key].as_f64().unwrap_or(0.0);
    let (their_one, their_step) = (number("one_step_s"), number("per_step_s"));
    let (ours, theirs_image) = if turbo {
        (one, their_one)
    } else {
        (full(one, per_step), full(their_one, their_step))
    };
    println!(
        "{family}: diffusers {their_step:.2} s/step, {their_one:.1} s for 1 step, {:.1} s for {steps}; load {:.1} s, peak resident {:.0} MiB ({}); per image hgpt {ours:.1} s vs diffusers {theirs_image:.1} s: hgpt is {:.2}x as fast",
        number("per_image_s"),
        number("load_s"),
        number("rss_mb"),
        theirs["versions"],
        theirs_image / ours.max(f64::MIN_POSITIVE)
    );
}
