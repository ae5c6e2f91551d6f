//! Seconds per 512x512 image of Stable Diffusion on full-size architectures
//! (random weights), against diffusers (PyTorch CPU) in the same run:
//! `HGPT_BENCH_PYTHON=/abs/python cargo bench -p hgpt-local --bench
//! diffusion [-- FAMILY...]`. The Python (torch, transformers 4.57, diffusers
//! 0.36) also writes the repositories, under `target/bench-models`
//! (`scripts/bench_diffusion.py`). Each family runs in its own process.
//!
//! `sd-turbo` and `sdxl-turbo` are timed for their one step; `sd15` for
//! `HGPT_BENCH_STEPS` steps (default 2) and a one-step run, the difference
//! giving the cost of a UNet evaluation, from which a 20-step image is
//! extrapolated (the text encoder and decoder run once per image either
//! way; PNDM evaluates the UNet once for one step, `n + 1` times for `n`).

mod common;

use common::{each_in_own_process, rss_mb, run_python, start};

use candle_core::Device;
use hgpt_local::ModelFiles;
use hgpt_local::diffusion::{GenerationRequest, StableDiffusion};
use std::cell::Cell;
use std::path::PathBuf;
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
    let Some(py) = start(
        "torch, transformers 4.57 and diffusers 0.36: it writes the full-size repositories \
         and times diffusers on them",
    ) else {
        return;
    };
    let steps: usize = std::env::var("HGPT_BENCH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&s| s >= 2)
        .unwrap_or(2);
    let families: Vec<&str> = FAMILIES.iter().map(|(f, _)| *f).collect();
    each_in_own_process(&families, |family| {
        if let Some(&(family, guidance)) = FAMILIES.iter().find(|(f, _)| *f == family) {
            bench_family(&py, family, guidance, steps);
        }
    });
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
    // Seconds and UNet evaluations of an `n`-step image.
    let run = |n: usize| -> Option<(f64, usize)> {
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
        let evaluations = Cell::new(0);
        let started = Instant::now();
        match model.generate(&request, &|_, total| evaluations.set(total)) {
            Ok(_) => Some((started.elapsed().as_secs_f64(), evaluations.get())),
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
    // The model goes before diffusers runs, its memory back to the system:
    // both at once would not fit in memory for SDXL.
    drop(model);
    hgpt_local::device::release_freed_memory();
    let shape = Evaluations {
        one: one.1,
        many: many.1,
        full: FULL_STEPS + many.1.saturating_sub(steps),
    };
    let (one, many) = (one.0, many.0);
    if turbo {
        println!(
            "{family}, {SIDE}x{SIDE}, 1 step: hgpt {one:.1} s/image, load {load:.1} s, peak resident {:.0} MiB",
            rss_mb()
        );
    } else {
        println!(
            "{family}, {SIDE}x{SIDE}, guidance {guidance}: hgpt {:.2} s per UNet evaluation, {one:.1} s for 1 step, {many:.1} s for {steps}; {FULL_STEPS} steps ({} evaluations) ~{:.0} s; load {load:.1} s, peak resident {:.0} MiB",
            shape.per_evaluation(one, many),
            shape.full,
            shape.extrapolate(one, many),
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
    let (their_one, their_many) = (number("one_step_s"), number("per_image_s"));
    let (ours, theirs_image) = if turbo {
        (one, their_one)
    } else {
        (
            shape.extrapolate(one, many),
            shape.extrapolate(their_one, their_many),
        )
    };
    println!(
        "{family}: diffusers {:.2} s per UNet evaluation, {their_one:.1} s for 1 step, {their_many:.1} s for {steps}; load {:.1} s, peak resident {:.0} MiB ({}); per image hgpt {ours:.1} s vs diffusers {theirs_image:.1} s: hgpt is {:.2}x as fast",
        shape.per_evaluation(their_one, their_many),
        number("load_s"),
        number("rss_mb"),
        theirs["versions"],
        theirs_image / ours.max(f64::MIN_POSITIVE)
    );
}

/// UNet evaluations of the one-step run, the many-step run and a
/// `FULL_STEPS` image (the scheduler's, the same for diffusers).
struct Evaluations {
    one: usize,
    many: usize,
    full: usize,
}

impl Evaluations {
    /// Seconds per UNet evaluation from the one- and many-step times.
    fn per_evaluation(&self, one: f64, many: f64) -> f64 {
        let extra = self.many.saturating_sub(self.one);
        if extra == 0 {
            one
        } else {
            (many - one) / extra as f64
        }
    }

    /// Seconds for a `FULL_STEPS` image.
    fn extrapolate(&self, one: f64, many: f64) -> f64 {
        one + self.per_evaluation(one, many) * self.full.saturating_sub(self.one) as f64
    }
}
