//! Audio decoding and resampling against the Python references of
//! `tests/fixtures/audio` (written by `scripts/make_fixtures.py`): soundfile's
//! (libsndfile's) decoding of one tone in four formats, and torchaudio's
//! resampler, which transformers' speech pipelines use.

mod common;

use common::floats;
use hgpt_local::audio::{decode, load, resample};
use serde_json::Value;
use std::path::PathBuf;

fn folder() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audio")
}

fn expected() -> Value {
    let text = std::fs::read_to_string(folder().join("expected.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// The largest difference over the overlap of `ours` shifted by `shift`
/// against `theirs`, ignoring `edge` samples at each end.
fn worst_difference(ours: &[f32], theirs: &[f32], shift: isize, edge: usize) -> f32 {
    let mut worst = 0f32;
    for (i, want) in theirs
        .iter()
        .enumerate()
        .skip(edge)
        .take(theirs.len().saturating_sub(2 * edge))
    {
        let j = i as isize + shift;
        if j < 0 || j as usize >= ours.len() {
            return f32::INFINITY;
        }
        worst = worst.max((ours[j as usize] - want).abs());
    }
    worst
}

#[test]
fn lossless_files_decode_exactly_as_libsndfile_does() {
    let expected = expected();
    for name in ["tone.wav", "tone.flac"] {
        let bytes = std::fs::read(folder().join(name)).unwrap();
        let audio = decode(&bytes, 60).unwrap();
        let reference = &expected["decoded"][name];
        assert_eq!(
            u64::from(audio.rate),
            reference["rate"].as_u64().unwrap(),
            "{name}"
        );
        let theirs = floats(&reference["samples"]);
        assert_eq!(audio.samples.len(), theirs.len(), "{name}");
        let worst = worst_difference(&audio.samples, &theirs, 0, 0);
        assert!(worst <= 1e-6, "{name}: off by {worst}");
    }
}

#[test]
fn lossy_files_decode_to_the_same_sound() {
    let expected = expected();
    for name in ["tone.ogg", "tone.mp3"] {
        let bytes = std::fs::read(folder().join(name)).unwrap();
        let audio = decode(&bytes, 60).unwrap();
        let reference = &expected["decoded"][name];
        assert_eq!(
            u64::from(audio.rate),
            reference["rate"].as_u64().unwrap(),
            "{name}"
        );
        let theirs = floats(&reference["samples"]);
        // Decoders may keep or trim the codec's priming samples: find the
        // alignment, then the waveforms must agree.
        let best = (-2400isize..=2400)
            .map(|shift| (shift, worst_difference(&audio.samples, &theirs, shift, 600)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .unwrap();
        assert!(
            best.1 < 0.02,
            "{name}: best alignment {} still off by {}",
            best.0,
            best.1
        );
    }
}

#[test]
fn resampling_matches_torchaudio() {
    for case in expected()["resample"].as_array().unwrap() {
        let (from, to) = (
            case["from"].as_u64().unwrap() as u32,
            case["to"].as_u64().unwrap() as u32,
        );
        let output = resample(&floats(&case["input"]), from, to).unwrap();
        let reference = floats(&case["output"]);
        assert_eq!(output.len(), reference.len(), "{from} -> {to}");
        let worst = worst_difference(&output, &reference, 0, 0);
        assert!(worst < 1e-5, "{from} -> {to}: off by {worst}");
    }
}

#[test]
fn a_file_is_brought_to_the_models_rate() {
    let bytes = std::fs::read(folder().join("tone.flac")).unwrap();
    let audio = load(&bytes, 16_000, 60).unwrap();
    assert_eq!(audio.rate, 16_000);
    assert_eq!(audio.samples.len(), (4410usize * 16_000).div_ceil(44_100));
    assert!((audio.seconds() - 0.1).abs() < 1e-3);
}
