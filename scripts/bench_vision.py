"""Full-size vision checkpoints with random weights, and transformers' (PyTorch CPU) time per
image on them, for comparison with `cargo bench -p hgpt-local --bench vision` (which runs this
script when HGPT_BENCH_PYTHON names an interpreter with torch and transformers 4.57, e.g. the
venv of scripts/requirements-fixtures.txt). Never used by tests.

Usage:
    python bench_vision.py make FAMILY DIR      # writes the checkpoint (config, weights,
                                                # preprocessor config) unless DIR has it
    python bench_vision.py time FAMILY DIR IMAGE SECONDS
        # prints one JSON line: {"load_s", "per_image_ms", "rss_mb", "versions"}

FAMILY: segformer-b0 (nvidia/segformer-b0-finetuned-ade-512-512's architecture: 4 stages,
150 labels, 512x512 input).
"""
import json
import resource
import sys
import time
from pathlib import Path

import torch
import transformers
from PIL import Image
from transformers import pipeline

FAMILIES = {
    "segformer-b0": "image-segmentation",
}


def make(family: str, folder: Path) -> None:
    if (folder / "config.json").is_file():
        return
    torch.manual_seed(0)
    if family == "segformer-b0":
        from transformers import (SegformerConfig, SegformerForSemanticSegmentation,
                                  SegformerImageProcessor)
        labels = {i: f"class {i}" for i in range(150)}
        config = SegformerConfig(
            depths=[2, 2, 2, 2], hidden_sizes=[32, 64, 160, 256], decoder_hidden_size=256,
            num_labels=150, id2label=labels, label2id={v: k for k, v in labels.items()},
        )
        model = SegformerForSemanticSegmentation(config).eval()
        processor = SegformerImageProcessor(size={"height": 512, "width": 512})
    else:
        raise SystemExit(f"unknown family {family}")
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)


def time_per_image(family: str, folder: Path, image_path: str, seconds: float) -> None:
    start = time.perf_counter()
    pipe = pipeline(FAMILIES[family], model=str(folder), device="cpu")
    load_s = time.perf_counter() - start
    image = Image.open(image_path).convert("RGB")
    with torch.inference_mode():
        pipe(image)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or done < 3:
            pipe(image)
            done += 1
    per_image_ms = (time.perf_counter() - start) / done * 1e3
    print(json.dumps({
        "load_s": load_s,
        "per_image_ms": per_image_ms,
        "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "threads": torch.get_num_threads()},
    }))


def main() -> None:
    command, family, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if command == "make":
        make(family, folder)
    elif command == "time":
        time_per_image(family, folder, sys.argv[4], float(sys.argv[5]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
