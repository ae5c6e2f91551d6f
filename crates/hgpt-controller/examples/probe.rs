//! Quick timing probe of the embedded controller on a GGUF file:
//! `cargo run -p hgpt-controller --example probe -- FILE`.

use candle_core::Device;
use hgpt_controller::{Engine, EngineOptions};
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: probe FILE.gguf [DECODED]")?;
    let decoded: usize = std::env::args()
        .nth(2)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(32)
        .min(390);
    let t = Instant::now();
    let engine = Engine::load(path.as_ref(), &Device::Cpu, &EngineOptions::default())?;
    println!("load {:?}", t.elapsed());
    let tokens: Vec<u32> = (0..400u32).map(|i| 1000 + i * 7).collect();
    let t = Instant::now();
    let logits = engine.logits(&tokens[..200])?;
    let prefill = t.elapsed();
    println!(
        "prefill 200 tokens {prefill:?} ({:.1} tok/s), {} logits",
        200.0 / prefill.as_secs_f64(),
        logits.len()
    );
    let t = Instant::now();
    let steps = engine.forced_logits(&tokens[..8], &tokens[8..8 + decoded])?;
    let decode = t.elapsed();
    println!(
        "8 + {decoded} decoded {decode:?} ({:.1} tok/s), {} steps",
        decoded as f64 / decode.as_secs_f64(),
        steps.len()
    );
    Ok(())
}
