"""Full-size Whisper architectures with random weights, and transformers' (PyTorch CPU)
real-time factor on them, for comparison with `cargo bench -p hgpt-local --bench whisper`
(which runs this script when HGPT_BENCH_PYTHON names an interpreter with torch and
transformers 4.57, e.g. the venv of scripts/requirements-fixtures.txt). Never used by tests.

Usage:
    python bench_whisper.py make MODEL DIR      # writes the checkpoint unless DIR has it
    python bench_whisper.py time MODEL DIR WAV TOKENS BEAMS
        # prints one JSON line: {"load_s", "per_clip_s", "rss_mb", "text", "versions"}

MODEL (each the architecture of the named Hub model, random weights, with its token layout
and generation config; the text vocabulary is 256 byte tokens and fillers, no merges):
  whisper-tiny   openai/whisper-tiny (d_model 384, 4 + 4 layers, 6 heads)
  whisper-base   openai/whisper-base (d_model 512, 6 + 6 layers, 8 heads)

Every run transcribes the same 30 s clip in English with exactly TOKENS new tokens: the end
token and the timestamp tokens are suppressed, so that random weights can neither stop early
nor end a segment (which would make the pipeline decode the window again from there).
"""
import json
import sys
import time
from pathlib import Path

from bench_common import peak_resident_mb

import numpy as np
import soundfile
import torch
import transformers
from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                          WhisperForConditionalGeneration, WhisperTokenizer,
                          WhisperTokenizerFast, pipeline)
from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode
from transformers.models.whisper.tokenization_whisper import LANGUAGES

SIZES = {
    "whisper-tiny": dict(d_model=384, encoder_layers=4, decoder_layers=4,
                         encoder_attention_heads=6, decoder_attention_heads=6,
                         encoder_ffn_dim=1536, decoder_ffn_dim=1536),
    "whisper-base": dict(d_model=512, encoder_layers=6, decoder_layers=6,
                         encoder_attention_heads=8, decoder_attention_heads=8,
                         encoder_ffn_dim=2048, decoder_ffn_dim=2048),
}


def tokenizer(folder: Path) -> WhisperTokenizerFast:
    """openai/whisper-*'s layout: 50257 text tokens (bytes and fillers), <|endoftext|>,
    <|startoftranscript|>, 99 languages, the task and other special tokens, 1501 timestamps."""
    byte_chars = [bytes_to_unicode()[b] for b in range(256)]
    vocab = byte_chars + [f"tok{i}" for i in range(50257 - 256)] + ["<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    slow = WhisperTokenizer(vocab_file=str(folder / "vocab.json"),
                            merges_file=str(folder / "merges.txt"),
                            unk_token="<|endoftext|>", bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    languages = [code for code in LANGUAGES][:99]
    slow.add_special_tokens({"additional_special_tokens": (
        ["<|startoftranscript|>"] + [f"<|{c}|>" for c in languages]
        + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>",
           "<|nocaptions|>", "<|notimestamps|>"])})
    slow.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
    slow.save_pretrained(folder)
    fast = WhisperTokenizerFast.from_pretrained(folder, from_slow=True)
    fast.save_pretrained(folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("from_slow", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return WhisperTokenizerFast.from_pretrained(folder)


def make(model: str, folder: Path) -> None:
    if (folder / "model.safetensors").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    tok = tokenizer(folder)
    ids = tok.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    config = WhisperConfig(vocab_size=len(tok), num_mel_bins=80, max_source_positions=1500,
                           max_target_positions=448, decoder_start_token_id=sot,
                           bos_token_id=eot, eos_token_id=eot, pad_token_id=eot, **SIZES[model])
    torch.manual_seed(0)
    whisper = WhisperForConditionalGeneration(config).eval()
    lang_to_id = {f"<|{c}|>": ids(f"<|{c}|>") for c in list(LANGUAGES)[:99]}
    whisper.generation_config = GenerationConfig(
        max_length=448, decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot,
        pad_token_id=eot, begin_suppress_tokens=[220, eot],
        # The end token and the timestamps suppressed: every run decodes the same number of
        # tokens in one pass.
        suppress_tokens=[1, 2, 7, 8, 9, 10, 14, 25, eot] + list(range(
            ids("<|notimestamps|>") + 1, len(tok))),
        forced_decoder_ids=[[1, None], [2, ids("<|transcribe|>")]], is_multilingual=True,
        lang_to_id=lang_to_id,
        task_to_id={"transcribe": ids("<|transcribe|>"), "translate": ids("<|translate|>")},
        no_timestamps_token_id=ids("<|notimestamps|>"), max_initial_timestamp_index=50)
    whisper.save_pretrained(folder, safe_serialization=True)
    WhisperFeatureExtractor().save_pretrained(folder)
    for extra in ("vocab.json", "merges.txt", "added_tokens.json", "normalizer.json"):
        (folder / extra).unlink(missing_ok=True)



def time_clip(folder: Path, wav: str, tokens: int, beams: int) -> None:
    samples, rate = soundfile.read(wav, dtype="float32")
    start = time.perf_counter()
    asr = pipeline("automatic-speech-recognition", model=str(folder), device="cpu")
    load_s = time.perf_counter() - start
    kwargs = {"language": "en", "num_beams": beams, "max_new_tokens": tokens}
    with torch.inference_mode():
        text = asr(samples.copy(), generate_kwargs=kwargs)["text"]
        done, start = 0, time.perf_counter()
        while done < 3:
            asr(samples.copy(), generate_kwargs=kwargs)
            done += 1
    print(json.dumps({
        "load_s": load_s,
        "per_clip_s": (time.perf_counter() - start) / done,
        "rss_mb": peak_resident_mb(),
        "text": text,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "threads": torch.get_num_threads()},
    }))


def main() -> None:
    command, model, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if command == "make":
        make(model, folder)
    elif command == "time":
        time_clip(folder, sys.argv[4], int(sys.argv[5]), int(sys.argv[6]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
