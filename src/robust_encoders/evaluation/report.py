"""Human-readable outputs: markdown tables of results and a PNG grid of images.

Example:
    >>> from robust_encoders.evaluation.report import markdown_table
    >>> row = {"encoder": "orig", "concept": "star", "pre_asr": 1.0, "asr": {"synonym": 1.0},
    ...        "retain_accuracy": 0.95, "clip_score": 0.3, "fid": 0.0, "timing_s": {"total": 12.0}}
    >>> print(markdown_table([row]).splitlines()[0])
    | encoder | concept | Pre-ASR | ASR synonym | retain acc | CLIP | FID-style | time (s) |
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = ["markdown_table", "save_grid"]


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def markdown_table(rows: Sequence[dict[str, Any]], *, details: dict[str, Any] | None = None,
                   extra_columns: Sequence[str] = ()) -> str:
    """A markdown table with one row per result (results-schema dicts); rates in percent.

    ``extra_columns`` are additional keys read from each row (e.g. ``"training time (s)"``).
    With ``details`` (one evaluation's per-prompt records) a second table lists the prompts,
    whether each attack broke them, and the adversarial prompts found.
    """
    attacks: list[str] = []
    for r in rows:
        for a in r.get("asr", {}):
            if a not in attacks:
                attacks.append(a)
    head = ["encoder", "concept", "Pre-ASR", *[f"ASR {a}" for a in attacks], "retain acc", "CLIP", "FID-style",
            "time (s)", *extra_columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for r in rows:
        cells = [str(r.get("encoder")), str(r.get("concept")), _pct(r.get("pre_asr"))]
        cells += [_pct(r.get("asr", {}).get(a)) for a in attacks]
        cells += [_pct(r.get("retain_accuracy")), _num(r.get("clip_score")), _num(r.get("fid")),
                  _num(r.get("timing_s", {}).get("total"), 1)]
        for c in extra_columns:
            v = r.get(c)
            cells.append(_num(v, 1) if isinstance(v, float) else str(v if v is not None else "n/a"))
        lines.append("| " + " | ".join(cells) + " |")
    if details and details.get("forget"):
        names = attacks
        lines += ["", "| # | prompt | original | plain | " + " | ".join(names) + " |",
                  "|---|---|---|---|" + "|".join(["---"] * len(names)) + "|"]
        for rec in details["forget"]:
            cells = [str(rec["index"]), rec["prompt"].replace("|", "/"), "yes" if rec["original_detected"] else "no",
                     "yes" if rec["pre_success"] else "no"]
            for a in names:
                o = rec["attacks"].get(a, {})
                if o.get("skipped"):
                    cells.append("-")
                else:
                    mark = "yes" if o.get("success") else "no"
                    adv = o.get("prompt")
                    cells.append(f"{mark}: `{adv.replace('|', '/')}`" if adv and o.get("success") else mark)
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _to_pil(img: torch.Tensor, scale: int):
    from PIL import Image

    arr = (img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
    im = Image.fromarray(arr)
    return im.resize((im.width * scale, im.height * scale), Image.NEAREST) if scale > 1 else im


def save_grid(grid: dict[str, Any], path: str | os.PathLike, *, cell: int = 96) -> Path:
    """PNG: forget prompts (rows) x original / erased / each attack (columns), then retain rows.

    Retain rows show original and erased only. Column titles on top, row numbers on the left
    (the markdown table lists the prompts by the same numbers).
    """
    from PIL import Image, ImageDraw

    cols = list(grid["columns"])
    rows = [("F", p, imgs) for p, imgs in grid.get("forget", [])] + [("R", p, imgs) for p, imgs in grid.get("retain", [])]
    if not rows:
        raise ValueError("Nothing to draw: the grid has no rows.")
    pad, head, left = 4, 18, 28
    w = left + len(cols) * (cell + pad) + pad
    h = head + len(rows) * (cell + pad) + pad
    canvas = Image.new("RGB", (w, h), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for ci, name in enumerate(cols):
        draw.text((left + pad + ci * (cell + pad), 3), name[:16], fill=(0, 0, 0))
    counters = {"F": 0, "R": 0}
    for ri, (kind, _prompt, imgs) in enumerate(rows):
        y = head + pad + ri * (cell + pad)
        draw.text((3, y + cell // 2 - 6), f"{kind}{counters[kind]}", fill=(0, 0, 0))
        counters[kind] += 1
        for ci, name in enumerate(cols):
            img = imgs.get(name)
            if img is None:
                continue
            scale = max(1, cell // int(img.shape[-1]))
            tile = _to_pil(img, scale).resize((cell, cell))
            canvas.paste(tile, (left + pad + ci * (cell + pad), y))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
