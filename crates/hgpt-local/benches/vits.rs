//! Speed of VITS text-to-speech on the full-size facebook/mms-tts-eng
//! architecture (random weights), against transformers (PyTorch CPU) in the
//! same run: `HGPT_BENCH_PYTHON=/abs/python cargo bench -p hgpt-local --bench
//! vits`. The Python (torch, transformers 4.57) also writes the checkpoint,
//! under `target/bench-models/mms-tts-eng` (`scripts/bench_vits.py`). Both
//! run with the noise scales at 0, so that they make the same speech (the
//! largest difference between the two waveforms is printed); the figure is
//! seconds of speech per second of compute.

mod common;

use common::{rss_mb, run_python, start};

use candle_core::Device;
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::task::TaskKind;
use hgpt_local::ModelFiles;
use hgpt_local::pipeline::Pipeline;
use hgpt_local::vits::VitsPipeline;
use std::path::PathBuf;
use std::time::Instant;

/// About eight seconds of speech.
const TEXT: &str = "Hugging face models run on the local machine: this sentence is read \
                    aloud by a text to speech model, one character at a time.";

fn python(python: &str, args: &[&str]) -> Option<String> {
    run_python(python, "bench_vits.py", args)
}

fn main() {
    let Some(py) = start(
        "torch and transformers 4.57: it writes the full-size checkpoint and times \
         transformers on it",
    ) else {
        return;
    };
    let quick = !std::env::args().any(|a| a == "--bench");
    let seconds = if quick { 0.5 } else { 10.0 };
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-models/mms-tts-eng");
    let dir_arg = dir.display().to_string();
    if python(&py, &["make", &dir_arg]).is_none() {
        return;
    }
    let files = ModelFiles::from_dir("mms-tts-eng", &dir);
    let started = Instant::now();
    let loaded = match VitsPipeline::load(&files, &Device::Cpu) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("mms-tts-eng: {e}");
            return;
        }
    };
    let load = started.elapsed().as_secs_f64();
    let args = ResolvedArgs {
        text: Some(TEXT.to_string()),
        other: [
            ("noise_scale".to_string(), 0.into()),
            ("noise_scale_duration".to_string(), 0.into()),
        ]
        .into_iter()
        .collect(),
        ..Default::default()
    };
    // The speech length (and a first run).
    let speech = match loaded
        .params_from(&args)
        .and_then(|params| loaded.synthesize(TEXT, &params))
    {
        Ok(speech) => speech,
        Err(e) => {
            eprintln!("mms-tts-eng: {e}");
            return;
        }
    };
    let audio_s = speech.waveform.len() as f64 / f64::from(speech.sampling_rate);
    let run = || loaded.run(TaskKind::TextToSpeech, &args).map(|_| ());
    let (mut done, start) = (0u32, Instant::now());
    while start.elapsed().as_secs_f64() < seconds || done < 3 {
        if run().is_err() {
            break;
        }
        done += 1;
    }
    let ours = start.elapsed().as_secs_f64() / f64::from(done.max(1));
    println!(
        "mms-tts-eng (text-to-speech), {} characters, {audio_s:.2} s of speech: hgpt {:.0} ms a run, \
         {:.1} s of speech per second, load {:.0} ms, peak resident {:.0} MiB, \
         {} threads",
        TEXT.chars().count(),
        ours * 1e3,
        audio_s / ours,
        load * 1e3,
        rss_mb(),
        rayon::current_num_threads()
    );
    let waveform_path = dir.join("transformers-waveform.f32");
    let waveform_arg = waveform_path.display().to_string();
    let Some(line) = python(
        &py,
        &["time", &dir_arg, TEXT, &seconds.to_string(), &waveform_arg],
    ) else {
        return;
    };
    let theirs: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
    let per_run = theirs["per_run_ms"].as_f64().unwrap_or(0.0) / 1e3;
    let their_audio = theirs["audio_s"].as_f64().unwrap_or(0.0);
    println!(
        "mms-tts-eng: transformers {:.0} ms a run ({their_audio:.2} s of speech), {:.1} s of speech per second, load {:.0} ms, peak resident {:.0} MiB ({}); hgpt is {:.2}x as fast",
        per_run * 1e3,
        their_audio / per_run.max(f64::MIN_POSITIVE),
        theirs["load_s"].as_f64().unwrap_or(0.0) * 1e3,
        theirs["rss_mb"].as_f64().unwrap_or(0.0),
        theirs["versions"],
        per_run / ours.max(f64::MIN_POSITIVE)
    );
    let theirs: Vec<f32> = std::fs::read(&waveform_path)
        .unwrap_or_default()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if theirs.len() == speech.waveform.len() {
        let diff = theirs
            .iter()
            .zip(&speech.waveform)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        println!("mms-tts-eng: the waveforms differ by {diff:.2e} at most");
    } else {
        println!(
            "mms-tts-eng: the waveforms differ in length: {} samples (hgpt), {} (transformers)",
            speech.waveform.len(),
            theirs.len()
        );
    }
}
