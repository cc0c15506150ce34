"""Diffusion helpers shared by the trainer and the evaluation suite (no I/O, no CLI).

Concept erasure in the AdvUnlearn / ESD family works on *intermediate* latents ``x_t`` drawn
by the frozen original model: run DDIM with classifier-free guidance (CFG) from pure noise
down to some step, then compare noise predictions under different text conditionings.
This module holds exactly those pieces:

* :class:`Conditioning`: what the UNet reads from the text side (``encoder_hidden_states``,
  plus ``added_cond_kwargs`` for SDXL-style UNets, so an SDXL variant only fills that dict);
* :func:`predict_eps` / :func:`cfg_eps`: one UNet call (CFG batches cond and uncond together);
* :func:`ddim_trajectory`: a DDIM run that keeps every intermediate latent *and* the
  conditional / unconditional noise predictions computed on the way. Those predictions are
  exactly the frozen model's ``eps0(x_t, c)`` and ``eps0(x_t, "")`` at each visited ``x_t``,
  so a trainer can reuse one trajectory for many (x_t, target) pairs without another UNet pass.

Example:
    >>> import torch
    >>> from diffusers import DDIMScheduler, UNet2DConditionModel
    >>> from robust_encoders.core.diffusion import ddim_trajectory
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
    ...     block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    ...     up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=16,
    ...     norm_num_groups=16).eval()
    >>> cond, uncond = torch.randn(2, 77, 16), torch.zeros(2, 77, 16)
    >>> traj = ddim_trajectory(unet, DDIMScheduler(), cond, uncond, num_inference_steps=5,
    ...     guidance_scale=3.0, generator=torch.Generator().manual_seed(0))
    >>> traj.latents.shape, traj.timesteps.tolist()
    (torch.Size([5, 2, 4, 8, 8]), [800, 600, 400, 200, 0])
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch

__all__ = [
    "Conditioning",
    "Trajectory",
    "latent_shape",
    "ddim_timesteps",
    "predict_eps",
    "cfg_eps",
    "ddim_trajectory",
    "sample_to_step",
]


@dataclass
class Conditioning:
    """Text-side inputs of a UNet call.

    ``encoder_hidden_states`` is (B, L, D). ``added_cond_kwargs`` holds SDXL's extra inputs
    (``{"text_embeds": (B, P), "time_ids": (B, 6)}``) and stays ``None`` for SD 1.x / 2.x.
    """

    encoder_hidden_states: torch.Tensor
    added_cond_kwargs: dict[str, torch.Tensor] | None = None

    @property
    def batch_size(self) -> int:
        return int(self.encoder_hidden_states.shape[0])

    def index(self, idx) -> Conditioning:
        """Rows ``idx`` (an int tensor, slice or list) of every tensor."""
        extra = None if self.added_cond_kwargs is None else {k: v[idx] for k, v in self.added_cond_kwargs.items()}
        return Conditioning(self.encoder_hidden_states[idx], extra)

    # a few tensor-like helpers, so code that slices / moves / repeats a (B, L, D) conditioning takes SDXL's too
    @property
    def shape(self) -> torch.Size:
        return self.encoder_hidden_states.shape

    def __len__(self) -> int:
        return self.batch_size

    def __getitem__(self, idx) -> Conditioning:
        return self.index(idx)

    def to(self, *args, **kwargs) -> Conditioning:
        extra = None if self.added_cond_kwargs is None else {
            k: v.to(*args, **kwargs) for k, v in self.added_cond_kwargs.items()}
        return Conditioning(self.encoder_hidden_states.to(*args, **kwargs), extra)

    def repeat_interleave(self, repeats: int, dim: int = 0) -> Conditioning:
        extra = None if self.added_cond_kwargs is None else {
            k: v.repeat_interleave(repeats, dim) for k, v in self.added_cond_kwargs.items()}
        return Conditioning(self.encoder_hidden_states.repeat_interleave(repeats, dim), extra)

    def expand(self, batch: int) -> Conditioning:
        """Broadcast a batch-1 conditioning to ``batch`` rows (no copy)."""
        if self.batch_size == batch:
            return self
        if self.batch_size != 1:
            raise ValueError(f"Cannot expand a conditioning of batch {self.batch_size} to {batch}; need batch 1.")
        extra = None
        if self.added_cond_kwargs is not None:
            extra = {k: v.expand(batch, *v.shape[1:]) for k, v in self.added_cond_kwargs.items()}
        return Conditioning(self.encoder_hidden_states.expand(batch, *self.encoder_hidden_states.shape[1:]), extra)

    @staticmethod
    def cat(parts: list[Conditioning]) -> Conditioning:
        """Concatenate along the batch dimension (all parts must agree on ``added_cond_kwargs`` keys)."""
        hidden = torch.cat([p.encoder_hidden_states for p in parts])
        keys = {tuple(sorted(p.added_cond_kwargs)) if p.added_cond_kwargs else () for p in parts}
        if len(keys) != 1:
            raise ValueError("Cannot concatenate conditionings with different added_cond_kwargs keys.")
        extra = None
        if parts[0].added_cond_kwargs:
            extra = {k: torch.cat([p.added_cond_kwargs[k] for p in parts]) for k in parts[0].added_cond_kwargs}
        return Conditioning(hidden, extra)


def _as_conditioning(cond) -> Conditioning:
    if isinstance(cond, Conditioning):
        return cond
    if isinstance(cond, torch.Tensor):
        return Conditioning(cond)
    if isinstance(cond, Mapping):
        return Conditioning(cond["encoder_hidden_states"], cond.get("added_cond_kwargs"))
    raise TypeError(f"Expected a Conditioning, a (B, L, D) tensor or a mapping, got {type(cond).__name__}.")


@dataclass
class Trajectory:
    """A DDIM run of the frozen model, kept step by step.

    ``latents[i]`` is the latent *fed to* the UNet at step ``i`` (timestep ``timesteps[i]``,
    step 0 is the initial noise). ``eps_cond[i]`` / ``eps_uncond[i]`` are the UNet's
    predictions there (``None`` when ``guidance_scale`` was 1 and no unconditional pass ran).
    Shapes: ``timesteps`` (S,), the others (S, B, C, H, W).
    """

    timesteps: torch.Tensor
    latents: torch.Tensor
    eps_cond: torch.Tensor
    eps_uncond: torch.Tensor | None

    @property
    def num_steps(self) -> int:
        return int(self.timesteps.shape[0])

    @property
    def batch_size(self) -> int:
        return int(self.latents.shape[1])

    def to(self, device=None, dtype=None) -> Trajectory:
        def mv(x):
            return None if x is None else x.to(device=device, dtype=dtype)

        return Trajectory(self.timesteps.to(device), mv(self.latents), mv(self.eps_cond), mv(self.eps_uncond))


def latent_shape(unet, batch: int, height: int | None = None, width: int | None = None, vae_scale_factor: int = 8):
    """(B, C, h, w) latent shape for ``unet``; image ``height``/``width`` default to the UNet's sample size."""
    c = int(unet.config.in_channels)
    size = unet.config.sample_size
    size = size if isinstance(size, int) else size[0]
    h = height // vae_scale_factor if height is not None else size
    w = width // vae_scale_factor if width is not None else size
    return (batch, c, h, w)


def ddim_timesteps(scheduler, num_inference_steps: int, device=None) -> torch.Tensor:
    """The timesteps a scheduler visits in ``num_inference_steps`` steps (scheduler left untouched)."""
    sched = copy.deepcopy(scheduler)
    sched.set_timesteps(num_inference_steps, device=device)
    return sched.timesteps.clone()


def predict_eps(unet, latents: torch.Tensor, timesteps, cond) -> torch.Tensor:
    """The UNet's noise prediction ``eps(x_t, t, cond)``.

    ``timesteps`` may be a scalar or one timestep per row; ``cond`` a :class:`Conditioning`,
    a (B, L, D) tensor, or a mapping with ``encoder_hidden_states`` (+ ``added_cond_kwargs``).
    Batch-1 conditionings are broadcast to the latents' batch.
    """
    c = _as_conditioning(cond).expand(latents.shape[0])
    if not torch.is_tensor(timesteps):
        timesteps = torch.tensor(timesteps, device=latents.device)
    timesteps = timesteps.to(latents.device)
    if timesteps.dim() == 0:
        timesteps = timesteps.expand(latents.shape[0])
    hidden = c.encoder_hidden_states.to(latents.dtype)
    kwargs = {}
    if c.added_cond_kwargs is not None:
        kwargs["added_cond_kwargs"] = {k: v.to(latents.dtype) for k, v in c.added_cond_kwargs.items()}
    return unet(latents, timesteps, encoder_hidden_states=hidden, return_dict=False, **kwargs)[0]


def cfg_eps(unet, latents, t, cond, uncond, guidance_scale: float):
    """Classifier-free-guided prediction: ``(guided, eps_cond, eps_uncond)``.

    Conditional and unconditional halves run as one UNet call of batch 2B. With
    ``guidance_scale == 1`` only the conditional pass runs and ``eps_uncond`` is ``None``.
    """
    cond = _as_conditioning(cond).expand(latents.shape[0])
    if guidance_scale == 1.0:
        e = predict_eps(unet, latents, t, cond)
        return e, e, None
    uncond = _as_conditioning(uncond).expand(latents.shape[0])
    both = predict_eps(unet, torch.cat([latents, latents]), t, Conditioning.cat([cond, uncond]))
    e_c, e_u = both.chunk(2)
    return e_u + guidance_scale * (e_c - e_u), e_c, e_u


@torch.no_grad()
def ddim_trajectory(
    unet,
    scheduler,
    cond,
    uncond,
    *,
    num_inference_steps: int,
    guidance_scale: float,
    stop_at: int | None = None,
    latents: torch.Tensor | None = None,
    generator: torch.Generator | list[torch.Generator] | None = None,
    shape: tuple[int, ...] | None = None,
    eta: float = 0.0,
    dtype: torch.dtype | None = None,
) -> Trajectory:
    """Run DDIM with CFG and keep every step.

    Starts from ``latents`` (or noise from ``generator``: one generator, or one per row so a
    row's noise does not depend on its batch-mates) and visits steps ``0 .. stop_at``
    (default: all ``num_inference_steps``). At each visited step the conditional and
    unconditional predictions are recorded; the denoising update is applied between steps,
    so ``latents[stop_at]`` is the ``x_t`` that ESD's ``quick_sample_till_t`` would return.
    """
    cond = _as_conditioning(cond)
    batch = cond.batch_size if latents is None else latents.shape[0]
    sched = copy.deepcopy(scheduler)
    device = next(unet.parameters()).device
    dtype = dtype or next(unet.parameters()).dtype
    sched.set_timesteps(num_inference_steps, device=device)
    timesteps = sched.timesteps
    last = len(timesteps) - 1 if stop_at is None else int(stop_at)
    if not 0 <= last < len(timesteps):
        raise ValueError(f"stop_at={stop_at} is outside 0..{len(timesteps) - 1} for {num_inference_steps} DDIM steps.")
    if latents is None:
        shape = tuple(shape) if shape is not None else latent_shape(unet, batch)
        if isinstance(generator, list):
            if len(generator) != shape[0]:
                raise ValueError(f"Got {len(generator)} generators for a batch of {shape[0]}.")
            noise = torch.cat([torch.randn((1, *shape[1:]), generator=g) for g in generator])
        else:
            noise = torch.randn(shape, generator=generator)
        latents = noise.to(device=device, dtype=torch.float32) * sched.init_noise_sigma
    x = latents.to(device=device, dtype=torch.float32)
    xs, ecs, eus = [], [], []
    for i in range(last + 1):
        t = timesteps[i]
        inp = sched.scale_model_input(x, t).to(dtype)
        guided, e_c, e_u = cfg_eps(unet, inp, t, cond, uncond, guidance_scale)
        xs.append(x)
        ecs.append(e_c.float())
        eus.append(None if e_u is None else e_u.float())
        if i < last:
            x = sched.step(guided.float(), t, x, eta=eta, generator=None).prev_sample
    return Trajectory(
        timesteps=timesteps[: last + 1].detach().cpu().long(),
        latents=torch.stack(xs),
        eps_cond=torch.stack(ecs),
        eps_uncond=None if eus[0] is None else torch.stack(eus),
    )


@torch.no_grad()
def sample_to_step(unet, scheduler, cond, uncond, *, num_inference_steps: int, guidance_scale: float, step: int, **kw):
    """Only ``x_t`` at DDIM step ``step`` (ESD's ``quick_sample_till_t``); see :func:`ddim_trajectory`."""
    traj = ddim_trajectory(
        unet, scheduler, cond, uncond, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
        stop_at=step, **kw,
    )
    return traj.latents[-1]
