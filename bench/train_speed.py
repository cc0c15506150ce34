"""Training speed and memory: our defaults vs the AdvUnlearn reference settings, side by side.

Rows per model:

* ``reference``: AdvUnlearn's settings and structure, emulated with our trainer's switches:
  30 attack steps (k=1, prefix), a fresh x_t every iteration (DDIM from noise down to a random
  step, for the concept *and* for the 5 retain prompts), two model copies (a second frozen
  UNet for the original branch: ``engine.share_unet=false``; a full trained copy of the encoder beside the
  pipeline's: ``engine.share_frozen_weights=false``), the frozen encoder re-run on every call
  (``engine.cache_original=false``), separate UNet passes for the unlearning and retain losses
  (``engine.fused_unet_batch=false``); and the parts its script loads but never trains, kept alive for the run
  (:func:`advunlearn_extra_copies`: its three VAEs and third CLIP encoder).
* ``ours``: the recipe defaults (``recipes/miniature_default.yaml`` on the miniature model,
  ``recipes/advunlearn_sd14.yaml`` on the SD-1.5-sized model: same hyper-parameters as the
  reference, plus trajectory reuse, one UNet, cached frozen-encoder outputs, micro-batched passes), holding what
  ``robust-encoders train`` holds (no VAE: training never decodes).
* ``VARIANTS`` (miniature): ``ours`` with one soft-token chain instead of the soft + GCG chains (the default before
  2026-12-05: ``attack.mode=continuous``), with one batched UNet pass per update instead of micro-batches of 4
  (``engine.micro_batch=0``: faster on a CPU at this size, more activation memory), with the previous defaults'
  trajectory refresh every 10 iterations and 16 soft steps, with 8 GCG candidates or one GCG step per round, and
  ``fast`` (one soft chain of 4 steps; ``bench/evaluate_concepts.py --rows fast`` measures its robustness).
  Micro-batching gives the same gradient (tested in tests/test_training_run.py and tests/test_attacks_prompt.py),
  so the same robustness.

Models: the embedded miniature pipeline, and an SD-1.5-sized pipeline with random weights
built from config (CLIP text encoder 768 x 12 layers, vocabulary 49,408; UNet 320/640/1280/1280;
64x64 latents; batch 1). Weights do not matter for speed or memory.

Each configuration runs in its own subprocess, so peak memory (``ru_maxrss``; CUDA:
``max_memory_allocated``) is that configuration's alone. The miniature rows also run a second time, for a few
iterations under torch's profiler, for their peak *tensor* memory (:func:`tensor_peak_mb`): at this size the RSS is
mostly interpreter and allocator overhead, which hides what the settings change. The miniature rows are measured over
whole iterations. On a CPU the SD-1.5-sized rows would take hours per reference iteration, so
they run ``--sd-iterations`` iterations with ``--sd-attack-steps`` attack steps and
``--sd-ddim-steps`` DDIM steps, and the full-setting time per iteration is *computed* from the
measured per-call costs (attack step, UNet CFG call at each batch size, update pass); the table
says so and lists the measured unit costs.

Usage:
    OMP_NUM_THREADS=2 python bench/train_speed.py                 # both models, writes bench/results/train_speed.md
    python bench/train_speed.py --models miniature --iterations 21
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ROOT / "recipes"


def _load_rows() -> dict[str, list[str]]:
    """``ROWS`` of the sibling bench/evaluate_concepts.py (loaded by path: bench/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("evaluate_concepts", Path(__file__).with_name("evaluate_concepts.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.ROWS


REFERENCE_ENGINE = [
    "sampling.pool=0", "sampling.retain_pool=0", "engine.share_unet=false", "engine.cache_original=false",
    "engine.fused_unet_batch=false", "engine.share_frozen_weights=false",
]
ADVUNLEARN = [  # AdvUnlearn's hyper-parameters (advunlearn_sd14.yaml) applied to any base model: one soft chain
    "attack.mode=continuous", "attack.steps=30", "attack.lr=1e-3", "attack.k=1", "attack.position=prefix", "attack.init=warm", "attack.every=1",
    "unlearn.ddim_steps=50", "unlearn.batch_size=1", "unlearn.include_clean=false", "retain.batch_size=5",
    "retain.space=unet", "retain.include_empty=false",
]
#: the "fast" row of bench/evaluate_concepts.py (the default recipe with a 4-step inner attack), one definition
FAST = _load_rows()["fast"]
COMMON = ["attack.warmup=0", "checkpoint.every=100000", "log.progress=false"]
#: miniature rows beside the defaults: what the engine's micro-batching and the inner attack's budget cost. The
#: default alternates a soft-token chain (8 steps) and a real-token GCG chain (2 steps); naming attack.mode alone
#: gives one chain of it (the default before 2026-12-05 is "ours, one soft chain")
VARIANTS = {
    "ours, one soft chain": ["attack.mode=continuous"],
    "ours, one batched pass": ["engine.micro_batch=0"],
    "ours, trajectories every 10": ["sampling.refresh_every=10"],
    "ours, 16 soft steps": ["attack.steps=16"],
    "ours, 8 GCG candidates": ["attack.candidates=8"],
    "ours, 1-step GCG chain": ["attack.chain_steps=[null,1]"],
    "fast": FAST,
}


# ----------------------------------------------------------------------------------------------------------------
# worker (one configuration, in its own process)
# ----------------------------------------------------------------------------------------------------------------
def _rss_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 1024 if platform.system() != "Darwin" else r / 1024 / 1024


def _sd15_pipeline(seed: int = 0):
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from robust_encoders.miniature.models import build_scheduler
    from robust_encoders.tokenization import load_clip_tokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768, attention_head_dim=8,
    )
    te = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407, projection_dim=768,
    ))
    return argparse.Namespace(unet=unet, text_encoder=te.eval(), tokenizer=load_clip_tokenizer(),
                              scheduler=build_scheduler("ddim"))


def _sd_vae(seed: int = 0):
    """An SD-1.x-sized VAE (AutoencoderKL's defaults with SD's four blocks, 83.7M parameters), random weights."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )


def advunlearn_extra_copies(pipe) -> list:
    """What AdvUnlearn's training script holds beyond the two UNets and two encoders our trainer's switches emulate.

    Its ``train-scripts/AdvUnlearn.py`` loads SD-1.4's diffusers VAE and CLIP encoder (the one it trains) and, through
    ``get_models`` of the ESD code base, two full LDM checkpoints (the trained one and the frozen original), each with
    its UNet, VAE and CLIP encoder: three VAEs and three encoders in all. The reference row keeps the rest alive for
    the whole run: the pipeline's VAE (an SD-sized one where the pipeline has none), two more copies of it and a third
    encoder. Training never runs them; they are the memory the reference code pays for loading whole pipelines."""
    import copy

    vae = getattr(pipe, "vae", None) or _sd_vae()
    return [vae, copy.deepcopy(vae), copy.deepcopy(vae), copy.deepcopy(pipe.text_encoder)]


def count_unet_calls(trainer, unet) -> None:
    """Record in each iteration's log line how many UNet forward calls it made (``unet_calls``; the frozen copy of
    ``engine.share_unet=false`` is a deepcopy made later, so it inherits the counting hook)."""
    calls = [0]
    unet.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    step = trainer.train_step

    def counted(i):
        before = calls[0]
        record = step(i)
        record["unet_calls"] = calls[0] - before
        return record

    trainer.train_step = counted


def tensor_peak_mb(fn) -> tuple[object, float]:
    """``fn()`` under torch's profiler with memory events: (its result, the peak of live CPU tensor memory in MB).

    Every allocation and free of the CPU allocator is an event; their running sum is the memory held by tensors
    (models, optimiser state, activations, caches), the CPU counterpart of ``torch.cuda.max_memory_allocated``,
    without the allocator's and the interpreter's overhead that peak RSS also counts."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return result, peak / 2**20


def worker(spec: dict, build=None) -> dict:
    """One configuration. ``build(model_name)`` makes the pipeline (default: miniature / SD-1.5-sized).
    ``spec["tensor_memory"]``: run it under :func:`tensor_peak_mb` instead (slower; only the memory counts)."""
    if spec.get("tensor_memory"):
        res, peak = tensor_peak_mb(lambda: worker({**spec, "tensor_memory": False}, build))
        return {**res, "tensor_peak_mb": peak}
    import diffusers  # noqa: F401  (imported before the baseline so it counts as interpreter overhead)
    import peft  # noqa: F401
    import torch
    import transformers  # noqa: F401

    from robust_encoders.training import Trainer, load_recipe

    rss_start = _rss_mb()
    cfg = load_recipe(spec["recipe"], spec["overrides"])
    if build is not None:
        pipe = build(spec["model"])
    elif spec["model"] == "miniature":
        from robust_encoders.miniature import load_pipeline

        pipe = load_pipeline()
    else:
        pipe = _sd15_pipeline()
    held = advunlearn_extra_copies(pipe) if spec.get("advunlearn_copies") else []
    rss_models = _rss_mb()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        trainer = Trainer(cfg, Path(tmp) / "run", pipeline=pipe)
        count_unet_calls(trainer, pipe.unet)
        del pipe
        trainer.run()
        wall = time.perf_counter() - t0
        log = [json.loads(ln) for ln in (Path(tmp) / "run" / "log.jsonl").read_text().splitlines()]
    held_mb = sum(t.numel() * t.element_size() for m in held for t in m.parameters()) / 2**20
    del held
    pools = {}
    for name, pool in (("forget", trainer.forget_pool), ("retain", trainer.retain_pool)):
        if pool is not None:
            batch = pool.refresh if pool.size else (cfg.unlearn.batch_size if name == "forget" else cfg.retain.batch_size)
            pools[name] = {"calls": pool.unet_calls, "seconds": pool.seconds, "batch": batch, "size": pool.size,
                           "refresh": pool.refresh, "refresh_every": pool.refresh_every}
    out = {
        "steps": [r for r in log if "event" not in r],
        "pools": pools,
        "wall_s": wall,
        "extra_copies_mb": held_mb,
        "rss_start_mb": rss_start,
        "rss_models_mb": rss_models,
        "peak_rss_mb": _rss_mb(),
        "cuda_peak_mb": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "device": str(trainer.device),
        "threads": torch.get_num_threads(),
    }
    return out


# ----------------------------------------------------------------------------------------------------------------
# driver
# ----------------------------------------------------------------------------------------------------------------
def run_config(spec: dict, script: str | None = None) -> dict:
    """Run one configuration in a fresh process of ``script`` (default: this file) called with ``--worker``."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "TQDM_DISABLE": "1"}
    proc = subprocess.run([sys.executable, script or __file__, "--worker", json.dumps(spec)], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed for {spec['name']}:\n{proc.stderr[-4000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def _mean(xs):
    xs = list(xs)
    return sum(xs) / len(xs) if xs else float("nan")


def measured_iteration(res: dict) -> float:
    """Mean wall time per iteration, skipping the first (it fills the trajectory pools once)."""
    steps = res["steps"][1:] or res["steps"]
    return _mean(r["time_s"] for r in steps)


def expected_fresh_calls(ddim_steps: int) -> float:
    """UNet (CFG) calls a fresh x_t costs on average: DDIM from noise down to a uniformly drawn step, E[stop + 1]."""
    return (ddim_steps + 1) / 2


def reference_at_expected_sampling(res: dict, ddim_steps: int) -> tuple[float, list[int]]:
    """(mean time per iteration with the fresh-x_t sampling at its expected cost, UNet calls per timed iteration).

    A fresh x_t runs DDIM down to a uniformly drawn step (``TrajectoryPool`` with size 0), so a handful of iterations
    can draw far more or fewer calls than the (ddim_steps + 1) / 2 expected per pool. This swaps the measured sampling
    time of the timed iterations for the expected number of calls times each pool's measured cost per call."""
    steps = res["steps"][1:] or res["steps"]
    expected = sum(expected_fresh_calls(ddim_steps) * per_call(pool) for pool in res["pools"].values() if not pool["size"])
    t = measured_iteration(res) - _mean(r["t_sample"] for r in steps) + expected
    return t, [int(r.get("unet_calls", 0)) for r in steps]


def per_call(pool: dict) -> float:
    return pool["seconds"] / max(pool["calls"], 1)


def scaled_iteration(res: dict, *, attack_steps_run: int, attack_steps: int, ddim_steps: int, ours: bool) -> tuple[float, dict]:
    """Full-setting time per iteration from measured unit costs (see the module docstring)."""
    steps = res["steps"][1:] or res["steps"]
    t_attack_step = _mean(r["t_attack"] for r in steps) / max(attack_steps_run, 1)
    t_update = _mean(r["t_update"] for r in steps)
    sampling = 0.0
    units = {"attack_step_s": t_attack_step, "update_s": t_update}
    for name, pool in res["pools"].items():
        c = per_call(pool)
        units[f"cfg_call_{name}_b{pool['batch']}_s"] = c
        if ours and pool["size"]:
            # a refresh replaces `refresh` trajectories (one batched DDIM run) every `refresh_every` iterations
            sampling += ddim_steps * c / pool["refresh_every"]
        else:
            sampling += expected_fresh_calls(ddim_steps) * c
    units["sampling_per_iter_s"] = sampling
    return t_update + attack_steps * t_attack_step + sampling, units


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--models", default="miniature,sd15", help="Comma-separated: miniature, sd15.")
    ap.add_argument("--iterations", type=int, default=21, help="Miniature: iterations per configuration.")
    ap.add_argument("--reference-iterations", type=int, default=13,
                    help="Miniature reference: iterations (the first is not timed).")
    ap.add_argument("--memory-iterations", type=int, default=3,
                    help="Miniature: iterations of the profiled run that measures peak tensor memory.")
    ap.add_argument("--sd-iterations", type=int, default=2, help="SD-1.5-sized: iterations actually run.")
    ap.add_argument("--sd-attack-steps", type=int, default=2, help="SD-1.5-sized: attack steps actually run.")
    ap.add_argument("--sd-ddim-steps", type=int, default=4, help="SD-1.5-sized: DDIM steps actually run.")
    ap.add_argument("--concept", default="star", help="Miniature concept.")
    ap.add_argument("--context", default="", help="What else ran on the machine (printed beside the device).")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "train_speed.md"))
    args = ap.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0

    rows, notes = [], []
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if "miniature" in models:
        mini = str(RECIPES / "miniature_default.yaml")
        base = [f"concept.name={args.concept}", *COMMON]
        specs = {
            "reference": dict(name="miniature/reference", model="miniature", recipe=mini, advunlearn_copies=True,
                              overrides=[*base, *ADVUNLEARN, *REFERENCE_ENGINE, f"iterations={args.reference_iterations}"]),
            "ours": dict(name="miniature/ours", model="miniature", recipe=mini,
                         overrides=[*base, f"iterations={args.iterations}"]),
        }
        for key, extra in VARIANTS.items():
            specs[key] = dict(name=f"miniature/{key}", model="miniature", recipe=mini,
                              overrides=[*base, *extra, f"iterations={args.iterations}"])
        res = {k: run_config(v) for k, v in specs.items()}
        for k, v in specs.items():  # tensor memory: a second, profiled run of a few iterations (the peak recurs)
            short = [*v["overrides"], f"iterations={args.memory_iterations}"]
            res[k]["tensor_peak_mb"] = run_config({**v, "overrides": short, "tensor_memory": True})["tensor_peak_mb"]
        from robust_encoders.training import load_recipe

        ref_t = measured_iteration(res["reference"])
        rows.append(["miniature", "reference", "30 attack steps k=1, fresh x_t (DDIM 50), retain 5, 2 SD copies",
                     "measured", ref_t, 1.0, res["reference"], res["reference"]])
        for key in [k for k in specs if k != "reference"]:
            cfg = load_recipe(mini, specs[key]["overrides"])
            t = measured_iteration(res[key])
            a = cfg.attack
            steps = (f"{a.steps} warm attack steps" if not a.chain_modes else "warm attack steps in turn: " + " / ".join(
                f"{n} {m}" for n, m in zip(a.steps_per_chain, a.modes, strict=True)))
            if a.chain_modes and "gcg" in a.chain_modes:
                steps += f" ({a.candidates} candidates)"
            k = "/".join(map(str, a.k_per_chain)) if len(set(a.k_per_chain)) > 1 else a.k
            desc = (f"{steps}, k={k}, pooled x_t (DDIM {cfg.unlearn.ddim_steps}, "
                    f"{cfg.sampling.refresh} new every {cfg.sampling.refresh_every} it), "
                    f"batch {cfg.unlearn.batch_size}+{cfg.retain.batch_size}, 1 UNet")
            desc += (f", update and attack in micro-batches of {cfg.engine.micro_batch}" if cfg.engine.micro_batch
                     else ", each update in one batched UNet pass")
            rows.append(["miniature", key, desc, "measured", t, ref_t / t, res[key], res["reference"]])
        notes.append(f"miniature: mean of iterations 2..N (N = {args.reference_iterations} reference, "
                     f"{args.iterations} the others; iteration 1 fills our trajectory pools once, "
                     f"{res['ours']['steps'][0]['time_s']:.2f} s).")
        notes.append(
            f"miniature 'peak tensors': a second run of each row ({args.memory_iterations} iterations, no attack "
            "warm-up) under torch's profiler with memory events; the peak of the running sum of the CPU allocator's "
            "allocations and frees, i.e. the memory held by tensors (models, optimiser state, activations, caches), "
            "counted from before the pipeline loads. It is what a GPU's max_memory_allocated would report, "
            "without the allocator's and the interpreter's share of the RSS. The reference holds what AdvUnlearn's "
            "training script holds (train-scripts/AdvUnlearn.py): a diffusers VAE and the CLIP encoder it trains, and "
            "two full LDM checkpoints (ESD's get_models: the trained and the frozen original, each with UNet, VAE and "
            "CLIP encoder), so 2 UNets, 3 VAEs and 3 encoders; our trainer's switches "
            "give the second UNet (`engine.share_unet=false`) and a full trained copy of the encoder beside the "
            "pipeline's (`engine.share_frozen_weights=false`), and the bench keeps the rest alive for the whole run "
            "(`advunlearn_extra_copies`: the pipeline's VAE, two more VAEs and a third encoder). Ours holds what "
            "`robust-encoders train` holds: the one UNet, the pipeline's encoder as the frozen original, a copy of "
            "only the trained tensors (the token embedding table stays shared), no VAE (training never decodes).")
        ref = res["reference"]
        ref_cfg = load_recipe(mini, specs["reference"]["overrides"])
        expected_t, calls = reference_at_expected_sampling(ref, ref_cfg.unlearn.ddim_steps)
        ours_t = measured_iteration(res["ours"])
        notes.append(
            f"miniature reference: each iteration runs DDIM from noise down to a random step (uniform over "
            f"{ref_cfg.unlearn.ddim_steps}) for the concept and again for the retain batch, so its time varies with "
            f"the draws ({min(calls)}-{max(calls)} UNet calls per timed iteration here, mean {_mean(calls):.1f}). "
            f"With the measured cost per DDIM call and the expected number of calls instead of the drawn ones, its "
            f"iteration takes {expected_t:.3f} s and ours is {expected_t / ours_t:.2f}x faster "
            f"(table: {ref_t / ours_t:.2f}x from the mean of the draws).")
        bare = ref["tensor_peak_mb"] - ref["extra_copies_mb"]
        ours = res["ours"]["tensor_peak_mb"]
        notes.append(
            f"miniature: the reference's extra copies hold {ref['extra_copies_mb']:.1f} MB for the whole run. "
            f"Without them (only the second UNet and encoder, as this bench emulated the reference before) its peak "
            f"tensors would be {bare:.1f} MB, and ours {ours / bare:.2f}x of that.")
    if "sd15" in models:
        sd = str(RECIPES / "advunlearn_sd14.yaml")
        small = [f"iterations={args.sd_iterations}", f"attack.steps={args.sd_attack_steps}",
                 f"unlearn.ddim_steps={args.sd_ddim_steps}"]
        base = ["concept.name=vangogh", "concept.kind=style", "model.base_model=sd15-random-weights", *COMMON]
        specs = {
            "reference": dict(name="sd15/reference", model="sd15", recipe=sd, advunlearn_copies=True,
                              overrides=[*base, *ADVUNLEARN, *REFERENCE_ENGINE, *small]),
            "ours": dict(name="sd15/ours", model="sd15", recipe=sd,
                         overrides=[*base, *small, "sampling.refresh=1", "sampling.pool=1", "sampling.retain_pool=1"]),
        }
        res = {k: run_config(v) for k, v in specs.items()}
        from robust_encoders.training import load_recipe

        full = load_recipe(sd, ["concept.name=vangogh"])
        est = {}
        for key in ("reference", "ours"):
            if key == "ours":  # scale to the recipe's refresh period, not the one used while measuring
                for pool in res[key]["pools"].values():
                    pool["refresh_every"] = full.sampling.refresh_every
            est[key], units = scaled_iteration(
                res[key], attack_steps_run=args.sd_attack_steps, attack_steps=full.attack.steps,
                ddim_steps=full.unlearn.ddim_steps, ours=key == "ours")
            notes.append(f"sd15/{key} measured unit costs (s): " + ", ".join(f"{k}={v:.2f}" for k, v in units.items()))
        for key, desc in (
            ("reference", "30 attack steps k=1, fresh x_t (DDIM 50), retain 5, 2 SD copies"),
            ("ours", f"{full.attack.steps} warm attack steps k=1, pooled x_t (DDIM 50, refresh every "
                     f"{full.sampling.refresh_every}), retain 5 fused, 1 UNet"),
        ):
            r = res[key]
            rows.append(["SD-1.5-sized", key, desc, "scaled", est[key], est["reference"] / est[key], r, res["reference"]])
        notes.append(
            f"SD-1.5-sized: ran {args.sd_iterations} iterations with {args.sd_attack_steps} attack steps and DDIM "
            f"{args.sd_ddim_steps}; time/iteration at full settings = update + attack_steps x attack_step + sampling, "
            "sampling = E[calls] x cfg_call (reference: (50+1)/2 calls per fresh x_t for the concept and for the "
            "retain batch) or 50 x cfg_call / refresh_every (ours: one pooled trajectory replaced per refresh). "
            "Peak memory is measured (it does not depend on the number of steps)."
        )

    import torch

    dev = "CUDA " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    head = ["model", "setting", "what runs", "time", "s / iteration", "speed-up", "peak RSS (MB)",
            "peak above imports (MB)", "memory vs ref", "peak tensors (MB)", "tensors vs ref", "CUDA peak (MB)"]
    lines = [
        "# Training speed: our defaults vs AdvUnlearn-reference settings",
        "",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} python bench/train_speed.py "
        + " ".join(a for a in (argv if argv is not None else sys.argv[1:])) + "`",
        f"Device: {dev}{f' ({args.context})' if args.context else ''}. torch {torch.__version__}. Date: {time.strftime('%Y-%m-%d')}.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join("---" for _ in head) + "|",
    ]
    for m, s, desc, how, t, sp, r, ref in rows:
        above, ref_above = r["peak_rss_mb"] - r["rss_start_mb"], ref["peak_rss_mb"] - ref["rss_start_mb"]
        cuda = r["cuda_peak_mb"]
        ratio = f"{cuda / ref['cuda_peak_mb']:.2f}x (CUDA)" if cuda else f"{above / ref_above:.2f}x"
        tensors = r.get("tensor_peak_mb")
        tcols = f"{tensors:.1f} | {tensors / ref['tensor_peak_mb']:.2f}x" if tensors else "- | -"
        lines.append(f"| {m} | {s} | {desc} | {how} | {t:.3f} | {sp:.2f}x | {r['peak_rss_mb']:.0f} | {above:.0f} | "
                     f"{ratio} | {tcols} | {'-' if cuda is None else f'{cuda:.0f}'} |")
    lines += ["", "Notes:", ""] + [f"- {n}" for n in notes] + [
        "- Peak RSS is the whole process; 'peak above imports' subtracts the RSS after importing torch, diffusers, "
        "transformers and peft, and 'memory vs ref' compares that part (the models, optimizer, activations, caches; "
        "in the reference the three VAEs and the third encoder, the VAEs built from SD's config for the SD-1.5-sized "
        "model). "
        "On a GPU our default also keeps the frozen UNet and encoder in bf16/fp16 (`model.dtype=auto`), which "
        "this CPU measurement does not show.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
