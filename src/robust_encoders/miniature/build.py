"""Rebuild the miniature world from scratch: VAE -> detector -> CLIP -> UNet + text encoder -> refinements.

The refinement stages continue training without touching the pipeline's text encoder:
``clip_refine`` trains the scoring CLIP further (its text tower only seeded the pipeline's
text encoder, which is trained with the UNet), ``unet_refine`` continues the UNet with the
text encoder frozen and part of every batch drawn from the objects it draws worst, and
``clip_polish`` gives the scoring CLIP a last, lower-rate cosine cycle on the continuation of
``clip_refine``'s data stream (its object zero-shot accuracy was still rising).

Each stage is seeded and resumable: it writes an atomic checkpoint every
``checkpoint_every`` steps into ``OUT/checkpoints/`` and its final weights into ``OUT``.
Randomness is derived from ``(seed, stage, step)``, so a resumed stage draws exactly the
batches an uninterrupted one would.

    robust-encoders miniature build --out runs/miniature
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..fileio import atomic_write_text
from .captions import caption
from .models import ConceptDetector, build_clip, build_scheduler, build_unet, build_vae
from .scenes import sample_scenes

__all__ = ["BuildConfig", "build_world", "STAGES"]

STAGES = ("vae", "detector", "clip", "unet", "clip_refine", "unet_refine", "clip_polish")
#: folder under ``OUT/stages`` whose presence marks a stage as finished
STAGE_OUTPUT = {"vae": "vae", "detector": "detector", "clip": "clip", "unet": "text_encoder",
                "clip_refine": "clip_refine", "unet_refine": "unet_refine",
                "clip_polish": "clip_polish"}
_STAGE_ID = {s: i for i, s in enumerate(STAGES)}


@dataclass
class BuildConfig:
    seed: int = 0
    vae_steps: int = 1200
    vae_batch: int = 64
    vae_lr: float = 1e-3
    detector_steps: int = 1000
    detector_batch: int = 128
    detector_lr: float = 2e-3
    clip_steps: int = 1000
    clip_batch: int = 128
    clip_lr: float = 1e-3
    unet_steps: int = 10000
    unet_batch: int = 64
    unet_lr: float = 5e-4
    unet_pool: int = 40000
    clip_refine_steps: int = 4000
    clip_refine_lr: float = 5e-4
    unet_refine_steps: int = 3000
    unet_refine_lr: float = 2e-4
    unet_refine_focus: tuple[str, ...] = ("square", "triangle")
    unet_refine_focus_p: float = 0.5
    clip_polish_steps: int = 3000
    clip_polish_lr: float = 3e-4
    caption_dropout: float = 0.1
    attribute_dropout: float = 0.15
    checkpoint_every: int = 250
    threads: int = 0
    stages: tuple[str, ...] = field(default=STAGES)

    def __post_init__(self):
        bad = [s for s in self.stages if s not in STAGES]
        if bad:
            raise ValueError(f"Unknown build stage(s) {bad}; expected a subset of {STAGES}.")
        from .concepts import OBJECTS

        unknown = [o for o in self.unet_refine_focus if o not in OBJECTS]
        if unknown:
            raise ValueError(f"unet_refine_focus names unknown object(s) {unknown}; choose from {OBJECTS}.")
        if not 0.0 <= self.unet_refine_focus_p <= 1.0:
            raise ValueError(f"unet_refine_focus_p must lie in [0, 1], got {self.unet_refine_focus_p}.")
        self.unet_refine_focus = tuple(self.unet_refine_focus)


def _rng(cfg: BuildConfig, stage: str, step: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, _STAGE_ID[stage], step])


def _gen(cfg: BuildConfig, stage: str, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(cfg.seed * 1_000_003 + _STAGE_ID[stage] * 10_007_777 + step))


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _cosine(step: int, total: int, warmup: int = 100) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


class _Stage:
    """Checkpointed training loop shared by all stages."""

    def __init__(self, cfg: BuildConfig, out: Path, name: str, modules: dict, lr: float, total: int):
        self.cfg, self.out, self.name, self.modules, self.total = cfg, out, name, modules, total
        params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: _cosine(s, total))
        self.ckpt = out / "checkpoints" / f"{name}.pt"
        self.ckpt.parent.mkdir(parents=True, exist_ok=True)
        self.start = 0
        if self.ckpt.exists():
            state = torch.load(self.ckpt, weights_only=True)
            for k, m in modules.items():
                m.load_state_dict(state["modules"][k])
            self.opt.load_state_dict(state["opt"])
            self.sched.load_state_dict(state["sched"])
            self.start = int(state["step"])
        self.log = (out / "build_log.jsonl").open("a")

    def save(self, step: int) -> None:
        _atomic_save(
            {
                "modules": {k: m.state_dict() for k, m in self.modules.items()},
                "opt": self.opt.state_dict(),
                "sched": self.sched.state_dict(),
                "step": step,
            },
            self.ckpt,
        )

    def run(self, step_fn):
        bar = tqdm(range(self.start, self.total), initial=self.start, total=self.total, desc=f"miniature/{self.name}")
        t0 = time.time()
        for step in bar:
            loss = step_fn(step)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for g in self.opt.param_groups for p in g["params"]], 1.0)
            self.opt.step()
            self.sched.step()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.4f}")
                self.log.write(json.dumps({"stage": self.name, "step": step, "loss": loss.item(),
                                           "elapsed": time.time() - t0}) + "\n")
                self.log.flush()
            if (step + 1) % self.cfg.checkpoint_every == 0 or step + 1 == self.total:
                self.save(step + 1)
        return time.time() - t0


# ----------------------------------------------------------------------------- stages


def train_vae(cfg: BuildConfig, out: Path):
    torch.manual_seed(cfg.seed)
    vae = build_vae()
    st = _Stage(cfg, out, "vae", {"vae": vae}, cfg.vae_lr, cfg.vae_steps)

    def step_fn(step):
        x = _to_tensor(sample_scenes(cfg.vae_batch, _rng(cfg, "vae", step)).images) * 2 - 1
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=_gen(cfg, "vae", step))
        rec = vae.decode(z).sample
        kl = post.kl().mean() / z[0].numel()
        return F.mse_loss(rec, x) + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl

    secs = st.run(step_fn)
    vae.eval()
    with torch.no_grad():
        x = _to_tensor(sample_scenes(512, np.random.default_rng([cfg.seed, 99])).images) * 2 - 1
        std = vae.encode(x).latent_dist.mean.std().item()
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    vae.save_pretrained(out / "stages" / "vae")
    return secs


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    n = x.shape[0]
    noise = torch.rand(n, 1, 1, 1, generator=gen) * 0.06
    x = x + noise * torch.randn(x.shape, generator=gen)
    x = x * (1 + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.2) + (torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.1
    return x.clamp(0, 1)


def train_detector(cfg: BuildConfig, out: Path):
    from diffusers import AutoencoderKL

    torch.manual_seed(cfg.seed + 1)
    vae = AutoencoderKL.from_pretrained(out / "stages" / "vae").eval().requires_grad_(False)
    det = ConceptDetector()
    st = _Stage(cfg, out, "detector", {"detector": det}, cfg.detector_lr, cfg.detector_steps)

    def step_fn(step):
        b = sample_scenes(cfg.detector_batch, _rng(cfg, "detector", step))
        x = _to_tensor(b.images)
        g = _gen(cfg, "detector", step)
        half = cfg.detector_batch // 2
        with torch.no_grad():  # half the batch goes through the VAE: the detector must read decoded images
            post = vae.encode(x[:half] * 2 - 1).latent_dist
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
            x = torch.cat([(vae.decode(z).sample.clamp(-1, 1) + 1) / 2, x[half:]])
        logits = det(_augment(x, g))
        return (
            F.cross_entropy(logits["object"], torch.from_numpy(b.objects))
            + F.cross_entropy(logits["colour"], torch.from_numpy(b.colours))
            + F.cross_entropy(logits["style"], torch.from_numpy(b.styles))
        )

    secs = st.run(step_fn)
    from .io import save_detector

    save_detector(det.eval(), out / "stages" / "detector")
    return secs


def _tokenize(tok, texts):
    return tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids


def _clip_loss_fn(cfg: BuildConfig, stage: str, clip, tok):
    """Contrastive loss on fresh scenes; captions that drop an attribute match every scene sharing the rest."""
    p = cfg.attribute_dropout

    def step_fn(step):
        rng = _rng(cfg, stage, step)
        b = sample_scenes(cfg.clip_batch, rng)
        texts, keep_c, keep_s = [], [], []
        for i in range(len(b)):
            dc, ds = rng.random() < p, rng.random() < p
            o, c, s = b.labels(i)
            texts.append(caption(o, c, s, rng, p_drop_colour=float(dc), p_drop_style=float(ds)))
            keep_c.append(not dc)
            keep_s.append(not ds)
        kc, ks = torch.tensor(keep_c)[:, None], torch.tensor(keep_s)[:, None]
        ob, co, sy = (torch.from_numpy(a) for a in (b.objects, b.colours, b.styles))
        match = (ob[:, None] == ob[None]) & (~kc | (co[:, None] == co[None])) & (~ks | (sy[:, None] == sy[None]))
        target = match.float()
        x = _augment(_to_tensor(b.images), _gen(cfg, stage, step))
        o = clip(input_ids=_tokenize(tok, texts), pixel_values=x * 2 - 1)
        lt = o.logits_per_text
        loss_t = -(target / target.sum(1, keepdim=True) * lt.log_softmax(1)).sum(1).mean()
        loss_i = -(target.T / target.T.sum(1, keepdim=True) * lt.T.log_softmax(1)).sum(1).mean()
        return (loss_t + loss_i) / 2

    return step_fn


def train_clip(cfg: BuildConfig, out: Path):
    from ..tokenization import load_clip_tokenizer

    torch.manual_seed(cfg.seed + 2)
    clip = build_clip()
    st = _Stage(cfg, out, "clip", {"clip": clip}, cfg.clip_lr, cfg.clip_steps)
    secs = st.run(_clip_loss_fn(cfg, "clip", clip, load_clip_tokenizer()))
    clip.save_pretrained(out / "stages" / "clip")
    return secs


def _continue_clip(cfg: BuildConfig, out: Path, name: str, source: str, lr: float, steps: int, *,
                   stream: str, offset: int = 0) -> float:
    """Train the scoring CLIP of stage ``source`` for a fresh cosine cycle as stage ``name``, on the batches of
    stage ``stream``'s data from step ``offset`` on; the pipeline's text encoder is not involved."""
    from transformers import CLIPModel

    from ..tokenization import load_clip_tokenizer

    clip = CLIPModel.from_pretrained(out / "stages" / source)
    st = _Stage(cfg, out, name, {"clip": clip}, lr, steps)
    step_fn = _clip_loss_fn(cfg, stream, clip, load_clip_tokenizer())
    secs = st.run(lambda step: step_fn(offset + step))
    clip.save_pretrained(out / "stages" / name)
    return secs


def train_clip_refine(cfg: BuildConfig, out: Path):
    """Continue the scoring CLIP (a fresh cosine cycle)."""
    torch.manual_seed(cfg.seed + 4)
    return _continue_clip(cfg, out, "clip_refine", "clip", cfg.clip_refine_lr, cfg.clip_refine_steps,
                          stream="clip_refine")


def train_clip_polish(cfg: BuildConfig, out: Path):
    """A last cosine cycle for the scoring CLIP, on the batches that follow ``clip_refine``'s (same stream)."""
    return _continue_clip(cfg, out, "clip_polish", "clip_refine", cfg.clip_polish_lr, cfg.clip_polish_steps,
                          stream="clip_refine", offset=cfg.clip_refine_steps)


def _latent_pool(cfg: BuildConfig, vae):
    """The UNet's training scenes, encoded once: posterior means/stds and the labels."""
    pool = sample_scenes(cfg.unet_pool, np.random.default_rng([cfg.seed, 1234]))
    means, stds = [], []
    with torch.no_grad():
        for i in tqdm(range(0, len(pool), 500), desc="miniature/encode-latents"):
            post = vae.encode(_to_tensor(pool.images[i : i + 500]) * 2 - 1).latent_dist
            means.append(post.mean)
            stds.append(post.std)
    return pool, torch.cat(means), torch.cat(stds)


def _unet_loss_fn(cfg: BuildConfig, stage: str, unet, text_encoder, tok, vae, pool, means, stds, weights=None):
    """Noise-prediction loss on pooled latents; ``weights`` (per pool item) biases which scenes are drawn."""
    acp = build_scheduler("ddpm").alphas_cumprod
    sf = vae.config.scaling_factor

    def step_fn(step):
        rng = _rng(cfg, stage, step)
        g = _gen(cfg, stage, step)
        if weights is None:
            idx = rng.integers(0, len(pool), cfg.unet_batch)
        else:
            idx = rng.choice(len(pool), cfg.unet_batch, p=weights)
        texts = []
        for i in idx:
            if rng.random() < cfg.caption_dropout:
                texts.append("")
            else:
                o, c, s = pool.labels(i)
                texts.append(caption(o, c, s, rng, p_drop_colour=cfg.attribute_dropout, p_drop_style=cfg.attribute_dropout))
        ti = torch.from_numpy(idx)
        z0 = (means[ti] + stds[ti] * torch.randn(means[ti].shape, generator=g)) * sf
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, 1000, (cfg.unet_batch,), generator=g)
        a = acp[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        cond = text_encoder(_tokenize(tok, texts))[0]
        return F.mse_loss(unet(zt, t, cond).sample, noise)

    return step_fn


def train_unet(cfg: BuildConfig, out: Path):
    from diffusers import AutoencoderKL
    from transformers import CLIPModel, CLIPTextModel

    from ..tokenization import load_clip_tokenizer

    torch.manual_seed(cfg.seed + 3)
    vae = AutoencoderKL.from_pretrained(out / "stages" / "vae").eval().requires_grad_(False)
    clip = CLIPModel.from_pretrained(out / "stages" / "clip")
    text_encoder = CLIPTextModel(clip.config.text_config)
    text_encoder.load_state_dict(clip.text_model.state_dict())
    del clip
    unet = build_unet()
    pool, means, stds = _latent_pool(cfg, vae)
    st = _Stage(cfg, out, "unet", {"unet": unet, "text_encoder": text_encoder}, cfg.unet_lr, cfg.unet_steps)
    secs = st.run(_unet_loss_fn(cfg, "unet", unet, text_encoder, load_clip_tokenizer(), vae, pool, means, stds))
    unet.save_pretrained(out / "stages" / "unet")
    text_encoder.save_pretrained(out / "stages" / "text_encoder")
    return secs


def focus_weights(objects: np.ndarray, focus: tuple[str, ...], focus_p: float) -> np.ndarray | None:
    """Per-scene sampling probabilities: scenes of ``focus`` objects share ``focus_p`` of the mass.

    >>> w = focus_weights(np.array([0, 1, 1, 2]), ("square",), 0.5)   # object 1 is the square
    >>> [round(float(x), 3) for x in w]
    [0.25, 0.25, 0.25, 0.25]
    >>> [round(float(x), 3) for x in focus_weights(np.array([0, 1, 2, 3]), ("square",), 0.5)]
    [0.167, 0.5, 0.167, 0.167]
    """
    from .concepts import OBJECTS

    if not focus:
        return None
    is_focus = np.isin(objects, [OBJECTS.index(o) for o in focus])
    if is_focus.all() or not is_focus.any():
        return None
    w = np.where(is_focus, focus_p / is_focus.sum(), (1 - focus_p) / (~is_focus).sum())
    return w / w.sum()


def train_unet_refine(cfg: BuildConfig, out: Path):
    """Continue the UNet (fresh cosine cycle) with the pipeline's text encoder frozen.

    Freezing the text encoder keeps it the one every robust encoder is fine-tuned from; a share
    ``unet_refine_focus_p`` of every batch shows the objects in ``unet_refine_focus``.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from ..tokenization import load_clip_tokenizer

    torch.manual_seed(cfg.seed + 5)
    vae = AutoencoderKL.from_pretrained(out / "stages" / "vae").eval().requires_grad_(False)
    text_encoder = CLIPTextModel.from_pretrained(out / "stages" / "text_encoder").eval().requires_grad_(False)
    unet = UNet2DConditionModel.from_pretrained(out / "stages" / "unet")
    pool, means, stds = _latent_pool(cfg, vae)
    w = focus_weights(pool.objects, cfg.unet_refine_focus, cfg.unet_refine_focus_p)
    st = _Stage(cfg, out, "unet_refine", {"unet": unet}, cfg.unet_refine_lr, cfg.unet_refine_steps)
    secs = st.run(_unet_loss_fn(cfg, "unet_refine", unet, text_encoder, load_clip_tokenizer(), vae, pool, means,
                                stds, weights=w))
    unet.save_pretrained(out / "stages" / "unet_refine")
    return secs


def assemble(out: Path) -> Path:
    """Write the final, shippable folders (fp16 safetensors) from the stage outputs."""
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPModel, CLIPTextModel

    from ..tokenization import load_clip_tokenizer
    from .io import assemble_weights

    s = out / "stages"
    unet_dir = s / "unet_refine" if (s / "unet_refine").exists() else s / "unet"
    clip_dir = next(s / d for d in ("clip_polish", "clip_refine", "clip") if (s / d).exists())
    pipe = StableDiffusionPipeline(
        vae=AutoencoderKL.from_pretrained(s / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(s / "text_encoder"),
        tokenizer=load_clip_tokenizer(),
        unet=UNet2DConditionModel.from_pretrained(unet_dir),
        scheduler=build_scheduler("ddim"),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return assemble_weights(pipe, CLIPModel.from_pretrained(clip_dir), s / "detector", out / "weights")


_NOT_COMPARED = ("stages", "threads")  # may change between resumes without changing the result


def build_world(out: str | os.PathLike, cfg: BuildConfig | None = None) -> dict:
    """Run (or resume) every requested stage and assemble ``OUT/weights``. Returns timings."""
    cfg = cfg or BuildConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cfg_file = out / "build_config.json"
    new = json.loads(json.dumps({k: v for k, v in asdict(cfg).items() if k not in _NOT_COMPARED}))
    if cfg_file.exists():
        old = {k: v for k, v in json.loads(cfg_file.read_text()).items() if k not in _NOT_COMPARED}
        added = {k: v for k, v in new.items() if k not in old}  # settings of stages added since that build began
        if {**old, **added} != new:
            diff = sorted(k for k in new if old.get(k, new[k]) != new[k])
            raise ValueError(
                f"{out} holds a build with a different config ({cfg_file}: {diff} differ); resume with the same "
                "settings or choose another --out."
            )
        if added:
            atomic_write_text(cfg_file, json.dumps({**json.loads(cfg_file.read_text()), **added}, indent=2))
    else:
        atomic_write_text(cfg_file, json.dumps(asdict(cfg), indent=2))
    fns = {"vae": train_vae, "detector": train_detector, "clip": train_clip, "unet": train_unet,
           "clip_refine": train_clip_refine, "unet_refine": train_unet_refine, "clip_polish": train_clip_polish}
    timings_file = out / "build_timings.json"
    for stage in cfg.stages:
        if (out / "stages" / STAGE_OUTPUT[stage]).exists():
            continue
        secs = fns[stage](cfg, out)
        timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}  # re-read: stages may run side by side
        timings[stage] = timings.get(stage, 0.0) + secs
        atomic_write_text(timings_file, json.dumps(timings, indent=2))
    timings = json.loads(timings_file.read_text()) if timings_file.exists() else {}
    if all((out / "stages" / d).exists() for d in ("vae", "detector", "clip", "unet", "text_encoder")):
        assemble(out)
    return timings
