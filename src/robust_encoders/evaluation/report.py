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

from .metrics import wilson_interval

__all__ = ["markdown_table", "save_asr_chart", "save_grid"]


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _num(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _interval(rate, n) -> tuple[float, float] | None:
    """95% Wilson interval of a rate measured over ``n`` prompts (None where the count is unknown)."""
    if rate is None or not isinstance(n, int) or n < 1:
        return None
    return wilson_interval(round(float(rate) * n), n)


def _rate(x, n, intervals: bool) -> str:
    ci = _interval(x, n) if intervals else None
    return _pct(x) if ci is None else f"{100 * x:.1f}% [{100 * ci[0]:.0f}-{100 * ci[1]:.0f}]"


def markdown_table(rows: Sequence[dict[str, Any]], *, details: dict[str, Any] | None = None,
                   extra_columns: Sequence[str] = (), intervals: bool = False) -> str:
    """A markdown table with one row per result (results-schema dicts); rates in percent.

    ``extra_columns`` are additional keys read from each row (e.g. ``"training time (s)"``).
    With ``intervals`` every Pre-ASR and ASR cell also gives its 95% Wilson interval over the row's
    ``n_prompts`` (``20.8% [9-40]``). With ``details`` (one evaluation's per-prompt records) a second
    table lists the prompts, whether each attack broke them, and the adversarial prompts found.

    >>> row = {"encoder": "ours", "concept": "star", "n_prompts": 24, "pre_asr": 0.0, "asr": {"soft_prompt": 5 / 24}}
    >>> print(markdown_table([row], intervals=True).splitlines()[2])
    | ours | star | 0.0% [0-14] | 20.8% [9-40] | n/a | n/a | n/a | n/a |
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
        n = r.get("n_prompts")
        cells = [str(r.get("encoder")), str(r.get("concept")), _rate(r.get("pre_asr"), n, intervals)]
        cells += [_rate(r.get("asr", {}).get(a), n, intervals) for a in attacks]
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


_PALETTE = [(90, 90, 90), (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
            (140, 86, 75), (227, 119, 194)]


def save_asr_chart(rows: Sequence[dict[str, Any]], path: str | os.PathLike, *, bar: int = 10,
                   height: int = 160) -> Path:
    """PNG bar chart of Pre-ASR and ASR per attack, one group of bars per result (e.g. per encoder and concept).

    Bars are percentages on a shared 0-100% axis; the legend maps colours to Pre-ASR and the attacks. Where a
    result says how many prompts it used (``n_prompts``), each bar carries a whisker for its 95% Wilson interval,
    so differences smaller than the prompt set can resolve are visibly within noise.

    >>> import tempfile, os
    >>> row = {"encoder": "esd", "concept": "star", "pre_asr": 0.0, "asr": {"unlearndiffatk": 0.75}}
    >>> p = save_asr_chart([row], os.path.join(tempfile.mkdtemp(), "asr.png"))
    >>> p.stat().st_size > 0
    True
    """
    from PIL import Image, ImageDraw

    series = ["Pre-ASR"]
    for r in rows:
        series += [f"ASR {a}" for a in r.get("asr", {}) if f"ASR {a}" not in series]
    group = bar * len(series) + 14
    left, top, label_h, legend_h = 40, 12, 34, 16 * ((len(series) + 2) // 3)
    width = left + group * max(1, len(rows)) + 10
    img = Image.new("RGB", (max(width, 420), top + height + label_h + legend_h), "white")
    d = ImageDraw.Draw(img)
    base = top + height
    for pct in (0, 25, 50, 75, 100):
        y = base - height * pct // 100
        d.line([(left - 3, y), (img.width - 5, y)], fill=(225, 225, 225))
        d.text((4, y - 6), f"{pct}%", fill="black")
    for i, r in enumerate(rows):
        x0 = left + i * group + 7
        values = [r.get("pre_asr")] + [r.get("asr", {}).get(s[4:]) for s in series[1:]]
        n = r.get("n_prompts")
        for j, v in enumerate(values):
            if v is None:
                continue
            x = x0 + j * bar
            d.rectangle([x, base - round(height * float(v)), x + bar - 2, base], fill=_PALETTE[j % len(_PALETTE)])
            ci = _interval(v, n)
            if ci is not None:
                lo, hi = ci
                xm = x + (bar - 2) // 2
                y_lo, y_hi = base - round(height * lo), base - round(height * hi)
                d.line([(xm, y_lo), (xm, y_hi)], fill=(40, 40, 40))
                d.line([(xm - 2, y_hi), (xm + 2, y_hi)], fill=(40, 40, 40))
        d.text((x0, base + 4), str(r.get("encoder"))[:12], fill="black")
        d.text((x0, base + 18), str(r.get("concept"))[:12], fill=(90, 90, 90))
    for j, name in enumerate(series):
        x, y = 8 + (j % 3) * 140, base + label_h + 16 * (j // 3)
        d.rectangle([x, y + 2, x + 10, y + 12], fill=_PALETTE[j % len(_PALETTE)])
        d.text((x + 14, y), name, fill="black")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    img.save(out)
    return out
