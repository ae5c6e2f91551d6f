"""Full-size vision checkpoints with random weights, and transformers' (PyTorch CPU) time per
image on them, for comparison with `cargo bench -p hgpt-local --bench vision` (which runs this
script when HGPT_BENCH_PYTHON names an interpreter with torch and transformers 4.57, e.g. the
venv of scripts/requirements-fixtures.txt). Never used by tests.

Usage:
    python bench_vision.py make FAMILY DIR      # writes the checkpoint (config, weights,
                                                # processor and tokenizer files) unless DIR has it
    python bench_vision.py time FAMILY DIR IMAGE SECONDS
        # prints one JSON line: {"load_s", "per_image_ms", "rss_mb", "versions"}

FAMILY (each the architecture of the named Hub model, random weights):
  segformer-b0   nvidia/segformer-b0-finetuned-ade-512-512 (4 stages, 150 labels, 512x512)
  vit-gpt2       nlpconnect/vit-gpt2-image-captioning (ViT-B/16 224 + GPT-2 124M), 16 new tokens
  blip-caption   Salesforce/blip-image-captioning-base (ViT-B/16 384 + BERT-base decoder),
                 20 new tokens
  blip-vqa       Salesforce/blip-vqa-base, 8 answer tokens; timed as BlipProcessor + generate()
                 (transformers 4.57's VQA pipeline cannot run BLIP: it passes token_type_ids on)
  vilt-vqa       dandelin/vilt-b32-finetuned-vqa (ViT-B/32 over the question and the image
                 resized to 384 on its short side, 3129 answers)
  clip-b32       openai/clip-vit-base-patch32 (ViT-B/32 224 + the 12-layer text tower), five
                 candidate labels
  detr-resnet-50 facebook/detr-resnet-50 (ResNet-50 with transformers' names, 6+6 layers,
                 100 queries, 91 labels; the image resized to 800 on its short side)
  detr-resnet-50-panoptic
                 facebook/detr-resnet-50-panoptic (DETR with the mask head on all four ResNet
                 stages, 250 labels; the image resized to 800 on its short side)
  dpt-large      Intel/dpt-large (ViT-L/16 at 384x384, the DPT neck and depth head)
  dpt-hybrid     Intel/dpt-hybrid-midas (BiT ResNet-50 stages 3/4/9 + ViT-B/16 at 384x384)
  depth-anything-v2-small
                 depth-anything/Depth-Anything-V2-Small-hf (DINOv2 ViT-S/14, the image
                 resized to 518 on the side that scales least, aspect kept)

Caption and answer lengths are fixed with min_length = max_length, so that random weights
cannot end generation early.
"""
import json
import sys
import time
from pathlib import Path

from bench_common import peak_resident_mb

import torch
import transformers
from PIL import Image
from transformers import pipeline

TASKS = {
    "segformer-b0": "image-segmentation",
    "vit-gpt2": "image-to-text",
    "blip-caption": "image-to-text",
    "blip-vqa": "visual-question-answering",
    "vilt-vqa": "visual-question-answering",
    "clip-b32": "zero-shot-image-classification",
    "detr-resnet-50": "object-detection",
    "detr-resnet-50-panoptic": "image-segmentation",
    "dpt-large": "depth-estimation",
    "dpt-hybrid": "depth-estimation",
    "depth-anything-v2-small": "depth-estimation",
}
QUESTION = "how many zebras are there?"
LABELS = ["a zebra", "a horse", "a cat", "a car", "a tree"]


def padded_vocab(base: list[str], size: int, filler: str) -> list[str]:
    """`base` then filler tokens up to `size` entries."""
    return base + [filler.format(i) for i in range(size - len(base))]


def gpt2_tokenizer(folder: Path):
    """A GPT-2 sized (50257) byte-level BPE tokenizer: the 256 byte tokens, fillers, and
    <|endoftext|> last, as GPT-2 has it."""
    from transformers import GPT2TokenizerFast
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode
    byte_chars = [bytes_to_unicode()[b] for b in range(256)]
    vocab = padded_vocab(byte_chars, 50256, "tok{}") + ["<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return GPT2TokenizerFast(vocab_file=str(folder / "vocab.json"),
                             merges_file=str(folder / "merges.txt"))


def bert_tokenizer(folder: Path, size: int):
    """A BERT WordPiece tokenizer of `size` tokens with [DEC] as bos (BLIP's)."""
    from transformers import BertTokenizerFast
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = "how many zebras are there ? a the is of in on with".split()
    vocab = padded_vocab(specials + words, size - 2, "[unused{}]")
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    return tokenizer


def make(family: str, folder: Path) -> None:
    if (folder / "config.json").is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    tokenizer = None
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
    elif family == "vit-gpt2":
        from transformers import (GenerationConfig, GPT2Config, ViTConfig, ViTImageProcessor,
                                  VisionEncoderDecoderConfig, VisionEncoderDecoderModel)
        tokenizer = gpt2_tokenizer(folder)
        decoder = GPT2Config(add_cross_attention=True, is_decoder=True)
        config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(ViTConfig(), decoder)
        config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = 50256
        model = VisionEncoderDecoderModel(config).eval()
        model.generation_config = GenerationConfig(
            max_length=17, min_length=17, decoder_start_token_id=50256, bos_token_id=50256,
            eos_token_id=50256, pad_token_id=50256)
        processor = ViTImageProcessor(size={"height": 224, "width": 224})
    elif family in ("blip-caption", "blip-vqa"):
        from transformers import (BlipConfig, BlipForConditionalGeneration,
                                  BlipForQuestionAnswering, BlipImageProcessor, GenerationConfig)
        tokenizer = bert_tokenizer(folder, 30524)
        config = BlipConfig(text_config={}, vision_config={})
        cls = BlipForConditionalGeneration if family == "blip-caption" else BlipForQuestionAnswering
        model = cls(config).eval()
        length = 21 if family == "blip-caption" else 9
        model.generation_config = GenerationConfig(max_length=length, min_length=length)
        processor = BlipImageProcessor(
            size={"height": 384, "width": 384}, resample=Image.Resampling.BICUBIC,
            image_mean=[0.48145466, 0.4578275, 0.40821073],
            image_std=[0.26862954, 0.26130258, 0.27577711])
    elif family == "vilt-vqa":
        from transformers import ViltConfig, ViltForQuestionAnswering, ViltImageProcessor
        tokenizer = bert_tokenizer(folder, 30522)
        labels = {i: f"answer {i}" for i in range(3129)}
        config = ViltConfig(num_labels=3129, id2label=labels,
                            label2id={v: k for k, v in labels.items()})
        model = ViltForQuestionAnswering(config).eval()
        processor = ViltImageProcessor(size={"shortest_edge": 384})
    elif family == "clip-b32":
        from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel
        tokenizer = gpt2_tokenizer(folder)  # byte-level BPE of CLIP's size, end token last
        tokenizer.pad_token = tokenizer.eos_token
        config = CLIPConfig(text_config={"vocab_size": 50257, "eos_token_id": 2}, vision_config={})
        model = CLIPModel(config).eval()
        processor = CLIPImageProcessor(size={"shortest_edge": 224},
                                       crop_size={"height": 224, "width": 224})
    elif family == "detr-resnet-50":
        from transformers import (DetrConfig, DetrForObjectDetection, DetrImageProcessor,
                                  ResNetConfig)
        labels = {i: f"class {i}" for i in range(91)}
        backbone = ResNetConfig(out_features=["stage4"])  # ResNet-50's stages and widths
        config = DetrConfig(use_timm_backbone=False, backbone=None, backbone_config=backbone,
                            use_pretrained_backbone=False, num_labels=91, id2label=labels,
                            label2id={v: k for k, v in labels.items()})
        model = DetrForObjectDetection(config).eval()
        processor = DetrImageProcessor(size={"shortest_edge": 800, "longest_edge": 1333})
    elif family == "detr-resnet-50-panoptic":
        from transformers import (DetrConfig, DetrForSegmentation, DetrImageProcessor,
                                  ResNetConfig)
        labels = {i: f"class {i}" for i in range(250)}
        backbone = ResNetConfig(out_features=["stage1", "stage2", "stage3", "stage4"])
        config = DetrConfig(use_timm_backbone=False, backbone=None, backbone_config=backbone,
                            use_pretrained_backbone=False, num_labels=250, id2label=labels,
                            label2id={v: k for k, v in labels.items()})
        model = DetrForSegmentation(config).eval()
        processor = DetrImageProcessor(size={"shortest_edge": 800, "longest_edge": 1333},
                                       format="coco_panoptic")
    elif family == "dpt-large":
        from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor
        config = DPTConfig(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                           intermediate_size=4096, image_size=384, patch_size=16,
                           backbone_out_indices=[5, 11, 17, 23],
                           neck_hidden_sizes=[256, 512, 1024, 1024])
        model = DPTForDepthEstimation(config).eval()
        processor = DPTImageProcessor(size={"height": 384, "width": 384})
    elif family == "dpt-hybrid":
        from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor
        config = DPTConfig(is_hybrid=True, backbone_featmap_shape=[1, 1024, 24, 24],
                           image_size=384, patch_size=16, backbone_out_indices=[2, 5, 8, 11],
                           reassemble_factors=[1, 1, 1, 0.5],
                           neck_hidden_sizes=[256, 512, 768, 768])
        model = DPTForDepthEstimation(config).eval()
        processor = DPTImageProcessor(size={"height": 384, "width": 384})
    elif family == "depth-anything-v2-small":
        from transformers import (DepthAnythingConfig, DepthAnythingForDepthEstimation,
                                  Dinov2Config, DPTImageProcessor)
        backbone = Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                image_size=518, patch_size=14, out_indices=[3, 6, 9, 12],
                                apply_layernorm=True, reshape_hidden_states=False)
        config = DepthAnythingConfig(backbone_config=backbone, backbone=None,
                                     use_pretrained_backbone=False, reassemble_hidden_size=384,
                                     neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64)
        model = DepthAnythingForDepthEstimation(config).eval()
        processor = DPTImageProcessor(
            size={"height": 518, "width": 518}, keep_aspect_ratio=True, ensure_multiple_of=14,
            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
    else:
        raise SystemExit(f"unknown family {family}")
    model.save_pretrained(folder, safe_serialization=True)
    processor.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)



def time_per_image(family: str, folder: Path, image_path: str, seconds: float) -> None:
    image = Image.open(image_path).convert("RGB")
    start = time.perf_counter()
    if family == "blip-vqa":
        from transformers import (BertTokenizerFast, BlipForQuestionAnswering,
                                  BlipImageProcessor)
        model = BlipForQuestionAnswering.from_pretrained(folder).eval()
        processor = BlipImageProcessor.from_pretrained(folder)
        tokenizer = BertTokenizerFast.from_pretrained(folder)

        def run():
            question = tokenizer(QUESTION, return_tensors="pt")
            pixels = processor(images=image, return_tensors="pt")["pixel_values"]
            ids = model.generate(input_ids=question["input_ids"],
                                 attention_mask=question["attention_mask"], pixel_values=pixels)
            return tokenizer.decode(ids[0], skip_special_tokens=True).strip()
    else:
        pipe = pipeline(TASKS[family], model=str(folder), device="cpu")
        question = {"question": QUESTION} if family == "vilt-vqa" else {}
        if family == "clip-b32":
            question = {"candidate_labels": LABELS}

        def run():
            return pipe(image, **question)
    load_s = time.perf_counter() - start
    with torch.inference_mode():
        run()
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or done < 3:
            run()
            done += 1
    per_image_ms = (time.perf_counter() - start) / done * 1e3
    print(json.dumps({
        "load_s": load_s,
        "per_image_ms": per_image_ms,
        "rss_mb": peak_resident_mb(),
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
