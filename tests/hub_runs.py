"""Builders for the Hub-layer tests: trainer-layout RUN_DIRs with tiny real encoders.

A RUN_DIR follows the trainer contract (``config.yaml``, ``robust_encoder.json``, ``text_encoder/`` as a
``save_pretrained`` folder or a real peft LoRA adapter folder, optional ``text_encoder_2/``, optional
``eval/results.json``). Encoders are tiny ``CLIPTextModel``s (hidden 32, 2 layers, the real 49,408-token CLIP
vocabulary) from ``_tiny.py``, so everything builds in well under a second.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
import yaml

from _tiny import SD1_HIDDEN, SDXL_HIDDEN_2, SDXL_PROJECTION, encoder_outputs, tiny_text_encoder

__all__ = ["EVAL_RESULTS", "digest_tree", "encoder_outputs", "make_base_pipeline", "make_run"]

EVAL_RESULTS: dict[str, Any] = {
    "concept": "church", "concept_kind": "object", "encoder": "runs/church", "detector": "tiny-detector",
    "n_prompts": 16, "seed": 0, "pre_asr": 0.0625, "asr": {"UnlearnDiffAtk": 0.125, "soft-prompt": 0.25},
    "retain_accuracy": 0.9375, "clip_score": 0.3125, "fid": 12.5, "timing_s": {"total": 3.5},
    "config": {"attack_steps": 10, "guidance_scale": 7.5},
}

RECIPE: dict[str, Any] = {
    "concept": {"name": "church", "kind": "object"},
    "model": {"base_model": "CompVis/stable-diffusion-v1-4"},
    "trainable": {"part": "all"},
    "attack": {"kind": "soft-prompt", "steps": 5, "tokens": 3},
    "optim": {"lr": 1.0e-5, "iterations": 20},
    "seed": 0,
}


def _encoder(slot: str, seed: int):
    if slot == "text_encoder_2":
        return tiny_text_encoder(SDXL_HIDDEN_2, seed=seed, with_projection=True, projection_dim=SDXL_PROJECTION)
    return tiny_text_encoder(SD1_HIDDEN, seed=seed)


def make_base_pipeline(folder: Path, slots: tuple[str, ...] = ("text_encoder",), seed: int = 0) -> Path:
    """A pipeline-shaped folder holding only base text encoders (``folder/<slot>/``)."""
    for slot in slots:
        _encoder(slot, seed).save_pretrained(folder / slot)
    return folder


def make_run(
    root: Path,
    *,
    fmt: str = "full",
    slots: tuple[str, ...] = ("text_encoder",),
    base_model: str = "CompVis/stable-diffusion-v1-4",
    base_dir: Path | None = None,
    eval_results: dict[str, Any] | None = None,
    seed: int = 0,
) -> Path:
    """A RUN_DIR at ``root``. ``fmt="full"``: perturbed full encoders. ``fmt="lora"``: real peft adapters on the
    base encoders in ``base_dir`` (created if missing), whose path ends up in ``adapter_config.json``."""
    from peft import LoraConfig, get_peft_model
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    root.mkdir(parents=True, exist_ok=True)
    trainable: Any = {"part": "all"}
    for slot in slots:
        if fmt == "full":
            model = _encoder(slot, seed)
            gen = torch.Generator().manual_seed(seed + 1)
            with torch.no_grad():  # "training": move every weight a little
                for p in model.parameters():
                    p.add_(0.01 * torch.randn(p.shape, generator=gen))
            model.save_pretrained(root / slot)
        else:
            base_dir = base_dir or root.parent / f"{root.name}-base"
            if not (base_dir / slot).is_dir():
                make_base_pipeline(base_dir, (slot,), seed)
            cls = CLIPTextModelWithProjection if slot == "text_encoder_2" else CLIPTextModel
            base = cls.from_pretrained(base_dir / slot)
            torch.manual_seed(seed + 2)
            peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                         init_lora_weights=False))
            peft_model.save_pretrained(root / slot)
            trainable = {"part": "lora", "lora": {"rank": 4, "alpha": 8, "targets": ["q_proj", "v_proj"]}}
    recipe = dict(RECIPE, trainable=trainable, model={"base_model": base_model})
    (root / "config.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    meta = {
        "concept": "church", "concept_kind": "object", "method": "AdvUnlearn", "base_model": base_model,
        "base_families": ["sdxl"] if "text_encoder_2" in slots else ["sd1"], "trainable": trainable,
        "recipe": "advunlearn-object", "format": fmt, "encoders": list(slots), "train_time_s": 42.5,
        "iterations": 20,
    }
    (root / "robust_encoder.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    if eval_results is not None:
        (root / "eval").mkdir(exist_ok=True)
        (root / "eval" / "results.json").write_text(json.dumps(eval_results, indent=2), encoding="utf-8")
    return root


def digest_tree(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative posix path -> hex), plus the file modes."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            rel = path.relative_to(folder).as_posix()
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() + f":{path.stat().st_mode:o}"
    return out
