//! MiniLM embedding throughput (`cargo bench -p hgpt-local`): batch 1 and
//! batch 32, model load time and resident memory, and a cache hit; and, when
//! HGPT_BENCH_PYTHON names a Python with sentence-transformers, the same
//! numbers from the Python library in the same run.
//! Needs the test model: `bash scripts/fetch-minilm.sh`.

use candle_core::Device;
use hgpt_local::embed::SentenceEmbedder;
use hgpt_local::{LocalBackend, LocalConfig, ModelCache};
use std::path::PathBuf;
use std::time::Instant;

const SENTENCES: [&str; 4] = [
    "A man is eating food.",
    "The new movie is awesome and everyone should see it this weekend.",
    "Rust gives memory safety without a garbage collector.",
    "A cheetah is running behind its prey across the savanna.",
];
const MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

fn hub() -> PathBuf {
    std::env::var_os("HGPT_TEST_HUB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-models/hub")
        })
}

fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn rate(model: &SentenceEmbedder, batch: usize, seconds: f64) -> f64 {
    let texts: Vec<String> = (0..batch)
        .map(|i| SENTENCES[i % SENTENCES.len()].to_string())
        .collect();
    let _ = model.embed(&texts, None);
    let (mut done, start) = (0usize, Instant::now());
    while start.elapsed().as_secs_f64() < seconds {
        if model.embed(&texts, None).is_err() {
            return 0.0;
        }
        done += batch;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let seconds = if quick { 0.2 } else { 10.0 };
    let cache = ModelCache::at(hub());
    let files = cache.model(MODEL);
    let Some(config) = files.get("config.json") else {
        eprintln!("the MiniLM test model is missing: run `bash scripts/fetch-minilm.sh`");
        return;
    };
    let snapshot = config.parent().map(PathBuf::from).unwrap_or_default();
    let rss_before = rss_mb();
    let started = Instant::now();
    let model = match SentenceEmbedder::load(&files, &Device::Cpu) {
        Ok(model) => model,
        Err(e) => {
            eprintln!("cannot load MiniLM: {e}");
            return;
        }
    };
    let load = started.elapsed();
    let rss_loaded = rss_mb();
    let batch1 = rate(&model, 1, seconds);
    let batch32 = rate(&model, 32, seconds);
    println!(
        "hgpt (candle, CPU): load {:.0} ms, +{:.0} MiB resident after load, batch 1: {batch1:.1} sentences/s, batch 32: {batch32:.1} sentences/s, peak resident {:.0} MiB",
        load.as_secs_f64() * 1e3,
        rss_loaded - rss_before,
        rss_mb()
    );

    let runtime = tokio::runtime::Runtime::new().ok();
    if let Some(runtime) = runtime {
        let local = LocalBackend::new(LocalConfig {
            cache,
            memory_budget_bytes: 0,
            device: Device::Cpu,
            pull: None,
        });
        let (first, second) = runtime.block_on(async {
            let t = Instant::now();
            let _ = local
                .pipeline(hgpt_core::task::TaskKind::FeatureExtraction, MODEL)
                .await;
            let first = t.elapsed();
            let t = Instant::now();
            let _ = local
                .pipeline(hgpt_core::task::TaskKind::FeatureExtraction, MODEL)
                .await;
            (first, t.elapsed())
        });
        println!(
            "LocalBackend: first use (load) {:.0} ms, second use (cache hit) {:.3} ms",
            first.as_secs_f64() * 1e3,
            second.as_secs_f64() * 1e3
        );
    }

    let Some(python) = std::env::var_os("HGPT_BENCH_PYTHON") else {
        println!("(set HGPT_BENCH_PYTHON to a Python with sentence-transformers to compare)");
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/bench_sentence_transformers.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(&snapshot)
        .arg(format!("{seconds}"))
        .env("HF_HUB_OFFLINE", "1")
        .output();
    match out {
        Ok(out) if out.status.success() => {
            let line = String::from_utf8_lossy(&out.stdout);
            let parsed: serde_json::Value = serde_json::from_str(line.trim()).unwrap_or_default();
            let py1 = parsed["batch1_per_s"].as_f64().unwrap_or(0.0);
            let py32 = parsed["batch32_per_s"].as_f64().unwrap_or(0.0);
            println!(
                "python sentence-transformers: load {:.0} ms, batch 1: {py1:.1} sentences/s, batch 32: {py32:.1} sentences/s, peak resident {:.0} MiB ({})",
                parsed["load_s"].as_f64().unwrap_or(0.0) * 1e3,
                parsed["rss_mb"].as_f64().unwrap_or(0.0),
                parsed["versions"]
            );
            println!(
                "ratio hgpt/python: batch 1 {:.2}x, batch 32 {:.2}x",
                batch1 / py1.max(f64::MIN_POSITIVE),
                batch32 / py32.max(f64::MIN_POSITIVE)
            );
        }
        Ok(out) => eprintln!(
            "the Python benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("cannot run the Python benchmark: {e}"),
    }
}
