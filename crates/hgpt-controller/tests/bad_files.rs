//! Files the embedded controller must refuse with a clear error, never a panic.

use candle_core::Device;
use hgpt_controller::{Engine, EngineOptions};
use hgpt_testkit::models::smollm2_gguf;
use std::path::Path;

/// A minimal GGUF v3 file: string metadata and tensors of the given GGML
/// type numbers (their data is zeros).
fn write_gguf(path: &Path, metadata: &[(&str, &str)], tensors: &[(&str, &[u64], u32, usize)]) {
    let mut out = Vec::new();
    let string = |out: &mut Vec<u8>, s: &str| {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    };
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
    for (key, value) in metadata {
        string(&mut out, key);
        out.extend_from_slice(&8u32.to_le_bytes()); // string
        string(&mut out, value);
    }
    let mut offset = 0u64;
    for (name, dims, ggml_type, bytes) in tensors {
        string(&mut out, name);
        out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in *dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&ggml_type.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        offset += *bytes as u64;
    }
    while out.len() % 32 != 0 {
        out.push(0);
    }
    out.resize(out.len() + offset as usize, 0);
    std::fs::write(path, out).unwrap();
}

fn load(path: &Path) -> String {
    Engine::load(path, &Device::Cpu, &EngineOptions::default())
        .map(|_| ())
        .unwrap_err()
        .to_string()
}

#[test]
fn an_unsupported_architecture_is_named_with_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mamba.gguf");
    write_gguf(
        &path,
        &[("general.architecture", "mamba")],
        &[("token_embd.weight", &[4, 4], 0, 64)],
    );
    let err = load(&path);
    assert!(
        err.contains("mamba") && err.contains("llama, qwen2, qwen3, phi3, gemma3"),
        "{err}"
    );
}

#[test]
fn an_unsupported_quantization_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("iq.gguf");
    write_gguf(
        &path,
        &[("general.architecture", "llama")],
        &[("token_embd.weight", &[256, 4], 23, 544)],
    );
    let err = load(&path);
    assert!(err.contains("IQ4_XS") && err.contains("Q4_K"), "{err}");
}

#[test]
fn truncated_and_foreign_files_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::read(smollm2_gguf()).unwrap();
    for (name, bytes) in [
        ("head.gguf", &real[..4096]),
        ("half.gguf", &real[..real.len() / 2]),
        ("empty.gguf", &real[..0]),
        ("text.gguf", b"this is not a model".as_slice()),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let err = load(&path);
        assert!(
            err.contains(name) && !err.contains("panicked"),
            "{name}: {err}"
        );
    }
    let missing = load(&dir.path().join("absent.gguf"));
    assert!(missing.contains("absent.gguf"), "{missing}");
}

#[test]
fn a_model_without_its_tensors_names_the_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hollow.gguf");
    write_gguf(
        &path,
        &[
            ("general.architecture", "llama"),
            ("tokenizer.ggml.model", "gpt2"),
        ],
        &[],
    );
    let err = load(&path);
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn a_sentencepiece_vocabulary_without_matching_scores_is_refused() {
    use candle_core::quantized::gguf_file::{Value, write};
    use hgpt_controller::gguf::GgufFile;
    use hgpt_controller::tokenizer::Vocab;
    let dir = tempfile::tempdir().unwrap();
    let tokens = Value::Array(
        ["<unk>", "\u{2581}", "a", "\u{2581}a"]
            .iter()
            .map(|t| Value::String(t.to_string()))
            .collect(),
    );
    let model = Value::String("llama".into());
    let scores = Value::Array(vec![Value::F32(0.0), Value::F32(-1.0)]);
    for (name, with_scores) in [("no-scores.gguf", false), ("short-scores.gguf", true)] {
        let path = dir.path().join(name);
        let mut metadata = vec![
            ("tokenizer.ggml.model", &model),
            ("tokenizer.ggml.tokens", &tokens),
        ];
        if with_scores {
            metadata.push(("tokenizer.ggml.scores", &scores));
        }
        let mut file = std::fs::File::create(&path).unwrap();
        write(&mut file, &metadata, &[]).unwrap();
        drop(file);
        let err = Vocab::from_gguf(&GgufFile::open(&path).unwrap())
            .unwrap_err()
            .to_string();
        assert!(err.contains("scores"), "{name}: {err}");
    }
}
