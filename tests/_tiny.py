"""Tiny, seeded Stable Diffusion pipelines built from configs in code (diffusers' get_dummy_components style).

Shared by the test-suite (``from _tiny import ...`` works from any test file because pytest puts ``tests/`` on
``sys.path``). Every builder is deterministic for a given ``seed`` and runs in well under a second on a CPU.

Shapes mirror the real families with miniature numbers, so the compatibility checks see realistic differences:

=========  ==============================  =================================================================
family     real model                      tiny stand-in
=========  ==============================  =================================================================
sd1        CLIP-L, hidden 768              CLIPTextModel hidden 32, UNet cross_attention_dim 32
sd2        OpenCLIP-H, hidden 1024         CLIPTextModel hidden 48, UNet cross_attention_dim 48
sdxl       CLIP-L 768 + bigG 1280 (proj)   CLIPTextModel 32 + CLIPTextModelWithProjection 48 (projection 40),
                                           UNet cross_attention_dim 80, add-embedding input 40 + 6 * 8
=========  ==============================  =================================================================

The tokenizer is always the real CLIP BPE tokenizer (vocabulary 49,408) from
:func:`robust_encoders.tokenization.load_clip_tokenizer`.
"""

from __future__ import annotations

from typing import Any

import torch

from robust_encoders.tokenization import load_clip_tokenizer

VOCAB_SIZE = 49408
SD1_HIDDEN = 32
SD2_HIDDEN = 48
SDXL_HIDDEN_1 = 32
SDXL_HIDDEN_2 = 48
SDXL_PROJECTION = 40
SDXL_TIME_EMBED = 8
#: Trainer overrides that make a miniature training run take a few seconds: tiny DDIM, tiny pools, one two-step soft
#: chain (``attack.mode`` named: the recipe's soft + GCG chains are dropped) after a one-step warm-up (callers add
#: ``iterations=...`` and what they test; later overrides win).
TINY_TRAIN = [
    "unlearn.ddim_steps=4", "unlearn.batch_size=2", "sampling.pool=2", "sampling.retain_pool=2", "sampling.refresh=1",
    "sampling.refresh_every=2", "attack.warmup=1", "attack.mode=continuous", "attack.steps=2", "retain.batch_size=2",
    "retain.num_prompts=20", "log.progress=false", "optim.lr=1e-3",
]


def tiny_text_config(
    hidden_size: int = SD1_HIDDEN,
    *,
    projection_dim: int | None = None,
    vocab_size: int = VOCAB_SIZE,
    max_position_embeddings: int = 77,
    num_hidden_layers: int = 2,
):
    """A ``CLIPTextConfig`` small enough to build in milliseconds."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=2,
        hidden_size=hidden_size,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=num_hidden_layers,
        pad_token_id=1,
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        hidden_act="gelu",
        projection_dim=projection_dim if projection_dim is not None else hidden_size,
    )


def tiny_text_encoder(hidden_size: int = SD1_HIDDEN, *, seed: int = 0, with_projection: bool = False, **kwargs):
    """A seeded tiny ``CLIPTextModel`` (or ``CLIPTextModelWithProjection``) in eval mode."""
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    config = tiny_text_config(hidden_size, **kwargs)
    torch.manual_seed(seed)
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    model = cls(config)
    config.architectures = [cls.__name__]
    return model.eval()


def _tiny_vae(seed: int):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        block_out_channels=[4, 8],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        norm_num_groups=2,
        sample_size=32,
    )


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


def sd_components(hidden_size: int = SD1_HIDDEN, *, seed: int = 0) -> dict[str, Any]:
    """Components of a tiny SD 1.x/2.x-shaped ``StableDiffusionPipeline`` (cross_attention_dim = hidden_size)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=hidden_size,
        attention_head_dim=2,
        norm_num_groups=2,
    )
    return {
        "unet": unet,
        "scheduler": _scheduler(),
        "vae": _tiny_vae(seed),
        "text_encoder": tiny_text_encoder(hidden_size, seed=seed),
        "tokenizer": load_clip_tokenizer(),
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
    }


def sdxl_components(*, seed: int = 0) -> dict[str, Any]:
    """Components of a tiny SDXL-shaped ``StableDiffusionXLPipeline`` (two text encoders, text_time embedding)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=2,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=SDXL_TIME_EMBED,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=SDXL_PROJECTION + 6 * SDXL_TIME_EMBED,
        cross_attention_dim=SDXL_HIDDEN_1 + SDXL_HIDDEN_2,
        norm_num_groups=2,
    )
    return {
        "unet": unet,
        "scheduler": _scheduler(),
        "vae": _tiny_vae(seed),
        "text_encoder": tiny_text_encoder(SDXL_HIDDEN_1, seed=seed),
        "tokenizer": load_clip_tokenizer(),
        "text_encoder_2": tiny_text_encoder(
            SDXL_HIDDEN_2, seed=seed + 1, with_projection=True, projection_dim=SDXL_PROJECTION
        ),
        "tokenizer_2": load_clip_tokenizer(),
        "image_encoder": None,
        "feature_extractor": None,
    }


def build_sd1_pipe(seed: int = 0):
    """A tiny SD 1.x-shaped ``StableDiffusionPipeline`` on the CPU."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**sd_components(SD1_HIDDEN, seed=seed), requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_sd2_pipe(seed: int = 0):
    """A tiny SD 2.x-shaped ``StableDiffusionPipeline`` (wider text encoder than SD 1.x)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**sd_components(SD2_HIDDEN, seed=seed), requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_sdxl_pipe(seed: int = 0):
    """A tiny SDXL-shaped ``StableDiffusionXLPipeline`` on the CPU."""
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline(**sdxl_components(seed=seed))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompt: str = "a photo of a church", *, steps: int = 2, seed: int = 0):
    """Run ``pipe`` for ``steps`` denoising steps at 32x32 and return the numpy images."""
    generator = torch.Generator("cpu").manual_seed(seed)
    return pipe(
        prompt,
        num_inference_steps=steps,
        height=32,
        width=32,
        guidance_scale=5.0,
        generator=generator,
        output_type="np",
    ).images


def prompt_embeds(pipe, prompt: str = "a photo of a church") -> torch.Tensor:
    """The conditional prompt embeddings ``pipe`` feeds its UNet for ``prompt``."""
    with torch.no_grad():
        out = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    return out[0]


def encoder_outputs(encoder, prompt: str = "a photo of a church") -> torch.Tensor:
    """Last hidden state of ``encoder`` for ``prompt`` (padded to 77 tokens, like the pipelines do)."""
    tok = load_clip_tokenizer()
    ids = tok(prompt, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids.to(encoder.device))[0].float()


def populate_hf_cache(cache_dir, repo_id: str, files: dict, *, revision: str = "main") -> str:
    """Lay files out exactly as ``huggingface_hub`` caches a download (``models--org--name/refs`` +
    ``snapshots/<commit>/...``), so Hub ids resolve offline against ``cache_dir``.

    ``files`` maps a path inside the repo to a local file (copied) or ``bytes``. Returns the commit hash.
    """
    import hashlib
    import shutil
    from pathlib import Path

    cache_dir = Path(cache_dir)
    storage = cache_dir / ("models--" + repo_id.replace("/", "--"))
    digest = hashlib.sha1(repo_id.encode())
    for rel in sorted(files):
        digest.update(rel.encode())
    commit = digest.hexdigest()
    snapshot = storage / "snapshots" / commit
    for rel, src in files.items():
        dest = snapshot / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, bytes):
            dest.write_bytes(src)
        else:
            shutil.copyfile(src, dest)
    (storage / "refs").mkdir(parents=True, exist_ok=True)
    (storage / "refs" / revision).write_text(commit)
    return commit


def save_legacy_bin_folder(model, folder) -> None:
    """Save ``model`` the way transformers 4.x did: config.json + pytorch_model.bin with ``text_model.`` keys and
    the old persistent ``position_ids`` buffer (what the AdvUnlearn encoders on the Hub look like)."""
    import json
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, value in model.state_dict().items():
        state[key if key.startswith("text_model.") or key.startswith("text_projection") else f"text_model.{key}"] = (
            value.clone()
        )
    n_pos = model.config.max_position_embeddings
    state["text_model.embeddings.position_ids"] = torch.arange(n_pos).expand((1, -1)).clone()
    torch.save(state, folder / "pytorch_model.bin")
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    config["transformers_version"] = "4.28.0"
    (folder / "config.json").write_text(json.dumps(config, indent=2))
