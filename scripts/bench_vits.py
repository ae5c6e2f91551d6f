"""A full-size VITS checkpoint with random weights (facebook/mms-tts-eng's architecture:
VitsConfig's defaults, its 38-character vocabulary), and transformers' (PyTorch CPU) speed on
it, for comparison with `cargo bench -p hgpt-local --bench vits` (which runs this script when
HGPT_BENCH_PYTHON names an interpreter with torch and transformers 4.57, e.g. the venv of
scripts/requirements-fixtures.txt). Never used by tests.

Usage:
    python bench_vits.py make DIR                 # writes the checkpoint unless DIR has it
    python bench_vits.py time DIR TEXT SECONDS WAVEFORM
        # prints one JSON line: {"load_s", "per_run_ms", "audio_s", "rss_mb", "versions"},
        # and writes the waveform to WAVEFORM (raw little-endian float32)

The random duration predictor is shifted (its last affine flow) so that the benchmark text
lasts about as long as mms-tts-eng says it (about 15 characters a second). Both sides run with
the noise scales at 0, so that they make the same number of frames.
"""
import json
import math
import sys
import time
from pathlib import Path

from bench_common import peak_resident_mb

import torch
import transformers
from transformers import VitsConfig, VitsModel, VitsTokenizer, pipeline

MMS_ENG_VOCAB = {"k": 0, "'": 1, "z": 2, "y": 3, "u": 4, "d": 5, "h": 6, "e": 7, "s": 8, "w": 9,
                 "–": 10, "3": 11, "c": 12, "p": 13, "-": 14, "1": 15, "j": 16, "m": 17, "i": 18,
                 " ": 19, "f": 20, "l": 21, "o": 22, "0": 23, "b": 24, "r": 25, "a": 26, "4": 27,
                 "2": 28, "n": 29, "_": 30, "x": 31, "v": 32, "t": 33, "q": 34, "5": 35, "6": 36,
                 "g": 37}
# Frames per token wanted on average: mms-tts-eng speaks about 15 characters (30 tokens with
# the blanks) a second, at 62.5 frames a second.
FRAMES_PER_TOKEN = 2.0
CALIBRATION_TEXT = "The quick brown fox jumps over the lazy dog near the riverbank."


def make(folder: Path) -> None:
    if (folder / "model.safetensors").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(MMS_ENG_VOCAB, ensure_ascii=False),
                                       encoding="utf-8")
    tokenizer = VitsTokenizer(str(folder / "vocab.json"), pad_token="k", unk_token="<unk>",
                              language="eng", add_blank=True, normalize=True, phonemize=False)
    torch.manual_seed(0)
    model = VitsModel(VitsConfig(vocab_size=len(MMS_ENG_VOCAB))).eval()
    # Calibrate the durations: the last affine flow's shift moves every log duration.
    captured = {}
    hook = model.duration_predictor.register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("log_duration", out.detach()))
    model.noise_scale_duration = 0.0
    with torch.no_grad():
        model(tokenizer(CALIBRATION_TEXT, return_tensors="pt").input_ids)
        hook.remove()
        mean = float(captured["log_duration"].mean())
        affine = model.duration_predictor.flows[0]
        affine.translate[0] += mean - math.log(FRAMES_PER_TOKEN - 0.5)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    (folder / "added_tokens.json").unlink(missing_ok=True)



def time_runs(folder: Path, text: str, seconds: float, waveform: Path) -> None:
    started = time.perf_counter()
    tts = pipeline("text-to-speech", model=str(folder), device="cpu")
    load_s = time.perf_counter() - started
    tts.model.noise_scale = 0.0
    tts.model.noise_scale_duration = 0.0
    with torch.no_grad():
        out = tts(text)
        audio_s = out["audio"].shape[-1] / out["sampling_rate"]
        out["audio"].reshape(-1).astype("<f4").tofile(waveform)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or done < 3:
            tts(text)
            done += 1
        per_run = (time.perf_counter() - start) / done
    print(json.dumps({
        "load_s": load_s,
        "per_run_ms": per_run * 1e3,
        "audio_s": audio_s,
        "rss_mb": peak_resident_mb(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "threads": torch.get_num_threads()},
    }))


def main() -> None:
    transformers.logging.set_verbosity_error()
    if len(sys.argv) == 3 and sys.argv[1] == "make":
        make(Path(sys.argv[2]))
    elif len(sys.argv) == 6 and sys.argv[1] == "time":
        time_runs(Path(sys.argv[2]), sys.argv[3], float(sys.argv[4]), Path(sys.argv[5]))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
