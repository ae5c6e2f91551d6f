"""Throughput of the Python sentence-transformers library on all-MiniLM-L6-v2,
for comparison with `cargo bench -p hgpt-local` (which runs this script when
HGPT_BENCH_PYTHON names an interpreter that has sentence-transformers).

Usage: python bench_sentence_transformers.py SNAPSHOT_DIR SECONDS
Prints one JSON line: {"load_s", "batch1_per_s", "batch32_per_s", "rss_mb", "versions"}.
"""
import json
import sys
import time

import torch
from sentence_transformers import SentenceTransformer, __version__ as st_version

from bench_common import peak_resident_mb

SENTENCES = [
    "A man is eating food.",
    "The new movie is awesome and everyone should see it this weekend.",
    "Rust gives memory safety without a garbage collector.",
    "A cheetah is running behind its prey across the savanna.",
]


def rate(model, batch, seconds):
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(batch)]
    model.encode(texts, batch_size=batch)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.encode(texts, batch_size=batch)
        done += batch
    return done / (time.perf_counter() - start)


def main():
    snapshot, seconds = sys.argv[1], float(sys.argv[2])
    start = time.perf_counter()
    model = SentenceTransformer(snapshot, device="cpu")
    load_s = time.perf_counter() - start
    result = {
        "load_s": load_s,
        "batch1_per_s": rate(model, 1, seconds),
        "batch32_per_s": rate(model, 32, seconds),
        "rss_mb": peak_resident_mb(),
        "versions": {"torch": torch.__version__, "sentence_transformers": st_version, "threads": torch.get_num_threads()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
