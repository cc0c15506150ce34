"""Robustness along training: the attack success rate of every checkpoint of a miniature run, per training seed.

Answers "how many iterations does the recipe need, and is the last iterate the most robust one?" (adversarial
training can overfit its adversary; then an earlier checkpoint would be the better export). Each seed's run trains
``--iterations`` with a checkpoint every ``--every`` (all kept), then each checkpoint's trained weights are loaded
into a copy of the miniature text encoder and red-teamed with ``--attacks`` on the evaluation's forget prompts
(the same prompts, seeds and attack settings as ``bench/evaluate_concepts.py``, so a step's number is comparable
with that table's row for the finished run).

Runs are cached in ``--runs-dir/<concept>-s<seed>`` (a finished run is reused; a longer ``--iterations`` resumes it
from its last checkpoint), each checkpoint's result in ``--out/robustness_curve/<concept>-s<seed>.json``, so an
interrupted benchmark resumes. The table goes to ``--out/robustness_curve_<concept>.md`` (headed by the command)
and a line chart, one line per seed with the 95% Wilson band of 24 prompts, to ``robustness_curve_<concept>.png``.

Usage:
    python bench/robustness_curve.py --concept star --seeds 0,2 --iterations 1000
    python bench/robustness_curve.py --concept red --seeds 0 --attacks soft_prompt,inversion --train-set attack.steps=4
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import shlex
import sys
import time
from pathlib import Path

PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75)]


def encoder_at(base_encoder, checkpoint: Path):
    """A copy of ``base_encoder`` holding the trained weights of one trainer checkpoint."""
    import torch

    from robust_encoders.training.checkpoint import read_checkpoint

    tensors, meta = read_checkpoint(checkpoint)
    enc = copy.deepcopy(base_encoder)
    params = dict(enc.named_parameters())
    missing = [n for n in meta["trainable_names"] if n not in params]
    if missing:
        raise SystemExit(f"{checkpoint} trains {missing[0]!r}, which the plain text encoder does not have (a LoRA "
                         "run?); the curve needs a run that trains the encoder's own weights (trainable.part all, "
                         "first_k, attention or mlp).")
    with torch.no_grad():
        for n in meta["trainable_names"]:
            params[n].copy_(tensors[f"model.{n}"])
    return enc


def line_chart(curves: dict[str, dict[int, tuple[float, float, float]]], path: Path, *, title: str,
               width: int = 520, height: int = 220) -> Path:
    """PNG line chart: one line per curve (step -> (rate, Wilson low, Wilson high)), the band shaded."""
    from PIL import Image, ImageDraw

    steps = sorted({s for c in curves.values() for s in c})
    left, top, bottom, right = 44, 24, 36, 24
    img = Image.new("RGB", (width, top + height + bottom + 16 * len(curves)), "white")
    d = ImageDraw.Draw(img, "RGBA")
    lo_s, hi_s = steps[0], steps[-1]

    def x(step: int) -> float:
        return left + (width - left - right) * (step - lo_s) / max(1, hi_s - lo_s)

    def y(rate: float) -> float:
        return top + height * (1.0 - rate)

    d.text((left, 4), title, fill="black")
    for pct in (0, 25, 50, 75, 100):
        d.line([(left - 3, y(pct / 100)), (width - right, y(pct / 100))], fill=(225, 225, 225))
        d.text((4, y(pct / 100) - 6), f"{pct}%", fill="black")
    for s in steps:
        d.text((x(s) - 8, top + height + 4), str(s), fill=(90, 90, 90))
    for i, (name, curve) in enumerate(curves.items()):
        colour = PALETTE[i % len(PALETTE)]
        pts = sorted(curve.items())
        band = [(x(s), y(hi)) for s, (_, _, hi) in pts] + [(x(s), y(lo)) for s, (_, lo, _) in reversed(pts)]
        if len(band) > 2:
            d.polygon(band, fill=(*colour, 40))
        d.line([(x(s), y(r)) for s, (r, _, _) in pts], fill=colour, width=2)
        for s, (r, _, _) in pts:
            d.ellipse([x(s) - 2, y(r) - 2, x(s) + 2, y(r) + 2], fill=colour)
        ly = top + height + bottom - 8 + 16 * i
        d.rectangle([left, ly + 2, left + 10, ly + 12], fill=colour)
        d.text((left + 14, ly), name, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concept", default="star", help="Miniature concept (its recipe trains it).")
    p.add_argument("--seeds", default="0", help="Comma-separated training seeds, one run and one curve each.")
    p.add_argument("--iterations", type=int, default=600, help="Iterations of every run.")
    p.add_argument("--every", type=int, default=50, help="Checkpoint (and curve point) every N iterations.")
    p.add_argument("--min-step", type=int, default=100, help="First checkpoint on the curve.")
    p.add_argument("--attacks", default="soft_prompt", help="Comma-separated attacks (the curve: each one's ASR).")
    p.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                   help="Training override on top of the concept's recipe (repeatable).")
    p.add_argument("--eval-set", action="append", default=[], metavar="ATTACK.KEY=VALUE",
                   help="Attack setting override (repeatable).")
    p.add_argument("--n-prompts", type=int, default=24)
    p.add_argument("--seed", type=int, default=0, help="Evaluation seed (prompts and attacks).")
    p.add_argument("--runs-dir", default="runs/curve", help="Where the runs are cached (git-ignored).")
    p.add_argument("--out", default="bench/results", help="Where results, the table and the chart go.")
    args = p.parse_args(argv)
    if args.every < 1 or args.iterations < args.every:
        raise SystemExit("--every must be >= 1 and at most --iterations.")

    from robust_encoders.evaluation import EvalConfig, evaluate_encoder
    from robust_encoders.evaluation.cli import parse_overrides
    from robust_encoders.evaluation.metrics import wilson_interval
    from robust_encoders.miniature import load_pipeline
    from robust_encoders.training import train
    from robust_encoders.training.checkpoint import list_checkpoints

    attacks = tuple(a.strip() for a in args.attacks.split(",") if a.strip())
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = Path(args.out)
    cache_dir = out / "robustness_curve"
    cache_dir.mkdir(parents=True, exist_ok=True)
    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    cfg = EvalConfig(concept=args.concept, n_prompts=args.n_prompts, n_retain=0, seed=args.seed, attacks=attacks,
                     attack_overrides=parse_overrides(args.eval_set), progress=False)

    def on_curve(step: int) -> bool:
        return args.min_step <= step <= args.iterations and step % args.every == 0

    pipe = load_pipeline()
    t_all = time.perf_counter()
    results: dict[int, dict[str, dict]] = {}
    for seed in seeds:
        run = Path(args.runs_dir) / f"{args.concept}-s{seed}"
        overrides = [f"seed={seed}", f"iterations={args.iterations}", f"checkpoint.every={args.every}",
                     f"checkpoint.keep={args.iterations // args.every + 1}", *args.train_set]
        resume = (run / "checkpoints").exists()
        print(f"[curve] {'resuming' if resume else 'training'} {run}: {' '.join(overrides)}", flush=True)
        train(args.concept, [*overrides, "log.progress=false"], output_dir=run, resume=resume, overwrite=not resume)
        cache = cache_dir / f"{args.concept}-s{seed}.json"
        done = json.loads(cache.read_text()) if cache.exists() else {}
        for step, ckpt in list_checkpoints(run):
            if not on_curve(step) or all(a in done.get(str(step), {}).get("asr", {}) for a in attacks):
                continue
            res = evaluate_encoder(encoder_at(pipe.text_encoder, ckpt), pipe=pipe, config=cfg,
                                   encoder_name=f"{args.concept}-s{seed}@{step}")
            entry = done.setdefault(str(step), {"asr": {}})
            entry.update(pre_asr=res.summary["pre_asr"], n_prompts=res.summary["n_prompts"])
            entry["asr"].update(res.summary["asr"])
            print(f"[curve] seed {seed} step {step}: Pre-ASR {entry['pre_asr']:.3f} "
                  + " ".join(f"{a} {entry['asr'][a]:.3f}" for a in attacks), flush=True)
            cache.write_text(json.dumps(done, indent=1, sort_keys=True) + "\n")
        results[seed] = done

    steps = sorted({int(s) for d in results.values() for s in d if on_curve(int(s))})

    def pct(x) -> str:
        return "" if x is None else f"{100 * x:.1f}%"

    cols = [f"seed {s} {a}" for a in attacks for s in seeds] + [f"mean {a}" for a in attacks]
    lines = ["| step | " + " | ".join(["Pre-ASR (mean)", *cols]) + " |", "|---" * (len(cols) + 2) + "|"]
    for step in steps:
        got = [results[s].get(str(step)) for s in seeds]
        pre = [g["pre_asr"] for g in got if g]
        row = [pct(sum(pre) / len(pre)) if pre else ""]
        for a in attacks:
            row += [pct(g["asr"].get(a)) if g else "" for g in got]
        for a in attacks:
            vals = [g["asr"][a] for g in got if g and a in g["asr"]]
            row.append(pct(sum(vals) / len(vals)) if vals else "")
        lines.append(f"| {step} | " + " | ".join(row) + " |")
    name = f"robustness_curve_{args.concept}"
    header = [f"# Robustness along training: {args.concept}", "", "Command:", "", f"    {command}", "",
              f"Machine: {platform.machine()}; wall time {time.perf_counter() - t_all:.0f} s (cached points are "
              "not re-run). ASR as UnlearnDiffAtk defines it, over the evaluation's forget prompts "
              f"({args.n_prompts}; one prompt is {100 / args.n_prompts:.1f} points), of each checkpoint's weights; "
              f"training overrides: {' '.join(args.train_set) or '(recipe defaults)'}.", ""]
    (out / f"{name}.md").write_text("\n".join(header + lines) + f"\n\n![ASR along training]({name}.png)\n")
    curves = {}
    for a in attacks:
        for s in seeds:
            pts = {}
            for step in steps:
                g = results[s].get(str(step))
                if g and a in g["asr"]:
                    n = g.get("n_prompts", args.n_prompts)
                    pts[step] = (g["asr"][a], *wilson_interval(round(g["asr"][a] * n), n))
            curves[f"seed {s} {a}"] = pts
    line_chart(curves, out / f"{name}.png", title=f"{args.concept}: ASR of each checkpoint")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
