"""Prompt processing and generation speed of llama.cpp (llama-cpp-python) on a
GGUF file, for comparison with `cargo bench -p hgpt-controller` (which runs
this script when HGPT_BENCH_PYTHON names an interpreter with llama_cpp, e.g.
the venv of scripts/make_llm_fixtures.py).

Usage: python bench_llama_cpp.py FILE.gguf THREADS PROMPT_TOKENS GENERATED_TOKENS ROUNDS
The token ids are the same as the Rust side's: 1000 + 7 * i, fed as one batch
(prompt processing) and then one at a time (generation), like llama-bench's
pp and tg tests. Prints one JSON line:
{"pp_per_s", "tg_per_s", "load_s", "rss_mb", "versions"} (best of ROUNDS).
"""
import json
import sys
import time

import llama_cpp
from llama_cpp import Llama

from bench_common import peak_resident_mb


def main():
    path = sys.argv[1]
    threads, prompt, generated, rounds = (int(a) for a in sys.argv[2:6])
    start = time.perf_counter()
    llm = Llama(
        model_path=path,
        n_ctx=prompt + generated + 16,
        n_batch=prompt,
        n_ubatch=prompt,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )
    load_s = time.perf_counter() - start
    tokens = [1000 + 7 * i for i in range(prompt + generated)]
    best_pp, best_tg = 0.0, 0.0
    for _ in range(rounds):
        llm.reset()
        start = time.perf_counter()
        llm.eval(tokens[:prompt])
        best_pp = max(best_pp, prompt / (time.perf_counter() - start))
        start = time.perf_counter()
        for token in tokens[prompt:]:
            llm.eval([token])
        best_tg = max(best_tg, generated / (time.perf_counter() - start))
    print(
        json.dumps(
            {
                "pp_per_s": best_pp,
                "tg_per_s": best_tg,
                "load_s": load_s,
                "rss_mb": peak_resident_mb(),
                "versions": {"llama_cpp_python": llama_cpp.__version__, "threads": threads},
            }
        )
    )


if __name__ == "__main__":
    main()
