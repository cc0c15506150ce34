"""``robust-encoders miniature ...``: rebuild, report on, and sample the miniature world."""

from __future__ import annotations

import argparse

__all__ = ["register"]

_EPILOG = """examples:
  robust-encoders miniature report                       # quality figures + grid of the shipped world
  robust-encoders miniature generate "a red star on a striped background" --out star.png
  robust-encoders miniature build --out runs/miniature   # rebuild from scratch (resumable)
  robust-encoders miniature build --out runs/miniature --unet-steps 200 --stages vae detector
"""


def register(subparsers) -> None:
    from .build import STAGES

    p = subparsers.add_parser(
        "miniature",
        help="the embedded miniature text-to-image world (build, report, generate)",
        description="The miniature world: a tiny Stable Diffusion with concepts known by construction.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="miniature_command", required=True)

    b = sub.add_parser("build", help="rebuild the world from scratch (seeded, resumable)", epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--out", required=True, help="output folder; re-running resumes from its checkpoints")
    b.add_argument("--seed", type=int, default=0)
    for name in STAGES:
        b.add_argument(f"--{name.replace('_', '-')}-steps", type=int, default=None,
                       help=f"training steps of the {name} stage")
    b.add_argument("--stages", nargs="+", default=None, choices=STAGES, metavar="STAGE",
                   help=f"subset of stages to run ({' '.join(STAGES)})")
    b.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    b.set_defaults(func=_build)

    r = sub.add_parser("report", help="print quality figures and write a prompt x seed image grid",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--weights", default=None, help="weights folder (default: the one shipped in the package)")
    r.add_argument("--out", default="miniature_report", help="folder for report.json and grid.png")
    r.add_argument("--seeds", type=int, default=32, help="seeds per prompt")
    r.set_defaults(func=_report)

    g = sub.add_parser("generate", help="draw images for a prompt into a PNG grid", epilog=_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("prompt")
    g.add_argument("--out", default="miniature.png")
    g.add_argument("-n", type=int, default=8, help="number of images")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--encoder", default=None, help="a robust encoder (name or path) to swap in first")
    g.set_defaults(func=_generate)


def _build(args) -> int:
    from dataclasses import fields

    from .build import STAGES, BuildConfig, build_world

    kw = {"seed": args.seed, "threads": args.threads}
    for f in fields(BuildConfig):
        if f.name.endswith("_steps") and getattr(args, f.name, None) is not None:
            kw[f.name] = getattr(args, f.name)
    kw["stages"] = tuple(args.stages) if args.stages else STAGES
    timings = build_world(args.out, BuildConfig(**kw))
    print("stage timings (s):", {k: round(v, 1) for k, v in timings.items()})
    return 0


def _report(args) -> int:
    from .report import format_report, quality_report

    rep = quality_report(args.weights, args.out, seeds_per_prompt=args.seeds)
    print(format_report(rep))
    print(f"\nwrote {args.out}/report.json and {args.out}/grid.png")
    return 0


def _generate(args) -> int:
    from . import load_pipeline
    from .report import generate, image_grid

    pipe = load_pipeline()
    if args.encoder:
        from ..loading import apply_robust_encoder

        apply_robust_encoder(pipe, args.encoder)
    imgs = generate(pipe, [args.prompt] * args.n, [args.seed + i for i in range(args.n)])
    image_grid(imgs, min(args.n, 8), scale=4).save(args.out)
    print(f"wrote {args.out}")
    return 0
