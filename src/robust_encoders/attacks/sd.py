"""A Stable Diffusion pipeline seen by an attacker: generation and denoising loss with *any* text encoder.

The UNet, VAE and scheduler come from one ``StableDiffusionPipeline`` (SD 1.x / 2.x) or
``StableDiffusionXLPipeline`` and stay frozen; the text encoder is an argument of every call, so the
original and the erased encoder share one copy of everything else. Conditioning is what the
pipeline's ``encode_prompt`` feeds the UNet (no clip-skip): the encoder's ``last_hidden_state``
(B, L, D) on SD 1.x / 2.x; on SDXL a :class:`~robust_encoders.core.diffusion.Conditioning` holding
both encoders' penultimate states and the pooled ``text_embeds`` of a
:class:`~robust_encoders.core.text.TextEncoderPair` (the "encoder" of an SDXL model).

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

from ..core.diffusion import Conditioning, predict_eps
from ..core.text import TextEncoderPair, encode_from_token_embeds, encode_ids, sdxl_time_ids, tokenize

__all__ = ["Generation", "SDModel"]


@dataclass
class Generation:
    """Images in [0, 1] (B, 3, H, W) and the final latents (B, C, h, w) they were decoded from."""

    images: torch.Tensor
    latents: torch.Tensor


class SDModel:
    """Frozen UNet/VAE/scheduler of a ``StableDiffusionPipeline`` plus helpers that take the encoder as input.

    Args:
        pipe: a diffusers ``StableDiffusionPipeline`` (SD 1.x or 2.x) or ``StableDiffusionXLPipeline``.
        steps: DDIM steps for generation (25: the miniature default; UnlearnDiffAtk uses 100 on SD 1.4).
        guidance: default classifier-free guidance scale (overridden per prompt).
        batch_size: images generated per pipeline call.
    """

    def __init__(self, pipe, *, steps: int = 25, guidance: float = 7.5, batch_size: int = 16) -> None:
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        if not isinstance(pipe, (StableDiffusionPipeline, StableDiffusionXLPipeline)):
            raise TypeError(
                f"The evaluation suite attacks StableDiffusionPipeline (SD 1.x / 2.x) and StableDiffusionXLPipeline "
                f"models; got {type(pipe).__name__}. Load the base model as one of those (img2img / inpainting "
                "variants are not supported)."
            )
        self.xl = isinstance(pipe, StableDiffusionXLPipeline)
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
    @property
    def original_encoder(self):
        """The pipeline's own encoder (SDXL: its two encoders as a :class:`TextEncoderPair`)."""
        return TextEncoderPair.from_pipeline(self.pipe) if self.xl else self.pipe.text_encoder

    def as_encoder(self, encoder):
        """``encoder`` in the form this model's calls take. SDXL: a :class:`TextEncoderPair`, or a dict
        ``{"text_encoder": ..., "text_encoder_2": ...}`` (a missing key keeps the pipeline's own encoder)."""
        if not self.xl:
            if isinstance(encoder, (dict, TextEncoderPair)):
                raise TypeError(f"{type(self.pipe).__name__} has one text encoder; pass a single encoder, not "
                                f"{type(encoder).__name__}.")
            return encoder
        if isinstance(encoder, TextEncoderPair):
            return encoder
        if isinstance(encoder, dict):
            unknown = sorted(set(encoder) - {"text_encoder", "text_encoder_2"})
            if unknown:
                raise ValueError(f"Unknown encoder slot(s) {unknown}; use 'text_encoder' and/or 'text_encoder_2'.")
            tok2 = self.pipe.tokenizer_2
            return TextEncoderPair(encoder.get("text_encoder", self.pipe.text_encoder),
                                   encoder.get("text_encoder_2", self.pipe.text_encoder_2),
                                   pad_token_id_2=getattr(tok2, "pad_token_id", None),
                                   eos_token_id=int(self.tokenizer.eos_token_id or 49407))
        raise TypeError(
            f"{type(self.pipe).__name__} has two text encoders: pass a TextEncoderPair or a dict "
            "{'text_encoder': ..., 'text_encoder_2': ...} (one key to evaluate only that encoder swapped in), "
            f"not a single {type(encoder).__name__}."
        )

    def ids(self, prompts: Sequence[str]) -> torch.Tensor:
        return tokenize(self.tokenizer, list(prompts), device=self.device)

    def conditioning(self, out):
        """What the UNet reads from an encoder output: (B, L, D) on SD 1.x / 2.x, a Conditioning on SDXL."""
        if not self.xl:
            return out.last_hidden_state.to(self.dtype)
        if out.text_embeds is None:
            raise TypeError("SDXL needs the pooled text_embeds of text_encoder_2: encode with a TextEncoderPair.")
        return Conditioning(out.last_hidden_state.to(self.dtype), {"text_embeds": out.text_embeds.to(self.dtype)})

    @torch.no_grad()
    def cond(self, encoder, prompts: Sequence[str]):
        """Conditioning of ``prompts`` under ``encoder`` (see :meth:`conditioning`)."""
        return self.conditioning(encode_ids(encoder, self.ids(prompts)))

    @torch.no_grad()
    def token_states(self, encoder, prompts: Sequence[str]) -> torch.Tensor:
        """The (B, L, D) token conditioning alone (SDXL: both encoders' penultimate states side by side)."""
        return encode_ids(encoder, self.ids(prompts)).last_hidden_state.to(self.dtype)

    def cond_from_embeds(self, encoder, token_embeds: torch.Tensor, input_ids: torch.Tensor):
        """Conditioning from token embeddings (keeps gradients)."""
        return self.conditioning(encode_from_token_embeds(encoder, token_embeds, input_ids))

    def uncond(self, encoder, batch: int):
        """The unconditional branch for ``encoder`` (cached per encoder), repeated ``batch`` times: the empty prompt,
        or zeros on SDXL pipelines with ``force_zeros_for_empty_prompt`` (what they do with no negative prompt)."""
        hit = self._uncond.get(id(encoder))
        if hit is None or hit[0] is not encoder:
            if len(self._uncond) >= 4:
                self._uncond.clear()
            c = self.cond(encoder, [""])
            if self.xl and getattr(self.pipe.config, "force_zeros_for_empty_prompt", False):
                c = Conditioning(torch.zeros_like(c.encoder_hidden_states),
                                 {k: torch.zeros_like(v) for k, v in c.added_cond_kwargs.items()})
            hit = (encoder, c)
            self._uncond[id(encoder)] = hit
        if self.xl:
            return hit[1].expand(batch)
        return hit[1].expand(batch, -1, -1)

    def _embeds_kwargs(self, c, u) -> dict:
        if not self.xl:
            return {"prompt_embeds": c, "negative_prompt_embeds": u}
        return {"prompt_embeds": c.encoder_hidden_states, "negative_prompt_embeds": u.encoder_hidden_states,
                "pooled_prompt_embeds": c.added_cond_kwargs["text_embeds"],
                "negative_pooled_prompt_embeds": u.added_cond_kwargs["text_embeds"]}

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
                    **self._embeds_kwargs(c, self.uncond(encoder, len(part))),
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

    def noise_pred(self, cond, z0: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The UNet's noise prediction on ``z_t = add_noise(z0, noise, t)`` under ``cond`` (float32)."""
        zt = self.scheduler.add_noise(z0, noise, timesteps)
        if isinstance(cond, Conditioning):  # SDXL: pooled text_embeds + the time ids of this image size
            f = int(getattr(self.pipe, "vae_scale_factor", 8))
            time_ids = sdxl_time_ids(z0.shape[-2] * f, z0.shape[-1] * f, cond.batch_size, device=self.device,
                                     dtype=self.dtype)
            cond = Conditioning(cond.encoder_hidden_states, {**cond.added_cond_kwargs, "time_ids": time_ids})
        return predict_eps(self.unet, zt.to(self.dtype), timesteps, cond).float()

    def denoise_loss(self, cond, z0: torch.Tensor, timesteps: torch.Tensor, noise: torch.Tensor,
                     target: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample MSE between the UNet's noise prediction on ``z_t`` and ``target`` (B,).

        ``target`` defaults to the true ``noise`` (the diffusion loss); pass another model's
        prediction on the same ``z_t`` to match that model instead.
        """
        eps = self.noise_pred(cond, z0, timesteps, noise)
        goal = noise if target is None else target
        return ((eps - goal.float()) ** 2).flatten(1).mean(1)
