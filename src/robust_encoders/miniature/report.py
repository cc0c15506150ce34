"""Quality figures of the miniature world (``robust-encoders miniature report``).

Measures what every later number rests on: the detector's accuracy on held-out scenes, how
reliably the original pipeline draws each prompted concept (held-out phrasings included),
the tiny CLIP's zero-shot accuracy, and load/generation times. Also writes a prompt x seed
image grid.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .captions import caption, prompt_for
from .concepts import COLOURS, CONCEPTS, KINDS, OBJECTS, STYLES, concepts_of_kind
from .scenes import sample_scenes

__all__ = ["DEFAULT_STEPS", "DEFAULT_GUIDANCE", "generate", "detector_accuracy", "pipeline_accuracy",
           "clip_accuracy", "image_grid", "quality_report", "format_report"]

DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 7.5


def _images_to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0


@torch.no_grad()
def generate(pipe, prompts: list[str], seeds: list[int], *, steps: int = DEFAULT_STEPS,
             guidance: float = DEFAULT_GUIDANCE, batch_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Images in [0, 1] (N, 3, H, W), one per (prompt, seed) pair; seeded per image so batching never matters."""
    out = []
    it = range(0, len(prompts), batch_size)
    for i in tqdm(it, desc="generate", disable=not progress):
        ps, ss = prompts[i : i + batch_size], seeds[i : i + batch_size]
        gens = [torch.Generator().manual_seed(int(s)) for s in ss]
        img = pipe(ps, num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="pt").images
        out.append(img.float().cpu())
    return torch.cat(out)


@torch.no_grad()
def detector_accuracy(detector, n: int = 2000, seed: int = 12345) -> dict[str, float]:
    """Per-head accuracy on freshly drawn (held-out) procedural scenes."""
    b = sample_scenes(n, seed)
    pred = detector.predict(_images_to_tensor(b.images))
    truth = {"object": b.objects, "colour": b.colours, "style": b.styles}
    return {k: float((pred[k].numpy() == truth[k]).mean()) for k in KINDS}


def pipeline_accuracy(pipe, detector, *, prompts_per_object: int = 4, seeds_per_prompt: int = 32, seed: int = 0,
                      steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE, progress: bool = True) -> dict:
    """How often the detector finds the prompted object/colour/style in generated images.

    Half the prompts use held-out phrasings (templates never seen in training).
    """
    rng = np.random.default_rng(seed)
    prompts, seeds, labels = [], [], []
    for o in OBJECTS:
        for j in range(prompts_per_object):
            c, s = COLOURS[rng.integers(len(COLOURS))], STYLES[rng.integers(len(STYLES))]
            p = caption(o, c, s, rng, heldout=j % 2 == 1)
            for _ in range(seeds_per_prompt):
                prompts.append(p)
                seeds.append(seed * 100_000 + len(seeds))
                labels.append((OBJECTS.index(o), COLOURS.index(c), STYLES.index(s)))
    imgs = generate(pipe, prompts, seeds, steps=steps, guidance=guidance, progress=progress)
    pred = detector.predict(imgs)
    lab = torch.tensor(labels)
    hit = {k: (pred[k] == lab[:, i]).float() for i, k in enumerate(KINDS)}
    per_concept = {}
    for kind, col in (("object", 0), ("colour", 1), ("style", 2)):
        for idx, name in enumerate(concepts_of_kind(kind)):
            m = lab[:, col] == idx
            if m.any():
                per_concept[name] = float(hit[kind][m].mean())
    return {
        "n_images": len(prompts),
        "object": float(hit["object"].mean()),
        "colour": float(hit["colour"].mean()),
        "style": float(hit["style"].mean()),
        "object_min": min(per_concept[o] for o in OBJECTS),
        "per_concept": per_concept,
    }


@torch.no_grad()
def clip_accuracy(clip, tokenizer, n: int = 1000, seed: int = 4321) -> dict[str, float]:
    """Zero-shot top-1 retrieval among each kind's classes (prompt per class vs held-out scenes)."""
    from ..core.text import tokenize

    b = sample_scenes(n, seed)
    img = clip.get_image_features(pixel_values=_images_to_tensor(b.images) * 2 - 1)
    img = torch.nn.functional.normalize(getattr(img, "pooler_output", img), dim=-1)
    truth = {"object": b.objects, "colour": b.colours, "style": b.styles}
    out = {}
    for kind in KINDS:
        names = concepts_of_kind(kind)
        if kind == "object":
            texts = [prompt_for(n_) for n_ in names]
        elif kind == "colour":
            texts = [f"a {CONCEPTS[n_].synonyms[0]} shape" for n_ in names]
        else:
            texts = [f"a shape on a {CONCEPTS[n_].synonyms[0]} background" for n_ in names]
        t = clip.get_text_features(input_ids=tokenize(tokenizer, texts))
        t = torch.nn.functional.normalize(getattr(t, "pooler_output", t), dim=-1)
        out[kind] = float(((img @ t.T).argmax(-1).numpy() == truth[kind]).mean())
    out["mean"] = float(np.mean([out[k] for k in KINDS]))
    return out


def image_grid(images: torch.Tensor, nrow: int, scale: int = 3):
    """A PIL image grid of (N, 3, H, W) images in [0, 1], ``nrow`` images per row."""
    from PIL import Image

    n, _, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    grid = np.full((rows * (h + 2), nrow * (w + 2), 3), 255, np.uint8)
    arr = (images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    for i in range(n):
        r, c = divmod(i, nrow)
        grid[r * (h + 2) + 1 : r * (h + 2) + 1 + h, c * (w + 2) + 1 : c * (w + 2) + 1 + w] = arr[i]
    im = Image.fromarray(grid)
    return im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)


def quality_report(weights: str | Path | None = None, out_dir: str | Path = "miniature_report", *,
                   seeds_per_prompt: int = 32, prompts_per_object: int = 4, progress: bool = True) -> dict:
    """Compute every quality figure, write ``report.json`` and ``grid.png`` into ``out_dir``."""
    from . import load_clip, load_detector, load_pipeline

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    pipe = load_pipeline(weights)
    load_s = time.perf_counter() - t
    det = load_detector(None if weights is None else Path(weights) / "detector")
    clip = load_clip(weights)

    t = time.perf_counter()
    generate(pipe, ["a red star on a striped background"] * 16, list(range(16)))
    gen16_s = time.perf_counter() - t

    rep = {
        "load_pipeline_s": round(load_s, 3),
        "generate_16_images_25_steps_s": round(gen16_s, 3),
        "detector": detector_accuracy(det),
        "pipeline": pipeline_accuracy(pipe, det, seeds_per_prompt=seeds_per_prompt,
                                      prompts_per_object=prompts_per_object, progress=progress),
        "clip_zero_shot": clip_accuracy(clip, pipe.tokenizer),
        "settings": {"steps": DEFAULT_STEPS, "guidance": DEFAULT_GUIDANCE, "threads": torch.get_num_threads()},
    }
    grid_prompts = [prompt_for(o, COLOURS[i % 5], STYLES[i % 4]) for i, o in enumerate(OBJECTS)]
    grid_prompts += [prompt_for("circle", c) for c in COLOURS[:3]] + [prompt_for("square", style=s) for s in STYLES[1:]]
    nseed = 8
    imgs = generate(pipe, [p for p in grid_prompts for _ in range(nseed)], list(range(len(grid_prompts) * nseed)))
    image_grid(imgs, nseed).save(out_dir / "grid.png")
    (out_dir / "grid_prompts.txt").write_text("\n".join(grid_prompts) + "\n")
    (out_dir / "report.json").write_text(json.dumps(rep, indent=2))
    return rep


def format_report(rep: dict) -> str:
    """A markdown table of the quality figures against the project's bars."""
    d, p, c = rep["detector"], rep["pipeline"], rep["clip_zero_shot"]
    rows = [
        ("Detector accuracy, object / colour / style", f"{d['object']:.1%} / {d['colour']:.1%} / {d['style']:.1%}", ">= 98% each"),
        ("Pipeline: prompted object detected (mean)", f"{p['object']:.1%}", ">= 90%"),
        ("Pipeline: worst object", f"{p['object_min']:.1%}", ">= 75%"),
        ("Pipeline: prompted colour detected", f"{p['colour']:.1%}", ">= 85%"),
        ("Pipeline: prompted style detected", f"{p['style']:.1%}", ">= 85%"),
        ("CLIP zero-shot top-1 (object / colour / style)", f"{c['object']:.1%} / {c['colour']:.1%} / {c['style']:.1%}", ">= 90%"),
        ("Load pipeline offline", f"{rep['load_pipeline_s']:.2f} s", "< 5 s"),
        ("Generate 16 images, 25 steps", f"{rep['generate_16_images_25_steps_s']:.2f} s", "(reported)"),
    ]
    lines = ["| figure | measured | bar |", "|---|---|---|"] + [f"| {a} | {b} | {c_} |" for a, b, c_ in rows]
    per = ", ".join(f"{k} {v:.0%}" for k, v in p["per_concept"].items())
    lines.append(f"\nPer concept ({p['n_images']} images): {per}")
    return "\n".join(lines)
