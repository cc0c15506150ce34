"""Architectures of the miniature world, built from configs (no download, seeded init).

Sizes were chosen by measurement on 2 CPU cores: 32x32 images, a VAE with one 2x
downsampling (16x16x4 latents), a lean UNet with cross-attention only at 8x8 and 4x4, and
a CLIP with a 64-wide text tower over the real 49,408-token CLIP vocabulary.
"""

from __future__ import annotations

import torch
from torch import nn

from .concepts import COLOURS, OBJECTS, STYLES

__all__ = [
    "TEXT_HIDDEN",
    "build_vae",
    "build_unet",
    "build_clip",
    "build_scheduler",
    "ConceptDetector",
]

TEXT_HIDDEN = 64
VOCAB_SIZE = 49408
BOS_ID, EOS_ID = 49406, 49407


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=16,
        sample_size=32,
    )


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        cross_attention_dim=TEXT_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=16,
    )


def build_clip():
    from transformers import CLIPConfig, CLIPModel

    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=VOCAB_SIZE,
            hidden_size=TEXT_HIDDEN,
            intermediate_size=4 * TEXT_HIDDEN,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=64,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=EOS_ID,
        ),
        vision_config=dict(
            image_size=32,
            patch_size=4,
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=3,
            num_attention_heads=4,
            projection_dim=64,
        ),
        projection_dim=64,
    )
    return CLIPModel(cfg)


def build_scheduler(kind: str = "ddim"):
    """Stable Diffusion's noise schedule (scaled-linear betas 0.00085..0.012, 1000 steps)."""
    from diffusers import DDIMScheduler, DDPMScheduler

    kw = dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type="epsilon",
    )
    if kind == "ddpm":
        return DDPMScheduler(**kw)
    return DDIMScheduler(**kw, set_alpha_to_one=False, steps_offset=1)


class ConceptDetector(nn.Module):
    """A small CNN with one head per concept kind (object, colour, style).

    Input: float images in [0, 1], shape (N, 3, H, W). Output: dict of logits.
    """

    def __init__(self, width: int = 32):
        super().__init__()

        def block(i, o):
            return nn.Sequential(
                nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
                nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(
            block(3, width), nn.MaxPool2d(2), block(width, 2 * width), nn.MaxPool2d(2),
            block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.heads = nn.ModuleDict(
            {
                "object": nn.Linear(4 * width, len(OBJECTS)),
                "colour": nn.Linear(4 * width, len(COLOURS)),
                "style": nn.Linear(4 * width, len(STYLES)),
            }
        )

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.features(images * 2 - 1)
        return {k: head(h) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Class indices per kind for images in [0, 1]."""
        was = self.training
        self.eval()
        out = {k: v.argmax(-1) for k, v in self(images).items()}
        self.train(was)
        return out
