//! Real-time factor of local Whisper speech recognition on full-size
//! architectures (random weights), against transformers (PyTorch CPU) in the
//! same run: `HGPT_BENCH_PYTHON=/abs/python cargo bench -p hgpt-local --bench
//! whisper [-- MODEL...]`. The Python (torch, transformers 4.57, soundfile)
//! also writes the checkpoints, under `target/bench-models`
//! (`scripts/bench_whisper.py`). Each model runs in its own process; each
//! run transcribes the same 30 s clip in English with a fixed number of new
//! tokens (the end and timestamp tokens are suppressed, so one pass decodes
//! each window), greedily and with 5 beams.

mod common;

use common::{each_in_own_process, rss_mb, run_python, start};

use candle_core::Device;
use hgpt_core::backend::ResolvedArgs;
use hgpt_core::output::{Blob, InferenceOutput};
use hgpt_core::task::TaskKind;
use hgpt_local::ModelFiles;
use hgpt_local::pipeline::{self, Pipeline};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;

/// The architectures the script knows.
const MODELS: &[&str] = &["whisper-tiny", "whisper-base"];
/// New tokens per clip.
const TOKENS: usize = 64;
/// Seconds of audio per clip.
const CLIP_SECONDS: f64 = 30.0;

/// A 30 s 16 kHz clip (tones gliding in pitch, in bursts) as 16-bit WAV.
fn clip() -> Vec<u8> {
    let rate = 16_000.0;
    let samples: Vec<f32> = (0..(CLIP_SECONDS * rate) as usize)
        .map(|i| {
            let t = i as f64 / rate;
            let envelope = if (t * 2.0).fract() < 0.7 { 0.4 } else { 0.02 };
            (envelope * (2.0 * std::f64::consts::PI * (200.0 + 30.0 * t) * t).sin()) as f32
        })
        .collect();
    hgpt_local::audio::encode_wav(&samples, 16_000).unwrap_or_default()
}

fn python(python: &str, args: &[&str]) -> Option<String> {
    run_python(python, "bench_whisper.py", args)
}

fn main() {
    let Some(py) = start(
        "torch, transformers 4.57 and soundfile: it writes the full-size checkpoints and \
         times transformers on them",
    ) else {
        return;
    };
    each_in_own_process(MODELS, |model| bench_model(&py, model));
}

fn bench_model(py: &str, model: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/bench-models");
    if let Err(e) = std::fs::create_dir_all(&root) {
        eprintln!("cannot create {}: {e}", root.display());
        return;
    }
    let wav_path = root.join("clip-30s.wav");
    let bytes = clip();
    if let Err(e) = std::fs::write(&wav_path, &bytes) {
        eprintln!("cannot write {}: {e}", wav_path.display());
        return;
    }
    let dir = root.join(model);
    let dir_arg = dir.display().to_string();
    if python(py, &["make", model, &dir_arg]).is_none() {
        return;
    }
    let files = ModelFiles::from_dir(model, &dir);
    let started = Instant::now();
    let task = TaskKind::AutomaticSpeechRecognition;
    let loaded = match pipeline::load(task, &files, &Device::Cpu) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{model}: {e}");
            return;
        }
    };
    let load = started.elapsed().as_secs_f64();
    for beams in [1usize, 5] {
        let args = ResolvedArgs {
            audio: Some(Blob::sniffed(bytes.clone())),
            other: [(
                "generate_kwargs".to_string(),
                json!({"language": "en", "num_beams": beams, "max_new_tokens": TOKENS}),
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        let run = |p: &dyn Pipeline| p.run(task, &args);
        let text = match run(loaded.as_ref()) {
            Ok(InferenceOutput::Transcription { text, .. }) => text,
            Ok(other) => {
                eprintln!("{model}: not a transcription: {other:?}");
                return;
            }
            Err(e) => {
                eprintln!("{model}: {e}");
                return;
            }
        };
        let start = Instant::now();
        for _ in 0..3 {
            if let Err(e) = run(loaded.as_ref()) {
                eprintln!("{model}: {e}");
                return;
            }
        }
        let ours = start.elapsed().as_secs_f64() / 3.0;
        println!(
            "{model}, 30 s clip, {TOKENS} tokens, {beams} beam(s): hgpt {ours:.2} s/clip (real-time factor {:.3}), load {:.0} ms, peak resident {:.0} MiB",
            ours / CLIP_SECONDS,
            load * 1e3,
            rss_mb()
        );
        let wav_arg = wav_path.display().to_string();
        let Some(line) = python(
            py,
            &[
                "time",
                model,
                &dir_arg,
                &wav_arg,
                &TOKENS.to_string(),
                &beams.to_string(),
            ],
        ) else {
            return;
        };
        let theirs: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
        let per_clip = theirs["per_clip_s"].as_f64().unwrap_or(0.0);
        println!(
            "{model}, {beams} beam(s): transformers {per_clip:.2} s/clip (real-time factor {:.3}), load {:.0} ms, peak resident {:.0} MiB ({}); hgpt is {:.2}x as fast; same transcript: {}",
            per_clip / CLIP_SECONDS,
            theirs["load_s"].as_f64().unwrap_or(0.0) * 1e3,
            theirs["rss_mb"].as_f64().unwrap_or(0.0),
            theirs["versions"],
            per_clip / ours.max(f64::MIN_POSITIVE),
            theirs["text"].as_str() == Some(text.as_str())
        );
    }
}
