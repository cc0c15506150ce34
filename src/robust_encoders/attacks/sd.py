"""A Stable Diffusion pipeline seen by an attacker: generation and denoising loss with *any* text encoder.

The UNet, VAE and scheduler come from one ``StableDiffusionPipeline`` (SD 1.x / 2.x) and stay
frozen; the text encoder is an argument of every call, so the original and the erased encoder
share one copy of everything else. Conditioning is the encoder's ``last_hidden_state``, which
is what ``StableDiffusionPipeline.encode_prompt`` feeds the UNet (no clip-skip).

Example:
    >>> from robust_encoders.attacks.sd import SDModel
    >>> from robust_encoders.miniature import load_pipeline
    >>> model = SDModel(load_pipeline(), steps=5)
    >>> imgs = model.generate(model.pipe.text_encoder, ["a red star"], seeds=[0])
    >>> tuple(imgs.shape)
    (1, 3, 32, 32)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..core.text import encode_from_token_embeds, encode_ids, tokenize

__all__ = ["Generation", "SDModel"]


@dataclass
class Generation:
    """Images in [0, 1] (B, 3, H, W) and the final latents (B, C, h, w) they were decoded from."""

    images: torch.Tensor
    latents: torch.Tensor


class SDModel:
    """Frozen UNet/VAE/scheduler of a ``StableDiffusionPipeline`` plus helpers that take the encoder as input.

    Args:
        pipe: a diffusers ``StableDiffusionPipeline`` (SD 1.x or 2.x).
        steps: DDIM steps for generation (25: the miniature default; UnlearnDiffAtk uses 100 on SD 1.4).
        guidance: default classifier-free guidance scale (overridden per prompt).
        batch_size: images generated per pipeline call.
    """

    def __init__(self, pipe, *, steps: int = 25, guidance: float = 7.5, batch_size: int = 16) -> None:
        from diffusers import StableDiffusionPipeline

        if not isinstance(pipe, StableDiffusionPipeline):
            raise TypeError(
                f"The evaluation suite attacks StableDiffusionPipeline (SD 1.x / 2.x) models; got {type(pipe).__name__}. "
                "SDXL has two text encoders and pooled conditioning, which these attacks do not model yet."
            )
        self.pipe = pipe
        self.tokenizer = pipe.tokenizer
        self.unet = pipe.unet
        self.vae = pipe.vae
        self.scheduler = pipe.scheduler
        self.steps = steps
        self.guidance = guidance
        self.batch_size = batch_size
        for m in (self.unet, self.vae):
            m.requires_grad_(False)
            m.eval()
        pipe.set_progress_bar_config(disable=True)
        self._uncond: dict[int, tuple[object, torch.Tensor]] = {}

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    # -- text side ---------------------------------------------------------------------------------
    def ids(self, prompts: Sequence[str]) -> torch.Tensor:
        return tokenize(self.tokenizer, list(prompts), device=self.device)

    @torch.no_grad()
    def cond(self, encoder, prompts: Sequence[str]) -> torch.Tensor:
        """Conditioning (B, L, D) of ``prompts`` under ``encoder``."""
        return encode_ids(encoder, self.ids(prompts)).last_hidden_state.to(self.dtype)

    def cond_from_embeds(self, encoder, token_embeds: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """Conditioning from token embeddings (keeps gradients)."""
        return encode_from_token_embeds(encoder, token_embeds, input_ids).last_hidden_state.to(self.dtype)

    def uncond(self, encoder, batch: int) -> torch.Tensor:
        """The empty prompt under ``encoder`` (cached per encoder), repeated ``batch`` times."""
        hit = self._uncond.get(id(encoder))
        if hit is None or hit[0] is not encoder:
            if len(self._uncond) >= 4:
                self._uncond.clear()
            hit = (encoder, self.cond(encoder, [""]))
            self._uncond[id(encoder)] = hit
        return hit[1].expand(batch, -1, -1)

    # -- image side --------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        encoder,
        prompts: Sequence[str] | None = None,
        *,
        cond: torch.Tensor | None = None,
        seeds: Sequence[int],
        guidance: float | Sequence[float | None] | None = None,
        steps: int | None = None,
        return_latents: bool = False,
    ) -> torch.Tensor | Generation:
        """Images (B, 3, H, W) in [0, 1] for ``prompts`` (or a precomputed ``cond``) with ``encoder``.

        One generator per image, seeded by ``seeds[i]``: an image depends on its own prompt and
        seed only, not on what else is in the batch. The unconditional branch uses ``encoder``
        on the empty prompt, as when the encoder is swapped into the pipeline.
        """
        if (prompts is None) == (cond is None):
            raise ValueError("generate() takes exactly one of prompts= or cond=.")
        n = len(prompts) if prompts is not None else int(cond.shape[0])
        if len(seeds) != n:
            raise ValueError(f"generate() needs one seed per prompt: {n} prompts, {len(seeds)} seeds.")
        if guidance is None or isinstance(guidance, (int, float)):
            g_list = [float(guidance if guidance is not None else self.guidance)] * n
        else:
            g_list = [float(g if g is not None else self.guidance) for g in guidance]
        images = [None] * n
        latents = [None] * n
        groups: dict[float, list[int]] = {}
        for i, g in enumerate(g_list):
            groups.setdefault(g, []).append(i)
        for g, idx in groups.items():
            for s in range(0, len(idx), self.batch_size):
                part = idx[s : s + self.batch_size]
                c = self.cond(encoder, [prompts[i] for i in part]) if prompts is not None else cond[part].to(self.dtype)
                gens = [torch.Generator(device="cpu").manual_seed(int(seeds[i])) for i in part]
                out = self.pipe(
                    prompt_embeds=c,
                    negative_prompt_embeds=self.uncond(encoder, len(part)),
                    guidance_scale=g,
                    num_inference_steps=steps or self.steps,
                    generator=gens,
                    output_type="latent",
                ).images
                imgs = self.decode(out)
                for j, i in enumerate(part):
                    images[i] = imgs[j]
                    latents[i] = out[j]
        img_t = torch.stack(images).float().cpu()
        if return_latents:
            return Generation(img_t, torch.stack(latents))
        return img_t

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images in [0, 1] (what the pipeline's ``output_type='pt'`` gives)."""
        x = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return (x / 2 + 0.5).clamp(0, 1)

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> scaled latents (posterior mean)."""
        x = images.to(self.device, self.vae.dtype) * 2 - 1
        return self.vae.encode(x).latent_dist.mean * self.vae.config.scaling_factor

    def denoise_loss(
        self, cond: torch.Tensor, z0: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample MSE between the UNet's noise prediction on ``z_t`` and the true ``noise`` (B,)."""
        zt = self.scheduler.add_noise(z0, noise, timesteps)
        eps = self.unet(zt.to(self.dtype), timesteps.to(self.device), encoder_hidden_states=cond).sample
        return ((eps.float() - noise.float()) ** 2).flatten(1).mean(1)
