"""Full-size Stable Diffusion repositories with random weights, and diffusers' (PyTorch CPU)
time per image on them, for comparison with `cargo bench -p hgpt-local --bench diffusion`
(which runs this script when HGPT_BENCH_PYTHON names an interpreter with torch, transformers
4.57 and diffusers 0.36, e.g. the venv of scripts/requirements-fixtures.txt). Never used by
tests.

Usage:
    python bench_diffusion.py make FAMILY DIR   # writes the repository unless DIR has it
    python bench_diffusion.py time FAMILY DIR STEPS SIDE
        # prints one JSON line: {"load_s", "per_image_s", "one_step_s", "rss_mb", "versions"}

FAMILY (each the architecture of the named Hub model, random weights saved as the fp16
variants that `hgpt models pull` fetches):
  sd15      stable-diffusion-v1-5/stable-diffusion-v1-5 (UNet 860M, CLIP ViT-L/14 text
            tower, PNDM), guidance 7.5 (the UNet runs on a batch of 2)
  sd-turbo  stabilityai/sd-turbo (the SD 2.1 UNet with linear projections and heads of
            64, OpenCLIP ViT-H text tower of 23 layers, Euler trailing), guidance 0
  sdxl-turbo  stabilityai/sdxl-turbo (the SDXL UNet, 2.6B, with its pooled-text and size
            conditioning; CLIP ViT-L and OpenCLIP bigG text towers; Euler ancestral
            trailing), guidance 0

The time of a 1-step image and of a STEPS-step image at SIDE x SIDE is measured (no warm-up
run: a run takes a while on CPU); the benchmark divides the difference by the UNet evaluations
it adds (the text encoder and VAE decoder run once per image).
"""
import json
import sys
import time
from pathlib import Path

from bench_common import peak_resident_mb

import diffusers
import torch
import transformers
from diffusers import (AutoencoderKL, DiffusionPipeline, EulerAncestralDiscreteScheduler,
                       EulerDiscreteScheduler, PNDMScheduler, StableDiffusionPipeline,
                       StableDiffusionXLPipeline, UNet2DConditionModel)
from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection,
                          CLIPTokenizer)

PROMPT = "a photograph of an astronaut riding a horse"


def clip_tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP-sized (49408) vocabulary: byte tokens, their word-end forms, fillers, and the
    start and end tokens last, as CLIP has them; no merges."""
    from transformers.models.clip.tokenization_clip import bytes_to_unicode
    chars = list(bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars]
    vocab += [f"tok{i}</w>" for i in range(49406 - len(vocab))]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(vocab_file=str(folder / "vocab.json"),
                         merges_file=str(folder / "merges.txt"), model_max_length=77)


def make_sdxl(folder: Path) -> None:
    """sdxl-turbo's architecture: its UNet, both text towers, the SDXL autoencoder."""
    unet = UNet2DConditionModel(
        sample_size=64, block_out_channels=(320, 640, 1280), layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=2048, attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816)
    text = CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                          num_hidden_layers=12, num_attention_heads=12, hidden_act="quick_gelu")
    text_2 = CLIPTextConfig(vocab_size=49408, hidden_size=1280, intermediate_size=5120,
                            num_hidden_layers=32, num_attention_heads=20, hidden_act="gelu",
                            projection_dim=1280)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4,
                        sample_size=1024, scaling_factor=0.13025, force_upcast=True)
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                                beta_schedule="scaled_linear", steps_offset=1,
                                                timestep_spacing="trailing")
    tokenizer = clip_tokenizer(folder / "tokenizer-src")
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(text), text_encoder_2=CLIPTextModelWithProjection(text_2),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
        add_watermarker=False)
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True, variant="fp16")


def make(family: str, folder: Path) -> None:
    if (folder / "model_index.json").is_file():
        return
    torch.manual_seed(0)
    if family == "sdxl-turbo":
        make_sdxl(folder)
        return
    blocks = dict(
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    if family == "sd15":
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768,
                                    attention_head_dim=8, **blocks)
        text = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                              num_attention_heads=12, hidden_act="quick_gelu",
                              projection_dim=768)
        scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012,
                                  beta_schedule="scaled_linear", set_alpha_to_one=False,
                                  skip_prk_steps=True, steps_offset=1)
    elif family == "sd-turbo":
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=1024,
                                    attention_head_dim=(5, 10, 20, 20),
                                    use_linear_projection=True, **blocks)
        text = CLIPTextConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                              num_attention_heads=16, hidden_act="gelu", projection_dim=512)
        scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                           beta_schedule="scaled_linear", steps_offset=1,
                                           timestep_spacing="trailing")
    else:
        raise SystemExit(f"unknown family {family}")
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                        down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4,
                        sample_size=512)
    tokenizer = clip_tokenizer(folder / "tokenizer-src")
    text.vocab_size = 49408
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=CLIPTextModel(text), tokenizer=tokenizer, unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True, variant="fp16")



def time_per_image(family: str, folder: Path, steps: int, side: int) -> None:
    start = time.perf_counter()
    pipe = DiffusionPipeline.from_pretrained(folder, variant="fp16", torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    load_s = time.perf_counter() - start
    guidance = 7.5 if family == "sd15" else 0.0

    def run(n: int) -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            pipe(PROMPT, num_inference_steps=n, guidance_scale=guidance, width=side,
                 height=side, generator=torch.Generator().manual_seed(0))
        return time.perf_counter() - started

    one = run(1)
    many = run(steps) if steps > 1 else one
    print(json.dumps({
        "load_s": load_s,
        "per_image_s": many,
        "one_step_s": one,
        "rss_mb": peak_resident_mb(),
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                     "transformers": transformers.__version__,
                     "threads": torch.get_num_threads()},
    }))


def main() -> None:
    command, family, folder = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    if command == "make":
        make(family, folder)
    elif command == "time":
        time_per_image(family, folder, int(sys.argv[4]), int(sys.argv[5]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
