#!/usr/bin/env python3
"""Regenerate crates/hgpt-controller/tests/fixtures/spm: SentencePiece vocabularies in GGUF
files (`tokenizer.ggml.model = "llama"`, as Phi-3, Gemma and Llama 2 files carry them) and
llama.cpp's tokenizations of test strings with them.

* A small BPE SentencePiece model (600 pieces, byte fallback) is trained with the
  `sentencepiece` package on the fixed corpus below, one thread, so it is the same every run.
* Its pieces, scores and piece types are written as vocabulary-only GGUF files the way
  llama.cpp's convert_hf_to_gguf.py writes a SentencePiece vocabulary: `spm-prefix.gguf`
  with `tokenizer.ggml.add_space_prefix = true` (Llama 2, Phi-3) and `spm-noprefix.gguf`
  with `false` (Gemma 3).
* spm.json: for each file and test string, llama.cpp's token ids (llama-cpp-python
  0.3.36, `tokenize(text, add_bos=False, special=True)`).

Setup: the venv of scripts/make_llm_fixtures.py, plus `pip install sentencepiece==0.2.3`.
Usage: target/llm-fixture-venv/bin/python scripts/make_spm_fixture.py
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import sentencepiece as spm
from gguf import GGUFWriter
from llama_cpp import Llama

OUT = Path(__file__).resolve().parent.parent / "crates/hgpt-controller/tests/fixtures/spm"

CORPUS = """\
HuggingGPT uses a language model as the controller of many expert models.
For a request such as describe the picture, count the zebras and read the description aloud,
it plans a graph of tasks, selects a model for each task, executes the tasks and answers.
The planner writes tasks with dependencies and references to generated resources.
Tasks run as soon as their inputs exist, and independent tasks run at the same time.
The controller answers from all the results and explains the workflow to the user.
Image to text, object detection, text to speech, translation and summarization are tasks.
The quick brown fox jumps over the lazy dog; the five boxing wizards jump quickly.
Numbers like 12, 345 and 6789 appear in text, and so do dates such as 2026-12-07.
Whitespace matters:  two spaces, a tab\there, and lines
that end and begin again.
Punctuation (parentheses), "quotes", 'apostrophes', commas, colons: and semicolons; too!
"""

TESTS = [
    "Hello world",
    "the zebras and the picture",
    " a leading space",
    "two  spaces and   three",
    "line one\nline two\n\nend",
    "tabs\tand\ttabs",
    "12345 and 2026-12-07",
    "café, naïve, 日本語 and 🙂 fall back to bytes",
    "",
    " ",
    "<s>after a control token",
    "text before</s>",
    "describe /a.jpg, count the zebras and read the description aloud",
]


def train(workdir: Path) -> spm.SentencePieceProcessor:
    corpus = workdir / "corpus.txt"
    corpus.write_text(CORPUS * 4, encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(workdir / "spm"),
        vocab_size=600,
        model_type="bpe",
        byte_fallback=True,
        character_coverage=1.0,
        num_threads=1,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
    )
    return spm.SentencePieceProcessor(model_file=str(workdir / "spm.model"))


def write_gguf(sp: spm.SentencePieceProcessor, path: Path, space_prefix: bool) -> None:
    w = GGUFWriter(str(path), "llama")
    w.add_name("hgpt spm fixture")
    # Hyperparameters llama.cpp reads even for a vocabulary-only load.
    w.add_context_length(256)
    w.add_embedding_length(64)
    w.add_block_count(1)
    w.add_feed_forward_length(128)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tokenizer_model("llama")
    w.add_token_list([sp.id_to_piece(i).encode("utf-8") for i in range(sp.get_piece_size())])
    w.add_token_scores([sp.get_score(i) for i in range(sp.get_piece_size())])
    types = []
    for i in range(sp.get_piece_size()):
        if sp.is_unknown(i):
            types.append(2)
        elif sp.is_control(i):
            types.append(3)
        elif sp.is_byte(i):
            types.append(6)
        elif sp.is_unused(i):
            types.append(5)
        else:
            types.append(1)
    w.add_token_types(types)
    w.add_unk_token_id(sp.unk_id())
    w.add_bos_token_id(sp.bos_id())
    w.add_eos_token_id(sp.eos_id())
    w.add_add_bos_token(False)
    w.add_add_space_prefix(space_prefix)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        sp = train(Path(tmp))
    files = {}
    for name, prefix in [("spm-prefix.gguf", True), ("spm-noprefix.gguf", False)]:
        path = OUT / name
        write_gguf(sp, path, prefix)
        llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
        files[name] = {
            "add_space_prefix": prefix,
            "cases": [
                {"text": t, "ids": llm.tokenize(t.encode("utf-8"), add_bos=False, special=True)}
                for t in TESTS
            ],
        }
        del llm
    (OUT / "spm.json").write_text(
        json.dumps(
            {
                "generator": "scripts/make_spm_fixture.py",
                "llama_cpp_python": "0.3.36",
                "pieces": sp.get_piece_size(),
                "files": files,
            },
            indent=1,
            ensure_ascii=False,
        )
        + "\n",
        encoding="utf-8",
    )


if __name__ == "__main__":
    main()
