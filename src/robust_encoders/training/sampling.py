"""x_t samples of the frozen model, with their eps0 targets, reused instead of recomputed.

The frozen original model's DDIM trajectory for a prompt does not depend on the encoder
being trained, and its CFG passes already compute ``eps0(x_t, c)`` and ``eps0(x_t, '')`` at
every visited ``x_t``. A :class:`TrajectoryPool` therefore keeps a few whole trajectories and
serves (x_t, t, eps0_c, eps0_u, prompt) samples from them; every ``refresh_every`` iterations
the oldest ``refresh`` trajectories are replaced by new ones.

The pool's content at iteration ``s`` is a pure function of (seed, rank, s): trajectory chunk
``j`` is always drawn with the same noise and prompts, so a resumed run rebuilds exactly the
pool the uninterrupted run had, with nothing stored in the checkpoint.

With ``size=0`` the pool emulates the reference: each request draws a DDIM step uniformly,
runs a fresh trajectory down to it (ESD's ``quick_sample_till_t``) and computes the targets
there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..core.diffusion import Conditioning, Trajectory, ddim_trajectory

__all__ = ["XtBatch", "TrajectoryPool", "derive_seed", "derived_generator"]


def derive_seed(*parts) -> int:
    """A 63-bit seed from any parts (stable across runs, platforms and processes)."""
    h = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def derived_generator(*parts) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts))


@dataclass
class XtBatch:
    """A batch of frozen-model samples: latents x_t, timesteps, eps0 targets, prompt indices.

    ``source`` (pooled samples only) names each sample's trajectory as (chunk id, row), so that
    :meth:`TrajectoryPool.resample` can serve other steps of the same trajectories.
    """

    latents: torch.Tensor
    timesteps: torch.Tensor
    eps_cond: torch.Tensor
    eps_uncond: torch.Tensor | None
    prompt_index: torch.Tensor
    source: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.latents.shape[0])


class TrajectoryPool:
    """Frozen-model trajectories for one prompt set.

    Args:
        name: distinguishes the random streams of different pools.
        prompts: the prompt set.
        conditioning: ``prompt indices -> Conditioning`` of the *frozen* encoder (cached upstream).
        uncond: the frozen encoder's conditioning of ``""`` (batch 1).
        unet, scheduler: the frozen UNet and its scheduler.
        shape: latent shape of one sample (C, H, W).
        ddim_steps, guidance, eta: DDIM settings.
        size: trajectories kept (0 = fresh samples every request, the reference behaviour).
        refresh, refresh_every: trajectories replaced per refresh, and how often.
        seed, rank: random streams.
        prompt_order: ``random`` draws each trajectory's prompt independently; ``cycle`` goes through the prompts in
            passes, each prompt once per pass in a seeded order (every prompt equally often, give or take one).
        need_uncond: keep unconditional predictions (only needed for the unlearning target).
    """

    def __init__(
        self,
        name: str,
        prompts: list[str],
        conditioning: Callable[[list[int]], Conditioning],
        uncond: Conditioning,
        unet,
        scheduler,
        shape: tuple[int, ...],
        *,
        ddim_steps: int,
        guidance: float,
        eta: float = 0.0,
        size: int = 0,
        refresh: int = 1,
        refresh_every: int = 10,
        seed: int = 0,
        rank: int = 0,
        need_uncond: bool = True,
        dtype: torch.dtype | None = None,
        prompt_order: str = "random",
    ) -> None:
        if not prompts:
            raise ValueError(f"The {name} pool has no prompts.")
        if prompt_order not in ("random", "cycle"):
            raise ValueError(f"prompt_order must be 'random' or 'cycle', got {prompt_order!r}.")
        self.prompt_order = prompt_order
        if size % refresh:
            raise ValueError(f"Pool size {size} must be a multiple of refresh={refresh}.")
        self.name, self.prompts = name, list(prompts)
        self.conditioning, self.uncond = conditioning, uncond
        self.unet, self.scheduler, self.shape = unet, scheduler, tuple(shape)
        self.ddim_steps, self.guidance, self.eta = ddim_steps, guidance, eta
        self.size, self.refresh, self.refresh_every = size, refresh, refresh_every
        self.seed, self.rank, self.need_uncond, self.dtype = seed, rank, need_uncond, dtype
        self._chunks: dict[int, tuple[Trajectory, torch.Tensor]] = {}
        self.unet_calls = 0  # batched (CFG) UNet calls made, for benchmarks
        self.seconds = 0.0  # time spent generating trajectories

    # -- generation ---------------------------------------------------------------------------------------------------
    def _run(self, prompt_idx: list[int], gens: list[torch.Generator], stop_at: int | None) -> Trajectory:
        import time

        t0 = time.perf_counter()
        cond = self.conditioning(prompt_idx)
        guidance = self.guidance
        traj = ddim_trajectory(
            self.unet, self.scheduler, cond, self.uncond, num_inference_steps=self.ddim_steps,
            guidance_scale=guidance, stop_at=stop_at, generator=gens, shape=(len(prompt_idx), *self.shape),
            eta=self.eta, dtype=self.dtype,
        )
        self.unet_calls += traj.num_steps
        if guidance == 1.0 and self.need_uncond:
            raise ValueError("start_guidance=1 computes no unconditional prediction; use a guidance > 1.")
        if not self.need_uncond:
            traj.eps_uncond = None
        self.seconds += time.perf_counter() - t0
        return traj

    def chunk_prompts(self, j: int) -> torch.Tensor:
        """Prompt indices of trajectory chunk ``j`` (a pure function of seed, rank and ``j``)."""
        n = len(self.prompts)
        if self.prompt_order == "random":
            return torch.randint(n, (self.refresh,), generator=derived_generator(self.seed, self.name, self.rank,
                                                                                 "chunk", j))
        draws = range(j * self.refresh, (j + 1) * self.refresh)  # the run's draws k, pass k // n, place k % n
        perms = {k // n: torch.randperm(n, generator=derived_generator(self.seed, self.name, self.rank, "pass", k // n))
                 for k in draws}
        return torch.stack([perms[k // n][k % n] for k in draws])

    def _chunk(self, j: int) -> tuple[Trajectory, torch.Tensor]:
        idx = self.chunk_prompts(j)
        gens = [derived_generator(self.seed, self.name, self.rank, "noise", j, i) for i in range(self.refresh)]
        return self._run(idx.tolist(), gens, None), idx

    def chunks_for(self, step: int) -> range:
        """Chunk ids the pool holds at iteration ``step``."""
        first = step // self.refresh_every
        return range(first, first + self.size // self.refresh)

    def ensure(self, step: int) -> None:
        """Bring the pool to its content for iteration ``step`` (generating what is missing)."""
        if self.size == 0:
            return
        want = set(self.chunks_for(step))
        for j in list(self._chunks):
            if j not in want:
                del self._chunks[j]
        for j in sorted(want - set(self._chunks)):
            self._chunks[j] = self._chunk(j)

    # -- sampling ---------------------------------------------------------------------------------------------------
    def sample(self, n: int, step: int, gen: torch.Generator) -> XtBatch:
        """``n`` samples for iteration ``step`` (``gen``: this iteration's generator)."""
        if self.size == 0:
            return self._fresh(n, step, gen)
        self.ensure(step)
        ids = sorted(self._chunks)
        per = self.refresh * self.ddim_steps
        flat = torch.randint(len(ids) * per, (n,), generator=gen).tolist()
        picks = []
        for f in flat:
            c, rest = divmod(f, per)
            row, s = divmod(rest, self.ddim_steps)
            picks.append((ids[c], row, s))
        return self._gather(picks)

    def resample(self, batch: XtBatch, gen: torch.Generator) -> XtBatch:
        """Other x_t of the same trajectories as ``batch`` (same prompts and noise, a new random DDIM step each).

        The inner attack uses this to optimise over timesteps instead of fitting one (x_t, t) per prompt.
        """
        if batch.source is None:
            raise ValueError(
                f"The {self.name} batch has no trajectory source: resampling steps needs a trajectory pool "
                "(sampling.pool > 0)."
            )
        steps = torch.randint(self.ddim_steps, (len(batch),), generator=gen).tolist()
        return self._gather([(int(c), int(r), s) for (c, r), s in zip(batch.source.tolist(), steps, strict=True)])

    def _gather(self, picks: list[tuple[int, int, int]]) -> XtBatch:
        """Stack the samples (chunk id, row, step) of held trajectories into an :class:`XtBatch`."""
        lat, ts, ec, eu, pi = [], [], [], [], []
        for j, row, s in picks:
            traj, pidx = self._chunks[j]
            lat.append(traj.latents[s, row])
            ts.append(traj.timesteps[s])
            ec.append(traj.eps_cond[s, row])
            if traj.eps_uncond is not None:
                eu.append(traj.eps_uncond[s, row])
            pi.append(pidx[row])
        return XtBatch(
            torch.stack(lat), torch.stack(ts), torch.stack(ec), torch.stack(eu) if eu else None, torch.stack(pi),
            torch.tensor([(j, row) for j, row, _ in picks]),
        )

    def _fresh(self, n: int, step: int, gen: torch.Generator) -> XtBatch:
        stop = int(torch.randint(self.ddim_steps, (1,), generator=gen))
        idx = torch.randint(len(self.prompts), (n,), generator=gen)
        gens = [derived_generator(self.seed, self.name, self.rank, "fresh", step, i) for i in range(n)]
        traj = self._run(idx.tolist(), gens, stop)
        return XtBatch(
            traj.latents[-1],
            traj.timesteps[-1].expand(n).clone(),
            traj.eps_cond[-1],
            None if traj.eps_uncond is None else traj.eps_uncond[-1],
            idx,
        )
