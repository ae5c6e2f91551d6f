//! Helpers the benchmarks share: the start of `main`, a process per family,
//! peak memory, and the Python reference scripts under `scripts/`.

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

/// The start of a benchmark's `main`: CPU threads pinned, freed memory
/// kept, and the interpreter `HGPT_BENCH_PYTHON` names (`None`, after
/// printing what it must have, `needs`, when unset). Call it first thing
/// in `main`, before any other thread exists.
pub fn start(needs: &str) -> Option<String> {
    // SAFETY: the caller calls this first thing in main; no other thread
    // exists yet.
    unsafe { hgpt_local::device::pin_cpu_threads() };
    hgpt_local::device::keep_freed_memory();
    let python = std::env::var("HGPT_BENCH_PYTHON").ok();
    if python.is_none() {
        println!("set HGPT_BENCH_PYTHON to a Python with {needs}");
    }
    python
}

/// Run `bench` on each of `families` in a process of its own, so that
/// peak resident memory is that family's: in a child (`HGPT_BENCH_FAMILY`
/// set) the family it names; otherwise a child for each family the
/// arguments name a part of (all when they name none), passed the `--`
/// arguments.
#[allow(dead_code, reason = "the VITS benchmark times one model")]
pub fn each_in_own_process(families: &[&str], bench: impl Fn(&str)) {
    if let Ok(family) = std::env::var("HGPT_BENCH_FAMILY") {
        if let Some(family) = families.iter().find(|f| **f == family) {
            bench(family);
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
    for family in families {
        if !chosen.is_empty() && !chosen.iter().any(|c| family.contains(c.as_str())) {
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
