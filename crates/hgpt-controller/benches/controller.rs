//! The embedded controller's speed (`cargo bench -p hgpt-controller`), on the
//! real SmolLM2-135M-Instruct GGUF (`bash scripts/fetch-smollm2.sh`):
//!
//! - prompt processing (512 tokens in one batch) and generation (128 tokens
//!   one at a time), best of 3, and the same from llama.cpp through
//!   llama-cpp-python in the same run when HGPT_BENCH_PYTHON names a Python
//!   that has it (the venv of `scripts/make_llm_fixtures.py`), with the same
//!   thread count;
//! - time to the first plan token for a short request with no prefix cache,
//!   in a fresh process that finds the prefix on disk, and in a warm server;
//! - the cost of the grammar's token mask per sampled token, against a
//!   decode step;
//! - with `--plans`, the share of usable plans over the 32 test requests
//!   with and without the grammar (slow: minutes).

use candle_core::Device;
use hgpt_controller::prompt_cache::CacheHit;
use hgpt_controller::{
    ControllerSettings, EmbeddedController, Engine, EngineOptions, GenerateRequest, Generation,
    Sampling,
};
use hgpt_core::catalog::Catalog;
use hgpt_core::pipeline::{Pipeline, PipelineConfig};
use hgpt_core::plan::parse_and_postprocess;
use hgpt_core::prompt::Prompts;
use hgpt_testkit::inproc::{FakeBackend, MemoryMedia};
use hgpt_testkit::models::smollm2_gguf;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

const PROMPT_TOKENS: usize = 512;
const GENERATED_TOKENS: usize = 128;
const ROUNDS: usize = 3;
const SHORT_REQUEST: &str = "describe /a.jpg and read the description aloud";

/// Resident memory (`VmRSS:`) or its peak (`VmHWM:`), in MiB.
fn memory_mb(key: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn load(path: &Path, cache_dir: Option<PathBuf>) -> Result<(Engine, Duration), String> {
    let started = Instant::now();
    let engine = Engine::load(
        path,
        &Device::Cpu,
        &EngineOptions {
            context: 4096,
            cache_dir,
            tokenizer: None,
        },
    )
    .map_err(|e| e.to_string())?;
    Ok((engine, started.elapsed()))
}

/// Best prompt-processing and generation rates over [`ROUNDS`].
fn throughput(engine: &Engine) -> Result<(f64, f64), String> {
    let model = engine.model();
    let tokens: Vec<u32> = (0..(PROMPT_TOKENS + GENERATED_TOKENS) as u32)
        .map(|i| 1000 + 7 * i)
        .collect();
    let (mut pp, mut tg) = (0f64, 0f64);
    for _ in 0..ROUNDS {
        let mut cache = model.new_cache();
        let started = Instant::now();
        model
            .forward(&tokens[..PROMPT_TOKENS], &mut cache)
            .map_err(|e| e.to_string())?;
        pp = pp.max(PROMPT_TOKENS as f64 / started.elapsed().as_secs_f64());
        let started = Instant::now();
        for token in &tokens[PROMPT_TOKENS..] {
            let logits = model
                .forward(std::slice::from_ref(token), &mut cache)
                .map_err(|e| e.to_string())?;
            // What a real step reads back to pick the next token.
            logits.to_vec1::<f32>().map_err(|e| e.to_string())?;
        }
        tg = tg.max(GENERATED_TOKENS as f64 / started.elapsed().as_secs_f64());
    }
    Ok((pp, tg))
}

fn pipeline(llm: Arc<EmbeddedController>) -> Result<Pipeline, String> {
    Ok(Pipeline::new(
        llm,
        Arc::new(FakeBackend::new(Duration::ZERO)),
        Arc::new(MemoryMedia::default()),
        Arc::new(Catalog::builtin().map_err(|e| e.to_string())?),
        Arc::new(Prompts::default()),
        PipelineConfig {
            context_window: 4096,
            ..PipelineConfig::default()
        },
    ))
}

/// Generate a plan for `request`, constrained or free.
async fn plan(
    controller: &Arc<EmbeddedController>,
    request: &str,
    constrained: bool,
) -> Result<Generation, String> {
    let chat = pipeline(controller.clone())?.plan_request(request, &[]);
    let request = GenerateRequest {
        messages: chat.messages,
        shape: if constrained { chat.shape } else { None },
        max_tokens: 512,
        sampling: Sampling::default(),
    };
    controller
        .run(request, |_| true)
        .await
        .map_err(|e| e.to_string())
}

fn controller(engine: Engine) -> Arc<EmbeddedController> {
    Arc::new(EmbeddedController::new(
        engine,
        ControllerSettings::default(),
    ))
}

fn report(label: &str, g: &Generation) {
    println!(
        "  {label}: first plan token {:.0} ms (prompt {} tokens, {} from the {:?} prefix cache), whole plan {:.0} ms ({} tokens, {} forced by the grammar)",
        ms(g.first_token),
        g.prompt_tokens,
        g.cached_tokens,
        g.cache_hit,
        ms(g.total),
        g.generated_tokens,
        g.forced_tokens
    );
}

async fn latency(path: &Path, tg: f64) -> Result<(), String> {
    println!("time to the first plan token, \"{SHORT_REQUEST}\":");
    let (engine, _) = load(path, None)?;
    let cold = plan(&controller(engine), SHORT_REQUEST, true).await?;
    report("no prefix cache", &cold);

    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let (engine, _) = load(path, Some(dir.path().to_path_buf()))?;
    plan(&controller(engine), SHORT_REQUEST, true).await?;
    // A new engine: what a fresh `hgpt run` process finds.
    let (engine, loaded) = load(path, Some(dir.path().to_path_buf()))?;
    let warm_server = controller(engine);
    let fresh = plan(&warm_server, SHORT_REQUEST, true).await?;
    if fresh.cache_hit != CacheHit::Disk {
        return Err(format!("expected a disk hit, got {:?}", fresh.cache_hit));
    }
    println!("  fresh process: model load {:.0} ms, then", ms(loaded));
    report("prefix from disk", &fresh);
    let warm = plan(&warm_server, "how many zebras are in /zoo.jpg?", true).await?;
    report("warm server (prefix in memory)", &warm);

    let sampled = warm
        .generated_tokens
        .saturating_sub(warm.forced_tokens)
        .max(1);
    let per_token = ms(warm.mask_time) / sampled as f64;
    let step = 1e3 / tg;
    println!(
        "token mask: {per_token:.3} ms per sampled token ({sampled} sampled), {:.1}% of a {step:.1} ms decode step",
        100.0 * per_token / step
    );
    Ok(())
}

async fn plan_rates(path: &Path) -> Result<(), String> {
    let requests: Vec<&str> = include_str!("../tests/plan_requests.txt")
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let (engine, _) = load(path, None)?;
    let controller = controller(engine);
    for constrained in [false, true] {
        let mut usable = 0;
        for request in &requests {
            let generation = plan(&controller, request, constrained).await?;
            if matches!(parse_and_postprocess(&generation.text), Ok(p) if p.warnings.is_empty()) {
                usable += 1;
            } else {
                println!("  unusable ({request}): {}", generation.text);
            }
        }
        println!(
            "usable plans {}: {usable} of {}",
            if constrained {
                "with the grammar"
            } else {
                "without constraints"
            },
            requests.len()
        );
    }
    Ok(())
}

fn llama_cpp(path: &Path, threads: usize) {
    let Some(python) = std::env::var_os("HGPT_BENCH_PYTHON") else {
        println!("(set HGPT_BENCH_PYTHON to a Python with llama-cpp-python to compare)");
        return;
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/bench_llama_cpp.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .arg(path)
        .args([threads, PROMPT_TOKENS, GENERATED_TOKENS, ROUNDS].map(|n| n.to_string()))
        .output();
    match out {
        Ok(out) if out.status.success() => {
            println!("llama.cpp: {}", String::from_utf8_lossy(&out.stdout).trim())
        }
        Ok(out) => eprintln!(
            "the llama.cpp benchmark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("cannot run the llama.cpp benchmark: {e}"),
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        // `cargo test --benches` runs this file too; the numbers need --bench.
        return;
    }
    let path = smollm2_gguf();
    let threads = candle_core::utils::get_num_threads();
    let rss_before = memory_mb("VmRSS:");
    let (engine, loaded) = match load(&path, None) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("cannot load {}: {e}", path.display());
            return;
        }
    };
    println!(
        "hgpt: {} ({} MiB of weights), load {:.0} ms, +{:.0} MiB resident, {threads} threads",
        path.display(),
        engine.model().weight_bytes() >> 20,
        ms(loaded),
        memory_mb("VmRSS:") - rss_before
    );
    let tg = match throughput(&engine) {
        Ok((pp, tg)) => {
            println!(
                "hgpt: prompt processing {pp:.1} tokens/s ({PROMPT_TOKENS} tokens), generation {tg:.1} tokens/s ({GENERATED_TOKENS} tokens), best of {ROUNDS}"
            );
            tg
        }
        Err(e) => {
            eprintln!("hgpt throughput failed: {e}");
            return;
        }
    };
    drop(engine);
    llama_cpp(&path, threads);
    let Ok(runtime) = tokio::runtime::Runtime::new() else {
        return;
    };
    if let Err(e) = runtime.block_on(latency(&path, tg)) {
        eprintln!("latency benchmark failed: {e}");
    }
    if std::env::args().any(|a| a == "--plans")
        && let Err(e) = runtime.block_on(plan_rates(&path))
    {
        eprintln!("plan benchmark failed: {e}");
    }
    println!("peak resident {:.0} MiB", memory_mb("VmHWM:"));
}
