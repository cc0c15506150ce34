"""Full-size dry run: SD-1.5, SD-2.1 and SDXL architectures at their real sizes, random weights, no download.

For each model it runs 2 training iterations of

* ``default``: the shipped recipe (``recipes/vangogh.yaml``: AdvUnlearn's hyper-parameters plus our engine:
  pooled frozen-model trajectories, one shared UNet, cached frozen-encoder outputs, micro-batch 1),
* ``default+ckpt``: the same with ``engine.gradient_checkpointing=true`` (the UNet's block activations are recomputed
  in the backward pass instead of kept: less peak memory, one more UNet forward per backward, same gradient), and
* ``default+bf16``: the default with the frozen UNet and encoder in bf16 and bf16 autocast, which is what the
  recipe's ``model.dtype=auto`` / ``model.mixed_precision=auto`` choose on a GPU (on a CPU they stay fp32); run here
  on a CPU with native bf16 (AMX), it measures that configuration's memory and, on such CPUs, its speed,
* ``reference``: AdvUnlearn's reference settings and structure (``ADVUNLEARN`` + ``REFERENCE_ENGINE`` of
  ``bench/train_speed.py``: fresh x_t every iteration, a second frozen UNet, the frozen encoder re-run, separate
  UNet passes per loss term),

each (or those ``--settings`` names) in its own process (so peak memory is that configuration's alone), and prints
side by side: time per iteration, UNet passes per iteration and peak memory (CPU: the process's peak RSS from
``getrusage``; CUDA: ``torch.cuda.max_memory_allocated``).

Full settings (30 attack steps, DDIM 50) take minutes per iteration on a CPU, so the measured iterations run
``--attack-steps`` attack steps and ``--ddim-steps`` DDIM steps; the full-setting time per iteration is *computed*
from the measured unit costs (``scaled_iteration`` of ``bench/train_speed.py``: update + attack steps x cost of one
attack step + sampling), and the full-setting UNet passes are counted from the recipe. The output says which
numbers are measured and which are scaled. Peak memory does not depend on the number of steps.

Architectures (configs written below, as published in each model's ``unet/config.json`` /
``text_encoder*/config.json``):

* SD-1.5: UNet 320/640/1280/1280, 8 heads, cross-attention 768, 64x64 latents; CLIP ViT-L/14 text encoder
  (768 x 12 layers, 123M parameters).
* SD-2.1: UNet 320/640/1280/1280, head dim 64, linear projections, cross-attention 1024, 96x96 latents (768 px);
  OpenCLIP ViT-H/14 text encoder as diffusers ships it (1024 x 23 layers: the penultimate layer *is* the output).
* SDXL: UNet 320/640/1280 with 1/2/10 transformer layers, cross-attention 2048, text_time added conditioning,
  128x128 latents; CLIP-L (768 x 12) + OpenCLIP bigG with projection (1280 x 32 layers, projection 1280).

Usage:
    OMP_NUM_THREADS=2 python bench/full_size.py --models sd15              # CPU; writes bench/results/full_size_cpu.md
    python bench/full_size.py --models sd15,sd21,sdxl --device cuda --out bench/results/full_size_gpu.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from argparse import Namespace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_speed import (  # noqa: E402  (bench/ is not a package)
    ADVUNLEARN,
    COMMON,
    REFERENCE_ENGINE,
    ROOT,
    _sd15_pipeline,
    measured_iteration,
    run_config,
    scaled_iteration,
    worker,
)

RECIPE = ROOT / "recipes" / "vangogh.yaml"
MODELS = ("sd15", "sd21", "sdxl")
NAMES = {"sd15": "SD-1.5", "sd21": "SD-2.1", "sdxl": "SDXL"}
#: Configurations compared side by side (overrides on top of the recipe).
SETTINGS: dict[str, list[str]] = {
    "default": [],                                                  # the shipped recipe
    "default+ckpt": ["engine.gradient_checkpointing=true"],        # + UNet activations recomputed in the backward
    "default+bf16": ["model.dtype=bfloat16", "model.mixed_precision=bf16"],  # what model.dtype=auto does on a GPU
    "reference": [*ADVUNLEARN, *REFERENCE_ENGINE],                  # AdvUnlearn's settings and structure
}


# ----------------------------------------------------------------------------------------------------------------
# architectures at real size (random weights)
# ----------------------------------------------------------------------------------------------------------------
def _clip(hidden: int, layers: int, heads: int, act: str, *, projection: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, max_position_embeddings=77, hidden_act=act, bos_token_id=49406,
                         eos_token_id=49407, pad_token_id=49407, projection_dim=projection or hidden)
    return (CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)).eval()


def build(model: str):
    """A Namespace with the parts the trainer uses (unet, text encoder(s), tokenizer(s), scheduler); no VAE."""
    import torch
    from diffusers import UNet2DConditionModel

    from robust_encoders.miniature.models import build_scheduler
    from robust_encoders.tokenization import load_clip_tokenizer

    if model == "sd15":
        return _sd15_pipeline()
    torch.manual_seed(0)
    if model == "sd21":
        unet = UNet2DConditionModel(
            sample_size=96, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
            upcast_attention=True,
        )
        te = _clip(1024, 23, 16, "gelu")
        return Namespace(unet=unet, text_encoder=te, tokenizer=load_clip_tokenizer(), scheduler=build_scheduler("ddim"))
    if model == "sdxl":
        unet = UNet2DConditionModel(
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
        te = _clip(768, 12, 12, "quick_gelu")
        te2 = _clip(1280, 32, 20, "gelu", projection=1280)
        return Namespace(unet=unet, text_encoder=te, text_encoder_2=te2, tokenizer=load_clip_tokenizer(),
                         tokenizer_2=load_clip_tokenizer(), scheduler=build_scheduler("ddim"),
                         config=Namespace(force_zeros_for_empty_prompt=True), vae_scale_factor=8)
    raise SystemExit(f"unknown model {model!r}; choose from {', '.join(MODELS)}")


# ----------------------------------------------------------------------------------------------------------------
# UNet passes per iteration at full settings, counted from the recipe
# ----------------------------------------------------------------------------------------------------------------
def full_passes(cfg) -> tuple[float, str]:
    """(UNet calls per iteration at the recipe's settings, how they split). A CFG call is one batched call."""
    attack = cfg.attack.steps if cfg.attack.enabled else 0
    parts = 1 + (1 if cfg.unlearn.include_clean else 0)
    retain = cfg.retain.batch_size if cfg.retain.weight > 0 and cfg.retain.space in ("unet", "both") else 0
    samples = parts * cfg.unlearn.batch_size + retain
    if cfg.engine.micro_batch > 0:
        update = math.ceil(samples / cfg.engine.micro_batch)
    else:
        update = 1 if cfg.engine.fused_unet_batch else parts + (1 if retain else 0)
    pools = 1 + (1 if retain else 0)
    d = cfg.unlearn.ddim_steps
    if cfg.sampling.pool:
        sampling = pools * d / cfg.sampling.refresh_every  # one batched DDIM run per refresh and pool
    else:
        sampling = pools * (d + 1) / 2  # fresh DDIM run to a uniform random step, for the concept and the retain batch
    return attack + update + sampling, f"{attack} attack + {update} update + {sampling:g} sampling"


# ----------------------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------------------
def _peak_gb(r: dict) -> str:
    cpu = f"{r['peak_rss_mb'] / 1024:.1f}"
    return cpu if r["cuda_peak_mb"] is None else f"{cpu} (CUDA {r['cuda_peak_mb'] / 1024:.1f})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--models", default="sd15", help=f"Comma-separated: {', '.join(MODELS)}.")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available, else cpu).")
    ap.add_argument("--iterations", type=int, default=2, help="Training iterations run per configuration.")
    ap.add_argument("--attack-steps", type=int, default=1, help="Attack steps actually run (full: the recipe's 30).")
    ap.add_argument("--ddim-steps", type=int, default=2, help="DDIM steps actually run (full: the recipe's 50).")
    ap.add_argument("--settings", default="default,default+ckpt,default+bf16,reference",
                    help=f"Comma-separated configurations to run, side by side: {', '.join(SETTINGS)}.")
    ap.add_argument("--sdxl-encoders", default="both", help="SDXL: model.encoders (both, text_encoder, text_encoder_2).")
    ap.add_argument("--out", default=None, help="Markdown file (default: bench/results/full_size_<device>.md).")
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker), build=build)), flush=True)
        return 0

    import torch

    from robust_encoders.training import load_recipe

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        raise SystemExit(f"unknown model(s) {bad}; choose from {', '.join(MODELS)}")
    small = [f"iterations={args.iterations}", f"attack.steps={args.attack_steps}", f"unlearn.ddim_steps={args.ddim_steps}",
             f"model.device={device}", "sampling.pool=1", "sampling.retain_pool=1", "sampling.refresh=1"]
    chosen = [k.strip() for k in args.settings.split(",") if k.strip()]
    if not chosen or any(k not in SETTINGS for k in chosen):
        raise SystemExit(f"--settings takes a comma-separated subset of {', '.join(SETTINGS)}; got {args.settings!r}")
    rows, notes = [], []
    t_all = time.perf_counter()
    for m in models:
        base = [*COMMON, f"model.base_model={m}-random-weights"]
        if m == "sdxl":
            base.append(f"model.encoders={args.sdxl_encoders}")
        for key in chosen:
            extra, ours = SETTINGS[key], key != "reference"  # ours: pooled trajectories, to be scaled as such
            measured = [*base, *extra, *small] if ours else [
                *base, *extra, *[o for o in small if not o.startswith("sampling.")]]
            full_cfg = load_recipe(RECIPE, [*base, *extra])
            t0 = time.perf_counter()
            print(f"[full_size] {m}/{key}: {' '.join(measured)}", flush=True)
            # the reference also holds what AdvUnlearn's script loads beyond the two UNets and encoders (3 VAEs, a 3rd
            # encoder: train_speed.advunlearn_extra_copies), as the miniature reference of train_speed.py does
            res = run_config(dict(name=f"{m}/{key}", model=m, recipe=str(RECIPE), overrides=measured,
                                  advunlearn_copies=not ours), script=__file__)
            if ours:  # scale to the recipe's refresh period, not the one used while measuring
                for pool in res["pools"].values():
                    pool["refresh_every"] = full_cfg.sampling.refresh_every
            est, units = scaled_iteration(res, attack_steps_run=args.attack_steps, attack_steps=full_cfg.attack.steps,
                                          ddim_steps=full_cfg.unlearn.ddim_steps, ours=ours)
            passes, split = full_passes(full_cfg)
            steps = res["steps"]
            rows.append([NAMES[m], key, measured_iteration(res), [s.get("unet_calls") for s in steps], est, passes,
                         split, res, time.perf_counter() - t0])
            notes.append(f"{NAMES[m]}/{key} unit costs (s): " + ", ".join(f"{k}={v:.2f}" for k, v in units.items()))

    dev = (f"CUDA {torch.cuda.get_device_name(0)}" if device.startswith("cuda")
           else f"CPU ({os.cpu_count()} cores visible), {os.environ.get('OMP_NUM_THREADS', '?')} threads")
    cmd = (f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} python bench/full_size.py "
           + " ".join(argv if argv is not None else sys.argv[1:]))
    head = ["model", "setting", f"measured s / iteration ({args.attack_steps} attack, DDIM {args.ddim_steps})",
            "measured UNet calls per iteration", "scaled s / iteration at full settings",
            "UNet calls / iteration at full settings", "peak memory GB (RSS; CUDA)", "wall s (build + run)"]
    lines = [
        "# Full-size dry run: real SD architectures, random weights, 2 training iterations",
        "",
        f"Command: `{cmd}`",
        f"Device: {dev}. torch {torch.__version__}. Date: {time.strftime('%Y-%m-%d')}. Total wall time: "
        f"{time.perf_counter() - t_all:.0f} s.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for name, key, meas, calls, est, passes, split, r, wall in rows:
        lines.append(f"| {name} | {key} | {meas:.1f} | {' / '.join(str(c) for c in calls)} | {est:.0f} | "
                     f"{passes:g} ({split}) | {_peak_gb(r)} | {wall:.0f} |")
    lines += ["", "Notes:", ""] + [f"- {n}" for n in notes] + [
        f"- Measured: {args.iterations} iterations with {args.attack_steps} attack step(s) and DDIM {args.ddim_steps}, "
        "no warm-up (every iteration attacks); 'measured s / iteration' is iteration 2 (iteration 1 of the default "
        "also fills its trajectory pools once). 'measured UNet calls' lists each iteration (a CFG call, cond and "
        "uncond batched, is one call; the default's iteration 1 includes filling its pools).",
        "- Scaled: time per iteration at the recipe's settings (30 attack steps, DDIM 50) = update + 30 x attack step "
        "+ sampling, from the measured unit costs above (train_speed.scaled_iteration); sampling is E[(50+1)/2] CFG "
        "calls per fresh x_t for the concept and the retain batch (reference) or 50 CFG calls per refresh / "
        "refresh_every (default). UNet calls at full settings are counted from the recipe.",
        "- Peak memory is measured and does not depend on the number of steps: the reference holds AdvUnlearn's two "
        "copies, a second frozen UNet (`engine.share_unet=false`) and a full trained copy of the encoder beside the "
        "pipeline's, which it re-runs as the frozen original (`engine.share_frozen_weights=false`); the defaults "
        "train a copy that shares the frozen token embedding table with the pipeline's encoder, which is their "
        "frozen original when it is in the frozen dtype (fp32 rows; `default+bf16` caches the frozen outputs for "
        "every prompt of the run instead, `engine.release_original_encoder`); all back-propagate "
        "one sample at a time (`engine.micro_batch=1`); "
        "`default+ckpt` also recomputes the UNet's block activations in the backward pass instead of keeping them "
        "(`engine.gradient_checkpointing=true`, same gradient). On a CPU the recipe runs everything in fp32; on a GPU "
        "`model.dtype=auto` keeps the frozen UNet and encoder in bf16 and trains the encoder under bf16 autocast "
        "(fp32 weights and optimizer state): `default+bf16` sets exactly that explicitly. The reference row runs in "
        "fp32 everywhere. Beside those, the reference keeps alive for the run what AdvUnlearn's `train-scripts/AdvUnlearn.py` "
        "loads and never runs: SD-1.4's diffusers VAE and, through ESD's `get_models`, two full LDM checkpoints with "
        "their own VAE and CLIP encoder (three SD-sized VAEs and a third encoder in all; "
        "`train_speed.advunlearn_extra_copies`" + "".join(
            f"; {name} {key}: {r['extra_copies_mb'] / 1024:.2f} GB" for name, key, *_, r, _w in rows
            if r.get("extra_copies_mb")) + ").",
        "- Our rows build no VAE: training works on latents only.",
    ]
    if not device.startswith("cuda") and "sdxl" not in models:
        lines.append(
            "- SDXL at real size was not run on this CPU: in fp32 its UNet alone is 2.57 B parameters (10.3 GB), and "
            "training both encoders adds the bigG encoder (695 M parameters) four times over (trained weights, "
            "gradients, two Adam moments: 11 GB) plus the frozen copies, past the 24 GB of this machine. Run "
            "`--models sdxl --device cuda` on a GPU (bf16 frozen parts), or `--sdxl-encoders text_encoder` to train "
            "CLIP-L only.")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out) if args.out else ROOT / "bench" / "results" / f"full_size_{device.split(':')[0]}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
