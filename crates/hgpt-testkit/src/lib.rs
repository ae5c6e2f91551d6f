//! Fakes for hgpt's tests and benchmarks, never used by the binary:
//! loopback fake servers — an OpenAI-compatible chat server ([`openai`]) and
//! a Hugging Face inference server ([`hf`]), a Hub for downloads ([`hub`]) that bind 127.0.0.1 on an
//! ephemeral port and never reach outside — in-process fakes of the
//! core's traits ([`inproc`]), and hub caches of the test models ([`cache`]).

pub mod cache;
pub mod hf;
pub mod hub;
pub mod inproc;
pub mod models;
pub mod openai;
pub mod router;

use std::path::PathBuf;

/// The id of the first candidate a selection prompt lists (its `- id | ...`
/// lines), if any.
pub fn first_listed_candidate(prompt: &str) -> Option<&str> {
    prompt
        .lines()
        .find_map(|l| l.strip_prefix("- "))
        .and_then(|l| l.split(" | ").next())
}

/// The Python of the test venv that `scripts/python-test-env.sh` makes
/// (`HGPT_TEST_VENV`, else `target/test-venv`), with the official
/// `huggingface_hub` and `openai` clients. Panics with what to run when it
/// is missing.
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("HGPT_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-venv")
        });
    let python = venv.join("bin/python");
    assert!(
        python.is_file(),
        "no Python test environment at {}: run scripts/test, or `bash scripts/python-test-env.sh` \
         once, to install the Python clients the tests drive",
        venv.display()
    );
    python
}
