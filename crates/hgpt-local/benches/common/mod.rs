//! Helpers the benchmarks share: peak memory, and the Python reference
//! scripts under `scripts/`.

use std::path::PathBuf;
use std::process::Command;

/// This process's peak resident memory so far, in MiB (`VmHWM`).
pub fn rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Run `scripts/{script}` with `python` and these arguments, offline; its
/// stdout, or `None` (with why on stderr) when it fails.
pub fn run_python(python: &str, script: &str, args: &[&str]) -> Option<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts")
        .join(script);
    match Command::new(python)
        .arg(path)
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .output()
    {
        Ok(out) if out.status.success() => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        Ok(out) => {
            eprintln!(
                "{script} {args:?} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("cannot run {python}: {e}");
            None
        }
    }
}
